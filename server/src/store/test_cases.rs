//! The `test_cases` table: every case of every stored JUnit report, written with the report, and
//! what is read from it: a repo's tests across its recent builds (last outcomes and durations,
//! flakiness) and a build's new failures.
//!
//! A test is known by its stage, classname and name. It is **flaky** when, among the builds
//! looked at, it both passed and failed (or errored) on one commit. A failure of a build is
//! **new** when the same test passed in the previous build of the same branch that reported
//! tests. Parsing reports is not this file's job: callers hand it the cases.

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::any::AnyRow;
use sqlx::Row;

use super::sql::Builder;
use super::Connection;

use super::{parse_column, Backend, BuildId, BuildRow, Result, Store};

/// How many rows one INSERT statement writes (ten bound values each, far below SQLite's limit).
const ROWS_PER_INSERT: usize = 500;

/// How far back (in builds of the branch) a build's previous build with tests is looked for.
pub const PREVIOUS_BUILD_SEARCH: i64 = 50;

/// How a case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TestOutcome {
    Passed,
    Failed,
    Errored,
    Skipped,
}

impl TestOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TestOutcome::Passed => "passed",
            TestOutcome::Failed => "failed",
            TestOutcome::Errored => "errored",
            TestOutcome::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<TestOutcome> {
        Some(match s {
            "passed" => TestOutcome::Passed,
            "failed" => TestOutcome::Failed,
            "errored" => TestOutcome::Errored,
            "skipped" => TestOutcome::Skipped,
            _ => return None,
        })
    }

    /// A failure or an error.
    pub fn went_wrong(self) -> bool {
        matches!(self, TestOutcome::Failed | TestOutcome::Errored)
    }
}

/// One case of a report, to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTestCase {
    pub classname: String,
    pub name: String,
    pub outcome: TestOutcome,
    pub duration_ms: Option<i64>,
    pub message: Option<String>,
}

/// What a test is known by across builds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TestKey {
    pub stage: String,
    pub classname: String,
    pub name: String,
}

/// One run of a test: its outcome in one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    pub build: BuildId,
    pub number: i64,
    pub commit: String,
    pub branch: String,
    pub outcome: TestOutcome,
    pub duration_ms: Option<i64>,
    pub message: Option<String>,
}

/// A test across a repo's recent builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestHistory {
    pub key: TestKey,
    /// Its newest runs, newest first (at most the `runs` asked for).
    pub runs: Vec<TestRun>,
    /// It passed and failed on one commit within the builds looked at.
    pub flaky: bool,
}

/// Store the cases of the report `path` of a build's step (named `stage`), replacing what an
/// earlier copy of the same report stored.
pub async fn replace_report(
    conn: &mut Connection,
    build: BuildId,
    step_idx: i64,
    stage: &str,
    path: &str,
    cases: &[NewTestCase],
) -> Result<()> {
    sqlx::query("DELETE FROM test_cases WHERE build_id = $1 AND step_idx = $2 AND path = $3")
        .bind(build.0)
        .bind(step_idx)
        .bind(path)
        .execute(&mut *conn)
        .await?;
    let backend = Backend::of(conn);
    for (chunk_no, chunk) in cases.chunks(ROWS_PER_INSERT).enumerate() {
        let mut insert = Builder::new(
            backend,
            "INSERT INTO test_cases (build_id, step_idx, path, seq, stage, classname, name, outcome, duration_ms, \
             message) ",
        );
        insert.push_values(chunk.iter().enumerate(), |row, (i, case)| {
            row.push_bind(build.0)
                .push_bind(step_idx)
                .push_bind(path.to_string())
                .push_bind((chunk_no * ROWS_PER_INSERT + i) as i64)
                .push_bind(stage.to_string())
                .push_bind(case.classname.clone())
                .push_bind(case.name.clone())
                .push_bind(case.outcome.as_str())
                .push_bind(case.duration_ms)
                .push_bind(case.message.clone());
        });
        insert.build()?.execute(&mut *conn).await?;
    }
    Ok(())
}

/// `recent`: the repo's (`?1`) newest `?2` builds; `runs`: each of their test cases, numbered
/// per test from the newest (`k = 1`), so a query can keep a few runs of each test.
macro_rules! recent_runs {
    () => {
        "WITH recent AS (SELECT id, number, commit_sha, branch FROM builds WHERE repo = $1 \
         ORDER BY id DESC LIMIT $2), \
         runs AS (SELECT t.stage, t.classname, t.name, t.outcome, t.duration_ms, t.message, t.build_id, \
           r.number, r.commit_sha, r.branch, \
           ROW_NUMBER() OVER (PARTITION BY t.stage, t.classname, t.name \
                              ORDER BY t.build_id DESC, t.step_idx, t.path, t.seq) AS k \
           FROM test_cases t JOIN recent r ON r.id = t.build_id) "
    };
}

