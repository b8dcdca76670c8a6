//! Gantry's durable state in SQLite: repos, builds (and their history), steps, hosts, log lines,
//! reports and the test cases in them, webhook deliveries (the queue of deliveries still to
//! resolve), the commit statuses still to report on forges, the poller's branch heads, and users
//! with their API tokens and sessions. `retention` prunes old builds' logs and reports in bounded
//! batches.
//!
//! **All** SQL of the server lives in this module, one file per aggregate. Each file offers
//! functions taking a connection (so callers can compose them in one transaction) and methods on
//! the thin [`Store`] handle for single operations. Queries are checked at run time
//! (`sqlx::query`), so building Gantry needs no database. Timestamps are unix milliseconds.
//!
//! The store holds two pools on one WAL database: a writer pool of exactly one connection, so
//! writers queue in-process instead of sleeping in SQLite's busy handler (latency matters: a
//! webhook's build should start within milliseconds), and a reader pool, since WAL readers never
//! block the writer. Nothing here knows about HTTP, git or the runner's execution.

pub mod backup;
pub mod builds;
pub mod deliveries;
pub mod events;
pub mod history;
pub mod hosts;
pub mod logs;
pub mod pull_requests;
pub mod reports;
pub mod repos;
pub mod retention;
pub mod sessions;
pub mod statuses;
pub mod steps;
pub mod test_cases;
pub mod tokens;
pub mod users;

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

pub use builds::{BuildId, BuildRow, NewBuild, PullRequest, RefKind, Trigger};
pub use history::{HistoryFilter, HistoryPage, Newer};
pub use hosts::{HostRow, HostState};
pub use logs::LogLine;
pub use reports::ReportRow;
pub use repos::RepoRow;
pub use retention::{PruneLimits, Pruned};
pub use steps::StepRow;
pub use test_cases::{NewTestCase, TestHistory, TestKey, TestOutcome, TestRun};
pub use tokens::{TokenId, TokenOwner, TokenRow};
pub use users::{Removed, Role, UserId, UserRow};

/// How long a connection waits for a lock held by another connection before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections serve reads (pages, the API) concurrently.
pub const MAX_READ_CONNECTIONS: u32 = 8;

/// How long a caller waits for a free connection before the store reports an error.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// The SQLite migrations in `migrations/sqlite/`, embedded at compile time and applied by [`Store::open`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the database's directory {path}: {source}")]
    Directory { path: String, source: std::io::Error },
    /// A row holds a value this version of Gantry does not know (e.g. an unknown status).
    #[error("unexpected value in column {column}: {value:?}")]
    Corrupt { column: &'static str, value: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One database connection, for a caller that runs several store functions in one transaction
/// (a [`Store::begin`] transaction derefs to it). Callers outside `store` name it only by this
/// alias, so the database library stays inside this module.
pub type Connection = sqlx::SqliteConnection;

/// The handle every part of the server uses to reach the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    reader: SqlitePool,
    writer: SqlitePool,
}

impl Store {
    /// Open (creating if missing) the database at `path`, in WAL mode with foreign keys on, and
    /// apply every pending migration.
    pub async fn open(path: &Path) -> Result<Store> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| StoreError::Directory { path: parent.display().to_string(), source })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL is durable across application crashes; only a power loss can
            // lose the last commits, and a build is re-runnable.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // No ping before handing out a connection: a connection to a local file does not go stale
        // like a network one, and the ping is a round trip to the connection's thread on every
        // query (a tenth of an API read's latency; it pays for the API token's lookup).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(MAX_READ_CONNECTIONS)
            .test_before_acquire(false)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Store { reader, writer })
    }

    /// A write transaction. Keep it short: every other writer waits for it.
    pub async fn begin(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin().await?)
    }

    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// Hand back what the writer connection keeps between builds: its prepared statements
    /// (the log's multi-row inserts are about 0.5 MiB) and its page cache beyond the pages in use
    /// (SQLite's `PRAGMA shrink_memory`). A long build fills that cache (2 MiB by default) with
    /// pages of its log that nothing reads again; the next build prepares and reads again what
    /// it needs.
    pub async fn release_memory(&self) -> Result<()> {
        let mut conn = self.writer.acquire().await?;
        sqlx::Connection::clear_cached_statements(&mut *conn).await?;
        sqlx::query("PRAGMA shrink_memory").execute(&mut *conn).await?;
        Ok(())
    }

    /// Close both pools, waiting for queries in flight.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

/// A point in time as unix milliseconds (0 for times before 1970).
pub fn to_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// Parse a status-like column through the type's own `parse`.
fn parse_column<T>(column: &'static str, value: String, parse: impl Fn(&str) -> Option<T>) -> Result<T> {
    parse(&value).ok_or(StoreError::Corrupt { column, value })
}

/// Parse a column whose type implements `FromStr`.
fn parse_from_str<T: FromStr>(column: &'static str, value: String) -> Result<T> {
    value.parse().map_err(|_| StoreError::Corrupt { column, value })
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A fresh store in its own temporary directory; keep the directory alive with the store.
    pub async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("gantry.db")).await.unwrap();
        (store, dir)
    }

    /// A store with one repo named `acme`.
    pub async fn store_with_repo() -> (Store, tempfile::TempDir) {
        let (store, dir) = store().await;
        store.upsert_repo("acme", "/srv/acme.git").await.unwrap();
        (store, dir)
    }

    /// Insert a session that expires in an hour, signed in as `user` when given.
    pub async fn insert_session(store: &Store, user: Option<UserId>) {
        use tower_sessions::session::{Id, Record};
        use tower_sessions::SessionStore;
        let mut data = std::collections::HashMap::new();
        if let Some(user) = user {
            data.insert(sessions::USER_ID_KEY.to_string(), serde_json::json!(user.0));
        }
        let expiry_date = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        store.create(&mut Record { id: Id::default(), data, expiry_date }).await.unwrap();
    }

    /// How many session rows there are, expired ones included.
    pub async fn session_count(store: &Store) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM sessions").fetch_one(store.reader()).await.unwrap()
    }

    /// A push build of `acme`'s `main`, to queue.
    pub fn main_push() -> NewBuild {
        NewBuild {
            repo: "acme".into(),
            commit: "a".repeat(40),
            branch: "main".into(),
            ref_kind: RefKind::Branch,
            trigger: Trigger::Push,
        }
    }

    /// A store with the repo `acme` and one queued push build of its `main`.
    pub async fn store_with_build() -> (Store, tempfile::TempDir, BuildRow) {
        let (store, dir) = store_with_repo().await;
        let build = store.insert_build(&main_push()).await.unwrap();
        (store, dir, build)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_creates_a_wal_database_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/gantry.db");
        let store = Store::open(&path).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(store.reader()).await.unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(store.writer()).await.unwrap();
        assert_eq!(fk, 1);
        store.close().await;
        // Opening again applies no migration twice.
        Store::open(&path).await.unwrap();
    }
}
