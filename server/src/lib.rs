//! The Gantry server: configuration, the durable build queue and its scheduler, git mirrors and
//! the poller, the store (SQLite, or PostgreSQL with `database_url`), and the HTTP surface (dashboard pages, JSON API, webhooks).
//!
//! [`Application::build`] assembles all of it from a [`config::Config`] and binds the listener
//! (port 0 works, for tests); [`Application::run_until_stopped`] serves until a
//! [`ShutdownHandle`] fires, then stops the running builds (their hosts are torn down) and closes
//! the database. The binary in `main.rs` only parses arguments, starts logging and raises the
//! limit on open files.

pub mod auth;
pub mod backup;
pub mod config;
pub mod forge;
pub mod git;
pub mod http;
pub mod live;
pub mod local_run;
pub mod metrics;
pub mod poller;
pub mod providers;
pub mod repo_url;
pub mod retention;
pub mod scheduler;
pub mod secrets;
pub mod store;
/// The test suite's own PostgreSQL server, for the store's tests on that backend.
#[cfg(test)]
#[path = "../../tests/support/postgres.rs"]
mod test_postgres;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::git::Mirrors;
use crate::http::limits::BodyBudget;
use crate::http::AppState;
use crate::providers::Providers;
use crate::scheduler::Scheduler;
use crate::store::Store;

/// A built server, bound to its address, not yet serving.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    router: axum::Router,
    /// How many connections the listener holds at once (`[http] max_connections`, lowered to
    /// what the open-files limit allows).
    connection_cap: usize,
    config: Arc<Config>,
    scheduler: Scheduler,
    store: Store,
    shutdown: CancellationToken,
    /// The pollers, the expired-session sweeper, the commit-status reporter and the retention task.
    tasks: TaskTracker,
}

/// Stops a running [`Application`] gracefully: no new requests or builds, running builds are
/// cancelled and torn down, and they end `interrupted`.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

impl Application {
    /// Validate `config`, bind the listener, open (and migrate) the database, reap what a crashed
    /// server left behind, and start the scheduler and pollers.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        config.validate()?;
        let mut config = config;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("failed to create the data directory {}", config.data_dir.display()))?;
        config.data_dir = std::fs::canonicalize(&config.data_dir)
            .with_context(|| format!("failed to resolve the data directory {}", config.data_dir.display()))?;
        let config = Arc::new(config);

        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("failed to listen on {}", config.listen))?;
        let address = listener.local_addr().context("failed to read the bound address")?;

        let database = config.database();
        let store = Store::open_location(&database)
            .await
            .with_context(|| format!("failed to open the database {}", database.describe()))?
            .for_server(&config.server_id());
        for repo in &config.repos {
            store
                .upsert_repo(&repo.name, &repo.url.to_string())
                .await
                .context("failed to record the configured repos")?;
            if repo.url.has_credentials() {
                let scrubbed = store
                    .rewrite_repo_errors(&repo.name, |text| repo.url.scrub(text))
                    .await
                    .context("failed to take a repo URL's credentials out of stored errors")?;
                if scrubbed > 0 {
                    tracing::info!(repo = %repo.name, texts = scrubbed, "took the URL's credentials out of stored errors");
                }
            }
        }
        let providers = Providers::from_config(&config).await?;
        let mirrors = Arc::new(Mirrors::new(config.data_dir.join("repos")));
        let shutdown = CancellationToken::new();
        let scheduler =
            Scheduler::new(store.clone(), Arc::clone(&mirrors), providers, Arc::clone(&config), shutdown.clone());
        scheduler.register().await?;
        scheduler.recover().await.context("failed to recover from the previous run")?;
        let tasks = TaskTracker::new();
        // Subscribed before anything is queued, so the reporter misses no build's first state.
        forge::reporter::start(store.clone(), Arc::clone(&config), scheduler.subscribe(), shutdown.clone(), &tasks)
            .context("failed to start the commit-status reporter")?;
        scheduler.start();
        poller::start(&config.repos, &scheduler, &store, &shutdown, &tasks);
        tasks.spawn(http::auth::sweep_expired_sessions(store.clone(), shutdown.clone()));
        retention::start(store.clone(), config.retention, shutdown.clone(), &tasks);

        let router = http::router(AppState {
            config: Arc::clone(&config),
            store: store.clone(),
            scheduler: scheduler.clone(),
            mirrors,
            throttle: Arc::default(),
            body_budget: Arc::new(BodyBudget::new(config.http.body_budget_bytes, config.http.body_budget_wait)),
        });
        let connection_cap = connection_cap(&config);
        // Starting wrote (migrations, recovery) through the writer connection, whose page cache
        // and statements an idle server need not hold: handed back as after a build (0.3 MiB).
        if let Err(error) = store.release_memory().await {
            tracing::warn!(%error, "could not shrink the database's page cache");
        }
        crate::live::return_freed_memory();
        tracing::info!(%address, data_dir = %config.data_dir.display(), repos = config.repos.len(), "gantry is ready");
        Ok(Application { listener, address, router, connection_cap, config, scheduler, store, shutdown, tasks })
    }

    /// Where the server listens (the real port when the configuration said 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// A handle that stops the server; take it before calling [`Application::run_until_stopped`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// How many connections the server holds at once.
    pub fn connection_cap(&self) -> usize {
        self.connection_cap
    }

    /// Serve until the shutdown handle fires, then stop the builds and close the database.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Application { listener, router, connection_cap, config, scheduler, store, shutdown, tasks, .. } = self;
        http::serve::serve(listener, router, &config.http, connection_cap, shutdown.clone()).await;
        shutdown.cancel();
        scheduler.shutdown().await;
        tasks.close();
        tasks.wait().await;
        store.close().await;
        tracing::info!("gantry stopped");
        Ok(())
    }
}

/// `[http] max_connections`, lowered to what the open-files limit leaves after the reserve for
/// the database, git and builds; logged, and warned about when lowered.
fn connection_cap(config: &Config) -> usize {
    let configured = config.http.max_connections;
    let nofile = match http::serve::open_files_limit() {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-files limit; holding the configured connections");
            return configured;
        }
    };
    let cap = http::serve::connection_cap(configured, nofile, config.max_concurrent_builds);
    if cap < configured {
        tracing::warn!(
            configured,
            cap,
            open_files_limit = nofile,
            "http.max_connections lowered: the open-files limit leaves room for no more"
        );
    } else {
        tracing::info!(cap, open_files_limit = nofile, "connections capped");
    }
    cap
}
