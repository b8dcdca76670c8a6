//! Pruning old builds' logs and reports (`[retention] builds`): the log lines, JUnit reports and
//! test cases of builds that finished before a cutoff go; the build rows, their steps, hosts,
//! events other than log lines and statuses stay. Each step that had a log keeps its first line,
//! rewritten into the notice the caller gives, so a page or an API window of a pruned log says
//! so instead of showing nothing. `builds.logs_pruned_at` marks a build done.
//!
//! One call of [`Store::prune_batch`] is one short write transaction bounded twice: at most
//! [`PruneLimits::builds`] builds and at most [`PruneLimits::rows`] deleted rows, so a running
//! build's inserts (which queue for the same single writer connection) wait at most one small
//! batch. A build whose rows do not fit is finished by later batches (it stays first in line).
//! Only builds with a `finished_at` (set only with a final status) before the cutoff are touched,
//! never one that is still queued or running. When to prune and how often is `retention`'s job.

use gantry_event::Stream;
use sqlx::Row;

use super::Connection;

use super::{now_ms, BuildId, Result, Store};

/// The select that finds the next builds to prune, oldest first (through `builds_to_prune`).
pub(super) const BUILDS_TO_PRUNE: &str = "SELECT id FROM builds \
     WHERE logs_pruned_at IS NULL AND finished_at < $1 \
     AND status NOT IN ('queued', 'provisioning', 'running') \
     ORDER BY finished_at, id LIMIT $2";

/// The first step of build `?1` after step `?2` that has log lines.
pub(super) const NEXT_STEP_WITH_LINES: &str =
    "SELECT MIN(step_idx) FROM log_lines WHERE build_id = $1 AND step_idx > $2";

/// The last line's number of step `?2` of build `?1`.
pub(super) const LAST_LINE: &str = "SELECT MAX(line) FROM log_lines WHERE build_id = $1 AND step_idx = $2";

/// The lines of step `?2` of build `?1` after line `?3`: a range of the key, cut from the end of
/// the log, so a long log goes in batches and each step's first line stays.
pub(super) const DELETE_LINES_AFTER: &str = "DELETE FROM log_lines WHERE build_id = $1 AND step_idx = $2 AND line > $3";

/// The first report of build `?1` after step `?2`'s report `?3` that has test cases.
pub(super) const NEXT_REPORT_WITH_CASES: &str = "SELECT step_idx, path, MAX(seq) AS last FROM test_cases \
     WHERE build_id = $1 AND (step_idx, path) > ($2, $3) GROUP BY step_idx, path ORDER BY step_idx, path LIMIT 1";

/// The cases of step `?2`'s report `?3` of build `?1` after case `?4`: a range of the key.
pub(super) const DELETE_CASES_AFTER: &str =
    "DELETE FROM test_cases WHERE build_id = $1 AND step_idx = $2 AND path = $3 AND seq > $4";

/// How much one batch may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneLimits {
    /// Builds looked at (and at most finished) in one transaction.
    pub builds: u32,
    /// Rows deleted in one transaction: log lines and test cases together (a build's few
    /// reports go with its last batch).
    pub rows: u64,
}

/// What one batch (or several, added up) pruned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Builds whose pruning completed.
    pub builds: u64,
    pub log_lines: u64,
    pub reports: u64,
    pub test_cases: u64,
    /// The batch stopped at one of its limits: there may be more to prune now.
    pub more: bool,
}

impl std::ops::AddAssign for Pruned {
    fn add_assign(&mut self, other: Pruned) {
        self.builds += other.builds;
        self.log_lines += other.log_lines;
        self.reports += other.reports;
        self.test_cases += other.test_cases;
        self.more = other.more;
    }
}

