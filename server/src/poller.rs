//! The git poller: for every repo with a `poll_interval`, fetch on that interval and queue a
//! build (trigger `poll`) for each branch head that moved or appeared since the last poll.
//!
//! The first poll of a repo only records the heads as they are: old commits are never built.
//! A head a webhook already queued is skipped, and so is a branch the pipeline's `on.branches`
//! leaves out. A failing fetch is recorded on the repo (its page shows it) and retried with an
//! exponential backoff. The poller decides *what* to queue; the scheduler queues and runs it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RepoConfig;
use crate::git::GitError;
use crate::scheduler::{Enqueued, Scheduler, SchedulerError};
use crate::store::{NewBuild, RefKind, Store, StoreError, Trigger};

/// The wait after the first failed poll of a repo; it doubles with each further failure.
pub const POLL_BACKOFF_INITIAL: Duration = Duration::from_secs(1);

/// The longest wait between failed polls.
pub const POLL_BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
}

/// Start one polling task per repo that has a `poll_interval`; they stop when `shutdown` fires.
pub fn start(
    repos: &[RepoConfig],
    scheduler: &Scheduler,
    store: &Store,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) {
    for repo in repos {
        let Some(interval) = repo.poll_interval else { continue };
        let (repo, scheduler, store, shutdown) = (repo.clone(), scheduler.clone(), store.clone(), shutdown.clone());
        tasks.spawn(async move {
            tracing::info!(repo = %repo.name, interval = %humantime::format_duration(interval), "polling");
            let mut failures = 0u32;
            loop {
                let wait = match poll_once(&repo, &scheduler, &store).await {
                    Ok(()) => {
                        failures = 0;
                        interval
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        let wait = backoff(failures).max(interval);
                        tracing::warn!(repo = %repo.name, %error, failures, retry_in = %humantime::format_duration(wait), "poll failed");
                        wait
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }
}

/// The wait after `failures` failed polls in a row.
fn backoff(failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1));
    POLL_BACKOFF_INITIAL.saturating_mul(factor).min(POLL_BACKOFF_MAX)
}

async fn poll_once(repo: &RepoConfig, scheduler: &Scheduler, store: &Store) -> Result<(), PollError> {
    scheduler.fetch(repo).await?;
    let heads = scheduler.mirrors().branch_heads(&repo.name).await?;
    if store.has_polled(&repo.name).await? {
        let seen = store.branch_heads(&repo.name).await?;
        for (branch, commit) in &heads {
            if seen.get(branch) == Some(commit) || store.has_build_of(&repo.name, branch, commit).await? {
                continue;
            }
            let oid = commit.parse().map_err(|_| GitError::BadCommitId { what: commit.clone() })?;
            if !scheduler.wants_branch(&repo.name, oid, branch).await {
                tracing::debug!(repo = %repo.name, %branch, "branch left out by on.branches");
                continue;
            }
            let new = NewBuild {
                repo: repo.name.clone(),
                commit: commit.clone(),
                branch: branch.clone(),
                ref_kind: RefKind::Branch,
                trigger: Trigger::Poll,
            };
            if let Enqueued::Queued(build) = scheduler.enqueue(new, None).await? {
                tracing::info!(repo = %repo.name, %branch, build = %build.id, "poll found a new head");
            }
        }
    }
    store.set_branch_heads(&repo.name, &heads).await?;
    store.set_repo_polled(&repo.name).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), POLL_BACKOFF_INITIAL);
        assert_eq!(backoff(2), POLL_BACKOFF_INITIAL * 2);
        assert_eq!(backoff(4), POLL_BACKOFF_INITIAL * 8);
        assert_eq!(backoff(40), POLL_BACKOFF_MAX);
    }
}
