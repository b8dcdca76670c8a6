//! The `builds` table: the durable queue (`status = 'queued'`) and every build's history.
//!
//! Claiming is one statement (`UPDATE … WHERE id = (SELECT …) RETURNING …`), so two schedulers
//! could never claim one build; superseding and finishing only ever move a build forward to a
//! final status. Deciding *when* to do these things is the scheduler's job, not this file's.
//! Paging through a repo's history lives in `history`.

use gantry_event::BuildStatus;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::Connection;

use super::notify::Notice;
use super::{now_ms, parse_column, Backend, Result, Store};

/// A build's id: the primary key, unique across repos (URLs use it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildId(pub i64);

impl std::fmt::Display for BuildId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What asked for a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Push,
    Poll,
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Push => "push",
            Trigger::Poll => "poll",
            Trigger::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Trigger> {
        Some(match s {
            "push" => Trigger::Push,
            "poll" => Trigger::Poll,
            "manual" => Trigger::Manual,
            _ => return None,
        })
    }
}

/// Whether a build's `branch` column names a branch, a tag, or the source branch of a pull
/// (merge) request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    Branch,
    Tag,
    PullRequest,
}

impl RefKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefKind::Branch => "branch",
            RefKind::Tag => "tag",
            RefKind::PullRequest => "pull_request",
        }
    }

    pub fn parse(s: &str) -> Option<RefKind> {
        Some(match s {
            "branch" => RefKind::Branch,
            "tag" => RefKind::Tag,
            "pull_request" => RefKind::PullRequest,
            _ => return None,
        })
    }
}

/// A build to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBuild {
    pub repo: String,
    /// The full sha.
    pub commit: String,
    /// The branch, or the tag when `ref_kind` is `Tag`.
    pub branch: String,
    pub ref_kind: RefKind,
    pub trigger: Trigger,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRow {
    pub id: BuildId,
    pub repo: String,
    pub number: i64,
    pub commit: String,
    pub branch: String,
    pub ref_kind: RefKind,
    pub trigger: Trigger,
    pub status: BuildStatus,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
    /// The build this one re-runs (same commit and ref, asked for by a person).
    pub rerun_of: Option<BuildId>,
    /// Set exactly when `ref_kind` is `PullRequest`.
    pub pull_request: Option<PullRequest>,
    /// The last of the build's event ids handed out (`events`), 0 before any: where the
    /// persister of a build just claimed goes on from.
    pub event_seq: i64,
}

impl BuildRow {
    /// Whether the build is still queued or running.
    pub fn is_live(&self) -> bool {
        !self.status.is_final()
    }
}

/// What a build of a pull (merge) request records about the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The request's number on its forge (GitLab's `iid`).
    pub number: i64,
    /// The branch the request merges from (also the build's `branch`).
    pub source: String,
    /// The branch the request merges into.
    pub target: String,
    /// The ref of the configured repository the head commit is fetched through
    /// (`refs/pull/N/head`, `refs/merge-requests/N/head`).
    pub head_ref: String,
}

/// The columns [`build_from_row`] reads, for every query returning builds.
macro_rules! build_columns {
    () => {
        "id, repo, number, commit_sha, branch, ref_kind, trigger, status, created_at, started_at, \
         finished_at, error, rerun_of, pr_number, pr_target, pr_head_ref, event_seq"
    };
}
pub(super) use build_columns;

