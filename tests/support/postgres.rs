//! A real PostgreSQL server for tests: one per test process, started on first use from Debian's
//! `postgresql` package (`initdb` into a fresh temporary directory, `postgres` on a free port of
//! 127.0.0.1 with its socket in that directory), tuned for throwaway data (no fsync). Each test
//! asks it for a database of its own (`PgServer::database`).
//!
//! The server dies with the test process however that ends (a panic, `abort`, a signal): it is
//! started as a child of a thread that never exits, with `PR_SET_PDEATHSIG` (which fires when
//! the spawning *thread* ends), and a small shell that waits on a pipe only the test process
//! holds removes the temporary directory once the server is gone. Running as root, `initdb` and
//! `postgres` (which refuse root) run as the `postgres` system user the package creates.
//!
//! Included by path from the e2e suite (`tests/e2e/main.rs`) and the store's unit tests.

#![allow(dead_code)]

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// How long `initdb` plus the server's start may take before a test gives up.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The pause between two readiness checks while the server starts.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How many times a start is tried on a new port when the chosen one was taken in between
/// (another process bound it after we released it).
const START_ATTEMPTS: u32 = 5;

/// The system user Debian's package creates, which `initdb` and `postgres` run as under root.
const SYSTEM_USER: &str = "postgres";

/// The database role `initdb -U` creates: the superuser every test connects as (trust auth).
pub const ROLE: &str = "postgres";

/// The running server of this test process.
pub struct PgServer {
    bindir: PathBuf,
    port: u16,
    /// The temporary directory: `data/` (the cluster), the socket, `postgres.log`.
    dir: PathBuf,
    pid: u32,
    /// `server_version_num`: 150004 for 15.4.
    version: u32,
    /// From the first call of `server()` until the server accepted connections (initdb included).
    started_in: Duration,
    /// The write end of the cleaner's pipe: closed only when this process ends.
    _cleaner: ChildStdin,
}

/// Whether the PostgreSQL binaries are installed (Debian's `postgresql` package).
pub fn available() -> bool {
    bindir().is_some()
}

/// Where `initdb`, `postgres`, `psql` and `pg_isready` are: `pg_config --bindir` when it has them,
/// else the newest `/usr/lib/postgresql/<version>/bin` (Debian puts only wrappers on PATH).
pub fn bindir() -> Option<PathBuf> {
    let complete = |dir: &Path| ["initdb", "postgres", "psql", "pg_isready"].iter().all(|b| dir.join(b).is_file());
    if let Ok(output) = Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && complete(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// This process's server, started on the first call. Panics, with the server's log, when it
/// cannot start; check `available()` first to skip (or, under `CI=true`, fail) with a reason.
pub fn server() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let Some(bindir) = bindir() else {
            panic!("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin): run scripts/install-deps --tests")
        };
        let begun = Instant::now();
        let (sender, receiver) = mpsc::channel();
        // The postgres process's parent-death signal fires when this thread ends, so it never does.
        std::thread::Builder::new()
            .name("postgres-server".into())
            .spawn(move || own_server(bindir, begun, sender))
            .expect("spawning the postgres thread");
        match receiver.recv_timeout(START_DEADLINE + Duration::from_secs(5)) {
            Ok(Ok(server)) => server,
            Ok(Err(error)) => panic!("{error}"),
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("PostgreSQL did not start within {START_DEADLINE:?}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("starting PostgreSQL panicked (the message is above)"),
        }
    })
}

impl PgServer {
    /// A new, empty database of its own, as a URL: `postgres://postgres@127.0.0.1:PORT/NAME`.
    pub fn database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("gantry_test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        // FILE_COPY (PostgreSQL 15 and later; older versions only copy files) copies the template's
        // files at a checkpoint, which costs little without fsync: about half of WAL_LOG's time.
        let strategy = if self.version >= 150000 { " STRATEGY = FILE_COPY" } else { "" };
        self.psql("postgres", &format!("CREATE DATABASE {name}{strategy}"));
        format!("{}/{name}", self.url_base())
    }

