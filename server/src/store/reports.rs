//! The `reports` table: JUnit XML files named in a stage's `reports`, collected from the host
//! before teardown and stored as the bytes the host had.

use sqlx::Row;

use super::Connection;

use super::{BuildId, Result, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub step_idx: i64,
    pub path: String,
    pub content: Vec<u8>,
}

/// Store a report; a second report of the same step and path replaces the first.
pub async fn insert(conn: &mut Connection, build: BuildId, step_idx: i64, path: &str, content: &[u8]) -> Result<()> {
    sqlx::query(
        "INSERT INTO reports (build_id, step_idx, path, content) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (build_id, step_idx, path) DO UPDATE SET content = excluded.content",
    )
    .bind(build.0)
    .bind(step_idx)
    .bind(path)
    .bind(content)
    .execute(conn)
    .await?;
    Ok(())
}

impl Store {
    pub async fn reports(&self, build: BuildId) -> Result<Vec<ReportRow>> {
        let rows =
            sqlx::query("SELECT step_idx, path, content FROM reports WHERE build_id = $1 ORDER BY step_idx, path")
                .bind(build.0)
                .fetch_all(self.reader())
                .await?;
        rows.iter()
            .map(|r| {
                Ok(ReportRow {
                    step_idx: r.try_get("step_idx")?,
                    path: r.try_get("path")?,
                    content: r.try_get("content")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    #[tokio::test]
    async fn reports_round_trip_as_bytes() {
        let (store, _dir, build) = testing::store_with_build().await;
        let mut conn = store.writer().acquire().await.unwrap();
        insert(&mut conn, build.id, 3, "reports/unit.xml", b"<testsuite/>\xff").await.unwrap();
        insert(&mut conn, build.id, 3, "reports/unit.xml", b"<testsuite tests=\"1\"/>").await.unwrap();
        drop(conn);
        let reports = store.reports(build.id).await.unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].content, b"<testsuite tests=\"1\"/>");
    }
}