fn key_from_row(row: &AnyRow) -> Result<TestKey> {
    Ok(TestKey { stage: row.try_get("stage")?, classname: row.try_get("classname")?, name: row.try_get("name")? })
}

fn outcome_from_row(row: &AnyRow) -> Result<TestOutcome> {
    parse_column("test_cases.outcome", row.try_get("outcome")?, TestOutcome::parse)
}

impl Store {
    /// Every test of `repo`'s newest `builds` builds, sorted by stage, classname and name, each
    /// with its newest `runs` runs and whether it is flaky among those builds; only the flaky
    /// ones with `flaky_only`.
    pub async fn test_history(&self, repo: &str, builds: u32, runs: u32, flaky_only: bool) -> Result<Vec<TestHistory>> {
        let flaky_rows = sqlx::query(concat!(
            recent_runs!(),
            "SELECT stage, classname, name FROM runs GROUP BY stage, classname, name, commit_sha \
             HAVING COUNT(*) FILTER (WHERE outcome = 'passed') > 0 \
             AND COUNT(*) FILTER (WHERE outcome IN ('failed', 'errored')) > 0"
        ))
        .bind(repo)
        .bind(i64::from(builds))
        .fetch_all(self.reader())
        .await?;
        let flaky: HashSet<TestKey> = flaky_rows.iter().map(key_from_row).collect::<Result<_>>()?;
        if flaky_only && flaky.is_empty() {
            return Ok(Vec::new());
        }
        let rows =
            sqlx::query(concat!(recent_runs!(), "SELECT * FROM runs WHERE k <= $3 ORDER BY stage, classname, name, k"))
                .bind(repo)
                .bind(i64::from(builds))
                .bind(i64::from(runs))
                .fetch_all(self.reader())
                .await?;
        let mut tests: BTreeMap<TestKey, Vec<TestRun>> = BTreeMap::new();
        for row in &rows {
            let key = key_from_row(row)?;
            if flaky_only && !flaky.contains(&key) {
                continue;
            }
            tests.entry(key).or_default().push(TestRun {
                build: BuildId(row.try_get("build_id")?),
                number: row.try_get("number")?,
                commit: row.try_get("commit_sha")?,
                branch: row.try_get("branch")?,
                outcome: outcome_from_row(row)?,
                duration_ms: row.try_get("duration_ms")?,
                message: row.try_get("message")?,
            });
        }
        Ok(tests.into_iter().map(|(key, runs)| TestHistory { flaky: flaky.contains(&key), key, runs }).collect())
    }