/// Delete up to `limit` log lines of `build`, each step's first line excepted, step by step from
/// the end of each step's log. Returns how many. Every statement is a seek or a range of the key.
async fn delete_lines(conn: &mut Connection, build: BuildId, limit: u64) -> Result<u64> {
    let mut deleted = 0;
    let mut after = i64::MIN;
    while deleted < limit {
        let step: Option<i64> =
            sqlx::query_scalar(NEXT_STEP_WITH_LINES).bind(build.0).bind(after).fetch_one(&mut *conn).await?;
        let Some(step) = step else { break };
        after = step;
        let last: i64 = sqlx::query_scalar(LAST_LINE).bind(build.0).bind(step).fetch_one(&mut *conn).await?;
        let left = i64::try_from(limit - deleted).unwrap_or(i64::MAX);
        let from = last.saturating_sub(left).max(1);
        if from < last {
            let done = sqlx::query(DELETE_LINES_AFTER).bind(build.0).bind(step).bind(from).execute(&mut *conn).await?;
            deleted += done.rows_affected();
        }
    }
    Ok(deleted)
}

/// Delete up to `limit` test cases of `build`, report by report from the end of each. Returns how
/// many.
async fn delete_test_cases(conn: &mut Connection, build: BuildId, limit: u64) -> Result<u64> {
    let mut deleted = 0;
    let (mut after_step, mut after_path) = (i64::MIN, String::new());
    while deleted < limit {
        let Some(row) = sqlx::query(NEXT_REPORT_WITH_CASES)
            .bind(build.0)
            .bind(after_step)
            .bind(&after_path)
            .fetch_optional(&mut *conn)
            .await?
        else {
            break;
        };
        (after_step, after_path) = (row.try_get("step_idx")?, row.try_get("path")?);
        let last: i64 = row.try_get("last")?;
        let left = i64::try_from(limit - deleted).unwrap_or(i64::MAX);
        let done = sqlx::query(DELETE_CASES_AFTER)
            .bind(build.0)
            .bind(after_step)
            .bind(&after_path)
            .bind(last.saturating_sub(left))
            .execute(&mut *conn)
            .await?;
        deleted += done.rows_affected();
    }
    Ok(deleted)
}

/// Prune one build within `budget` rows. Returns what was deleted and whether the build is done
/// (marked pruned); when not, the budget ran out.
async fn prune_build(
    conn: &mut Connection,
    build: BuildId,
    notice: &str,
    budget: u64,
    pruned: &mut Pruned,
) -> Result<bool> {
    let lines = delete_lines(conn, build, budget).await?;
    pruned.log_lines += lines;
    let mut left = budget - lines;
    if left == 0 {
        return Ok(false);
    }
    let cases = delete_test_cases(conn, build, left).await?;
    pruned.test_cases += cases;
    left -= cases;
    if left == 0 {
        return Ok(false);
    }
    // A step keeps at most a handful of reports: they go together.
    let reports = sqlx::query("DELETE FROM reports WHERE build_id = $1").bind(build.0).execute(&mut *conn).await?;
    pruned.reports += reports.rows_affected();
    let now = now_ms();
    // Each step's first line (its event id is the step's first) becomes the notice.
    sqlx::query("UPDATE log_lines SET stream = $1, text = $2, at = $3 WHERE build_id = $4 AND line = 1")
        .bind(Stream::System.as_str())
        .bind(notice)
        .bind(now)
        .bind(build.0)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE builds SET logs_pruned_at = $1 WHERE id = $2")
        .bind(now)
        .bind(build.0)
        .execute(&mut *conn)
        .await?;
    pruned.builds += 1;
    Ok(true)
}

/// One batch in the caller's transaction: see the module's documentation.
pub async fn prune_batch(
    conn: &mut Connection,
    finished_before: i64,
    notice: &str,
    limits: PruneLimits,
) -> Result<Pruned> {
    let ids: Vec<i64> = sqlx::query(BUILDS_TO_PRUNE)
        .bind(finished_before)
        .bind(i64::from(limits.builds))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| row.try_get("id"))
        .collect::<Result<_, _>>()?;
    let mut pruned = Pruned { more: ids.len() >= limits.builds as usize, ..Pruned::default() };
    for id in ids {
        let spent = pruned.log_lines + pruned.test_cases;
        let budget = limits.rows.saturating_sub(spent);
        if budget == 0 || !prune_build(conn, BuildId(id), notice, budget, &mut pruned).await? {
            pruned.more = true;
            break;
        }
    }
    Ok(pruned)
}

