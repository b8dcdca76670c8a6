//! Acting on one build by hand: cancelling it (dequeued when queued; stopped, its hosts torn
//! down, when running, also in the moment between its claim and its run) and re-running it (a new
//! build of the same commit and ref).
//!
//! Only the scheduler's own state and the store are touched here; who may ask is `http::auth`'s
//! business.

use gantry_runner::BuildStatus;

use super::{BuildUpdate, Scheduler, SchedulerError, CANCELLED_BY_USER};
use crate::live::Change;
use crate::store::notify::Notice;
use crate::store::{self, BuildId, BuildRow, StoreError};

/// The outcome of [`Scheduler::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It was queued and is now cancelled.
    Dequeued,
    /// It was claimed or running; it stops and its hosts are torn down.
    Stopping,
    /// It had already finished.
    AlreadyFinished,
    NotFound,
}

/// The outcome of [`Scheduler::rerun`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant, reason = "one is returned per request, never stored in bulk")]
pub enum Rerun {
    /// The new build, queued.
    Queued(BuildRow),
    /// The build is still queued or running: there is nothing to re-run yet.
    StillLive,
    NotFound,
}

impl Scheduler {
    /// Queue a new build of the same commit and ref as the finished build `id`, asked for by a
    /// person (trigger `manual`, `rerun_of` naming `id`). A re-run supersedes nothing: it builds
    /// an older commit again, which is no reason to stop newer work on the branch.
    pub async fn rerun(&self, id: BuildId) -> Result<Rerun, SchedulerError> {
        let store = &self.inner.store;
        let Some(old) = store.build(id).await? else { return Ok(Rerun::NotFound) };
        if old.is_live() {
            return Ok(Rerun::StillLive);
        }
        if self.inner.config.repo(&old.repo).is_none() {
            return Err(SchedulerError::UnknownRepo(old.repo));
        }
        let mut tx = store.begin().await?;
        let build = store::builds::insert_rerun(&mut tx, &old).await?;
        tx.commit().await.map_err(StoreError::from)?;
        tracing::info!(build = %build.id, repo = %build.repo, number = build.number, rerun_of = %old.id,
            commit = %build.commit, "re-run queued");
        let _ = self.inner.updates.send(BuildUpdate::Queued { build: build.id });
        self.inner.live.changed(Change { build: build.id, event: None });
        self.inner.wake.notify_one();
        Ok(Rerun::Queued(build))
    }

    /// Cancel a queued build, or stop a running one (its hosts are torn down).
    pub async fn cancel(&self, id: BuildId) -> Result<Cancelled, SchedulerError> {
        if self.inner.store.cancel_queued_build(id, CANCELLED_BY_USER).await? {
            self.inner.metrics.build_finished(BuildStatus::Cancelled);
            let _ = self.inner.updates.send(BuildUpdate::Finished { build: id, status: BuildStatus::Cancelled });
            self.inner.live.close(id);
            self.notify_final(id).await;
            return Ok(Cancelled::Dequeued);
        }
        Ok(match self.inner.store.build(id).await? {
            Some(build) if build.is_live() => {
                match self.inner.store.build_server(id).await? {
                    // Another server sharing the database runs it: it hears at once.
                    Some(server) if server != self.inner.server.id => {
                        self.inner.store.request_cancel(id, false).await?;
                        self.inner.store.notify(&Notice::Cancel { build: id, superseded: false }).await?;
                    }
                    _ => self.stop_here(id, CANCELLED_BY_USER),
                }
                Cancelled::Stopping
            }
            Some(_) => Cancelled::AlreadyFinished,
            None => Cancelled::NotFound,
        })
    }

    /// Stop the build `id` this server runs, for `reason`: at once when it is running, or as
    /// soon as it reaches the running table when it was only claimed so far.
    pub(super) fn stop_here(&self, id: BuildId, reason: &'static str) {
        let mut running = self.inner.running.lock().expect("running table poisoned");
        match running.get_mut(&id) {
            Some(run) => {
                run.reason.get_or_insert(reason);
                run.cancel.cancel();
            }
            None => {
                self.inner.early_cancels.lock().expect("early cancels poisoned").insert(id);
            }
        }
    }
}
