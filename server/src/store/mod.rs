//! Gantry's durable state in SQLite (the default) or PostgreSQL (several servers): repos, builds (and their history), steps, hosts, log lines,
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
//! Both backends run the same SQL through sqlx's `Any` driver: placeholders are `$1`, `$2`, …
//! (SQLite reads them by number too), every integer is a 64-bit `BIGINT`, and a query that needs
//! a list of binds uses `sql::Builder` rather than sqlx's `QueryBuilder` (which writes `?`).
//! What only one backend has (SQLite's `PRAGMA`s, `VACUUM INTO`) asks [`Store::backend`] first.
//!
//! On SQLite the store holds two pools on one WAL database: a writer pool of exactly one
//! connection, so writers queue in-process instead of sleeping in SQLite's busy handler (latency
//! matters: a webhook's build should start within milliseconds), and a reader pool, since WAL
//! readers never block the writer. On PostgreSQL both are pools of several connections: the
//! writer's plan each statement once (see [`GENERIC_PLANS`]). Nothing here knows about HTTP, git
//! or the runner's execution.

pub mod backup;
pub mod builds;
pub mod deliveries;
pub mod events;
pub mod history;
pub mod hosts;
pub mod logs;
pub mod notify;
pub mod pull_requests;
pub mod reports;
pub mod repos;
pub mod retention;
pub mod servers;
pub mod sessions;
pub(crate) mod sql;
pub mod statuses;
pub mod steps;
pub mod test_cases;
pub mod tokens;
pub mod users;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Connection as _, Executor, Transaction};

pub use builds::{BuildId, BuildRow, NewBuild, PullRequest, RefKind, Trigger};
pub use history::{HistoryFilter, HistoryPage, Newer};
pub use hosts::{HostRow, HostState};
pub use logs::LogLine;
pub use reports::ReportRow;
pub use repos::RepoRow;
pub use retention::{PruneLimits, Pruned};
pub use servers::{Registration, ServerIdentity, TakenOver};
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

/// Whom a [`Store`] speaks for until [`Store::for_server`] names a server: a command of the
/// command line, which tells nobody anything.
const UNNAMED: &str = "gantry-command";

/// How many connections one server opens to PostgreSQL at most for writes (and the reads that
/// go with them), and for reads alone (pages, the API), besides the one it listens on.
pub const MAX_POSTGRES_CONNECTIONS: u32 = 10;
pub const MAX_POSTGRES_READ_CONNECTIONS: u32 = 4;

/// A PostgreSQL connection idle for longer than this is pinged before it is handed out.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Run on every new PostgreSQL write connection: each statement is planned once per connection,
/// for any parameters, instead of PostgreSQL's default of a plan for each of the first five
/// executions' values before it settles on one plan for all. The writes find their rows by keys
/// (a build's id, a host's, a repo's name) or by literal statuses, so those five plans were the
/// same plan made again: on a fresh server, a burst of 50 builds one at a time planned each
/// statement 30 times (six connections), 1.3 ms of PostgreSQL's CPU per build. Reads keep the
/// default: the history's status filter is one where the plan for a rare status (an index on
/// repo and status) beats the plan for any status (the newest builds, filtered) 20 times over.
const GENERIC_PLANS: &str = "SET plan_cache_mode = force_generic_plan";

/// The SQLite migrations in `migrations/sqlite/`, embedded at compile time and applied by [`Store::open`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The PostgreSQL migrations in `migrations/postgres/`, applied by [`Store::connect`] under
/// sqlx's advisory lock, so servers starting together apply each migration once.
pub static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Where the database is: a SQLite file (the default, in `data_dir`) or a PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    /// A `postgres://` URL; it may hold a password, so it is never shown (see [`Location::describe`]).
    Postgres(String),
}