impl Store {
    /// Prune one batch of builds that finished before `finished_before` (unix milliseconds), in
    /// one write transaction; see the module's documentation. Call again while `more` is set.
    pub async fn prune_batch(&self, finished_before: i64, notice: &str, limits: PruneLimits) -> Result<Pruned> {
        let mut tx = self.begin().await?;
        let pruned = prune_batch(&mut tx, finished_before, notice, limits).await?;
        tx.commit().await?;
        Ok(pruned)
    }

    /// When the build's logs and reports were pruned, if they were.
    pub async fn logs_pruned_at(&self, build: BuildId) -> Result<Option<i64>> {
        let at: Option<Option<i64>> = sqlx::query_scalar("SELECT logs_pruned_at FROM builds WHERE id = $1")
            .bind(build.0)
            .fetch_optional(self.reader())
            .await?;
        Ok(at.flatten())
    }

    /// Give the pages freed by a prune back to the file system, when the database was created with
    /// `auto_vacuum = incremental`: at most `pages` pages, in one short step. Returns the pages
    /// freed (0 when the database does not use incremental vacuum: SQLite then reuses free pages
    /// for new rows, and the file keeps its size). On PostgreSQL, autovacuum makes the space of
    /// deleted rows reusable by itself: nothing to do here.
    pub async fn incremental_vacuum(&self, pages: u32) -> Result<u64> {
        if self.backend() != super::Backend::Sqlite {
            return Ok(0);
        }
        let mut conn = self.writer().acquire().await?;
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(&mut *conn).await?;
        // 0 none, 1 full (SQLite frees pages at each commit by itself), 2 incremental.
        if mode != 2 {
            return Ok(0);
        }
        let before: i64 = sqlx::query_scalar("PRAGMA freelist_count").fetch_one(&mut *conn).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA incremental_vacuum({pages})"))).execute(&mut *conn).await?;
        let after: i64 = sqlx::query_scalar("PRAGMA freelist_count").fetch_one(&mut *conn).await?;
        Ok(u64::try_from(before - after).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use gantry_event::{BuildStatus, StepId, StepKind};
    use sqlx::sqlite::{SqliteAutoVacuum, SqliteConnectOptions};
    use sqlx::ConnectOptions;

    use super::super::logs::tests::two_step_lines;
    use super::super::logs::{insert_lines, LogLine};
    use super::super::test_cases::{replace_report, NewTestCase, TestOutcome};
    use super::super::{builds, reports, steps, testing};
    use super::*;

    const NOTICE: &str = "[gantry] log pruned";
    const HOUR_MS: i64 = 3_600_000;
    const UNLIMITED: PruneLimits = PruneLimits { builds: 500, rows: u64::MAX };

    /// A build of `acme` with a three-step plan, `lines` log lines over steps 0 and 1 and, when
    /// `cases` is not zero, a report of step 1 with that many cases; finished (as `passed`)
    /// `finished_ago` before now when given, else still running.
    async fn build(store: &Store, lines: i64, cases: usize, finished_ago: Option<i64>) -> BuildId {
        let row = store.insert_build(&testing::main_push()).await.unwrap();
        let plan = [0, 1, 2].map(|i| StepId { kind: StepKind::Stage, name: format!("s{i}"), host: "web".into() });
        let mut tx = store.begin().await.unwrap();
        steps::insert_planned(&mut tx, row.id, &plan).await.unwrap();
        insert_lines(&mut tx, row.id, &two_step_lines(lines)).await.unwrap();
        if cases > 0 {
            reports::insert(&mut tx, row.id, 1, "unit.xml", b"<testsuite/>").await.unwrap();
            let cases: Vec<NewTestCase> = (0..cases)
                .map(|i| NewTestCase {
                    classname: "c".into(),
                    name: format!("t{i}"),
                    outcome: TestOutcome::Passed,
                    duration_ms: None,
                    message: None,
                })
                .collect();
            replace_report(&mut tx, row.id, 1, "s1", "unit.xml", &cases).await.unwrap();
        }
        match finished_ago {
            Some(ago) => {
                builds::finish(&mut tx, row.id, BuildStatus::Passed, None).await.unwrap();
                sqlx::query("UPDATE builds SET finished_at = $1 WHERE id = $2")
                    .bind(now_ms() - ago)
                    .bind(row.id.0)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            None => {
                // Queued a day ago and running since: old, but not finished.
                sqlx::query("UPDATE builds SET status = 'running', created_at = $1, started_at = $2 WHERE id = $3")
                    .bind(now_ms() - 24 * HOUR_MS)
                    .bind(now_ms() - 24 * HOUR_MS)
                    .bind(row.id.0)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
        }
        tx.commit().await.unwrap();
        row.id
    }

    async fn row_count(store: &Store, table: &str, build: BuildId) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table} WHERE build_id = $1")))
            .bind(build.0)
            .fetch_one(store.reader())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_old_finished_build_loses_its_logs_and_reports_and_keeps_its_row_steps_and_status() {
        let (store, _dir) = testing::store_with_repo().await;
        let old = build(&store, 11, 3, Some(48 * HOUR_MS)).await;
        let recent = build(&store, 11, 3, Some(HOUR_MS / 2)).await;
        let running = build(&store, 11, 3, None).await;
        let before: Vec<LogLine> = store.log_lines(old, None, None).await.unwrap();

        let pruned = store.prune_batch(now_ms() - HOUR_MS, NOTICE, UNLIMITED).await.unwrap();
        assert_eq!(pruned, Pruned { builds: 1, log_lines: 9, reports: 1, test_cases: 3, more: false });

        // Each step that had a log keeps one line, the notice, with the step's first event id.
        let after = store.log_lines(old, None, None).await.unwrap();
        assert_eq!(after.len(), 2, "{after:?}");
        for line in &after {
            assert_eq!((line.line, line.stream, line.text.as_str()), (1, Stream::System, NOTICE));
            let first = before.iter().find(|l| l.step_idx == line.step_idx).unwrap();
            assert_eq!(line.seq, first.seq);
        }
        assert_eq!(store.log_line_counts(old).await.unwrap(), [(0, 1), (1, 1)]);
        assert!(store.reports(old).await.unwrap().is_empty());
        assert_eq!(row_count(&store, "test_cases", old).await, 0);
        let row = store.build(old).await.unwrap().unwrap();
        assert_eq!(row.status, BuildStatus::Passed);
        assert_eq!(store.steps(old).await.unwrap().len(), 3);
        assert!(store.logs_pruned_at(old).await.unwrap().is_some());

        // The recent build and the old one still running keep everything.
        for kept in [recent, running] {
            assert_eq!(store.log_lines(kept, None, None).await.unwrap().len(), 11);
            assert_eq!(store.reports(kept).await.unwrap().len(), 1);
            assert_eq!(row_count(&store, "test_cases", kept).await, 3);
            assert_eq!(store.logs_pruned_at(kept).await.unwrap(), None);
        }

        // A pruned build is never pruned again.
        let again = store.prune_batch(now_ms() - HOUR_MS, NOTICE, UNLIMITED).await.unwrap();
        assert_eq!(again, Pruned::default());
    }

    #[tokio::test]
    async fn a_batch_takes_at_most_its_builds() {
        let (store, _dir) = testing::store_with_repo().await;
        for _ in 0..5 {
            build(&store, 4, 0, Some(48 * HOUR_MS)).await;
        }
        let limits = PruneLimits { builds: 2, rows: u64::MAX };
        let mut passes = Vec::new();
        loop {
            let pruned = store.prune_batch(now_ms() - HOUR_MS, NOTICE, limits).await.unwrap();
            passes.push(pruned.builds);
            if !pruned.more {
                break;
            }
        }
        assert_eq!(passes, [2, 2, 1]);
    }

    #[tokio::test]
    async fn a_batch_deletes_at_most_its_rows_and_a_long_log_takes_several() {
        let (store, _dir) = testing::store_with_repo().await;
        // 25 lines over two steps (13 and 12): 23 to delete, and 3 test cases.
        let long = build(&store, 25, 3, Some(48 * HOUR_MS)).await;
        let limits = PruneLimits { builds: 500, rows: 10 };
        let mut passes = Vec::new();
        loop {
            let pruned = store.prune_batch(now_ms() - HOUR_MS, NOTICE, limits).await.unwrap();
            assert!(pruned.log_lines + pruned.test_cases <= 10, "{pruned:?}");
            passes.push((pruned.log_lines + pruned.test_cases, pruned.builds));
            if !pruned.more {
                break;
            }
        }
        assert_eq!(passes, [(10, 0), (10, 0), (6, 1)]);
        assert_eq!(store.log_lines(long, None, None).await.unwrap().len(), 2);
        assert_eq!(row_count(&store, "test_cases", long).await, 0);
    }

    /// The plan SQLite picks for `sql`, its details joined.
    async fn plan(store: &Store, sql: &str) -> String {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
        for _ in 0..sql.matches('?').count() {
            query = query.bind(1_i64);
        }
        let rows = query.fetch_all(store.reader()).await.unwrap();
        rows.iter().map(|r| r.try_get::<String, _>("detail").unwrap()).collect::<Vec<_>>().join("; ")
    }

    /// The select walks `builds_to_prune` (no scan of the builds, no sort), and deleting a
    /// build's lines reads its key range, at a history of many builds.
    #[tokio::test]
    async fn the_prune_reads_indexes() {
        let (store, _dir) = testing::sqlite_store_with_repo().await;
        for _ in 0..50 {
            build(&store, 4, 1, Some(48 * HOUR_MS)).await;
        }
        sqlx::query("ANALYZE").execute(store.writer()).await.unwrap();
        let select = plan(&store, BUILDS_TO_PRUNE).await;
        assert!(select.contains("USING INDEX builds_to_prune"), "{select}");
        assert!(!select.contains("TEMP B-TREE"), "the select sorts: {select}");
        for (sql, expected) in [
            (NEXT_STEP_WITH_LINES, "SEARCH log_lines USING PRIMARY KEY (build_id=? AND step_idx>?)"),
            (LAST_LINE, "SEARCH log_lines USING PRIMARY KEY (build_id=? AND step_idx=?)"),
            (DELETE_LINES_AFTER, "SEARCH log_lines USING PRIMARY KEY (build_id=? AND step_idx=? AND line>?)"),
            (NEXT_REPORT_WITH_CASES, "SEARCH test_cases USING PRIMARY KEY (build_id=? AND (step_idx,path)>(?,?))"),
            (
                DELETE_CASES_AFTER,
                "SEARCH test_cases USING PRIMARY KEY (build_id=? AND step_idx=? AND path=? AND seq>?)",
            ),
        ] {
            let plan = plan(&store, sql).await;
            assert!(
                plan.contains(expected) && !plan.contains("SCAN") && !plan.contains("TEMP B-TREE"),
                "{sql}: {plan}"
            );
        }
    }

    /// The size of the database file after a checkpoint moved the WAL into it.
    async fn file_size(store: &Store, path: &std::path::Path) -> u64 {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(store.writer()).await.unwrap();
        std::fs::metadata(path).unwrap().len()
    }

    /// A finished build with a log of 20,000 lines of 200 bytes each (4 MB of text).
    async fn build_with_big_log(store: &Store, finished_ago: i64) -> BuildId {
        let id = build(store, 0, 0, Some(finished_ago)).await;
        let lines: Vec<LogLine> =
            two_step_lines(20_000).into_iter().map(|line| LogLine { text: "x".repeat(200), ..line }).collect();
        let mut tx = store.begin().await.unwrap();
        insert_lines(&mut tx, id, &lines).await.unwrap();
        tx.commit().await.unwrap();
        id
    }

    /// Gantry's databases use no auto_vacuum: the file keeps its size after a prune, and the
    /// freed pages take the next logs, so a new log as large as the pruned one does not grow it.
    #[tokio::test]
    async fn pruned_pages_are_reused_by_new_logs() {
        let (store, dir) = testing::sqlite_store_with_repo().await;
        let path = dir.path().join("gantry.db");
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(store.reader()).await.unwrap();
        assert_eq!(mode, 0, "auto_vacuum is none");
        build_with_big_log(&store, 48 * HOUR_MS).await;
        let with_log = file_size(&store, &path).await;

        // In batches of the size the retention task uses, timed: a writer waits at most one.
        let limits = PruneLimits { builds: 500, rows: 5_000 };
        let mut batches = Vec::new();
        loop {
            let start = std::time::Instant::now();
            let batch = store.prune_batch(now_ms() - HOUR_MS, NOTICE, limits).await.unwrap();
            batches.push(start.elapsed());
            if !batch.more {
                break;
            }
        }
        println!("20,000 lines pruned in {} batches of at most 5,000 rows: {batches:?}", batches.len());
        assert_eq!(batches.len(), 4);
        let pruned = file_size(&store, &path).await;
        let free: i64 = sqlx::query_scalar("PRAGMA freelist_count").fetch_one(store.reader()).await.unwrap();

        build_with_big_log(&store, 0).await;
        let with_new_log = file_size(&store, &path).await;
        println!(
            "database file: {with_log} bytes with a 20,000-line log, {pruned} after the prune ({free} free pages), \
             {with_new_log} after a new 20,000-line log"
        );
        assert_eq!(pruned, with_log, "without auto_vacuum the file keeps its size");
        assert!(free > 900, "the log's pages are free: {free}");
        assert!(with_new_log <= with_log + 64 * 1024, "{with_new_log} > {with_log}: freed pages were not reused");
        assert_eq!(store.incremental_vacuum(1000).await.unwrap(), 0, "nothing to do without incremental vacuum");
    }

    /// A database made with `auto_vacuum = incremental` gives freed pages back to the file system.
    #[tokio::test]
    async fn incremental_vacuum_shrinks_a_database_made_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gantry.db");
        let mut conn = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .auto_vacuum(SqliteAutoVacuum::Incremental)
            .connect()
            .await
            .unwrap();
        sqlx::query("CREATE TABLE made (a)").execute(&mut conn).await.unwrap();
        drop(conn);
        let store = Store::open(&path).await.unwrap();
        store.upsert_repo("acme", "/srv/acme.git").await.unwrap();
        build_with_big_log(&store, 48 * HOUR_MS).await;
        let with_log = file_size(&store, &path).await;
        store.prune_batch(now_ms() - HOUR_MS, NOTICE, UNLIMITED).await.unwrap();
        let mut freed = 0;
        loop {
            let step = store.incremental_vacuum(200).await.unwrap();
            if step == 0 {
                break;
            }
            freed += step;
        }
        let vacuumed = file_size(&store, &path).await;
        println!("auto_vacuum = incremental: {with_log} bytes with the log, {vacuumed} after {freed} pages freed");
        assert!(freed > 900 && vacuumed < with_log / 2, "{freed} pages, {vacuumed} of {with_log} bytes");
    }
}