    /// The tests that failed (or errored) in `build` and passed in the previous build of its
    /// branch that reported tests (looked for among the [`PREVIOUS_BUILD_SEARCH`] builds before
    /// it), with that build; nothing when there is none.
    pub async fn new_failures(&self, build: &BuildRow) -> Result<Option<(BuildId, HashSet<TestKey>)>> {
        let previous: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM (SELECT id FROM builds WHERE repo = $1 AND branch = $2 AND ref_kind = $3 AND id < $4 \
             ORDER BY id DESC LIMIT $5) AS recent \
             WHERE EXISTS (SELECT 1 FROM test_cases t WHERE t.build_id = recent.id) ORDER BY id DESC LIMIT 1",
        )
        .bind(&build.repo)
        .bind(&build.branch)
        .bind(build.ref_kind.as_str())
        .bind(build.id.0)
        .bind(PREVIOUS_BUILD_SEARCH)
        .fetch_optional(self.reader())
        .await?;
        let Some(previous) = previous.map(BuildId) else { return Ok(None) };
        let failing = self.cases_with(build.id, &["failed", "errored"]).await?;
        if failing.is_empty() {
            return Ok(Some((previous, HashSet::new())));
        }
        let passed = self.cases_with(previous, &["passed"]).await?;
        Ok(Some((previous, failing.into_iter().filter(|key| passed.contains(key)).collect())))
    }

    /// The tests of `build` with one of `outcomes`.
    async fn cases_with(&self, build: BuildId, outcomes: &[&str]) -> Result<HashSet<TestKey>> {
        let mut query = Builder::new(self.backend, "SELECT stage, classname, name FROM test_cases WHERE build_id = ");
        query.push_bind(build.0).push(" AND outcome IN ").push_list(outcomes.iter().copied());
        let rows = query.build()?.fetch_all(self.reader()).await?;
        rows.iter().map(key_from_row).collect()
    }

    /// How many cases of each outcome `build` stored (for tests and the API's summary).
    pub async fn test_outcome_counts(&self, build: BuildId) -> Result<HashMap<TestOutcome, i64>> {
        let rows = sqlx::query("SELECT outcome, COUNT(*) AS n FROM test_cases WHERE build_id = $1 GROUP BY outcome")
            .bind(build.0)
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(|row| Ok((outcome_from_row(row)?, row.try_get("n")?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;
    use crate::store::{NewBuild, RefKind, Trigger};

    fn case(name: &str, outcome: TestOutcome) -> NewTestCase {
        NewTestCase {
            classname: "cart".into(),
            name: name.into(),
            outcome,
            duration_ms: Some(12),
            message: outcome.went_wrong().then(|| format!("{name} broke")),
        }
    }

    async fn build(store: &Store, branch: &str, commit: char, cases: &[NewTestCase]) -> BuildRow {
        let build = store
            .insert_build(&NewBuild {
                repo: "acme".into(),
                commit: commit.to_string().repeat(40),
                branch: branch.into(),
                ref_kind: RefKind::Branch,
                trigger: Trigger::Push,
            })
            .await
            .unwrap();
        if !cases.is_empty() {
            let mut tx = store.begin().await.unwrap();
            replace_report(&mut tx, build.id, 3, "unit", "reports/unit.xml", cases).await.unwrap();
            tx.commit().await.unwrap();
        }
        build
    }

    use TestOutcome::{Errored, Failed, Passed, Skipped};

    #[tokio::test]
    async fn a_report_stored_again_replaces_its_cases() {
        let (store, _dir) = testing::store_with_repo().await;
        let many: Vec<NewTestCase> = (0..1234).map(|i| case(&format!("t{i}"), Passed)).collect();
        let b = build(&store, "main", 'a', &many).await;
        assert_eq!(store.test_outcome_counts(b.id).await.unwrap()[&Passed], 1234);
        let mut tx = store.begin().await.unwrap();
        replace_report(&mut tx, b.id, 3, "unit", "reports/unit.xml", &[case("t0", Failed)]).await.unwrap();
        replace_report(&mut tx, b.id, 3, "unit", "reports/other.xml", &[case("t0", Skipped)]).await.unwrap();
        tx.commit().await.unwrap();
        let counts = store.test_outcome_counts(b.id).await.unwrap();
        assert_eq!((counts.get(&Passed), counts[&Failed], counts[&Skipped]), (None, 1, 1));
    }

    #[tokio::test]
    async fn a_test_that_passed_and_failed_on_one_commit_is_flaky() {
        let (store, _dir) = testing::store_with_repo().await;
        // Commit a: `flips` fails, then passes on a second build of the same commit.
        build(&store, "main", 'a', &[case("flips", Failed), case("steady", Passed), case("broken", Failed)]).await;
        build(&store, "main", 'a', &[case("flips", Passed), case("steady", Passed), case("broken", Failed)]).await;
        // `broken` fails every time: broken, not flaky.
        build(&store, "main", 'b', &[case("flips", Passed), case("broken", Errored)]).await;
        let history = store.test_history("acme", 50, 10, false).await.unwrap();
        let names: Vec<(&str, bool, usize)> =
            history.iter().map(|t| (t.key.name.as_str(), t.flaky, t.runs.len())).collect();
        assert_eq!(names, [("broken", false, 3), ("flips", true, 3), ("steady", false, 2)]);
        let flips = &history[1];
        assert_eq!(flips.runs.iter().map(|r| r.number).collect::<Vec<_>>(), [3, 2, 1], "newest first");
        assert_eq!(flips.runs[2].message.as_deref(), Some("flips broke"));
        assert_eq!(flips.key.stage, "unit");

        let flaky = store.test_history("acme", 50, 10, true).await.unwrap();
        assert_eq!(flaky.iter().map(|t| t.key.name.as_str()).collect::<Vec<_>>(), ["flips"]);
        // Two runs shown, and a window of one build sees no flakiness.
        assert!(store.test_history("acme", 50, 2, false).await.unwrap().iter().all(|t| t.runs.len() <= 2));
        assert!(store.test_history("acme", 1, 10, true).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failure_is_new_when_the_previous_build_of_the_branch_passed_it() {
        let (store, _dir) = testing::store_with_repo().await;
        let first =
            build(&store, "main", 'a', &[case("old", Failed), case("kept", Passed), case("gone", Passed)]).await;
        assert_eq!(store.new_failures(&first).await.unwrap(), None, "no earlier build");
        build(&store, "dev", 'x', &[case("kept", Failed)]).await;
        // A build of main that reported nothing (its pipeline errored) is not the one compared.
        build(&store, "main", 'b', &[]).await;
        let next =
            build(&store, "main", 'c', &[case("old", Failed), case("kept", Errored), case("added", Failed)]).await;
        let (previous, new) = store.new_failures(&next).await.unwrap().unwrap();
        assert_eq!(previous, first.id);
        let key = |name: &str| TestKey { stage: "unit".into(), classname: "cart".into(), name: name.into() };
        assert_eq!(new, HashSet::from([key("kept")]));
    }
}
