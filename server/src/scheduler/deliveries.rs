//! From webhook delivery to build: storing a delivery with its queued build in one transaction
//! (so the webhook can be answered at once), and resolving it afterwards, durably.
//!
//! [`Scheduler::accept_delivery`] records the delivery (refused when its id or its signed body
//! was seen before: a redelivery or a replay) and, in the same transaction, queues its build (or,
//! for a closed request, cancels the request's queued builds). Nothing in it touches git, so the
//! webhook's answer never waits for a remote. One resolver task per repo then takes the repo's
//! unresolved deliveries in order: it makes sure the commit is in the mirror (a request's head
//! through the request's ref of the configured URL), reads `.gantry.yml` from it and applies
//! `on`. A ref the pipeline does not build ends as a `skipped` build that says why; a head that
//! the request's ref does not reach ends `errored`; every other build is released to the claim
//! loop. A delivery stays unresolved until that is recorded, so a server that stops in between
//! resolves it at its next start: no delivery is lost, none is resolved twice.

use std::collections::HashMap;
use std::sync::Arc;

use gantry_runner::pipeline::{Pipeline, PullRequests};
use gantry_runner::BuildStatus;
use git2::Oid;
use tokio::sync::Notify;

use super::{load_pipeline, BuildUpdate, Scheduler, SchedulerError, CLAIM_RETRY_DELAY};
use crate::config::RepoConfig;
use crate::git::GitError;
use crate::store::deliveries::{self, NewDelivery, UnprocessedDelivery};
use crate::store::{self, BuildId, BuildRow, NewBuild, PullRequest, RefKind, StoreError};

/// A delivery that asks for something, as the webhook handler hands it over.
#[derive(Debug, Clone)]
pub struct IncomingDelivery<'a> {
    pub repo: &'a str,
    /// `github`, `gitlab` or `gitea`.
    pub forge: &'a str,
    /// The forge's event name.
    pub event: &'a str,
    pub delivery_id: Option<&'a str>,
    /// The lowercase hex SHA-256 of the signed body.
    pub body_sha256: &'a str,
    pub request: DeliveryRequest,
}

/// What a delivery asks the scheduler for.
#[derive(Debug, Clone)]
pub enum DeliveryRequest {
    /// Build a commit: a pushed branch or tag, or a pull request's head (`pull_request` set).
    Build { new: NewBuild, pull_request: Option<PullRequest> },
    /// A pull request was closed (merged or not): its queued builds are cancelled.
    CloseRequest { number: i64, merged: bool },
}

/// The outcome of [`Scheduler::accept_delivery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// The build is queued; it runs once its delivery is resolved.
    Queued(Box<BuildRow>),
    /// The request's queued builds were cancelled.
    Closed { cancelled: Vec<BuildId> },
    /// The delivery id, or the signed body, was seen before: nothing was done.
    Duplicate,
}

/// One resolver per configured repo, each woken when a delivery of its repo is stored.
#[derive(Debug, Default)]
pub(super) struct Resolvers {
    wakes: HashMap<String, Arc<Notify>>,
}

impl Resolvers {
    pub(super) fn new<'a>(repos: impl IntoIterator<Item = &'a RepoConfig>) -> Resolvers {
        Resolvers { wakes: repos.into_iter().map(|r| (r.name.clone(), Arc::new(Notify::new()))).collect() }
    }

    fn wake(&self, repo: &str) {
        if let Some(wake) = self.wakes.get(repo) {
            wake.notify_one();
        }
    }
}