pub(super) fn build_from_row(row: &AnyRow) -> Result<BuildRow> {
    let branch: String = row.try_get("branch")?;
    let pr_number: Option<i64> = row.try_get("pr_number")?;
    let pull_request = match pr_number {
        Some(number) => Some(PullRequest {
            number,
            source: branch.clone(),
            target: row.try_get::<Option<String>, _>("pr_target")?.unwrap_or_default(),
            head_ref: row.try_get::<Option<String>, _>("pr_head_ref")?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(BuildRow {
        id: BuildId(row.try_get("id")?),
        repo: row.try_get("repo")?,
        number: row.try_get("number")?,
        commit: row.try_get("commit_sha")?,
        branch,
        ref_kind: parse_column("builds.ref_kind", row.try_get("ref_kind")?, RefKind::parse)?,
        trigger: parse_column("builds.trigger", row.try_get("trigger")?, Trigger::parse)?,
        status: parse_column("builds.status", row.try_get("status")?, BuildStatus::parse)?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        error: row.try_get("error")?,
        rerun_of: row.try_get::<Option<i64>, _>("rerun_of")?.map(BuildId),
        pull_request,
        event_seq: row.try_get("event_seq")?,
    })
}

pub(super) fn builds_from_rows(rows: &[AnyRow]) -> Result<Vec<BuildRow>> {
    rows.iter().map(build_from_row).collect()
}

/// Queue a build; its number is the repo's next one.
pub async fn insert(conn: &mut Connection, new: &NewBuild) -> Result<BuildRow> {
    insert_with(conn, new, None, None).await
}

/// Queue a re-run of `of`: a manual build of the same repo, commit and ref that names it.
pub async fn insert_rerun(conn: &mut Connection, of: &BuildRow) -> Result<BuildRow> {
    let new = NewBuild {
        repo: of.repo.clone(),
        commit: of.commit.clone(),
        branch: of.branch.clone(),
        ref_kind: of.ref_kind,
        trigger: Trigger::Manual,
    };
    insert_with(conn, &new, Some(of.id), of.pull_request.as_ref()).await
}

/// [`next_number`]'s statement: `$1` the repo.
macro_rules! next_number_sql {
    () => {
        "UPDATE repos SET builds_numbered = builds_numbered + 1 WHERE name = $1 RETURNING builds_numbered"
    };
}

/// Queue a build numbered next in its repo: a re-run names the build it re-runs, and a pull
/// request's build (or its re-run) records the request (the table requires it).
///
/// On PostgreSQL the number is taken and the build inserted by one statement (a round trip where
/// a transaction took four); SQLite takes the number first, in the caller's transaction.
pub(super) async fn insert_with(
    conn: &mut Connection,
    new: &NewBuild,
    rerun_of: Option<BuildId>,
    pr: Option<&PullRequest>,
) -> Result<BuildRow> {
    macro_rules! insert_build {
        ($values:literal) => {
            concat!(
                "INSERT INTO builds (repo, number, commit_sha, branch, ref_kind, trigger, status, created_at, \
                 rerun_of, pr_number, pr_target, pr_head_ref) ",
                $values,
                " RETURNING ",
                build_columns!()
            )
        };
    }
    let number = match Backend::of(conn) {
        Backend::Sqlite => Some(next_number(conn, &new.repo).await?),
        Backend::Postgres => None,
    };
    let sql = match number {
        Some(_) => insert_build!("VALUES ($1, $11, $2, $3, $4, $5, 'queued', $6, $7, $8, $9, $10)"),
        None => concat!(
            "WITH numbered AS (",
            next_number_sql!(),
            ") ",
            insert_build!("SELECT $1, builds_numbered, $2, $3, $4, $5, 'queued', $6, $7, $8, $9, $10 FROM numbered")
        ),
    };
    let mut query = sqlx::query(sql)
        .bind(&new.repo)
        .bind(&new.commit)
        .bind(&new.branch)
        .bind(new.ref_kind.as_str())
        .bind(new.trigger.as_str())
        .bind(now_ms())
        .bind(rerun_of.map(|id| id.0))
        .bind(pr.map(|pr| pr.number))
        .bind(pr.map(|pr| pr.target.as_str()))
        .bind(pr.map(|pr| pr.head_ref.as_str()));
    if let Some(number) = number {
        query = query.bind(number);
    }
    build_from_row(&query.fetch_one(conn).await?)
}

/// The next build number of `repo`, taken from its counter in one atomic statement, so two
/// connections (or two servers) never hand out the same number. A number whose build was then
/// not inserted (the transaction rolled back) is given again; one whose transaction committed
/// never is.
pub(super) async fn next_number(conn: &mut Connection, repo: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(next_number_sql!()).bind(repo).fetch_one(conn).await?)
}

/// Cancel the queued builds of the same repo and ref that are older than `newer`.
pub async fn supersede_queued(conn: &mut Connection, newer: &BuildRow) -> Result<Vec<BuildId>> {
    let rows = sqlx::query(
        "UPDATE builds SET status = 'cancelled', finished_at = $1, error = $2 \
         WHERE repo = $3 AND branch = $4 AND ref_kind = $5 AND status = 'queued' AND id < $6 \
         AND pr_number IS NOT DISTINCT FROM $7 RETURNING id",
    )
    .bind(now_ms())
    .bind(format!("superseded by build {}", newer.number))
    .bind(&newer.repo)
    .bind(&newer.branch)
    .bind(newer.ref_kind.as_str())
    .bind(newer.id.0)
    .bind(newer.pull_request.as_ref().map(|pr| pr.number))
    .fetch_all(conn)
    .await?;
    rows.iter().map(|r| Ok(BuildId(r.try_get("id")?))).collect()
}

/// [`finish`]'s update of the build: `$1` the time, `$2` the build, `$3` its final status, `$4`
/// the error (kept when `NULL`). Its parameters are those of `steps::cancel_unfinished_sql!` first,
/// so that the two make one statement on PostgreSQL ([`Store::finish_build`]).
macro_rules! end_build_sql {
    () => {
        "UPDATE builds SET status = $3, error = COALESCE($4, error), finished_at = $1 \
         WHERE id = $2 AND status IN ('queued', 'provisioning', 'running')"
    };
}

/// Move a build to a final status (if it is not final yet) and mark its unfinished steps
/// cancelled. Returns whether the build changed.
pub async fn finish(conn: &mut Connection, id: BuildId, status: BuildStatus, error: Option<&str>) -> Result<bool> {
    debug_assert!(status.is_final(), "finish with {status:?}");
    let now = now_ms();
    let changed = sqlx::query(end_build_sql!())
        .bind(now)
        .bind(id.0)
        .bind(status.as_str())
        .bind(error)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        > 0;
    super::steps::cancel_unfinished(conn, id, now).await?;
    Ok(changed)
}

/// The build reached its setup and stages.
/// A provisioning build is running now; returns its row, or `None` when it was not provisioning.
pub async fn mark_running(conn: &mut Connection, id: BuildId) -> Result<Option<BuildRow>> {
    let row = sqlx::query(concat!(
        "UPDATE builds SET status = 'running' WHERE id = $1 AND status = 'provisioning' RETURNING ",
        build_columns!()
    ))
    .bind(id.0)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(build_from_row).transpose()
}

impl Store {
    /// Queue a build on its own (no supersede, no delivery): one statement on PostgreSQL, a
    /// transaction of its own on SQLite.
    pub async fn insert_build(&self, new: &NewBuild) -> Result<BuildRow> {
        match self.backend() {
            Backend::Postgres => insert(&mut *self.writer().acquire().await?, new).await,
            Backend::Sqlite => {
                let mut tx = self.begin().await?;
                let row = insert(&mut tx, new).await?;
                tx.commit().await?;
                Ok(row)
            }
        }
    }

    /// Claim the oldest queued build: it becomes `provisioning` with `started_at` set, in one
    /// statement. A build whose webhook delivery is not resolved yet (its commit fetched, its
    /// pipeline's `on` applied) waits.
    ///
    /// Each build is claimed once however many connections (and servers) claim at the same time:
    /// SQLite has one writer at a time; on PostgreSQL the candidate row is locked `FOR UPDATE SKIP
    /// LOCKED`, so a concurrent claim passes over it to the next queued build instead of both
    /// updating the same one.
    pub async fn claim_next_build(&self, server: &str) -> Result<Option<BuildRow>> {
        macro_rules! claim_next {
            ($lock:literal) => {
                concat!(
                    "UPDATE builds SET status = 'provisioning', started_at = $1, server_id = $2 \
                     WHERE id = (SELECT id FROM builds WHERE status = 'queued' AND NOT EXISTS \
                     (SELECT 1 FROM deliveries d WHERE d.build_id = builds.id AND d.processed_at IS NULL) \
                     ORDER BY id LIMIT 1",
                    $lock,
                    ") AND status = 'queued' RETURNING ",
                    build_columns!()
                )
            };
        }
        let sql = match self.backend() {
            Backend::Sqlite => claim_next!(""),
            Backend::Postgres => claim_next!(" FOR UPDATE SKIP LOCKED"),
        };
        let row = sqlx::query(sql).bind(now_ms()).bind(server).fetch_optional(self.writer()).await?;
        row.as_ref().map(build_from_row).transpose()
    }

    /// See [`mark_running`].
    pub async fn set_build_running(&self, id: BuildId) -> Result<()> {
        let mut conn = self.writer().acquire().await?;
        mark_running(&mut conn, id).await.map(drop)
    }

    /// See [`finish`]; the other servers sharing a PostgreSQL database are told of the final
    /// status ([`Notice::Final`]) once it is stored, whether this call changed it or not.
    ///
    /// On PostgreSQL this is one statement: one round trip where the transaction and the notice
    /// took five, at the end of every build.
    pub async fn finish_build(&self, id: BuildId, status: BuildStatus, error: Option<&str>) -> Result<bool> {
        if self.backend() == Backend::Sqlite {
            let mut tx = self.begin().await?;
            let changed = finish(&mut tx, id, status, error).await?;
            tx.commit().await?;
            return Ok(changed);
        }
        debug_assert!(status.is_final(), "finish with {status:?}");
        let (channel, payload) = Notice::Final(id).channel_and_payload(self.server());
        // pg_notify runs in the FROM list: its result (void) is no column the driver reads.
        let changed: i64 = sqlx::query_scalar(concat!(
            "WITH finished AS (",
            end_build_sql!(),
            " RETURNING id), cancelled AS (",
            super::steps::cancel_unfinished_sql!(),
            ") SELECT (SELECT count(*) FROM finished) AS changed FROM (SELECT pg_notify($5, $6)) AS told"
        ))
        .bind(now_ms())
        .bind(id.0)
        .bind(status.as_str())
        .bind(error)
        .bind(channel)
        .bind(payload)
        .fetch_one(self.writer())
        .await?;
        Ok(changed > 0)
    }

    /// Cancel a build that is still queued. Returns whether it was.
    pub async fn cancel_queued_build(&self, id: BuildId, reason: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE builds SET status = 'cancelled', finished_at = $1, error = $2 WHERE id = $3 AND status = 'queued'",
        )
        .bind(now_ms())
        .bind(reason)
        .bind(id.0)
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// After a crash: every build `server` was running (and any claimed before servers were
    /// recorded) becomes `interrupted`, and its unfinished steps `cancelled`. Returns those builds.
    /// Other servers' builds run on.
    pub async fn interrupt_unfinished_builds(&self, server: &str) -> Result<Vec<BuildId>> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "UPDATE builds SET status = 'interrupted', finished_at = $1, \
             error = COALESCE(error, 'the server stopped while this build ran') \
             WHERE status IN ('provisioning', 'running') AND (server_id = $2 OR server_id IS NULL) RETURNING id",
        )
        .bind(now_ms())
        .bind(server)
        .fetch_all(&mut *tx)
        .await?;
        let ids = rows.iter().map(|r| Ok(BuildId(r.try_get("id")?))).collect::<Result<Vec<_>>>()?;
        let now = now_ms();
        for id in &ids {
            super::steps::cancel_unfinished(&mut tx, *id, now).await?;
        }
        tx.commit().await?;
        Ok(ids)
    }

    pub async fn build(&self, id: BuildId) -> Result<Option<BuildRow>> {
        let row = sqlx::query(concat!("SELECT ", build_columns!(), " FROM builds WHERE id = $1"))
            .bind(id.0)
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(build_from_row).transpose()
    }

    /// A repo's newest builds, newest first (see `history` for paging and filters).
    pub async fn builds_of_repo(&self, repo: &str, limit: u32) -> Result<Vec<BuildRow>> {
        let rows =
            sqlx::query(concat!("SELECT ", build_columns!(), " FROM builds WHERE repo = $1 ORDER BY id DESC LIMIT $2"))
                .bind(repo)
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?;
        builds_from_rows(&rows)
    }

    pub async fn last_build_of_repo(&self, repo: &str) -> Result<Option<BuildRow>> {
        Ok(self.builds_of_repo(repo, 1).await?.pop())
    }

    /// Builds still queued or running, oldest first.
    pub async fn live_builds(&self) -> Result<Vec<BuildRow>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            build_columns!(),
            " FROM builds WHERE status IN ('queued', 'provisioning', 'running') ORDER BY id"
        ))
        .fetch_all(self.reader())
        .await?;
        builds_from_rows(&rows)
    }

    /// Whether a newer build of the same repo and ref than `build` is queued or running (then
    /// `build` is superseded). A re-run is not newer work: it builds an older commit again.
    pub async fn has_newer_live_build(&self, build: &BuildRow) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM builds WHERE repo = $1 AND branch = $2 AND ref_kind = $3 AND id > $4 \
             AND pr_number IS NOT DISTINCT FROM $5 AND status IN ('queued', 'provisioning', 'running') AND rerun_of IS NULL LIMIT 1",
        )
        .bind(&build.repo)
        .bind(&build.branch)
        .bind(build.ref_kind.as_str())
        .bind(build.id.0)
        .bind(build.pull_request.as_ref().map(|pr| pr.number))
        .fetch_optional(self.reader())
        .await?;
        Ok(found.is_some())
    }

    /// Whether any build of `commit` on this ref exists already (the poller skips those a
    /// webhook queued first).
    pub async fn has_build_of(&self, repo: &str, branch: &str, commit: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM builds WHERE repo = $1 AND branch = $2 AND commit_sha = $3 AND ref_kind = 'branch' LIMIT 1",
        )
        .bind(repo)
        .bind(branch)
        .bind(commit)
        .fetch_optional(self.reader())
        .await?;
        Ok(found.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    fn new_build(branch: &str, commit: char) -> NewBuild {
        NewBuild {
            repo: "acme".to_string(),
            commit: commit.to_string().repeat(40),
            branch: branch.to_string(),
            ref_kind: RefKind::Branch,
            trigger: Trigger::Manual,
        }
    }

    #[tokio::test]
    async fn numbers_count_per_repo() {
        let (store, _dir) = testing::store_with_repo().await;
        store.upsert_repo("other", "/x").await.unwrap();
        let a = store.insert_build(&new_build("main", 'a')).await.unwrap();
        let b = store.insert_build(&new_build("main", 'b')).await.unwrap();
        let other = store.insert_build(&NewBuild { repo: "other".into(), ..new_build("main", 'c') }).await.unwrap();
        assert_eq!((a.number, b.number, other.number), (1, 2, 1));
        assert_eq!(a.status, BuildStatus::Queued);
        assert!(b.id > a.id);
    }

    #[tokio::test]
    async fn a_build_of_an_unknown_repo_is_refused() {
        let (store, _dir) = testing::store().await;
        assert!(store.insert_build(&new_build("main", 'a')).await.is_err());
    }

    #[tokio::test]
    async fn claim_takes_the_oldest_queued_build_once() {
        let (store, _dir) = testing::store_with_repo().await;
        let first = store.insert_build(&new_build("main", 'a')).await.unwrap();
        let second = store.insert_build(&new_build("dev", 'b')).await.unwrap();
        let claimed = store.claim_next_build("test").await.unwrap().unwrap();
        assert_eq!(claimed.id, first.id);
        assert_eq!(claimed.status, BuildStatus::Provisioning);
        assert!(claimed.started_at.is_some());
        assert_eq!(store.claim_next_build("test").await.unwrap().unwrap().id, second.id);
        assert!(store.claim_next_build("test").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn concurrent_claims_never_hand_out_a_build_twice() {
        let (store, _dir) = testing::store_with_repo().await;
        for i in 0..20 {
            store.insert_build(&new_build("main", char::from(b'a' + i))).await.unwrap();
        }
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(build) = store.claim_next_build("test").await.unwrap() {
                    got.push(build.id);
                }
                got
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all.sort();
        let before = all.len();
        all.dedup();
        assert_eq!((before, all.len()), (20, 20));
    }

    #[tokio::test]
    async fn builds_queued_at_the_same_time_get_every_number_once() {
        let (store, _dir) = testing::store_with_repo().await;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut numbers = Vec::new();
                for _ in 0..5 {
                    let build = store.insert_build(&new_build(&format!("topic-{i}"), 'c')).await.unwrap();
                    numbers.push(build.number);
                }
                numbers
            }));
        }
        let mut numbers = Vec::new();
        for task in tasks {
            numbers.extend(task.await.unwrap());
        }
        numbers.sort();
        assert_eq!(numbers, (1..=40).collect::<Vec<i64>>());
        // A repo's numbers are its own.
        store.upsert_repo("other", "/srv/other.git").await.unwrap();
        let mut other = new_build("main", 'z');
        other.repo = "other".into();
        assert_eq!(store.insert_build(&other).await.unwrap().number, 1);
    }

    #[tokio::test]
    async fn supersede_cancels_only_older_queued_builds_of_the_same_ref() {
        let (store, _dir) = testing::store_with_repo().await;
        let old_main = store.insert_build(&new_build("main", 'a')).await.unwrap();
        let dev = store.insert_build(&new_build("dev", 'b')).await.unwrap();
        let tag = store.insert_build(&NewBuild { ref_kind: RefKind::Tag, ..new_build("main", 'c') }).await.unwrap();
        let newest = store.insert_build(&new_build("main", 'd')).await.unwrap();
        let mut conn = store.writer().acquire().await.unwrap();
        let cancelled = supersede_queued(&mut conn, &newest).await.unwrap();
        drop(conn);
        assert_eq!(cancelled, vec![old_main.id]);
        let old = store.build(old_main.id).await.unwrap().unwrap();
        assert_eq!(old.status, BuildStatus::Cancelled);
        assert_eq!(old.error.as_deref(), Some("superseded by build 4"));
        assert!(old.finished_at.is_some());
        for id in [dev.id, tag.id, newest.id] {
            assert_eq!(store.build(id).await.unwrap().unwrap().status, BuildStatus::Queued);
        }
    }

    #[tokio::test]
    async fn finish_is_final_once() {
        let (store, _dir) = testing::store_with_repo().await;
        let build = store.insert_build(&new_build("main", 'a')).await.unwrap();
        store.claim_next_build("test").await.unwrap();
        store.set_build_running(build.id).await.unwrap();
        assert_eq!(store.build(build.id).await.unwrap().unwrap().status, BuildStatus::Running);
        let mut listener = store.clone().for_server("other").listen().await.unwrap();
        assert!(store.finish_build(build.id, BuildStatus::Failed, None).await.unwrap());
        assert!(!store.finish_build(build.id, BuildStatus::Passed, Some("late")).await.unwrap());
        let row = store.build(build.id).await.unwrap().unwrap();
        assert_eq!(row.status, BuildStatus::Failed);
        assert_eq!(row.error, None);
        assert!(row.finished_at.is_some());
        // The other servers sharing a PostgreSQL database hear of it each time.
        if let Some(listener) = &mut listener {
            for _ in 0..2 {
                assert_eq!(listener.recv().await.unwrap(), Notice::Final(build.id));
            }
        }
    }

    #[tokio::test]
    async fn a_restart_interrupts_what_was_running_and_keeps_the_queue() {
        let (store, _dir) = testing::store_with_repo().await;
        let running = store.insert_build(&new_build("main", 'a')).await.unwrap();
        let queued = store.insert_build(&new_build("dev", 'b')).await.unwrap();
        store.claim_next_build("test").await.unwrap();
        assert_eq!(store.interrupt_unfinished_builds("test").await.unwrap(), vec![running.id]);
        assert_eq!(store.build(running.id).await.unwrap().unwrap().status, BuildStatus::Interrupted);
        assert_eq!(store.build(queued.id).await.unwrap().unwrap().status, BuildStatus::Queued);
        assert_eq!(store.live_builds().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn history_is_newest_first_and_lookups_by_commit_work() {
        let (store, _dir) = testing::store_with_repo().await;
        for c in ['a', 'b', 'c'] {
            store.insert_build(&new_build("main", c)).await.unwrap();
        }
        let history = store.builds_of_repo("acme", 2).await.unwrap();
        assert_eq!(history.iter().map(|b| b.number).collect::<Vec<_>>(), [3, 2]);
        assert_eq!(store.last_build_of_repo("acme").await.unwrap().unwrap().number, 3);
        assert!(store.has_build_of("acme", "main", &"b".repeat(40)).await.unwrap());
        assert!(!store.has_build_of("acme", "dev", &"b".repeat(40)).await.unwrap());
        assert!(store.cancel_queued_build(history[0].id, "cancelled by a user").await.unwrap());
        assert!(!store.cancel_queued_build(history[0].id, "again").await.unwrap());
    }
    #[tokio::test]
    async fn a_rerun_names_its_build_and_supersedes_nothing() {
        let (store, _dir) = testing::store_with_repo().await;
        let old = store.insert_build(&NewBuild { trigger: Trigger::Push, ..new_build("main", 'a') }).await.unwrap();
        store.finish_build(old.id, BuildStatus::Failed, None).await.unwrap();
        let newer = store.insert_build(&new_build("main", 'b')).await.unwrap();
        let mut conn = store.writer().acquire().await.unwrap();
        let rerun = insert_rerun(&mut conn, &store.build(old.id).await.unwrap().unwrap()).await.unwrap();
        drop(conn);
        assert_eq!((rerun.commit.as_str(), rerun.branch.as_str()), (old.commit.as_str(), "main"));
        assert_eq!((rerun.trigger, rerun.rerun_of, rerun.number), (Trigger::Manual, Some(old.id), 3));
        assert_eq!(store.build(rerun.id).await.unwrap().unwrap().rerun_of, Some(old.id));
        assert!(!store.has_newer_live_build(&newer).await.unwrap(), "a re-run of an older commit is not newer work");
        assert!(store.has_newer_live_build(&old).await.unwrap(), "the newer build of the branch is");
    }
}
