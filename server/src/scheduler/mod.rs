//! The durable build queue and the builds it runs.
//!
//! This module owns a build's life on the server: [`Scheduler::enqueue`] writes it (superseding
//! older builds of the same ref when the repo asks for it), a claim loop takes the oldest queued
//! build in one statement whenever fewer than `max_concurrent_builds` hold a slot (from the claim
//! to the last host's teardown) — woken at once by the enqueue, never by a polling delay — and
//! runs it: the commit into the mirror, `.gantry.yml` from that exact commit through
//! `pipeline::load`, one `hosts` row per role *before* the runner asks
//! the provider for it, then `gantry_runner::execute` with the persister (see `persist`) storing
//! and broadcasting its events. On shutdown it cancels what runs and waits (bounded) for the
//! teardowns; at start-up [`Scheduler::recover`] interrupts what a crashed server left running
//! and tears its hosts down before anything new starts.
//!
//! [`Scheduler::rerun`] queues a finished build again; [`Scheduler::cancel`] dequeues or stops
//! one. The scheduler owns the server's [`Metrics`]: it counts builds as they finish, and its
//! persister times each step.
//!
//! Webhook deliveries come in through [`Scheduler::accept_delivery`] and are resolved (commit
//! fetched, `on` applied) by a resolver per repo before their builds may be claimed (see
//! `deliveries`). It does not speak HTTP, parse webhooks or poll: those call
//! [`Scheduler::accept_delivery`] or [`Scheduler::enqueue`].

mod actions;
mod deliveries;
mod persist;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::join_all;
use gantry_runner::pipeline::{self, Diagnostics, LoadError, Pipeline, PipelineFile, SecretNames, PIPELINE_FILE};
use gantry_runner::provider::{HostId, LiveHosts, LiveSet};
use gantry_runner::source::Source;
use gantry_runner::{execute, BuildInfo, BuildPlan, BuildStatus};
use git2::Oid;
use tokio::sync::{broadcast, mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, RepoConfig};
use crate::git::{GitError, Mirrors};
use crate::live::{Change, LiveBuilds};
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::store::notify::Notice;
use crate::store::{
    self, BuildId, BuildRow, HostRow, NewBuild, RefKind, Registration, ServerIdentity, Store, StoreError,
};

pub use actions::{Cancelled, Rerun};
pub use deliveries::{Accepted, DeliveryRequest, IncomingDelivery};

/// How many events of one build may wait for the persister before the executor waits.
pub const EVENT_CHANNEL_CAPACITY: usize = 4096;

/// A build that stored at least this many log lines is followed by [`Store::release_memory`]: its
/// lines filled SQLite's page cache (a 4,096-line build: about 0.5 MiB of pages and multi-row
/// inserts), which nothing reads again.
const RELEASE_MEMORY_AFTER_LINES: u64 = 4096;

/// How many updates a slow listener (the forge reporter) may fall behind before it misses some
/// and catches up from the store. Its slots are allocated when the server starts.
pub const UPDATE_CHANNEL_CAPACITY: usize = 1024;

/// After a failed claim (the database was unavailable), the loop tries again after this long.
pub const CLAIM_RETRY_DELAY: Duration = Duration::from_secs(1);

/// On shutdown, running builds get this long to be cancelled and torn down; after it they are
/// marked interrupted anyway and their hosts are reaped at the next start.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(gantry_runner::executor::TEARDOWN_TIMEOUT.as_secs() + 30);

/// When the database refuses a build's final status, it is tried again after waits growing from
/// the first to the second, until it is stored or the server stops.
pub const FINISH_RETRY_MIN_DELAY: Duration = Duration::from_millis(200);
pub const FINISH_RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

/// How often providers sweep for resources no live build owns (besides the sweep at start).
pub const REAP_INTERVAL: Duration = Duration::from_secs(300);

// Why a running build was cancelled, recorded as its error.
const SUPERSEDED: &str = "superseded by a newer build of the same branch or pull request";
const CANCELLED_BY_USER: &str = "cancelled by a user (the API or the build page)";
const SERVER_STOPPED: &str = "the server shut down while this build ran";

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no repo named {0:?} is configured")]
    UnknownRepo(String),
}

/// What live listeners (the dashboard) hear about builds.
#[derive(Debug, Clone)]
pub enum BuildUpdate {
    Queued {
        build: BuildId,
    },
    /// The build's executor reported an event other than a log line, and it was stored. Only
    /// the build's id: the channel's one listener, the forge reporter, needs no more, and each of
    /// the channel's slots is as large as an update (with an executor event in each, its 4,096
    /// slots were 0.5 MiB of an idle server). Live listeners get the events from [`LiveBuilds`].
    Event {
        build: BuildId,
    },
    /// The build reached a final status.
    Finished {
        build: BuildId,
        status: BuildStatus,
    },
}

