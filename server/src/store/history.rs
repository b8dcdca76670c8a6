//! Reading a repo's builds as history: pages newest first with keyset cursors (`before` an id),
//! filtered by branch, status and trigger; the newest build with a verdict (for badges); and the
//! number of builds queued or running (for metrics).
//!
//! A page is `WHERE repo = ? [AND filter = ?] AND id < ? ORDER BY id DESC LIMIT n`, which the
//! indexes of migration `20241002000000_build_history` answer with one walk over an index range:
//! no offset, no sort, the same cost on the first page and the thousandth, at 100 builds and at
//! 100,000 (the tests below check the query plans). What a page shows is the caller's business.

use gantry_event::BuildStatus;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::sql::Builder;

use super::builds::{build_columns, build_from_row, builds_from_rows, BuildId, BuildRow, Trigger};
use super::{parse_column, Backend, Result, Store};

/// Which of a repo's builds a history lists; `None` does not filter on that column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// The branch (or tag) name, exactly.
    pub branch: Option<String>,
    pub status: Option<BuildStatus>,
    pub trigger: Option<Trigger>,
}

/// One page of a repo's history, newest first, and where the pages beside it start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub builds: Vec<BuildRow>,
    /// The `before` cursor of the next older page, when there are older builds.
    pub older: Option<BuildId>,
    /// Where the next newer page starts, when there are newer builds.
    pub newer: Option<Newer>,
}

/// Where the page of builds newer than a page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Newer {
    /// The newer builds are all on the first page (no cursor).
    First,
    /// The page with this `before` cursor.
    Before(BuildId),
}

/// Statuses a build ends with when it ran to a verdict (what a badge shows): not cancelled,
/// interrupted or still running.
pub const VERDICTS: [BuildStatus; 3] = [BuildStatus::Passed, BuildStatus::Failed, BuildStatus::Errored];

/// `FROM builds WHERE repo = ? AND …` for `filter`.
fn filtered(backend: Backend, select: &str, repo: &str, filter: &HistoryFilter) -> Builder {
    let mut query = Builder::new(backend, select);
    query.push(" FROM builds WHERE repo = ").push_bind(repo.to_string());
    if let Some(branch) = &filter.branch {
        query.push(" AND branch = ").push_bind(branch.clone());
    }
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(trigger) = filter.trigger {
        query.push(" AND trigger = ").push_bind(trigger.as_str());
    }
    query
}

