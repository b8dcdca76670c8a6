//! The PostgreSQL server the tests start themselves (`tests/support/postgres.rs`): databases of
//! their own that answer, the PostgreSQL migrations applied by two migrators at once (sqlx's
//! advisory lock lets one apply them, the other finds them applied), and no server process or
//! temporary directory left once the test process is gone, even when it aborts.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};

use crate::postgres;
use crate::prerequisite::missing_prerequisite;

/// How long the server's process and directory may outlive an aborted test process.
const GONE_DEADLINE: Duration = Duration::from_secs(30);

/// The pause between two looks at whether they are gone.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// PostgreSQL's migrations, as the server embeds them.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Set in the environment of the child test process that starts a server and aborts.
const ABORTING_CHILD: &str = "GANTRY_TEST_PG_ABORTING_CHILD";

/// Whether PostgreSQL is installed; when not, says what installs it (and fails under `CI=true`).
pub(crate) fn installed() -> bool {
    let found = postgres::available();
    if !found {
        missing_prerequisite("PostgreSQL is not installed", "scripts/install-deps --tests installs postgresql");
    }
    found
}

#[tokio::test]
async fn each_database_is_new_and_answers() {
    if !installed() {
        return;
    }
    let server = postgres::server();
    println!("postgres: started in {:?} (initdb included)", server.started_in());
    let begun = Instant::now();
    let urls = [server.database(), server.database()];
    println!("postgres: database() took {:?} each", begun.elapsed() / 2);
    assert_ne!(urls[0], urls[1]);
    for url in &urls {
        assert!(url.starts_with(&format!("postgres://postgres@127.0.0.1:{}/", server.port())), "{url}");
        let mut connection = PgConnection::connect(url).await.unwrap();
        let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut connection).await.unwrap();
        assert_eq!(one, 1);
        let name: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut connection).await.unwrap();
        assert_eq!(url.rsplit('/').next(), Some(name.as_str()));
        let tables: i64 =
            sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
                .fetch_one(&mut connection)
                .await
                .unwrap();
        assert_eq!(tables, 0, "a new database is empty");
        connection.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_migrators_at_once_apply_the_schema_once() {
    if !installed() {
        return;
    }
    let url = postgres::server().database();
    // Both connect first and start migrating together, so they contend for the advisory lock.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            tokio::spawn(async move {
                // A pool, as a server has (a `&mut PgConnection` does not satisfy spawn's `Send`
                // bound through `Migrator::run`'s `Acquire`).
                let pool = PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
                barrier.wait().await;
                let result = MIGRATOR.run(&pool).await;
                pool.close().await;
                result
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("both migrators succeed");
    }

    let mut connection = PgConnection::connect(&url).await.unwrap();
    let applied: Vec<(i64, bool)> = sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut connection)
        .await
        .unwrap();
    let expected: Vec<(i64, bool)> = MIGRATOR.iter().map(|m| (m.version, true)).collect();
    assert_eq!(applied, expected, "each migration recorded once");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "_sqlx_migrations",
            "api_tokens",
            "branch_heads",
            "build_events",
            "builds",
            "commit_statuses",
            "deliveries",
            "hosts",
            "log_lines",
            "reports",
            "repos",
            "servers",
            "sessions",
            "steps",
            "test_cases",
            "users"
        ]
    );
    // Applying them again later is a no-op too.
    MIGRATOR.run(&mut connection).await.unwrap();
}

/// Runs this test binary again, only `a_test_process_that_starts_a_server_and_aborts`, which
/// prints its server's pid and directory and aborts; then both must disappear.
#[test]
fn the_server_and_its_directory_go_with_the_test_process_even_on_abort() {
    if !installed() {
        return;
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "postgres_server::a_test_process_that_starts_a_server_and_aborts", "--nocapture"])
        .env(ABORTING_CHILD, "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let field = |key: &str| {
        stdout.lines().find_map(|line| line.strip_prefix(key)).map(str::to_string).unwrap_or_else(|| {
            panic!("the child printed no {key}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr))
        })
    };
    let pid: u32 = field("postgres pid=").parse().unwrap();
    let dir = std::path::PathBuf::from(field("postgres dir="));
    assert!(!output.status.success(), "the child aborted: {:?}", output.status);

    let deadline = Instant::now() + GONE_DEADLINE;
    while running(pid) || dir.exists() {
        assert!(
            Instant::now() < deadline,
            "{GONE_DEADLINE:?} after the test process ended: postgres {pid} running: {}, {} exists: {}",
            running(pid),
            dir.display(),
            dir.exists()
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Part of the test above: does nothing unless that test started this process.
#[test]
fn a_test_process_that_starts_a_server_and_aborts() {
    if std::env::var_os(ABORTING_CHILD).is_none() {
        return;
    }
    let server = postgres::server();
    server.psql("postgres", "SELECT 1");
    println!("postgres pid={}", server.pid());
    println!("postgres dir={}", server.dir().display());
    std::process::abort();
}

/// Whether `pid` is a process that has not exited (a zombie has exited: only its entry is left).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain any byte.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}
