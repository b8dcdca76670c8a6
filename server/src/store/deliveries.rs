//! The `deliveries` table: webhook delivery ids already handled per repo, so a forge's
//! redelivery of the same push never queues a second build.

use sqlx::SqliteConnection;

use super::{now_ms, BuildId, Result, Store};

/// Record a delivery. Returns `false` when this repo has seen the id before (nothing recorded).
pub async fn record(
    conn: &mut SqliteConnection,
    repo: &str,
    delivery_id: &str,
    build: Option<BuildId>,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO deliveries (repo, delivery_id, received_at, build_id) VALUES (?, ?, ?, ?) \
         ON CONFLICT (repo, delivery_id) DO NOTHING",
    )
    .bind(repo)
    .bind(delivery_id)
    .bind(now_ms())
    .bind(build.map(|b| b.0))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

impl Store {
    /// Whether this repo has handled the delivery id already.
    pub async fn has_delivery(&self, repo: &str, delivery_id: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM deliveries WHERE repo = ? AND delivery_id = ?")
            .bind(repo)
            .bind(delivery_id)
            .fetch_optional(self.reader())
            .await?;
        Ok(found.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    #[tokio::test]
    async fn a_delivery_id_is_unique_per_repo() {
        let (store, _dir) = testing::store_with_repo().await;
        store.upsert_repo("other", "/x").await.unwrap();
        let mut conn = store.writer().acquire().await.unwrap();
        assert!(record(&mut conn, "acme", "d-1", None).await.unwrap());
        assert!(!record(&mut conn, "acme", "d-1", None).await.unwrap());
        assert!(record(&mut conn, "other", "d-1", None).await.unwrap());
        drop(conn);
        assert!(store.has_delivery("acme", "d-1").await.unwrap());
        assert!(!store.has_delivery("acme", "d-2").await.unwrap());
    }
}
