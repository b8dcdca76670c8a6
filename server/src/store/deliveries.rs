//! The `deliveries` table: every webhook delivery that asked for something, stored before the
//! webhook is answered, and the durable queue of deliveries still to resolve.
//!
//! A delivery is unique per repo by the forge's delivery id (a redelivery repeats it) and by the
//! SHA-256 of the body its signature covers (a captured body replayed under a new id), so neither
//! builds twice. A delivery stored with `processed_at` NULL holds its build back from the claim
//! until the scheduler has resolved it (commit fetched, `on` applied); a restarted server finds it
//! here. Deciding what a delivery means is the scheduler's job, not this file's.

use sqlx::Row;

use super::Connection;

use super::{now_ms, BuildId, Result, Store};

/// A delivery's row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId(pub i64);

impl std::fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A delivery to record.
#[derive(Debug, Clone, Copy)]
pub struct NewDelivery<'a> {
    pub repo: &'a str,
    /// The forge's delivery id, when it sent one.
    pub delivery_id: Option<&'a str>,
    /// The lowercase hex SHA-256 of the signed body.
    pub body_sha256: Option<&'a str>,
    /// `github`, `gitlab` or `gitea`.
    pub forge: &'a str,
    /// The forge's event name.
    pub event: &'a str,
    /// Whether there is nothing left to resolve (a closed request's delivery, a build queued
    /// without a webhook body).
    pub processed: bool,
}

/// A delivery the scheduler has not resolved yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnprocessedDelivery {
    pub id: DeliveryId,
    pub repo: String,
    pub build: Option<BuildId>,
}