/// The outcome of [`Scheduler::enqueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant, reason = "one is returned per request, never stored in bulk")]
pub enum Enqueued {
    Queued(BuildRow),
    /// The webhook delivery id was seen before: nothing was queued.
    DuplicateDelivery,
}

/// Why `.gantry.yml` could not become a pipeline; the text becomes the build's error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("no {PIPELINE_FILE} in commit {0}")]
    Missing(Oid),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// A running build the scheduler can cancel.
struct Running {
    build: BuildRow,
    cancel: CancellationToken,
    /// Why it was cancelled, once it was.
    reason: Option<&'static str>,
}

struct Inner {
    store: Store,
    mirrors: Arc<Mirrors>,
    providers: Providers,
    config: Arc<Config>,
    slots: Arc<Semaphore>,
    wake: Notify,
    running: Mutex<HashMap<BuildId, Running>>,
    /// Builds cancelled after their claim but before they reached the running table; `run`
    /// cancels them as soon as it adds them. Locked only while `running` is.
    early_cancels: Mutex<HashSet<BuildId>>,
    updates: broadcast::Sender<BuildUpdate>,
    /// The live channels of followed builds (the event stream and the dashboard's feeds).
    live: LiveBuilds,
    /// Cancelled when the server stops: no new claims, running builds are interrupted.
    shutdown: CancellationToken,
    tasks: TaskTracker,
    metrics: Arc<Metrics>,
    /// Wake each repo's delivery resolver.
    resolvers: deliveries::Resolvers,
    /// This run of this server, among the servers sharing the database.
    server: ServerIdentity,
}