impl Location {
    /// Whether `url` is a PostgreSQL URL the driver reads; the error never repeats the URL.
    pub fn check_postgres_url(url: &str) -> std::result::Result<(), String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("must be a postgres:// URL (SQLite, the default, needs no URL)".to_string());
        }
        PgConnectOptions::from_str(url).map(drop).map_err(|_| "is not a valid postgres:// URL".to_string())
    }

    /// What to call the database in messages: the file, or the URL's host and database without
    /// its credentials.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(url) => match PgConnectOptions::from_str(url) {
                Ok(options) => format!(
                    "postgres://{}:{}/{}",
                    options.get_host(),
                    options.get_port(),
                    options.get_database().unwrap_or_default()
                ),
                Err(_) => "a postgres:// URL that does not parse".to_string(),
            },
        }
    }
}

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend `conn` is connected to.
    pub(crate) fn of(conn: &Connection) -> Backend {
        if conn.backend_name().eq_ignore_ascii_case("postgresql") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Made by `From`, which notes when the database was last found unavailable (the pool then
    /// checks the connections that idled since).
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// What the backend in use cannot do.
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("cannot create the database's directory {path}: {source}")]
    Directory { path: String, source: std::io::Error },
    /// A row holds a value this version of Gantry does not know (e.g. an unknown status).
    #[error("unexpected value in column {column}: {value:?}")]
    Corrupt { column: &'static str, value: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// Whether the database could not be reached or could not take the statement now (its
    /// connection broke, it is starting or shutting down, it has no connection to spare, SQLite's
    /// file stayed locked past the busy timeout), rather than refused it: the same statement may
    /// succeed later. What an HTTP answer calls 503.
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Database(error) = self else { return false };
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(error) => error.code().is_some_and(|code| unavailable_code(&code)),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> StoreError {
        let error = StoreError::Database(error);
        if error.is_unavailable() {
            LAST_UNAVAILABLE.fetch_max(since_start(Duration::ZERO) + 1, Ordering::Relaxed);
        }
        error
    }
}

/// When a statement of this process last found the database unavailable: [`since_start`]'s
/// milliseconds plus one (0: never).
static LAST_UNAVAILABLE: AtomicU64 = AtomicU64::new(0);

/// Milliseconds from this process's first look at the clock here to `ago` before now.
fn since_start(ago: Duration) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let elapsed = START.get_or_init(Instant::now).elapsed().saturating_sub(ago);
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX - 1)
}

/// Whether a connection idle for `idle_for` has been idle since a statement last found the
/// database unavailable: what broke that statement's connection (a restart, a failover, a cut
/// link) broke every idle one with it.
fn idled_through_an_outage(idle_for: Duration) -> bool {
    since_start(idle_for) < LAST_UNAVAILABLE.load(Ordering::Relaxed)
}

/// A database error code that means "not now": PostgreSQL's SQLSTATEs (always five characters)
/// of connection exceptions (class 08), an administrator's or a crash's shutdown and a server
/// still starting (57P01 to 57P03), too many connections (53300); SQLite's result codes (a
/// number below 10,000) busy and locked (5 and 6, with their extended codes).
fn unavailable_code(code: &str) -> bool {
    if code.len() == 5 {
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300");
    }
    code.parse::<u32>().is_ok_and(|sqlite| matches!(sqlite & 0xff, 5 | 6))
}

/// One database connection, for a caller that runs several store functions in one transaction
/// (a [`Store::begin`] transaction derefs to it). Callers outside `store` name it only by this
/// alias, so the database library stays inside this module.
pub type Connection = sqlx::AnyConnection;

/// The handle every part of the server uses to reach the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    reader: AnyPool,
    writer: AnyPool,
    backend: Backend,
    /// PostgreSQL's URL, for the notices' listener (a connection of its own); a secret, so the
    /// handle's `Debug` never shows it.
    url: Option<secrecy::SecretString>,
    /// The `server_id` this handle's notices are sent as (see [`Store::for_server`]).
    server: Arc<str>,
}

/// sqlx's `Any` driver finds a backend by the URL's scheme among the installed drivers.
fn install_drivers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(sqlx::any::install_default_drivers);
}

/// The `Any` driver's options for the SQLite file at `path`. The path is made absolute first: the
/// driver goes through a `sqlite://` URL, whose host part (a relative path's first component)
/// would be lowercased.
fn sqlite_options(path: &Path, read_only: bool) -> Result<AnyConnectOptions> {
    let absolute = std::path::absolute(path)
        .map_err(|source| StoreError::Directory { path: path.display().to_string(), source })?;
    let sqlite = SqliteConnectOptions::new().filename(absolute).create_if_missing(!read_only).read_only(read_only);
    Ok(AnyConnectOptions::from_url(&sqlite.to_url_lossy())?)
}