impl Scheduler {
    /// Record a delivery and what it asks for, in one transaction; see the module's comment.
    pub async fn accept_delivery(&self, incoming: IncomingDelivery<'_>) -> Result<Accepted, SchedulerError> {
        let repo = self
            .inner
            .config
            .repo(incoming.repo)
            .ok_or_else(|| SchedulerError::UnknownRepo(incoming.repo.to_string()))?;
        let store = &self.inner.store;
        let mut tx = store.begin().await?;
        let record = NewDelivery {
            repo: incoming.repo,
            delivery_id: incoming.delivery_id,
            body_sha256: Some(incoming.body_sha256),
            forge: incoming.forge,
            event: incoming.event,
            processed: matches!(incoming.request, DeliveryRequest::CloseRequest { .. }),
        };
        let Some(delivery) = deliveries::insert(&mut tx, &record).await? else {
            tx.rollback().await.map_err(StoreError::from)?;
            return Ok(Accepted::Duplicate);
        };
        match incoming.request {
            DeliveryRequest::CloseRequest { number, merged } => {
                let reason = format!("pull request #{number} was {}", if merged { "merged" } else { "closed" });
                let cancelled = store::pull_requests::cancel_queued(&mut tx, &repo.name, number, &reason).await?;
                tx.commit().await.map_err(StoreError::from)?;
                for build in &cancelled {
                    tracing::info!(build = %build, repo = %repo.name, number, "queued build cancelled: {reason}");
                    let _ = self
                        .inner
                        .updates
                        .send(BuildUpdate::Finished { build: *build, status: BuildStatus::Cancelled });
                }
                Ok(Accepted::Closed { cancelled })
            }
            DeliveryRequest::Build { new, pull_request } => {
                let build = match &pull_request {
                    Some(pr) => store::pull_requests::insert(&mut tx, &new, pr).await?,
                    None => store::builds::insert(&mut tx, &new).await?,
                };
                deliveries::set_build(&mut tx, delivery, build.id).await?;
                let superseded = if repo.cancel_superseded {
                    store::builds::supersede_queued(&mut tx, &build).await?
                } else {
                    Vec::new()
                };
                tx.commit().await.map_err(StoreError::from)?;
                tracing::info!(build = %build.id, repo = %build.repo, number = build.number, branch = %build.branch,
                    ref_kind = build.ref_kind.as_str(), commit = %build.commit, delivery = %delivery,
                    "build queued; its delivery is being resolved");
                for old in superseded {
                    tracing::info!(build = %old, by = %build.id, "queued build superseded");
                    let _ =
                        self.inner.updates.send(BuildUpdate::Finished { build: old, status: BuildStatus::Cancelled });
                }
                if repo.cancel_superseded {
                    self.stop_superseded_by(&build);
                }
                let _ = self.inner.updates.send(BuildUpdate::Queued { build: build.id });
                self.inner.resolvers.wake(&repo.name);
                Ok(Accepted::Queued(Box::new(build)))
            }
        }
    }

    /// Start one resolver per configured repo; each first resolves what a stopped server left.
    pub(super) fn start_resolvers(&self) {
        for (repo, wake) in &self.inner.resolvers.wakes {
            let (this, repo, wake) = (self.clone(), repo.clone(), Arc::clone(wake));
            self.inner.tasks.spawn(async move { this.resolve_loop(repo, wake).await });
        }
    }