/// The queue's handle; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    /// A scheduler that stops claiming when `shutdown` is cancelled. Call [`Scheduler::recover`]
    /// and then [`Scheduler::start`].
    pub fn new(
        store: Store,
        mirrors: Arc<Mirrors>,
        providers: Providers,
        config: Arc<Config>,
        shutdown: CancellationToken,
    ) -> Scheduler {
        let (updates, _) = broadcast::channel(UPDATE_CHANNEL_CAPACITY);
        let live = LiveBuilds::new(shutdown.clone());
        let server = this_server(&config);
        Scheduler {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(config.max_concurrent_builds)),
                resolvers: deliveries::Resolvers::new(&config.repos),
                store,
                mirrors,
                providers,
                config,
                wake: Notify::new(),
                running: Mutex::new(HashMap::new()),
                early_cancels: Mutex::new(HashSet::new()),
                updates,
                live,
                shutdown,
                tasks: TaskTracker::new(),
                metrics: Arc::new(Metrics::new()),
                server,
            }),
        }
    }

    /// This run of this server.
    pub fn server(&self) -> &ServerIdentity {
        &self.inner.server
    }

    /// The git mirrors builds are read from.
    pub fn mirrors(&self) -> &Mirrors {
        &self.inner.mirrors
    }

    /// The server's metrics, which this scheduler's builds count into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Listen to every build's updates from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<BuildUpdate> {
        self.inner.updates.subscribe()
    }

    /// The live channels builds' events are broadcast on after they are stored.
    pub fn live(&self) -> &LiveBuilds {
        &self.inner.live
    }

    /// After a crash: builds left provisioning or running become `interrupted`, and every host
    /// not known to be torn down is torn down through its provider. Run before [`Scheduler::start`].
    pub async fn recover(&self) -> Result<(), StoreError> {
        let store = &self.inner.store;
        for build in store.interrupt_unfinished_builds(&self.inner.server.id).await? {
            tracing::warn!(build = %build, "build interrupted by a server stop; marked interrupted");
            self.inner.metrics.build_finished(BuildStatus::Interrupted);
        }
        let hosts = store.hosts_not_torn_down_of(&self.inner.server.id).await?;
        for result in join_all(hosts.into_iter().map(|host| self.tear_down_left(host))).await {
            result?;
        }
        Ok(())
    }

    /// Tear down a host a stopped server left (this one before its restart, or a silent one it
    /// took over) through its provider, and record how that went.
    async fn tear_down_left(&self, host: HostRow) -> Result<(), StoreError> {
        let Some(provider) = self.inner.providers.by_name(&host.provider) else {
            tracing::error!(host = %host.host_id, provider = %host.provider, "cannot reap a host of a provider this server does not run");
            return Ok(());
        };
        let id = HostId(host.host_id.clone());
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(
            gantry_runner::executor::TEARDOWN_TIMEOUT,
            provider.teardown(&id, host.provider_id.as_deref()),
        )
        .await;
        let took = Some(started.elapsed().as_millis() as i64);
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("teardown timed out".to_string()),
        };
        match &error {
            None => tracing::info!(host = %id, build = %host.build_id, "reaped a host left by a stopped server"),
            Some(error) => tracing::error!(host = %id, %error, "could not reap a host left by a stopped server"),
        }
        self.inner.store.set_host_torn_down(&host.host_id, error.as_deref(), took).await
    }

    /// Register this server under its `server_id`; an error when another live server holds it.
    pub async fn register(&self) -> anyhow::Result<()> {
        let me = &self.inner.server;
        let timeout = i64::try_from(self.inner.config.server_timeout.as_millis()).unwrap_or(i64::MAX);
        match self.inner.store.register_server(me, timeout, process_alive).await? {
            Registration::Registered => Ok(()),
            Registration::Refused { host, pid, silent_ms } => anyhow::bail!(
                "server_id {:?} is held by a running server (on {host}, process {pid}, heard from {}s ago): \
                 give each server sharing the database its own server_id",
                me.id,
                silent_ms / 1000
            ),
        }
    }

    /// Every sixth of `server_timeout`: a heartbeat, then the take-over of servers silent for
    /// longer than `server_timeout` (their running builds end `interrupted`, their SSH-pool and
    /// EC2 hosts are torn down; local hosts wait for their own server's restart).
    async fn servers_loop(self) {
        let every = self.inner.config.server_timeout / 6;
        let shutdown = self.inner.shutdown.clone();
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => return,
            }
            match self.inner.store.heartbeat(&self.inner.server).await {
                Ok(true) => {}
                Ok(false) => tracing::error!(server = %self.inner.server.id,
                    "this server's registration was taken over (it was silent longer than server_timeout); \
                     another server ended its running builds"),
                Err(error) => tracing::warn!(%error, "heartbeat failed; trying again"),
            }
            if let Err(error) = self.take_over_silent().await {
                tracing::warn!(%error, "looking for silent servers failed; trying again");
            }
            self.stop_requested().await;
        }
    }

    /// Stop the builds this server runs that another server asked to stop: the notice that
    /// asked is lost when it comes while this server's listening connection is down.
    async fn stop_requested(&self) {
        let inner = &self.inner;
        if inner.store.backend() == store::Backend::Sqlite {
            return;
        }
        match inner.store.cancel_requests(&inner.server.id).await {
            Ok(requests) => {
                for (build, superseded) in requests {
                    let here = inner.running.lock().expect("running table poisoned").contains_key(&build);
                    if here {
                        self.stop_here(build, if superseded { SUPERSEDED } else { CANCELLED_BY_USER });
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "reading the stops other servers asked for failed; trying again"),
        }
    }

    async fn take_over_silent(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let timeout = i64::try_from(inner.config.server_timeout.as_millis()).unwrap_or(i64::MAX);
        let reason = |server: &str| format!("its server {server} stopped answering");
        for taken in inner.store.take_over_silent_servers(&inner.server, timeout, reason).await? {
            tracing::warn!(server = %taken.server, builds = taken.builds.len(), "took over a silent server");
            for build in taken.builds {
                inner.metrics.build_finished(BuildStatus::Interrupted);
                let _ = inner.updates.send(BuildUpdate::Finished { build, status: BuildStatus::Interrupted });
                inner.live.close(build);
                self.notify_final(build).await;
            }
        }
        // Hosts of the servers taken over that this server can reach; a failed teardown is tried
        // again next time (local hosts wait for their own server).
        let hosts = inner.store.hosts_of_servers_taken_over_by(&inner.server.id).await?;
        let reachable = hosts.into_iter().filter(|h| h.provider != LOCAL_PROVIDER);
        for result in join_all(reachable.map(|host| self.tear_down_left(host))).await {
            result?;
        }
        Ok(())
    }

    /// Start the claim loop, the reaper and the delivery resolvers.
    pub fn start(&self) {
        self.start_resolvers();
        let this = self.clone();
        self.inner.tasks.spawn(async move { this.claim_loop().await });
        let this = self.clone();
        self.inner.tasks.spawn(async move { this.reap_loop().await });
        let this = self.clone();
        self.inner.tasks.spawn(async move { this.servers_loop().await });
        let this = self.clone();
        self.inner.tasks.spawn(async move { this.notices_loop().await });
    }

    /// Every provider sweeps for what no live host owns: at once, then every [`REAP_INTERVAL`].
    /// A sweep stopped by shutdown is simply redone at the next start.
    async fn reap_loop(self) {
        let shutdown = self.inner.shutdown.clone();
        loop {
            tokio::select! {
                () = self.reap() => {}
                () = shutdown.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(REAP_INTERVAL) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// One sweep of every provider (see [`gantry_runner::provider::Provider::reap`]).
    pub async fn reap(&self) {
        let live = StoreLiveHosts(self.inner.store.clone());
        for provider in self.inner.providers.all() {
            match provider.reap(&live).await {
                Ok(report) if report.is_empty() => {}
                Ok(report) => {
                    tracing::warn!(provider = provider.name(), ?report, "reaped resources no live build owns")
                }
                Err(error) => tracing::error!(provider = provider.name(), %error, "reaping failed"),
            }
        }
    }

    /// Queue a build. With a `delivery` id, a repeated delivery queues nothing. When the repo's
    /// `cancel_superseded` is on, older queued builds of the same ref are cancelled and running
    /// ones are stopped.
    pub async fn enqueue(&self, new: NewBuild, delivery: Option<&str>) -> Result<Enqueued, SchedulerError> {
        let repo = self.inner.config.repo(&new.repo).ok_or_else(|| SchedulerError::UnknownRepo(new.repo.clone()))?;
        let store = &self.inner.store;
        let (build, superseded) = if delivery.is_none() && !repo.cancel_superseded {
            // Nothing else to write with it: one statement on PostgreSQL.
            (store.insert_build(&new).await?, Vec::new())
        } else {
            let mut tx = store.begin().await?;
            let build = store::builds::insert(&mut tx, &new).await?;
            if let Some(delivery) = delivery {
                if !store::deliveries::record(&mut tx, &new.repo, delivery, Some(build.id)).await? {
                    tx.rollback().await.map_err(StoreError::from)?;
                    return Ok(Enqueued::DuplicateDelivery);
                }
            }
            let superseded = if repo.cancel_superseded {
                store::builds::supersede_queued(&mut tx, &build).await?
            } else {
                Vec::new()
            };
            tx.commit().await.map_err(StoreError::from)?;
            (build, superseded)
        };
        tracing::info!(build = %build.id, repo = %build.repo, number = build.number, branch = %build.branch,
            commit = %build.commit, trigger = build.trigger.as_str(), "build queued");
        for old in superseded {
            tracing::info!(build = %old, by = %build.id, "queued build superseded");
            self.inner.metrics.build_finished(BuildStatus::Cancelled);
            let _ = self.inner.updates.send(BuildUpdate::Finished { build: old, status: BuildStatus::Cancelled });
            self.inner.live.close(old);
            self.notify_final(old).await;
        }
        if repo.cancel_superseded {
            self.stop_superseded_by(&build);
            self.stop_superseded_elsewhere(&build).await;
        }
        let _ = self.inner.updates.send(BuildUpdate::Queued { build: build.id });
        self.inner.live.changed(Change { build: build.id, event: None });
        self.inner.wake.notify_one();
        Ok(Enqueued::Queued(build))
    }

    /// Cancel the running builds of `newer`'s repo and ref that are older than it.
    fn stop_superseded_by(&self, newer: &BuildRow) {
        let mut running = self.inner.running.lock().expect("running table poisoned");
        for (id, run) in running.iter_mut() {
            let same_ref = run.build.repo == newer.repo
                && run.build.branch == newer.branch
                && run.build.ref_kind == newer.ref_kind
                && run.build.pull_request.as_ref().map(|pr| pr.number)
                    == newer.pull_request.as_ref().map(|pr| pr.number);
            if same_ref && *id < newer.id && run.reason.is_none() {
                tracing::info!(build = %id, by = %newer.id, "stopping a superseded build");
                run.reason = Some(SUPERSEDED);
                run.cancel.cancel();
            }
        }
    }

    /// Ask the other servers sharing the database to stop their running builds that `newer`
    /// supersedes (nothing to ask on SQLite, where this server runs every build).
    async fn stop_superseded_elsewhere(&self, newer: &BuildRow) {
        let store = &self.inner.store;
        if store.backend() == store::Backend::Sqlite {
            return;
        }
        let elsewhere = match store.running_elsewhere_superseded_by(newer, &self.inner.server.id).await {
            Ok(builds) => builds,
            Err(error) => {
                tracing::warn!(build = %newer.id, %error, "could not look for superseded builds on other servers");
                return;
            }
        };
        for build in elsewhere {
            tracing::info!(build = %build, by = %newer.id, "asking another server to stop a superseded build");
            if let Err(error) = store.request_cancel(build, true).await {
                tracing::warn!(build = %build, %error, "could not record the stop of a superseded build");
            }
            if let Err(error) = store.notify(&Notice::Cancel { build, superseded: true }).await {
                tracing::warn!(build = %build, %error, "could not ask another server to stop a superseded build");
            }
        }
    }

    /// Fetch a repo's mirror and record the outcome on the repo (its page shows the last error).
    pub async fn fetch(&self, repo: &RepoConfig) -> Result<(), GitError> {
        let result = self.inner.mirrors.fetch(&repo.name, &repo.url).await;
        self.record_fetch(repo, result.as_ref().err()).await;
        result
    }

    /// Make sure `commit` is in the repo's mirror (fetching only when it is missing) and record a
    /// fetch error on the repo.
    pub async fn ensure_commit(&self, repo: &RepoConfig, commit: &str) -> Result<Oid, GitError> {
        let result = self.inner.mirrors.ensure_commit(&repo.name, &repo.url, commit).await;
        if let Err(error @ GitError::Fetch { .. }) = &result {
            self.record_fetch(repo, Some(error)).await;
        }
        result
    }

    async fn record_fetch(&self, repo: &RepoConfig, error: Option<&GitError>) {
        if let Some(error) = error {
            tracing::warn!(repo = %repo.name, %error, "fetch failed");
        }
        let message = error.map(|e| e.to_string());
        if let Err(e) = self.inner.store.set_repo_error(&repo.name, message.as_deref()).await {
            tracing::error!(repo = %repo.name, error = %e, "could not record the outcome of a fetch");
        }
    }

    /// Whether a push of `branch` at `commit` should build, by the `on.branches` of the pipeline
    /// in that commit. A missing or invalid pipeline file builds (the build records the error).
    pub async fn wants_branch(&self, repo: &str, commit: Oid, branch: &str) -> bool {
        match load_pipeline(&self.inner.mirrors, repo, commit, None).await {
            Ok(pipeline) => pipeline.on.matches_branch(branch),
            Err(_) => true,
        }
    }

    /// Stop claiming, cancel every running build and wait (at most [`SHUTDOWN_GRACE`]) for
    /// their teardowns. They end `interrupted`.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        // Stopping cleanly frees the server_id at once; the running builds below end
        // `interrupted` either way.
        if let Err(error) = self.inner.store.stop_server(&self.inner.server).await {
            tracing::warn!(%error, "could not record this server's stop");
        }
        let live: Vec<BuildId> = {
            let running = self.inner.running.lock().expect("running table poisoned");
            for run in running.values() {
                run.cancel.cancel();
            }
            running.keys().copied().collect()
        };
        if !live.is_empty() {
            tracing::info!(builds = live.len(), "stopping running builds");
        }
        self.inner.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.inner.tasks.wait()).await.is_err() {
            let left: Vec<BuildId> =
                self.inner.running.lock().expect("running table poisoned").keys().copied().collect();
            for id in left {
                tracing::error!(build = %id, "build did not stop in time; its hosts are reaped at the next start");
                match self.inner.store.finish_build(id, BuildStatus::Interrupted, Some(SERVER_STOPPED)).await {
                    Ok(true) => self.inner.metrics.build_finished(BuildStatus::Interrupted),
                    Ok(false) => {}
                    Err(error) => tracing::error!(build = %id, %error, "could not mark the build interrupted"),
                }
            }
        }
    }

    async fn claim_loop(self) {
        let inner = &self.inner;
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&inner.slots).acquire_owned() => permit.expect("the slot semaphore is never closed"),
                () = inner.shutdown.cancelled() => return,
            };
            if inner.shutdown.is_cancelled() {
                return;
            }
            match inner.store.claim_next_build(&inner.server.id).await {
                Ok(Some(build)) => {
                    let this = self.clone();
                    inner.tasks.spawn(async move { this.run(build, permit).await });
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        () = inner.wake.notified() => {}
                        () = inner.shutdown.cancelled() => return,
                    }
                }
                Err(error) => {
                    drop(permit);
                    tracing::error!(%error, "claiming a queued build failed");
                    tokio::select! {
                        () = tokio::time::sleep(CLAIM_RETRY_DELAY) => {}
                        () = inner.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Run one claimed build to its final status. Its concurrency slot is its hosts': freed when
    /// the executor has torn the last of them down (see `prepare_and_execute`), so storing the
    /// build's last events and its final status does not hold the next build back.
    async fn run(self, build: BuildRow, slot: OwnedSemaphorePermit) {
        let inner = &self.inner;
        let id = build.id;
        let cancel = CancellationToken::new();
        {
            let mut running = inner.running.lock().expect("running table poisoned");
            let cancelled_early = inner.early_cancels.lock().expect("early cancels poisoned").remove(&id);
            let reason = cancelled_early.then_some(CANCELLED_BY_USER);
            if cancelled_early {
                cancel.cancel();
            }
            running.insert(id, Running { build: build.clone(), cancel: cancel.clone(), reason });
        }
        if inner.shutdown.is_cancelled() {
            cancel.cancel();
        }
        // A newer build of this ref queued between the claim and the line above could not see
        // this one in the running table: look for it here.
        let cancel_superseded = inner.config.repo(&build.repo).is_some_and(|r| r.cancel_superseded);
        if cancel_superseded && inner.store.has_newer_live_build(&build).await.unwrap_or(false) {
            if let Some(run) = inner.running.lock().expect("running table poisoned").get_mut(&id) {
                run.reason.get_or_insert(SUPERSEDED);
            }
            cancel.cancel();
        }

        tracing::info!(build = %id, repo = %build.repo, number = build.number, "build started");
        let (status, error, persisted) = match self.prepare_and_execute(&build, &cancel, slot).await {
            Ok((result, persisted)) => (result.status, result.error, persisted),
            Err(error) => (BuildStatus::Errored, Some(error), persist::Persisted::default()),
        };
        let reason = inner.running.lock().expect("running table poisoned").remove(&id).and_then(|r| r.reason);
        let (status, error) = match status {
            BuildStatus::Cancelled if inner.shutdown.is_cancelled() && reason.is_none() => {
                (BuildStatus::Interrupted, Some(SERVER_STOPPED.to_string()))
            }
            BuildStatus::Cancelled => (status, error.or(reason.map(str::to_string))),
            _ => (status, error),
        };
        // What could not be recorded cannot be shown to have passed.
        let (status, error) = match persisted.lost {
            0 => (status, error),
            lost => {
                let incomplete = format!(
                    "the database was unavailable: {lost} of this build's events could not be recorded, so its steps \
                     and log are incomplete"
                );
                tracing::error!(build = %id, lost, status = status.as_str(), "a build's record is incomplete");
                match status {
                    BuildStatus::Passed => (BuildStatus::Errored, Some(incomplete)),
                    _ => (status, error.or(Some(incomplete))),
                }
            }
        };
        if let Some(changed) = self.record_end(id, status, error.as_deref()).await {
            if changed {
                inner.metrics.build_finished(status);
            }
            tracing::info!(build = %id, status = status.as_str(), "build finished");
            let _ = inner.updates.send(BuildUpdate::Finished { build: id, status });
        }
        // Before `close` hands freed memory back to the system: what a long build's writes left in
        // SQLite's page cache is freed first. After a short one the writer connection stays: its
        // cache holds little, and opening another (a thread, the PRAGMAs, every statement prepared
        // again) cost a trivial build a quarter of its CPU time.
        if persisted.lines >= RELEASE_MEMORY_AFTER_LINES {
            if let Err(error) = inner.store.release_memory().await {
                tracing::warn!(build = %id, %error, "could not shrink the database's page cache");
            }
        }
        // The final status is stored: the build's listeners hear it and their streams end here;
        // `finish_build` told the other servers sharing the database.
        inner.live.close(id);
    }

    /// Store a build's final status, trying again until the database takes it (a build whose end
    /// is not stored stays `running` on every page); whether it changed the build's status. `None`
    /// when the server stopped first: the next start's recovery ends the build `interrupted`.
    async fn record_end(&self, id: BuildId, status: BuildStatus, error: Option<&str>) -> Option<bool> {
        let inner = &self.inner;
        let mut waits = ExponentialBuilder::new()
            .with_min_delay(FINISH_RETRY_MIN_DELAY)
            .with_max_delay(FINISH_RETRY_MAX_DELAY)
            .without_max_times()
            .build();
        loop {
            let error = match inner.store.finish_build(id, status, error).await {
                Ok(changed) => return Some(changed),
                Err(error) => error,
            };
            if inner.shutdown.is_cancelled() {
                tracing::error!(build = %id, %error, "could not record the end of a build before shutting down");
                return None;
            }
            tracing::warn!(build = %id, status = status.as_str(), %error, "could not record the end of a build; trying again");
            let wait = waits.next().unwrap_or(FINISH_RETRY_MAX_DELAY);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = inner.shutdown.cancelled() => {}
            }
        }
    }

    /// Tell the other servers sharing the database that `build` reached its final status.
    pub(super) async fn notify_final(&self, build: BuildId) {
        if let Err(error) = self.inner.store.notify(&Notice::Final(build)).await {
            tracing::warn!(build = %build, %error, "could not tell the other servers about a final status");
        }
    }

    /// Relay what the other servers sharing the database say: the events they stored of builds
    /// they run go to this server's listeners and feeds, a final status closes the build's
    /// streams, a cancel of a build this server runs stops it. Nothing to do on SQLite.
    async fn notices_loop(self) {
        let shutdown = self.inner.shutdown.clone();
        let mut listener = loop {
            match self.inner.store.listen().await {
                Ok(Some(listener)) => break listener,
                Ok(None) => return,
                Err(error) => tracing::warn!(%error, "cannot listen to the other servers; trying again"),
            }
            tokio::select! {
                () = tokio::time::sleep(NOTICES_RETRY) => {}
                () = shutdown.cancelled() => return,
            }
        };
        loop {
            let notice = tokio::select! {
                notice = listener.recv() => notice,
                () = shutdown.cancelled() => return,
            };
            match notice {
                Ok(notice) => self.relay(notice).await,
                Err(error) => {
                    tracing::warn!(%error, "listening to the other servers failed; listening again");
                    tokio::select! {
                        () = tokio::time::sleep(NOTICES_RETRY) => {}
                        () = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn relay(&self, notice: Notice) {
        let inner = &self.inner;
        // This server's own notices never come here (`store::notify::Listener`): its builds
        // reached its listeners when they were stored.
        match notice {
            Notice::Stored { build, first, last } => {
                let count = u32::try_from(last - first + 1).unwrap_or(u32::MAX);
                match inner.store.events_after(build, first - 1, count).await {
                    Ok(events) => persist::publish_stored(&inner.live, build, events),
                    Err(error) => tracing::warn!(build = %build, %error, "could not read another server's events"),
                }
            }
            Notice::Final(build) => inner.live.close(build),
            Notice::Cancel { build, superseded } => match inner.store.build_server(build).await {
                Ok(Some(server)) if server == inner.server.id => {
                    tracing::info!(build = %build, superseded, "another server asked to stop a build");
                    self.stop_here(build, if superseded { SUPERSEDED } else { CANCELLED_BY_USER });
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(build = %build, %error, "could not read whose build to cancel"),
            },
        }
    }

    /// Everything between the claim and the final status. `Err` is the text of an errored build
    /// that never reached the executor.
    async fn prepare_and_execute(
        &self,
        build: &BuildRow,
        cancel: &CancellationToken,
        slot: OwnedSemaphorePermit,
    ) -> Result<(gantry_runner::BuildResult, persist::Persisted), String> {
        let inner = &self.inner;
        let repo: &RepoConfig =
            inner.config.repo(&build.repo).ok_or_else(|| format!("repo {:?} is no longer configured", build.repo))?;
        let commit = self.ensure_build_commit(repo, build).await.map_err(|e| e.to_string())?;
        let defined = repo.secrets.keys().cloned().collect();
        let pipeline =
            load_pipeline(&inner.mirrors, &repo.name, commit, Some(defined)).await.map_err(|e| e.to_string())?;
        // Branches and tags are the team's own code; a pull request's is not (yet).
        let is_pull_request = build.ref_kind == RefKind::PullRequest;
        let secrets = crate::secrets::for_build(&repo.secrets, is_pull_request, repo.secrets_for_pull_requests)
            .map_err(|e| e.to_string())?;
        let provider = Arc::clone(
            inner
                .providers
                .get(repo.provider)
                .ok_or_else(|| format!("provider {:?} is not configured on this server", repo.provider.as_str()))?,
        );
        if cancel.is_cancelled() {
            let cancelled = gantry_runner::BuildResult { status: BuildStatus::Cancelled, error: None };
            return Ok((cancelled, persist::Persisted::default()));
        }

        // Every host is recorded before the provider hears of it, so a crash cannot lose one.
        let host_ids: BTreeMap<String, HostId> = pipeline
            .hosts
            .iter()
            .map(|h| (h.role.clone(), HostId(format!("{}-{}", build_key(build.id), h.role))))
            .collect();
        self.record_hosts(build.id, &host_ids, provider.name())
            .await
            .map_err(|e| format!("could not record the build's hosts: {e}"))?;

        let source: Arc<dyn Source> = Arc::new(inner.mirrors.source(&repo.name, commit));
        let plan = BuildPlan {
            info: BuildInfo {
                key: build_key(build.id),
                number: u64::try_from(build.number).unwrap_or_default(),
                commit: commit.to_string(),
                branch: build.branch.clone(),
                repo: build.repo.clone(),
            },
            pipeline: Arc::new(pipeline),
            source,
            host_ids: host_ids.clone(),
            secrets,
            log_limits: inner.config.logs.limits(),
        };
        let (events, received) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let persister = tokio::spawn(persist::persist(
            inner.store.clone(),
            build.id,
            build.event_seq,
            host_ids,
            received,
            inner.updates.clone(),
            inner.live.clone(),
            Arc::clone(&inner.metrics),
        ));
        let result = execute(plan, provider, events, cancel.clone()).await;
        // The executor returns after tearing down every host it asked for: the build holds
        // nothing a slot stands for any more, and the next one may start while this one's last
        // events and final status are stored.
        drop(slot);
        // The executor dropped its sender: the persister ends once it has stored every event.
        let persisted = persister.await.unwrap_or_else(|e| {
            tracing::error!(build = %build.id, error = %e, "the event persister failed");
            persist::Persisted { lines: 0, lost: 1 }
        });
        Ok((result, persisted))
    }

    async fn record_hosts(
        &self,
        build: BuildId,
        host_ids: &BTreeMap<String, HostId>,
        provider: &str,
    ) -> Result<(), StoreError> {
        let hosts: Vec<(&str, &str)> = host_ids.iter().map(|(role, id)| (role.as_str(), id.0.as_str())).collect();
        let mut conn = self.inner.store.writer().acquire().await?;
        store::hosts::insert_requested(&mut conn, build, &hosts, provider).await?;
        Ok(())
    }
}

/// The hosts the store knows as not torn down, for the providers' reapers.
struct StoreLiveHosts(Store);

#[async_trait::async_trait]
impl LiveHosts for StoreLiveHosts {
    async fn live(&self) -> Result<LiveSet, String> {
        let hosts = self.0.hosts_not_torn_down().await.map_err(|e| e.to_string())?;
        Ok(LiveSet {
            builds: hosts.iter().map(|h| build_key(h.build_id)).collect(),
            hosts: hosts.into_iter().map(|h| HostId(h.host_id)).collect(),
        })
    }
}

/// How long to wait before listening to the other servers again after a failure.
const NOTICES_RETRY: Duration = Duration::from_secs(1);

/// The local provider's name: its hosts live on their server's machine, which alone can tear
/// them down.
const LOCAL_PROVIDER: &str = "local";

/// Whether a process of this machine is running (signal 0 reaches it).
fn process_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// This run of the server `config` describes: its `server_id`, and an instance id no other run
/// has (the host, the process and the start's time).
fn this_server(config: &Config) -> ServerIdentity {
    let host = crate::config::host_name();
    let pid = std::process::id();
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    ServerIdentity { id: config.server_id(), instance: format!("{host}:{pid}:{started}"), host, pid: i64::from(pid) }
}

/// A build's key on this server: the prefix of its hosts' ids, and what providers tag with.
pub fn build_key(build: BuildId) -> String {
    format!("b{build}")
}

/// Read and validate `.gantry.yml` at `commit` (already in the mirror), through the one loader
/// of pipeline files: an oversized blob is refused from its size alone, a file that is not UTF-8
/// is a diagnostic at the line and column of its first bad byte.
///
/// `secrets` are the names the repo defines, checked against what the file names; `None` checks
/// no names (the branch filter only needs `on`).
pub async fn load_pipeline(
    mirrors: &Mirrors,
    repo: &str,
    commit: Oid,
    secrets: Option<BTreeSet<String>>,
) -> Result<Pipeline, PipelineError> {
    let source = mirrors.source(repo, commit);
    // Reading and validation walk the commit's tree (pushed paths must exist): git2 blocks.
    let loaded = tokio::task::spawn_blocking(move || {
        let names = secrets.as_ref().map_or(SecretNames::Any, SecretNames::Defined);
        pipeline::load_file(PIPELINE_FILE, PipelineFile::InSource(PIPELINE_FILE), &source, names)
    })
    .await
    .map_err(|e| PipelineError::Git(GitError::Task(e.to_string())))?;
    loaded.map_err(|error| match error {
        LoadError::Missing { .. } => PipelineError::Missing(commit),
        LoadError::Read(e) => PipelineError::Git(GitError::Read {
            commit: commit.to_string(),
            path: PIPELINE_FILE.to_string(),
            message: e.to_string(),
        }),
        LoadError::Invalid(diagnostics) => PipelineError::Invalid(diagnostics),
    })
}