    /// `postgres://postgres@127.0.0.1:PORT`: append `/DATABASE`.
    pub fn url_base(&self) -> String {
        format!("postgres://{ROLE}@{}:{}", Ipv4Addr::LOCALHOST, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The temporary directory the cluster (`data/`), the socket and the log live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long the first `server()` call took: initdb, the start, until connections were accepted.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// Runs `sql` in `database` with `psql`, stopping at the first error; returns its output
    /// (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", ROLE])
            .args(["-p", &self.port.to_string(), "-d", database, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("running psql");
        assert!(output.status.success(), "psql -c {sql:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("psql's output is UTF-8")
    }
}

/// The body of the thread that owns the server: start it, hand it over, reap it, never return.
fn own_server(bindir: PathBuf, begun: Instant, sender: mpsc::Sender<Result<PgServer, String>>) {
    let mut child = match start(&bindir, begun) {
        Ok((server, child)) => {
            let _ = sender.send(Ok(server));
            Some(child)
        }
        Err(error) => {
            let _ = sender.send(Err(error));
            None
        }
    };
    if let Some(child) = child.as_mut() {
        // Reaps the server should it die before the process does (nothing here stops it).
        let _ = child.wait();
    }
    loop {
        std::thread::park();
    }
}

/// initdb, then the server on a free port (another, should the port be taken meanwhile).
fn start(bindir: &Path, begun: Instant) -> Result<(PgServer, Child), String> {
    let dir = tempfile::Builder::new()
        .prefix("gantry-pg-")
        .tempdir()
        .map_err(|e| format!("creating PostgreSQL's temporary directory: {e}"))?
        .keep();
    let as_root = unsafe { libc::geteuid() } == 0;
    let user = if as_root { Some(system_user()?) } else { None };
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    let cleaner = spawn_cleaner(&dir)?;
    let data = dir.join("data");
    let mut initdb = Command::new(bindir.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args(["--auth=trust", "--no-sync", "--no-instructions", "--encoding=UTF8", "--no-locale", "-U", ROLE])
        .current_dir(&dir)
        .stdin(Stdio::null());
    if let Some((uid, gid)) = user {
        initdb.uid(uid).gid(gid);
    }
    let output = initdb.output().map_err(|e| format!("running initdb: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "initdb failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let log_path = dir.join("postgres.log");
    let mut failures = Vec::new();
    for _ in 0..START_ATTEMPTS {
        let port = free_port()?;
        let mut child = spawn_postgres(bindir, &dir, &data, port, user, &log_path)?;
        match wait_ready(bindir, &mut child, port) {
            Ok(()) => {
                let started_in = begun.elapsed();
                let mut server = PgServer {
                    bindir: bindir.into(),
                    port,
                    dir,
                    pid: child.id(),
                    version: 0,
                    started_in,
                    _cleaner: cleaner,
                };
                server.version = server.psql("postgres", "SHOW server_version_num").trim().parse().unwrap_or(0);
                return Ok((server, child));
            }
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let port_taken = log.contains("could not bind") || log.contains("Address already in use");
                failures.push(format!("port {port}: {error}\n{log}"));
                if !port_taken {
                    break;
                }
            }
        }
    }
    Err(format!("PostgreSQL did not start:\n{}", failures.join("\n")))
}

/// The uid and gid of the `postgres` system user.
fn system_user() -> Result<(u32, u32), String> {
    let name = std::ffi::CString::new(SYSTEM_USER).unwrap();
    // SAFETY: getpwnam returns NULL or a pointer to a static record, read at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(format!(
            "running as root, PostgreSQL needs the {SYSTEM_USER} system user (Debian's postgresql package creates it)"
        ));
    }
    // SAFETY: entry is a valid passwd record (checked above).
    Ok(unsafe { ((*entry).pw_uid, (*entry).pw_gid) })
}

/// A port of 127.0.0.1 free right now; the start tries another should it be taken meanwhile.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("binding a free port: {e}"))?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn spawn_postgres(
    bindir: &Path,
    dir: &Path,
    data: &Path,
    port: u16,
    user: Option<(u32, u32)>,
    log_path: &Path,
) -> Result<Child, String> {
    let log = std::fs::File::create(log_path).map_err(|e| format!("creating {}: {e}", log_path.display()))?;
    let mut command = Command::new(bindir.join("postgres"));
    command.arg("-D").arg(data).args(["-p", &port.to_string()]);
    for setting in [
        "listen_addresses=127.0.0.1".to_string(),
        format!("unix_socket_directories={}", dir.display()),
        "fsync=off".into(),
        "synchronous_commit=off".into(),
        "full_page_writes=off".into(),
        "max_connections=200".into(),
    ] {
        command.arg("-c").arg(setting);
    }
    command.current_dir(dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated. This runs after std
    // changed the user (a change of user clears the parent-death signal), right before exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The test process may have ended between fork and prctl: then nothing would signal.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the test process ended"));
            }
            Ok(())
        });
    }
    command.spawn().map_err(|e| format!("starting {}: {e}", bindir.join("postgres").display()))
}

/// Polls `pg_isready` until the server accepts connections, it exits, or the deadline passes.
fn wait_ready(bindir: &Path, child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        let ready = Command::new(bindir.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-U", ROLE, "-d", "postgres", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("running pg_isready: {e}"))?;
        if ready.success() {
            return Ok(());
        }
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("postgres exited with {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("postgres did not accept connections within {START_DEADLINE:?}"));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A shell that removes `dir` once this process has ended (its stdin, a pipe only this process
/// holds, reaches end of file) and the server is gone (its lock file removed, or its process
/// gone; at most 30 s). In a process group of its own, so a terminal's Ctrl-C spares it.
fn spawn_cleaner(dir: &Path) -> Result<ChildStdin, String> {
    const SCRIPT: &str = r#"cat >/dev/null
i=0
while [ -e "$1/data/postmaster.pid" ] && [ $i -lt 600 ]; do
    pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null)
    case "$pid" in ''|*[!0-9]*) ;; *) kill -0 "$pid" 2>/dev/null || break ;; esac
    i=$((i + 1)); sleep 0.05
done
rm -rf "$1""#;
    let mut child = Command::new("sh")
        .args(["-c", SCRIPT, "gantry-pg-cleaner"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting the cleaner of {}: {e}", dir.display()))?;
    Ok(child.stdin.take().expect("piped stdin"))
}