/// Record a delivery. `None` when this repo has seen its delivery id or its body before (nothing
/// is recorded then).
pub async fn insert(conn: &mut Connection, new: &NewDelivery<'_>) -> Result<Option<DeliveryId>> {
    let now = now_ms();
    let row = sqlx::query(
        "INSERT INTO deliveries (repo, delivery_id, body_sha256, forge, event, received_at, processed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(new.repo)
    .bind(new.delivery_id)
    .bind(new.body_sha256)
    .bind(new.forge)
    .bind(new.event)
    .bind(now)
    .bind(new.processed.then_some(now))
    .fetch_optional(conn)
    .await?;
    row.map(|r| Ok(DeliveryId(r.try_get("id")?))).transpose()
}

/// The delivery queued `build`.
pub async fn set_build(conn: &mut Connection, id: DeliveryId, build: BuildId) -> Result<()> {
    sqlx::query("UPDATE deliveries SET build_id = $1 WHERE id = $2").bind(build.0).bind(id.0).execute(conn).await?;
    Ok(())
}

/// The delivery is resolved: its build may be claimed (or has already ended).
pub async fn mark_processed(conn: &mut Connection, id: DeliveryId) -> Result<()> {
    sqlx::query("UPDATE deliveries SET processed_at = $1 WHERE id = $2 AND processed_at IS NULL")
        .bind(now_ms())
        .bind(id.0)
        .execute(conn)
        .await?;
    Ok(())
}

/// Record a delivery id for a build queued by other means than a stored webhook body (it is
/// processed at once). Returns `false` when this repo has seen the id before (nothing recorded).
pub async fn record(conn: &mut Connection, repo: &str, delivery_id: &str, build: Option<BuildId>) -> Result<bool> {
    let new = NewDelivery {
        repo,
        delivery_id: Some(delivery_id),
        body_sha256: None,
        forge: "unknown",
        event: "push",
        processed: true,
    };
    match insert(conn, &new).await? {
        Some(id) => {
            if let Some(build) = build {
                set_build(conn, id, build).await?;
            }
            Ok(true)
        }
        None => Ok(false),
    }
}

impl Store {
    /// Whether this repo has handled the delivery id already.
    pub async fn has_delivery(&self, repo: &str, delivery_id: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM deliveries WHERE repo = $1 AND delivery_id = $2")
            .bind(repo)
            .bind(delivery_id)
            .fetch_optional(self.reader())
            .await?;
        Ok(found.is_some())
    }

    /// The oldest delivery of `repo` not resolved yet.
    pub async fn next_unprocessed_delivery(&self, repo: &str) -> Result<Option<UnprocessedDelivery>> {
        let row = sqlx::query(
            "SELECT id, repo, build_id FROM deliveries WHERE repo = $1 AND processed_at IS NULL ORDER BY id LIMIT 1",
        )
        .bind(repo)
        .fetch_optional(self.writer())
        .await?;
        row.map(|r| {
            Ok(UnprocessedDelivery {
                id: DeliveryId(r.try_get("id")?),
                repo: r.try_get("repo")?,
                build: r.try_get::<Option<i64>, _>("build_id")?.map(BuildId),
            })
        })
        .transpose()
    }

    /// See [`mark_processed`].
    pub async fn mark_delivery_processed(&self, id: DeliveryId) -> Result<()> {
        let mut conn = self.writer().acquire().await?;
        mark_processed(&mut conn, id).await
    }

    /// How many deliveries are waiting to be resolved, over every repo.
    pub async fn unprocessed_delivery_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE processed_at IS NULL")
            .fetch_one(self.reader())
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    fn delivery<'a>(id: Option<&'a str>, body: Option<&'a str>) -> NewDelivery<'a> {
        NewDelivery {
            repo: "acme",
            delivery_id: id,
            body_sha256: body,
            forge: "github",
            event: "push",
            processed: false,
        }
    }

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

    #[tokio::test]
    async fn the_same_body_under_a_new_id_is_a_duplicate_and_no_id_is_not() {
        let (store, _dir) = testing::store_with_repo().await;
        let mut conn = store.writer().acquire().await.unwrap();
        assert!(insert(&mut conn, &delivery(Some("a"), Some("h1"))).await.unwrap().is_some());
        assert!(insert(&mut conn, &delivery(Some("b"), Some("h1"))).await.unwrap().is_none(), "a replayed body");
        assert!(insert(&mut conn, &delivery(Some("a"), Some("h2"))).await.unwrap().is_none(), "a redelivery");
        // Forges that send no id: the body alone decides.
        assert!(insert(&mut conn, &delivery(None, Some("h3"))).await.unwrap().is_some());
        assert!(insert(&mut conn, &delivery(None, Some("h4"))).await.unwrap().is_some());
        assert!(insert(&mut conn, &delivery(None, Some("h4"))).await.unwrap().is_none());
    }

    /// The queue's migration rebuilds `builds` and `deliveries`: a database written before it keeps
    /// every build with its number, steps, hosts and log lines, and its old deliveries count as
    /// processed (their builds are claimed as before).
    #[tokio::test]
    async fn the_queue_migration_keeps_every_build_and_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let before = dir.path().join("before");
        std::fs::create_dir(&before).unwrap();
        let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/sqlite");
        for name in ["20240101000000_initial.sql", "20240601000000_users_tokens_sessions.sql"] {
            std::fs::copy(migrations.join(name), before.join(name)).unwrap();
        }
        let path = dir.path().join("gantry.db");
        let options =
            sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true).foreign_keys(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate::Migrator::new(before.as_path()).await.unwrap().run(&pool).await.unwrap();
        for statement in [
            "INSERT INTO repos (name, url) VALUES ('acme', '/srv/acme')",
            "INSERT INTO builds (id, repo, number, commit_sha, branch, ref_kind, trigger, status, created_at) \
             VALUES (5, 'acme', 3, 'abc', 'main', 'tag', 'push', 'passed', 1), \
             (6, 'acme', 4, 'def', 'dev', 'branch', 'manual', 'queued', 2)",
            "INSERT INTO steps (build_id, idx, kind, name, host, status) VALUES (5, 0, 'stage', 'unit', 'web', 'passed')",
            "INSERT INTO hosts (build_id, role, host_id, provider, state, requested_at) \
             VALUES (5, 'web', 'b5-web', 'local', 'torn_down', 1)",
            "INSERT INTO log_lines (build_id, step_idx, seq, at, stream, text) VALUES (5, 0, 0, 1, 'stdout', 'ok')",
            "INSERT INTO deliveries (repo, delivery_id, received_at, build_id) VALUES ('acme', 'd-1', 1, 6)",
        ] {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        pool.close().await;

        let store = Store::open(&path).await.unwrap();
        let old = store.build(BuildId(5)).await.unwrap().unwrap();
        assert_eq!((old.number, old.branch.as_str(), old.pull_request), (3, "main", None));
        assert_eq!(store.steps(BuildId(5)).await.unwrap().len(), 1);
        assert_eq!(store.hosts_of_build(BuildId(5)).await.unwrap().len(), 1);
        assert_eq!(store.log_lines(BuildId(5), None, None).await.unwrap().len(), 1);
        assert!(store.has_delivery("acme", "d-1").await.unwrap());
        assert_eq!(store.next_unprocessed_delivery("acme").await.unwrap(), None);
        assert_eq!(store.claim_next_build("test").await.unwrap().unwrap().id, BuildId(6));
        let broken: Vec<(String,)> =
            sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check").fetch_all(store.reader()).await.unwrap();
        assert!(broken.is_empty(), "{broken:?}");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(store.writer()).await.unwrap();
        assert_eq!(fk, 1, "foreign keys are back on after the migration");
    }

    #[tokio::test]
    async fn unprocessed_deliveries_come_oldest_first_until_processed() {
        let (store, _dir, build) = testing::store_with_build().await;
        let mut conn = store.writer().acquire().await.unwrap();
        let first = insert(&mut conn, &delivery(Some("a"), Some("h1"))).await.unwrap().unwrap();
        set_build(&mut conn, first, build.id).await.unwrap();
        let second = insert(&mut conn, &delivery(Some("b"), Some("h2"))).await.unwrap().unwrap();
        insert(&mut conn, &NewDelivery { processed: true, ..delivery(Some("c"), Some("h3")) }).await.unwrap();
        drop(conn);
        assert_eq!(store.unprocessed_delivery_count().await.unwrap(), 2);
        let next = store.next_unprocessed_delivery("acme").await.unwrap().unwrap();
        assert_eq!((next.id, next.build), (first, Some(build.id)));
        // Its build is held back from the claim until the delivery is processed.
        assert!(store.claim_next_build("test").await.unwrap().is_none());
        store.mark_delivery_processed(first).await.unwrap();
        assert_eq!(store.next_unprocessed_delivery("acme").await.unwrap().unwrap().id, second);
        assert_eq!(store.claim_next_build("test").await.unwrap().unwrap().id, build.id);
        store.mark_delivery_processed(second).await.unwrap();
        assert!(store.next_unprocessed_delivery("acme").await.unwrap().is_none());
    }
}
