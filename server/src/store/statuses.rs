//! The `commit_statuses` outbox: the states of builds still to report on their forges, and the
//! last reporting failure of each repo (`repos.forge_error`).
//!
//! Rows are only ever appended, then moved once to a final outcome. Per (repo, commit, context)
//! only the newest queued row is handed out; older queued rows of the same key are marked
//! `superseded` when it is, so a slow or failing forge can delay a state but never let an older
//! one win. When and how to send is `forge::reporter`'s job; this file only keeps the queue.

use sqlx::Row;

use super::Connection;

use super::{now_ms, parse_column, BuildId, Result, Store};

/// A state as Gantry reports it; each forge's client spells it in its own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommitState {
    /// Queued, not started.
    Pending,
    /// Provisioning or running.
    Running,
    Success,
    Failure,
    /// Errored or interrupted: the build could not say whether the commit is good.
    Error,
    Cancelled,
    /// The pipeline's `on` does not build this ref.
    Skipped,
}

impl CommitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CommitState::Pending => "pending",
            CommitState::Running => "running",
            CommitState::Success => "success",
            CommitState::Failure => "failure",
            CommitState::Error => "error",
            CommitState::Cancelled => "cancelled",
            CommitState::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<CommitState> {
        Some(match s {
            "pending" => CommitState::Pending,
            "running" => CommitState::Running,
            "success" => CommitState::Success,
            "failure" => CommitState::Failure,
            "error" => CommitState::Error,
            "cancelled" => CommitState::Cancelled,
            "skipped" => CommitState::Skipped,
            _ => return None,
        })
    }
}

/// A status row's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusId(pub i64);

/// A state to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStatus {
    pub repo: String,
    pub build: BuildId,
    pub commit: String,
    pub context: String,
    pub state: CommitState,
    pub description: String,
}

/// A queued state, as handed to the reporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    pub id: StatusId,
    pub repo: String,
    pub build: BuildId,
    pub commit: String,
    pub context: String,
    pub state: CommitState,
    pub description: String,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// Queue a state to report, due now.