    async fn resolve_loop(self, repo: String, wake: Arc<Notify>) {
        let shutdown = self.inner.shutdown.clone();
        loop {
            match self.inner.store.next_unprocessed_delivery(&repo).await {
                Ok(Some(delivery)) => {
                    tokio::select! {
                        () = self.resolve(delivery) => {}
                        // Left unresolved: the next start resolves it.
                        () = shutdown.cancelled() => return,
                    }
                    continue;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(%repo, %error, "reading the deliveries to resolve failed");
                    tokio::select! {
                        () = tokio::time::sleep(CLAIM_RETRY_DELAY) => continue,
                        () = shutdown.cancelled() => return,
                    }
                }
            }
            tokio::select! {
                () = wake.notified() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Resolve one delivery; on a database error it stays unresolved and is tried again.
    async fn resolve(&self, delivery: UnprocessedDelivery) {
        match self.try_resolve(&delivery).await {
            Ok(()) => self.inner.wake.notify_one(),
            Err(error) => {
                tracing::error!(delivery = %delivery.id, %error, "resolving a delivery failed; trying again");
                tokio::time::sleep(CLAIM_RETRY_DELAY).await;
            }
        }
    }

    async fn try_resolve(&self, delivery: &UnprocessedDelivery) -> Result<(), StoreError> {
        let store = &self.inner.store;
        let build = match delivery.build {
            Some(id) => store.build(id).await?,
            None => None,
        };
        // Superseded, cancelled or closed while it waited: nothing left to decide.
        let Some(build) = build.filter(|b| b.status == BuildStatus::Queued) else {
            return store.mark_delivery_processed(delivery.id).await;
        };
        let Some(repo) = self.inner.config.repo(&build.repo) else {
            let error = format!("repo {:?} is no longer configured", build.repo);
            return self.end_unresolved(delivery, &build, BuildStatus::Errored, &error).await;
        };
        // A request's head is checked against the request's ref every time, even when the mirror
        // has the commit already (from a branch): the payload's word alone builds nothing.
        let commit = match &build.pull_request {
            Some(pr) => self.ensure_request_head(repo, pr, &build.commit).await,
            None => self.ensure_commit(repo, &build.commit).await,
        };
        let commit = match commit {
            Ok(commit) => commit,
            // The remote may be back when the build runs; it fetches again and records why not.
            Err(error @ GitError::Fetch { .. }) => {
                tracing::warn!(repo = %repo.name, build = %build.id, commit = %build.commit, %error,
                    "pushed commit unavailable");
                return store.mark_delivery_processed(delivery.id).await;
            }
            Err(error) => return self.end_unresolved(delivery, &build, BuildStatus::Errored, &error.to_string()).await,
        };
        // A missing or invalid file builds: the run records every diagnostic.
        if let Ok(pipeline) = load_pipeline(&self.inner.mirrors, &repo.name, commit, None).await {
            if let Some(reason) = not_built_by(&pipeline, &build) {
                return self.end_unresolved(delivery, &build, BuildStatus::Skipped, &reason).await;
            }
        }
        tracing::debug!(build = %build.id, delivery = %delivery.id, "delivery resolved; the build may run");
        store.mark_delivery_processed(delivery.id).await
    }

    /// End a build whose delivery could not become a run, and resolve the delivery, together.
    async fn end_unresolved(
        &self,
        delivery: &UnprocessedDelivery,
        build: &BuildRow,
        status: BuildStatus,
        error: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.inner.store.begin().await?;
        let ended = store::builds::finish(&mut tx, build.id, status, Some(error)).await?;
        deliveries::mark_processed(&mut tx, delivery.id).await?;
        tx.commit().await?;
        if ended {
            tracing::info!(build = %build.id, status = status.as_str(), %error, "build ended before it ran");
            let _ = self.inner.updates.send(BuildUpdate::Finished { build: build.id, status });
        }
        Ok(())
    }

    /// Make sure the commit of `build` is in the mirror, for its run: a request's head (checked
    /// against the request's ref when its delivery was resolved) through the request's ref of the
    /// configured URL if it is missing, any other commit through a fetch of branches and tags.
    pub(super) async fn ensure_build_commit(&self, repo: &RepoConfig, build: &BuildRow) -> Result<Oid, GitError> {
        let Some(pr) = &build.pull_request else {
            return self.ensure_commit(repo, &build.commit).await;
        };
        if let Some(oid) = self.inner.mirrors.find_commit(&repo.name, &build.commit).await? {
            return Ok(oid);
        }
        self.ensure_request_head(repo, pr, &build.commit).await
    }

    /// Fetch the request's ref and check that it reaches `commit`; a fetch error is recorded on
    /// the repo like any other.
    async fn ensure_request_head(&self, repo: &RepoConfig, pr: &PullRequest, commit: &str) -> Result<Oid, GitError> {
        let result = self.inner.mirrors.ensure_request_head(&repo.name, &repo.url, &pr.head_ref, commit).await;
        if let Err(error @ GitError::Fetch { .. }) = &result {
            self.record_fetch(repo, Some(error)).await;
        }
        result
    }
}

/// Why the pipeline's `on` does not build `build`'s ref, if it does not.
fn not_built_by(pipeline: &Pipeline, build: &BuildRow) -> Option<String> {
    match (build.ref_kind, &build.pull_request) {
        (RefKind::Branch, _) if !pipeline.on.matches_branch(&build.branch) => {
            Some(format!("the pipeline's on.branches does not build branch {}", build.branch))
        }
        (RefKind::PullRequest, Some(pr)) if !pipeline.on.matches_pull_request(&pr.target) => {
            Some(match pipeline.on.pull_requests() {
                PullRequests::None => "the pipeline's on.pull_requests is false".to_string(),
                _ => format!("the pipeline's on.pull_requests does not build requests into {}", pr.target),
            })
        }
        _ => None,
    }
}