impl Store {
    /// Open (creating if missing) the database at `path`, in WAL mode with foreign keys on, and
    /// apply every pending migration.
    pub async fn open(path: &Path) -> Result<Store> {
        install_drivers();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| StoreError::Directory { path: parent.display().to_string(), source })?;
        }
        // In WAL mode synchronous=NORMAL is durable across application crashes; only a power
        // loss can lose the last commits, and a build is re-runnable.
        const PRAGMAS: &str = "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;";
        // A read connection's page cache is 256 KiB instead of SQLite's 2,000 KiB: reads are
        // windows of an index (a page of history, 256 events of a log), the OS caches the file
        // anyway, and the pool keeps its connections: with 20 clients following a 200,000-line
        // build, eight full caches kept the server 18 MiB larger afterwards (3.4 MiB with these).
        const READER_PRAGMAS: &str = "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; \
             PRAGMA busy_timeout = 10000; PRAGMA cache_size = -256;";
        const _: () = assert!(BUSY_TIMEOUT.as_millis() == 10_000);
        // No ping before handing out a connection: a connection to a local file does not go stale
        // like a network one, and the ping is a round trip to the connection's thread on every
        // query (a tenth of an API read's latency; it pays for the API token's lookup).
        let writer = AnyPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PRAGMA journal_mode = WAL; {PRAGMAS}"))))
                        .await
                        .map(drop)
                })
            })
            .connect_with(sqlite_options(path, false)?)
            .await?;
        MIGRATOR.run(&writer).await?;
        let reader = AnyPoolOptions::new()
            .max_connections(MAX_READ_CONNECTIONS)
            .test_before_acquire(false)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(|conn, _| {
                Box::pin(async move { conn.execute(sqlx::raw_sql(READER_PRAGMAS)).await.map(drop) })
            })
            .connect_with(sqlite_options(path, true)?)
            .await?;
        Ok(Store { reader, writer, backend: Backend::Sqlite, url: None, server: UNNAMED.into() })
    }

    /// Connect to the PostgreSQL database at `url` and apply every pending migration (under an
    /// advisory lock, so servers starting at once do not race).
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_pinging(url, PING_IF_IDLE_FOR).await
    }

    /// [`Store::connect`], with a connection pinged before it is handed out when it has been idle
    /// for longer than `ping_if_idle_for`.
    async fn connect_pinging(url: &str, ping_if_idle_for: Duration) -> Result<Store> {
        install_drivers();
        // One connection first, closed again: a database that cannot be reached (refused, a bad
        // password, no such database) is that error at once, not the pool's timeout without it.
        AnyConnection::connect(url).await?.close().await?;
        // A connection is pinged before it is handed out only when it sat idle for a while or
        // since the database was last found unavailable (sqlx pings every connection it takes
        // back anyway): one round trip less on every statement of a busy server, whose
        // connections were pinged milliseconds before, while one that idled through a restart
        // of the database is still found broken and replaced rather than failing a statement.
        let pool = |max_connections: u32, generic_plans: bool| {
            AnyPoolOptions::new()
                .max_connections(max_connections)
                .min_connections(0)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .test_before_acquire(false)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        if generic_plans {
                            conn.execute(GENERIC_PLANS).await?;
                        }
                        Ok(())
                    })
                })
                .before_acquire(move |conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for > ping_if_idle_for || idled_through_an_outage(meta.idle_for) {
                            conn.ping().await?;
                        }
                        Ok(true)
                    })
                })
                .connect(url)
        };
        let writer = pool(MAX_POSTGRES_CONNECTIONS, true).await?;
        let reader = pool(MAX_POSTGRES_READ_CONNECTIONS, false).await?;
        POSTGRES_MIGRATOR.run(&writer).await?;
        Ok(Store { reader, writer, backend: Backend::Postgres, url: Some(url.into()), server: UNNAMED.into() })
    }

    /// Open the database at `location`, whichever backend it is.
    pub async fn open_location(location: &Location) -> Result<Store> {
        match location {
            Location::Sqlite(path) => Store::open(path).await,
            Location::Postgres(url) => Store::connect(url).await,
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// This handle, speaking for the server `server_id`: the other servers sharing a PostgreSQL
    /// database read it as the sender of its notices, and its own listener skips them.
    pub fn for_server(mut self, server_id: &str) -> Store {
        self.server = server_id.into();
        self
    }

    /// The `server_id` this handle speaks for.
    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    /// A write transaction. Keep it short: on SQLite every other writer waits for it.
    pub async fn begin(&self) -> Result<Transaction<'static, Any>> {
        Ok(self.writer.begin().await?)
    }

    pub(crate) fn reader(&self) -> &AnyPool {
        &self.reader
    }

    pub(crate) fn writer(&self) -> &AnyPool {
        &self.writer
    }

    /// Hand back what the writer connection keeps between builds: its prepared statements
    /// (the log's multi-row inserts are about 0.5 MiB) and its page cache (2 MiB by default),
    /// which a long build fills with pages of its log that nothing reads again. The connection is
    /// closed (sqlx's `Any` driver cannot clear a SQLite connection's statements); the pool opens
    /// a new one, with its PRAGMAs, for the next write. PostgreSQL keeps nothing of this here.
    pub async fn release_memory(&self) -> Result<()> {
        if self.backend != Backend::Sqlite {
            return Ok(());
        }
        self.writer.acquire().await?.close().await?;
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

    /// The variable that runs the store's tests on PostgreSQL: `GANTRY_TEST_STORE=postgres cargo
    /// test -p gantry --lib store::` (scripts/test runs them both ways).
    pub const BACKEND_VARIABLE: &str = "GANTRY_TEST_STORE";

    /// The backend the store's tests run on: SQLite unless [`BACKEND_VARIABLE`] says `postgres`.
    pub fn backend() -> Backend {
        match std::env::var(BACKEND_VARIABLE).as_deref() {
            Ok("postgres") => Backend::Postgres,
            Ok("sqlite") | Err(_) => Backend::Sqlite,
            Ok(other) => panic!("{BACKEND_VARIABLE}={other:?}: expected sqlite or postgres"),
        }
    }

    /// A fresh store (SQLite in its own temporary directory, or a fresh database of the test
    /// process's PostgreSQL server); keep the directory alive with the store.
    pub async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = match backend() {
            Backend::Sqlite => Store::open(&dir.path().join("gantry.db")).await.unwrap(),
            Backend::Postgres => Store::connect(&crate::test_postgres::server().database()).await.unwrap(),
        };
        (store, dir)
    }

    /// A store with one repo named `acme`.
    pub async fn store_with_repo() -> (Store, tempfile::TempDir) {
        let (store, dir) = store().await;
        store.upsert_repo("acme", "/srv/acme.git").await.unwrap();
        (store, dir)
    }

    /// A SQLite store with one repo named `acme`, whichever backend the suite runs on: for the
    /// tests of what only SQLite has (its query plans, its free pages).
    pub async fn sqlite_store_with_repo() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("gantry.db")).await.unwrap();
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

    #[test]
    fn codes_that_mean_not_now() {
        for code in ["08006", "08001", "57P01", "57P03", "53300", "5", "6", "517", "262"] {
            assert!(unavailable_code(code), "{code}");
        }
        // A syntax error, a unique violation, SQLite's constraint and full disk are answers, not
        // an absence.
        for code in ["42601", "23505", "19", "2067", "13", "55000"] {
            assert!(!unavailable_code(code), "{code}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_and_a_locked_file_are_unavailable_a_bad_statement_is_not() {
        use sqlx::Connection as _;
        install_drivers();
        // Nobody listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let refused = sqlx::AnyConnection::connect(&format!("postgres://gantry@127.0.0.1:{port}/gantry")).await;
        assert!(StoreError::from(refused.unwrap_err()).is_unavailable());

        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("locked.db").display());
        let mut holder = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)").execute(&mut holder).await.unwrap();
        sqlx::query("BEGIN EXCLUSIVE").execute(&mut holder).await.unwrap();
        let mut other = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::query("PRAGMA busy_timeout = 0").execute(&mut other).await.unwrap();
        let locked = sqlx::query("INSERT INTO t VALUES (1)").execute(&mut other).await.unwrap_err();
        assert!(StoreError::from(locked).is_unavailable());
        let bad = sqlx::query("INSERT INTO nowhere VALUES (1)").execute(&mut holder).await.unwrap_err();
        assert!(!StoreError::from(bad).is_unavailable());
    }

    const BACKEND_PID: &str = "SELECT pg_backend_pid()";

    /// End every connection `store`'s pool has to its PostgreSQL database at `url` once `idle`
    /// of them are back in the pool, as a restart of the database does; wait until they ended.
    async fn end_connections(store: &Store, url: &str, idle: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let wait = |what: &'static str| async move {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        while store.reader().num_idle() < idle {
            wait("the connections never went back to the pool").await;
        }
        let mut admin = AnyConnection::connect(url).await.unwrap();
        let terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()";
        sqlx::query(terminate).execute(&mut admin).await.unwrap();
        let others = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()";
        while sqlx::query(others).fetch_optional(&mut admin).await.unwrap().is_some() {
            wait("the pool's connections never ended").await;
        }
    }

    #[tokio::test]
    async fn every_postgresql_write_connection_plans_a_statement_once_reads_plan_for_their_values() {
        if testing::backend() != Backend::Postgres {
            return;
        }
        let store = Store::connect(&crate::test_postgres::server().database()).await.unwrap();
        let mode = "SHOW plan_cache_mode";
        // Two connections at once: the pool's second is a new one too.
        let (mut one, mut two) = (store.writer().acquire().await.unwrap(), store.writer().acquire().await.unwrap());
        for conn in [&mut one, &mut two] {
            assert_eq!(
                sqlx::query_scalar::<_, String>(mode).fetch_one(&mut **conn).await.unwrap(),
                "force_generic_plan"
            );
        }
        assert_eq!(sqlx::query_scalar::<_, String>(mode).fetch_one(store.reader()).await.unwrap(), "auto");
        // A statement run seven times used one plan, made for no values in particular: never one
        // made for the values of an execution (PostgreSQL's default makes five of those first).
        let history = "SELECT id FROM builds WHERE repo = $1 ORDER BY id DESC LIMIT $2";
        for _ in 0..7 {
            sqlx::query(history).bind("acme").bind(10_i64).fetch_all(&mut *one).await.unwrap();
        }
        let plans = "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1";
        let (generic, custom): (i64, i64) = sqlx::query_as(plans).bind(history).fetch_one(&mut *one).await.unwrap();
        assert_eq!((generic, custom), (7, 0));
    }

    #[tokio::test]
    async fn a_postgresql_connection_that_idled_while_the_database_closed_it_is_replaced_not_handed_out() {
        if testing::backend() != Backend::Postgres {
            return;
        }
        let url = crate::test_postgres::server().database();
        // Every idle connection counts as idle for long: the test needs no wait.
        let store = Store::connect_pinging(&url, Duration::ZERO).await.unwrap();
        let first: i32 = sqlx::query_scalar(BACKEND_PID).fetch_one(store.reader()).await.unwrap();
        end_connections(&store, &url, 1).await;
        let next: i32 = sqlx::query_scalar(BACKEND_PID).fetch_one(store.reader()).await.unwrap();
        assert_ne!(next, first);
    }

    #[tokio::test]
    async fn once_a_statement_found_the_database_gone_every_connection_idle_since_is_checked() {
        if testing::backend() != Backend::Postgres {
            return;
        }
        let url = crate::test_postgres::server().database();
        // No connection idles long enough to be pinged for that alone.
        let store = Store::connect_pinging(&url, Duration::from_secs(3600)).await.unwrap();
        let (mut one, mut two) = (store.reader().acquire().await.unwrap(), store.reader().acquire().await.unwrap());
        sqlx::query(BACKEND_PID).execute(&mut *one).await.unwrap();
        sqlx::query(BACKEND_PID).execute(&mut *two).await.unwrap();
        drop((one, two));
        end_connections(&store, &url, 2).await;
        // The first statement may get a broken connection (unless another test of this process
        // just found a database gone); the next one is handed a checked one.
        let first = sqlx::query(BACKEND_PID).execute(store.reader()).await.map_err(StoreError::from);
        if let Err(error) = &first {
            assert!(error.is_unavailable(), "{error}");
        }
        let next = sqlx::query(BACKEND_PID).execute(store.reader()).await;
        assert!(next.is_ok(), "{next:?} after {first:?}");
    }
}