pub async fn insert(conn: &mut Connection, new: &NewStatus) -> Result<StatusId> {
    let now = now_ms();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO commit_statuses (repo, build_id, commit_sha, context, state, description, created_at, \
         next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(&new.repo)
    .bind(new.build.0)
    .bind(&new.commit)
    .bind(&new.context)
    .bind(new.state.as_str())
    .bind(&new.description)
    .bind(now)
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok(StatusId(id))
}

fn status_from_row(row: &sqlx::any::AnyRow) -> Result<StatusRow> {
    Ok(StatusRow {
        id: StatusId(row.try_get("id")?),
        repo: row.try_get("repo")?,
        build: BuildId(row.try_get("build_id")?),
        commit: row.try_get("commit_sha")?,
        context: row.try_get("context")?,
        state: parse_column("commit_statuses.state", row.try_get("state")?, CommitState::parse)?,
        description: row.try_get("description")?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
    })
}

impl Store {
    /// See [`insert`].
    pub async fn queue_status(&self, new: &NewStatus) -> Result<StatusId> {
        let mut conn = self.writer().acquire().await?;
        insert(&mut conn, new).await
    }

    /// The oldest key of `repo` with a state due at `now`, with its newest queued state; older
    /// queued states of that key are marked superseded.
    pub async fn next_status_to_send(&self, repo: &str, now: i64) -> Result<Option<StatusRow>> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "SELECT id, repo, build_id, commit_sha, context, state, description, attempts FROM commit_statuses c \
             WHERE outcome = 'queued' AND repo = $1 AND next_attempt_at <= $2 AND NOT EXISTS (SELECT 1 FROM commit_statuses n \
             WHERE n.repo = c.repo AND n.commit_sha = c.commit_sha AND n.context = c.context \
             AND n.outcome = 'queued' AND n.id > c.id) ORDER BY id LIMIT 1",
        )
        .bind(repo)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row.as_ref().map(status_from_row).transpose()? else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE commit_statuses SET outcome = 'superseded', finished_at = $1 WHERE outcome = 'queued' \
             AND repo = $2 AND commit_sha = $3 AND context = $4 AND id < $5",
        )
        .bind(now)
        .bind(&row.repo)
        .bind(&row.commit)
        .bind(&row.context)
        .bind(row.id.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(row))
    }

    /// When the next queued state of `repo` is due (unix ms), if any is queued.
    pub async fn next_status_due_at(&self, repo: &str) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM commit_statuses WHERE outcome = 'queued' AND repo = $1",
        )
        .bind(repo)
        .fetch_one(self.reader())
        .await?)
    }

    /// The forge accepted the state.
    pub async fn status_sent(&self, id: StatusId) -> Result<()> {
        self.finish_status(id, "sent", None).await
    }

    /// The forge refused the state for good (or every attempt failed): it is not sent again.
    pub async fn status_failed(&self, id: StatusId, error: &str) -> Result<()> {
        self.finish_status(id, "failed", Some(error)).await
    }

    async fn finish_status(&self, id: StatusId, outcome: &str, error: Option<&str>) -> Result<()> {
        sqlx::query(
            "UPDATE commit_statuses SET outcome = $1, finished_at = $2, error = $3 WHERE id = $4 AND outcome = 'queued'",
        )
        .bind(outcome)
        .bind(now_ms())
        .bind(error)
        .bind(id.0)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// An attempt failed in a way worth retrying: try again at `next_attempt_at`.
    pub async fn status_retry(&self, id: StatusId, attempts: u32, next_attempt_at: i64, error: &str) -> Result<()> {
        sqlx::query(
            "UPDATE commit_statuses SET attempts = $1, next_attempt_at = $2, error = $3 WHERE id = $4 AND outcome = 'queued'",
        )
        .bind(i64::from(attempts))
        .bind(next_attempt_at)
        .bind(error)
        .bind(id.0)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// The states queued for `build` so far, oldest first (for tests and the reconciler).
    pub async fn statuses_of_build(&self, build: BuildId) -> Result<Vec<(CommitState, String)>> {
        let rows = sqlx::query("SELECT state, outcome FROM commit_statuses WHERE build_id = $1 ORDER BY id")
            .bind(build.0)
            .fetch_all(self.reader())
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    parse_column("commit_statuses.state", r.try_get("state")?, CommitState::parse)?,
                    r.try_get("outcome")?,
                ))
            })
            .collect()
    }

    /// The builds of `repos` that are live or were created after `since` (unix ms), each with
    /// the last state queued for it: what the reconciler compares.
    pub async fn builds_with_last_status(
        &self,
        repos: &[String],
        since: i64,
    ) -> Result<Vec<(BuildId, Option<CommitState>)>> {
        let mut found = Vec::new();
        for repo in repos {
            let rows = sqlx::query(
                "SELECT b.id, (SELECT s.state FROM commit_statuses s WHERE s.build_id = b.id ORDER BY s.id DESC \
                 LIMIT 1) AS last_state FROM builds b WHERE b.repo = $1 \
                 AND (b.created_at >= $2 OR b.status IN ('queued', 'provisioning', 'running')) ORDER BY b.id",
            )
            .bind(repo)
            .bind(since)
            .fetch_all(self.reader())
            .await?;
            for row in rows {
                let state = row
                    .try_get::<Option<String>, _>("last_state")?
                    .map(|s| parse_column("commit_statuses.state", s, CommitState::parse))
                    .transpose()?;
                found.push((BuildId(row.try_get("id")?), state));
            }
        }
        Ok(found)
    }

    /// Record (or, with `None`, clear) why reporting to the repo's forge failed last.
    pub async fn set_forge_error(&self, repo: &str, error: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE repos SET forge_error = $1, forge_error_at = $2 WHERE name = $3")
            .bind(error)
            .bind(error.map(|_| now_ms()))
            .bind(repo)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// Why reporting to the repo's forge failed last, and when (unix ms); `None` once a report
    /// succeeded again.
    pub async fn forge_error(&self, repo: &str) -> Result<Option<(String, i64)>> {
        let row = sqlx::query("SELECT forge_error, forge_error_at FROM repos WHERE name = $1")
            .bind(repo)
            .fetch_optional(self.reader())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let error: Option<String> = row.try_get("forge_error")?;
        let at: Option<i64> = row.try_get("forge_error_at")?;
        Ok(error.map(|e| (e, at.unwrap_or_default())))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    fn status(build: BuildId, commit: &str, state: CommitState) -> NewStatus {
        NewStatus {
            repo: "acme".into(),
            build,
            commit: commit.into(),
            context: "gantry".into(),
            state,
            description: state.as_str().into(),
        }
    }

    #[tokio::test]
    async fn the_newest_state_of_a_key_wins_and_older_ones_are_superseded() {
        let (store, _dir, build) = testing::store_with_build().await;
        let pending = store.queue_status(&status(build.id, "a", CommitState::Pending)).await.unwrap();
        let other = store.queue_status(&status(build.id, "b", CommitState::Pending)).await.unwrap();
        let success = store.queue_status(&status(build.id, "a", CommitState::Success)).await.unwrap();
        // Read after queueing: every state is due by then, however slow the machine.
        let now = now_ms();
        let first = store.next_status_to_send("acme", now + 1).await.unwrap().unwrap();
        assert_eq!((first.id, first.state), (other, CommitState::Pending), "oldest key first");
        store.status_sent(first.id).await.unwrap();
        let second = store.next_status_to_send("acme", now + 1).await.unwrap().unwrap();
        assert_eq!((second.id, second.state), (success, CommitState::Success));
        store.status_sent(second.id).await.unwrap();
        assert!(store.next_status_to_send("acme", now + 1).await.unwrap().is_none());
        let outcomes: Vec<String> = store.statuses_of_build(build.id).await.unwrap().into_iter().map(|s| s.1).collect();
        assert_eq!(outcomes, ["superseded", "sent", "sent"]);
        let _ = pending;
    }

    #[tokio::test]
    async fn a_retried_state_waits_and_a_newer_one_replaces_it() {
        let (store, _dir, build) = testing::store_with_build().await;
        let running = store.queue_status(&status(build.id, "a", CommitState::Running)).await.unwrap();
        let now = now_ms();
        let row = store.next_status_to_send("acme", now + 1).await.unwrap().unwrap();
        store.status_retry(row.id, 1, now + 60_000, "502 Bad Gateway").await.unwrap();
        assert!(store.next_status_to_send("acme", now + 1).await.unwrap().is_none(), "not due yet");
        assert_eq!(store.next_status_due_at("acme").await.unwrap(), Some(now + 60_000));
        let again = store.next_status_to_send("acme", now + 60_000).await.unwrap().unwrap();
        assert_eq!((again.id, again.attempts), (running, 1));
        let failure = store.queue_status(&status(build.id, "a", CommitState::Failure)).await.unwrap();
        let next = store.next_status_to_send("acme", now_ms() + 1).await.unwrap().unwrap();
        assert_eq!(next.id, failure);
        store.status_failed(next.id, "401 Bad credentials").await.unwrap();
        let outcomes: Vec<String> = store.statuses_of_build(build.id).await.unwrap().into_iter().map(|s| s.1).collect();
        assert_eq!(outcomes, ["superseded", "failed"]);
        assert_eq!(store.next_status_due_at("acme").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_forge_error_is_kept_until_cleared() {
        let (store, _dir) = testing::store_with_repo().await;
        assert_eq!(store.forge_error("acme").await.unwrap(), None);
        store.set_forge_error("acme", Some("GitHub answered 404 Not Found")).await.unwrap();
        assert_eq!(store.forge_error("acme").await.unwrap().unwrap().0, "GitHub answered 404 Not Found");
        store.set_forge_error("acme", None).await.unwrap();
        assert_eq!(store.forge_error("acme").await.unwrap(), None);
    }
}