impl Store {
    /// The page of at most `limit` (at least 1) builds of `repo` matching `filter`, newest first,
    /// older than the build `before` when given.
    pub async fn history(
        &self,
        repo: &str,
        filter: &HistoryFilter,
        before: Option<BuildId>,
        limit: u32,
    ) -> Result<HistoryPage> {
        let limit = limit.max(1);
        let mut query = filtered(self.backend, concat!("SELECT ", build_columns!()), repo, filter);
        if let Some(before) = before {
            query.push(" AND id < ").push_bind(before.0);
        }
        query.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit) + 1);
        let rows: Vec<AnyRow> = query.build()?.fetch_all(self.reader()).await?;
        let mut builds = builds_from_rows(&rows)?;
        let older = if builds.len() > limit as usize {
            builds.truncate(limit as usize);
            builds.last().map(|b| b.id)
        } else {
            None
        };
        let newer = match before {
            Some(before) => self.newer_page(repo, filter, before, limit).await?,
            None => None,
        };
        Ok(HistoryPage { builds, older, newer })
    }

    /// Where the page of builds just newer than `before` (those with `id >= before`) starts.
    async fn newer_page(
        &self,
        repo: &str,
        filter: &HistoryFilter,
        before: BuildId,
        limit: u32,
    ) -> Result<Option<Newer>> {
        let mut query = filtered(self.backend, "SELECT id", repo, filter);
        query.push(" AND id >= ").push_bind(before.0);
        query.push(" ORDER BY id ASC LIMIT ").push_bind(i64::from(limit) + 1);
        let ids: Vec<i64> =
            query.build()?.fetch_all(self.reader()).await?.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?;
        Ok(match ids.len() {
            0 => None,
            n if n <= limit as usize => Some(Newer::First),
            // That page ends (newest first) with the `limit`-th newer build.
            _ => Some(Newer::Before(BuildId(ids[limit as usize - 1] + 1))),
        })
    }

    /// The newest build of `repo` (of `branch`, when given) that ran to a verdict ([`VERDICTS`]).
    pub async fn last_verdict(&self, repo: &str, branch: Option<&str>) -> Result<Option<BuildRow>> {
        let mut query = Builder::new(self.backend, concat!("SELECT ", build_columns!(), " FROM builds WHERE repo = "));
        query.push_bind(repo.to_string());
        if let Some(branch) = branch {
            query.push(" AND branch = ").push_bind(branch.to_string()).push(" AND ref_kind = 'branch'");
        }
        query.push(" AND status IN ").push_list(VERDICTS.map(|status| status.as_str()));
        query.push(" ORDER BY id DESC LIMIT 1");
        let row = query.build()?.fetch_optional(self.reader()).await?;
        row.as_ref().map(build_from_row).transpose()
    }

    /// How many builds (of every repo) are queued, provisioning or running; statuses no build has
    /// are left out. A range of `builds_by_status`: its cost does not grow with the history.
    pub async fn live_build_counts(&self) -> Result<Vec<(BuildStatus, i64)>> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM builds WHERE status IN ('queued', 'provisioning', 'running') \
             GROUP BY status",
        )
        .fetch_all(self.reader())
        .await?;
        rows.iter()
            .map(|row| {
                Ok((parse_column("builds.status", row.try_get("status")?, BuildStatus::parse)?, row.try_get("n")?))
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod seed {
    //! Many builds at once, for tests of the history at scale.

    use super::*;

    /// Add `count` finished builds to `repo` in one statement: branches `main` and `dev` and a
    /// hundred `topic-N` by turns, every seventh failed, every thirteenth manual; each with five
    /// steps when `with_steps`.
    pub async fn builds(store: &Store, repo: &str, count: i64, with_steps: bool) {
        let mut tx = store.begin().await.unwrap();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
             INSERT INTO builds (repo, number, commit_sha, branch, ref_kind, trigger, status, created_at, \
                                 started_at, finished_at) \
             SELECT $1, (SELECT builds_numbered FROM repos WHERE name = $1) + i, \
                    '000000000000000000000000000000' || (1000000000 + i), \
                    CASE i % 4 WHEN 0 THEN 'dev' WHEN 1 THEN 'topic-' || (i % 100) ELSE 'main' END, 'branch', \
                    CASE WHEN i % 13 = 0 THEN 'manual' ELSE 'push' END, \
                    CASE WHEN i % 7 = 0 THEN 'failed' ELSE 'passed' END, \
                    i * 1000, i * 1000 + 10, i * 1000 + 500 \
             FROM n",
        )
        .bind(repo)
        .bind(count)
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query("UPDATE repos SET builds_numbered = builds_numbered + $2 WHERE name = $1")
            .bind(repo)
            .bind(count)
            .execute(&mut *tx)
            .await
            .unwrap();
        if with_steps {
            sqlx::query(
                "WITH k(idx, kind, name) AS (VALUES (0, 'provision', 'provision:app'), (1, 'push', 'push:app'), \
                   (2, 'stage', 'build'), (3, 'stage', 'test'), (4, 'teardown', 'teardown:app')) \
                 INSERT INTO steps (build_id, idx, kind, name, host, status, exit_code, started_at, finished_at) \
                 SELECT b.id, k.idx, k.kind, k.name, 'app', 'passed', 0, b.started_at, b.finished_at \
                 FROM builds b, k WHERE b.repo = $1 AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.build_id = b.id)",
            )
            .bind(repo)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::testing;
    use super::*;

    /// Every page of `filter`, walked with `before` cursors of `limit` builds.
    async fn walk(store: &Store, filter: &HistoryFilter, limit: u32) -> Vec<BuildId> {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            assert!(seen.len() <= 1_000, "the cursor does not move on");
            let page = store.history("acme", filter, before, limit).await.unwrap();
            assert!(page.builds.len() <= limit as usize);
            seen.extend(page.builds.iter().map(|b| b.id));
            match page.older {
                Some(cursor) => before = Some(cursor),
                None => return seen,
            }
        }
    }

    /// Every build matching `filter`, newest first, read in one go.
    async fn all(store: &Store, filter: &HistoryFilter) -> Vec<BuildId> {
        store.history("acme", filter, None, 100_000).await.unwrap().builds.iter().map(|b| b.id).collect()
    }

    #[tokio::test]
    async fn pages_walk_every_build_once_with_and_without_filters() {
        let (store, _dir) = testing::store_with_repo().await;
        store.upsert_repo("other", "/srv/other.git").await.unwrap();
        seed::builds(&store, "acme", 120, false).await;
        seed::builds(&store, "other", 30, false).await;
        let filters = [
            HistoryFilter::default(),
            HistoryFilter { branch: Some("main".into()), ..HistoryFilter::default() },
            HistoryFilter { status: Some(BuildStatus::Failed), ..HistoryFilter::default() },
            HistoryFilter { trigger: Some(Trigger::Manual), ..HistoryFilter::default() },
            HistoryFilter {
                branch: Some("dev".into()),
                status: Some(BuildStatus::Passed),
                trigger: Some(Trigger::Push),
            },
            HistoryFilter { branch: Some("nope".into()), ..HistoryFilter::default() },
        ];
        for filter in &filters {
            let expected = all(&store, filter).await;
            assert!(expected.windows(2).all(|w| w[0] > w[1]), "newest first");
            for limit in [1, 7, 50] {
                assert_eq!(walk(&store, filter, limit).await, expected, "{filter:?} by {limit}");
            }
        }
        assert_eq!(all(&store, &filters[0]).await.len(), 120, "another repo's builds are not listed");
        assert_eq!(all(&store, &filters[1]).await.len(), 60);
        assert_eq!(all(&store, &filters[2]).await.len(), 17);
    }

    #[tokio::test]
    async fn the_newer_link_leads_back_to_the_page_before() {
        let (store, _dir) = testing::store_with_repo().await;
        seed::builds(&store, "acme", 25, false).await;
        let filter = HistoryFilter::default();
        let first = store.history("acme", &filter, None, 10).await.unwrap();
        assert_eq!(first.newer, None, "the first page has nothing newer");
        let second = store.history("acme", &filter, first.older, 10).await.unwrap();
        assert_eq!(second.newer, Some(Newer::First));
        let third = store.history("acme", &filter, second.older, 10).await.unwrap();
        assert_eq!(third.builds.len(), 5);
        assert_eq!(third.older, None, "the oldest page has nothing older");
        let Some(Newer::Before(cursor)) = third.newer else { panic!("{:?}", third.newer) };
        assert_eq!(store.history("acme", &filter, Some(cursor), 10).await.unwrap().builds, second.builds);
    }

    #[tokio::test]
    async fn the_last_verdict_skips_live_and_cancelled_builds() {
        let (store, _dir) = testing::store_with_repo().await;
        assert_eq!(store.last_verdict("acme", None).await.unwrap(), None);
        seed::builds(&store, "acme", 8, false).await;
        // Build 7 failed (every seventh does); 8 is on dev.
        let main = store.last_verdict("acme", Some("main")).await.unwrap().unwrap();
        assert_eq!((main.number, main.status), (7, BuildStatus::Failed));
        let newest = store.last_verdict("acme", None).await.unwrap().unwrap();
        assert_eq!(newest.number, 8);
        let mut conn = store.writer().acquire().await.unwrap();
        sqlx::query("UPDATE builds SET status = 'cancelled' WHERE number = 8").execute(&mut *conn).await.unwrap();
        drop(conn);
        assert_eq!(store.last_verdict("acme", None).await.unwrap().unwrap().number, 7);
        assert_eq!(store.last_verdict("acme", Some("nope")).await.unwrap(), None);
        assert_eq!(store.live_build_counts().await.unwrap(), []);
        let mut conn = store.writer().acquire().await.unwrap();
        sqlx::query("UPDATE builds SET status = 'running' WHERE number IN (1, 2)").execute(&mut *conn).await.unwrap();
        drop(conn);
        assert_eq!(store.live_build_counts().await.unwrap(), [(BuildStatus::Running, 2)]);
    }

    /// The plan SQLite picks for `sql` (with `?` bound to `repo` and then `binds`).
    async fn plan(store: &Store, sql: String, binds: &[&str]) -> String {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for bind in binds {
            query = query.bind(*bind);
        }
        let rows = query.fetch_all(store.reader()).await.unwrap();
        rows.iter().map(|r| r.try_get::<String, _>("detail").unwrap()).collect::<Vec<_>>().join("; ")
    }

    /// The queries of the history pages walk an index, never sort and never scan the table, at
    /// 100,000 builds; and a deep page costs what the first does.
    #[tokio::test]
    async fn history_at_a_hundred_thousand_builds_reads_an_index_range() {
        let (store, _dir) = testing::sqlite_store_with_repo().await;
        seed::builds(&store, "acme", 100_000, false).await;
        let cases = [
            ("", vec![]),
            (" AND branch = ?", vec!["main"]),
            (" AND status = ?", vec!["failed"]),
            (" AND trigger = ?", vec!["manual"]),
        ];
        for (filter, binds) in cases {
            let sql = format!(
                "EXPLAIN QUERY PLAN SELECT * FROM builds WHERE repo = ?{filter} AND id < ? ORDER BY id DESC LIMIT 51"
            );
            let mut all = vec!["acme"];
            all.extend(binds);
            all.push("50000");
            let plan = plan(&store, sql, &all).await;
            assert!(plan.contains("USING INDEX") || plan.contains("USING COVERING INDEX"), "{filter}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{filter} sorts: {plan}");
        }
        let filter = HistoryFilter::default();
        let mut times = Vec::new();
        for before in [None, Some(BuildId(50_000)), Some(BuildId(60))] {
            let start = Instant::now();
            let page = store.history("acme", &filter, before, 50).await.unwrap();
            times.push(start.elapsed());
            assert_eq!(page.builds.len(), 50);
        }
        println!("history pages at 100,000 builds (first, middle, near the end): {times:?}");
    }
}
