//! Gantry's build benchmark: `cargo bench -p gantry --bench builds [-- --builds N --concurrent C
//! --roundtrips R --remote-delay-ms D]`, with `-- --auth [--baseline-bin PATH]` the cost of
//! signing in and of API tokens instead, with `-- --logs` what build logs cost (lines stored per
//! second, a line's latency over the event stream, memory while clients follow a long build; see
//! [`logs::logs_bench`]), and with `-- --history` the pages' times at 100 and at 100,000 builds
//! ([`history::history_bench`]), and with `-- --flood [--runs N] [--bin PATH] [--baseline-bin PATH]`
//! what floods of forged webhooks and idle connections cost the server (see [`flood`]), and with
//! `-- --idle [--runs N] [--bin PATH] [--baseline-bin PATH]` the resident memory of an idle server
//! and where it goes (see [`idle`]), and with `-- --scale [--runs N] [--baseline-bin PATH]` build
//! throughput on SQLite and PostgreSQL with one and two servers (see [`scale`]).
//!
//! Runs the real `gantry` binary (release build) on loopback with a fresh data directory and a
//! local git repository, and measures, for a one-host one-step pipeline:
//!
//! 0. the round trip of a signed GitHub push webhook (sent → answered) when the remote takes
//!    `--remote-delay-ms` (5 s) to answer a fetch: `git daemon` behind a delaying proxy on
//!    loopback (`tests/support/slow_remote.rs`), over `--roundtrips` deliveries;
//! 1. latency from sending a signed GitHub push webhook of a NEW commit to the step's first
//!    command running (the step writes a line into a FIFO this program reads), over `--builds`
//!    builds, one at a time, so every build fetches its commit; and, in the same run, the floor
//!    of that work done with plain tools: `git fetch` of the commit into a bare mirror, a fresh
//!    directory, `git archive COMMIT | tar -x`, `sh -c STEP` (also reported without the fetch);
//! 2. trivial builds completed per second, `--builds` queued at once through the API;
//! 3. the server's resident memory idle and while `--concurrent` builds run at once.
//!
//! With `--auth [--postgres]` (see [`auth_bench`]): the time `POST /login` takes, and the latency
//! of `GET /api/builds/{id}` with a bearer token against the same request without one.
//!
//! Medians and ratios are what to compare: the machine is shared and noisy. The server's API
//! token is made with the real `gantry user add` and `gantry token create`.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "../support/client.rs"]
mod client;
use client::Client;
#[path = "../support/slow_remote.rs"]
mod slow_remote;

mod auth;
mod flood;
mod history;
mod idle;
mod logs;
#[path = "../support/postgres.rs"]
mod postgres;
mod scale;
// Shared with the e2e suite, which uses more of it.
#[allow(dead_code)]
#[path = "../support/sse.rs"]
mod sse;

const SECRET: &str = "bench-secret";
const ADMIN: &str = "bench";
const ADMIN_PASSWORD: &str = "bench-password-0123456789";
const READY_DEADLINE: Duration = Duration::from_secs(30);
const BUILD_DEADLINE: Duration = Duration::from_secs(300);
const POLL_EVERY: Duration = Duration::from_millis(5);
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(20);

struct Args {
    builds: usize,
    concurrent: usize,
    /// Webhooks sent to the server whose remote is slow.
    roundtrips: usize,
    /// How long that remote takes to answer a fetch.
    remote_delay: Duration,
    /// Measure signing in and tokens instead of builds.
    auth: bool,
    /// With `--auth`: every server on a database of its own of the test suite's PostgreSQL.
    postgres: bool,
    /// Measure build logs instead.
    logs: bool,
    /// Measure floods of forged webhooks and idle connections instead of builds.
    flood: bool,
    /// With `--flood` (default 3) or `--idle` (default 5): rounds on fresh servers, whose medians
    /// are reported.
    runs: Option<usize>,
    /// With `--flood` or `--idle`: the `gantry` to measure, when not the one cargo built for the
    /// benchmark.
    bin: Option<PathBuf>,
    /// With `--auth`: an older `gantry` (without users) to measure the unauthenticated request on;
    /// with `--flood`: an older `gantry` (without `[http]`) measured the same way; with `--idle`:
    /// another `gantry` measured side by side.
    baseline_bin: Option<PathBuf>,
    /// Measure an idle server's memory instead.
    idle: bool,
    /// Measure the pages with a short and a long history instead.
    history: bool,
    /// Measure build throughput on each backend, with one and two servers, instead.
    scale: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        builds: 200,
        concurrent: 50,
        roundtrips: 200,
        remote_delay: Duration::from_secs(5),
        auth: false,
        postgres: false,
        logs: false,
        flood: false,
        runs: None,
        bin: None,
        baseline_bin: None,
        history: false,
        scale: false,
        idle: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--builds" => args.builds = it.next().and_then(|v| v.parse().ok()).expect("--builds N"),
            "--concurrent" => args.concurrent = it.next().and_then(|v| v.parse().ok()).expect("--concurrent N"),
            "--roundtrips" => args.roundtrips = it.next().and_then(|v| v.parse().ok()).expect("--roundtrips N"),
            "--remote-delay-ms" => {
                args.remote_delay =
                    Duration::from_millis(it.next().and_then(|v| v.parse().ok()).expect("--remote-delay-ms MS"))
            }
            "--auth" => args.auth = true,
            "--postgres" => args.postgres = true,
            "--logs" => args.logs = true,
            "--history" => args.history = true,
            "--flood" => args.flood = true,
            "--runs" => args.runs = Some(it.next().and_then(|v| v.parse().ok()).expect("--runs N")),
            "--idle" => args.idle = true,
            "--scale" => args.scale = true,
            "--bin" => args.bin = Some(it.next().expect("--bin PATH").into()),
            "--baseline-bin" => args.baseline_bin = Some(it.next().expect("--baseline-bin PATH").into()),
            // cargo bench passes --bench; anything else is a mistake worth stopping on.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// The `gantry` binary measured: this build's, or `GANTRY_BENCH_BIN` (a copy made right after
/// the build, when other checkouts share the target directory and may replace `target/release/gantry`).
fn gantry_bin() -> PathBuf {
    std::env::var_os("GANTRY_BENCH_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_gantry")), PathBuf::from)
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap();
    assert!(status.success(), "{cmd:?} failed");
}

fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(repo).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn pipeline(step: &str) -> String {
    format!("version: 1\nhosts:\n  app: {{}}\npush:\n  code:\n    to: [app]\nstages:\n  - name: step\n    host: app\n    run: {step:?}\n")
}

/// A repository whose `main` writes to the FIFO, `trivial` runs `true`, `hold` sleeps a while.
fn make_repo(dir: &Path, fifo: &Path) -> (PathBuf, String) {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    // A small but real tree to push: 50 files.
    for i in 0..50 {
        std::fs::write(repo.join(format!("file{i}.txt")), format!("file {i}\n").repeat(20)).unwrap();
    }
    let commit = |branch: &str, step: &str| {
        git(&repo, &["checkout", "-q", "-B", branch]);
        std::fs::write(repo.join(".gantry.yml"), pipeline(step)).unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["-c", "user.name=b", "-c", "user.email=b@b.invalid", "commit", "-q", "-m", branch]);
        git(&repo, &["rev-parse", "HEAD"])
    };
    let sha = commit("main", &format!("echo x > {}", fifo.display()));
    commit("trivial", "true");
    commit("hold", "sleep 2");
    git(&repo, &["checkout", "-q", "main"]);
    (repo, sha)
}

/// A new commit on `main` (the checked-out branch): one file changed, as a small real push.
fn new_commit(repo: &Path, i: usize) -> String {
    std::fs::write(repo.join("change.txt"), format!("change {i}\n")).unwrap();
    git(repo, &["add", "change.txt"]);
    git(repo, &["-c", "user.name=b", "-c", "user.email=b@b.invalid", "commit", "-q", "-m", &format!("change {i}")]);
    git(repo, &["rev-parse", "HEAD"])
}

/// Lines written into the FIFO arrive here with the instant they were read.
fn fifo_reader(fifo: &Path) -> std::sync::mpsc::Receiver<Instant> {
    // Opened read-write so the reader never sees end-of-file between writers.
    let file = std::fs::OpenOptions::new().read(true).write(true).open(fifo).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(file).lines() {
            if line.is_err() || tx.send(Instant::now()).is_err() {
                return;
            }
        }
    });
    rx
}

struct Server {
    child: Child,
    api: Client,
    /// The admin's API token (empty for a baseline server, which has no users).
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn start(dir: &Path, repo: &Path, max_concurrent: usize) -> Server {
        Server::start_with(dir, repo, max_concurrent, "", &gantry_bin()).await
    }

    /// Start `binary` with `extra` in its configuration (top-level keys, then tables); a binary
    /// with users gets an admin and an API token first, made with `gantry user add` and `gantry
    /// token create`.
    async fn start_with(dir: &Path, repo: &Path, max_concurrent: usize, extra: &str, binary: &Path) -> Server {
        Server::start_full(dir, repo.to_str().unwrap(), max_concurrent, extra, binary, None).await
    }

    /// Start `binary` for a repo fetched from `url`.
    async fn start_at(dir: &Path, url: &str, max_concurrent: usize, extra: &str, binary: &Path) -> Server {
        Server::start_full(dir, url, max_concurrent, extra, binary, None).await
    }

    /// [`Server::start_at`], the server's soft open-files limit set to `soft_nofile` when given.
    async fn start_full(
        dir: &Path,
        url: &str,
        max_concurrent: usize,
        extra: &str,
        binary: &Path,
        soft_nofile: Option<u64>,
    ) -> Server {
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let name = format!("{max_concurrent}-{}", listen.port());
        let data = dir.join(format!("data-{name}"));
        let config = dir.join(format!("gantry-{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"{listen}\"\ndata_dir = {:?}\nmax_concurrent_builds = {max_concurrent}\n{extra}\n\
                 [provider.local]\naddresses = \"127.90.0.0/22\"\n\
                 [[repo]]\nname = \"bench\"\nurl = {:?}\nsecret = \"{SECRET}\"\ncancel_superseded = false\n",
                data.to_str().unwrap(),
                url
            ),
        )
        .unwrap();
        // A gantry from before users existed has no `user` command.
        let with_users = Command::new(binary).args(["user", "--help"]).output().is_ok_and(|out| out.status.success());
        let token = if with_users { admin_token(binary, &config) } else { String::new() };
        Server::launch(binary, &config, listen, &token, soft_nofile).await
    }

    /// Run `gantry serve` on `config`, which listens on `listen`, and wait until it answers; its
    /// client sends `token` (none when empty).
    async fn launch(
        binary: &Path,
        config: &Path,
        listen: std::net::SocketAddr,
        token: &str,
        soft_nofile: Option<u64>,
    ) -> Server {
        let with_users = !token.is_empty();
        let mut command = Command::new(binary);
        command.args(["serve", "--config", config.to_str().unwrap()]).env("RUST_LOG", "warn");
        if let Some(soft) = soft_nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    use nix::sys::resource::{getrlimit, setrlimit, Resource};
                    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
                    setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)?;
                    Ok(())
                });
            }
        }
        let child = command.stdin(Stdio::null()).stdout(Stdio::null()).spawn().unwrap();
        let mut headers = reqwest::header::HeaderMap::new();
        if with_users {
            let bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
            headers.insert(reqwest::header::AUTHORIZATION, bearer);
        }
        let http = reqwest::Client::builder().default_headers(headers).build().unwrap();
        let server = Server { child, api: Client { http, base: format!("http://{listen}") }, token: token.to_string() };
        let start = Instant::now();
        while server.api.http.get(server.api.url("/api/repos")).send().await.is_err() {
            assert!(start.elapsed() < READY_DEADLINE, "gantry did not start");
            tokio::time::sleep(POLL_EVERY).await;
        }
        server
    }

    fn rss_kib(&self) -> u64 {
        status_kib(self.child.id(), "VmRSS").unwrap()
    }

    /// Resident memory, anonymous (`RssAnon`) and file-backed (`RssFile`: the binary's and
    /// libraries' pages), in KiB.
    fn rss_split_kib(&self) -> (u64, u64) {
        let pid = self.child.id();
        (status_kib(pid, "RssAnon").unwrap(), status_kib(pid, "RssFile").unwrap())
    }

    /// With `GANTRY_BENCH_SMAPS` set to a directory, copy the server's `/proc/PID/smaps` there as
    /// `NAME.smaps`, to see where its memory is.
    fn dump_smaps(&self, name: &str) {
        if let Some(dir) = std::env::var_os("GANTRY_BENCH_SMAPS") {
            let smaps = std::fs::read(format!("/proc/{}/smaps", self.child.id())).unwrap();
            std::fs::write(Path::new(&dir).join(format!("{name}.smaps")), smaps).unwrap();
        }
    }

    async fn push(&self, sha: &str, delivery: usize) -> i64 {
        let body = serde_json::to_vec(&json!({
            "ref": "refs/heads/main", "before": "0".repeat(40), "after": sha, "deleted": false,
            "repository": { "full_name": "bench/bench", "clone_url": "https://example.invalid/x.git" },
        }))
        .unwrap();
        let headers = client::github_headers(SECRET, "push", &body, &format!("bench-{delivery}"));
        let (status, answer) = self.api.deliver("bench", &headers, body).await;
        assert_eq!(status, 202, "{answer}");
        answer["build"].as_i64().unwrap()
    }

    async fn trigger(&self, branch: &str) -> i64 {
        self.api.trigger("bench", branch).await
    }

    async fn status(&self, id: i64) -> String {
        let build: Value =
            self.api.http.get(self.api.url(&format!("/api/builds/{id}"))).send().await.unwrap().json().await.unwrap();
        build["status"].as_str().unwrap().to_string()
    }

    async fn wait_all(&self, ids: &[i64], mut on_poll: impl FnMut()) {
        let start = Instant::now();
        for &id in ids {
            loop {
                let status = self.status(id).await;
                if !matches!(status.as_str(), "queued" | "provisioning" | "running") {
                    assert_eq!(status, "passed", "build {id}");
                    break;
                }
                assert!(start.elapsed() < BUILD_DEADLINE, "builds did not finish");
                on_poll();
                tokio::time::sleep(POLL_EVERY).await;
            }
        }
    }
}

/// Add the admin with `gantry user add` (password on stdin) and print a token with `gantry token
/// create`, as a person setting up a server would.
fn admin_token(binary: &Path, config: &Path) -> String {
    use std::io::Write;
    let config = config.to_str().unwrap();
    let mut add = Command::new(binary)
        .args(["user", "add", ADMIN, "--admin", "--config", config])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(add.stdin.take().unwrap(), "{ADMIN_PASSWORD}").unwrap();
    assert!(add.wait().unwrap().success(), "gantry user add failed");
    let out =
        Command::new(binary).args(["token", "create", ADMIN, "--label", "bench", "--config", config]).output().unwrap();
    assert!(out.status.success(), "gantry token create: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The same work with plain tools: `git fetch` of the new commit into a bare mirror, a fresh
/// directory, `git archive | tar -x`, `sh -c STEP`. Returns the time with the fetch and without.
fn floor_once(
    repo: &Path,
    mirror: &Path,
    sha: &str,
    work: &Path,
    i: usize,
    fifo: &Path,
    rx: &std::sync::mpsc::Receiver<Instant>,
) -> (Duration, Duration) {
    let start = Instant::now();
    run(Command::new("git").arg("-C").arg(mirror).args(["fetch", "-q"]).arg(repo).arg("+refs/heads/*:refs/heads/*"));
    let fetched = Instant::now();
    let dir = work.join(format!("floor-{i}"));
    std::fs::create_dir(&dir).unwrap();
    run(Command::new("sh").arg("-c").arg(format!(
        "git -C '{}' archive {sha} | tar -x -C '{}'",
        mirror.display(),
        dir.display()
    )));
    run(Command::new("sh").arg("-c").arg(format!("echo x > {}", fifo.display())).current_dir(&dir));
    let at = rx.recv().unwrap();
    (at - start, at - fetched)
}

/// Deliver `count` signed pushes to a server whose remote answers fetches after `delay`, and
/// return how long each took to be answered, sorted.
async fn roundtrips(dir: &Path, repo: &Path, count: usize, delay: Duration) -> Vec<Duration> {
    let base = repo.parent().unwrap();
    let name = repo.file_name().unwrap().to_str().unwrap();
    let remote = slow_remote::SlowRemote::start(base, delay).await;
    let server = Server::start_at(dir, &remote.url(name), 4, "", &gantry_bin()).await;
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        // A different (unknown) commit each time: the same body twice would be a replay.
        let sha = format!("{:040x}", i + 1);
        let start = Instant::now();
        server.push(&sha, 1_000_000 + i).await;
        times.push(start.elapsed());
    }
    times.sort();
    times
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    if args.auth {
        return auth::auth_bench(args.baseline_bin.as_deref(), args.postgres).await;
    }
    if args.logs {
        return logs::logs_bench().await;
    }
    if args.history {
        return history::history_bench().await;
    }
    if args.flood {
        return flood::flood_bench(args.runs.unwrap_or(3), args.bin.as_deref(), args.baseline_bin.as_deref()).await;
    }
    if args.scale {
        return scale::scale_bench(args.runs.unwrap_or(3), args.builds, args.concurrent, args.baseline_bin.as_deref())
            .await;
    }
    if args.idle {
        let bin = args.bin.clone().unwrap_or_else(gantry_bin);
        return idle::idle_bench(args.runs.unwrap_or(5), &bin, args.baseline_bin.as_deref());
    }
    let dir = tempfile::TempDir::new().unwrap();
    // Host steps may run as an unprivileged user: let them reach the FIFO.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let fifo = dir.path().join("started");
    run(Command::new("mkfifo").arg("-m").arg("666").arg(&fifo));
    let rx = fifo_reader(&fifo);
    let (repo, _) = make_repo(dir.path(), &fifo);

    // 0. The webhook's round trip while the remote takes seconds to answer a fetch.
    let answers = roundtrips(dir.path(), &repo, args.roundtrips, args.remote_delay).await;

    // 1. Latency, webhook → first command of the step, one build (of a new commit) at a time.
    let server = Server::start(dir.path(), &repo, 4).await;
    let idle_rss = server.rss_kib();
    let mut latencies = Vec::with_capacity(args.builds);
    let mut floors = Vec::with_capacity(args.builds);
    let mut floors_without_fetch = Vec::with_capacity(args.builds);
    let work = dir.path().join("floor");
    std::fs::create_dir(&work).unwrap();
    let mirror = dir.path().join("floor-mirror.git");
    run(Command::new("git").args(["init", "-q", "--bare"]).arg(&mirror));
    run(Command::new("git").arg("-C").arg(&mirror).args(["fetch", "-q"]).arg(&repo).arg("+refs/heads/*:refs/heads/*"));
    for i in 0..args.builds {
        let sha = new_commit(&repo, i);
        let start = Instant::now();
        let id = server.push(&sha, i).await;
        let at = rx.recv_timeout(BUILD_DEADLINE).expect("the step never ran");
        latencies.push(at - start);
        server.wait_all(&[id], || {}).await;
        // Interleaved with the builds so both see the same machine.
        let (with_fetch, without_fetch) = floor_once(&repo, &mirror, &sha, &work, i, &fifo, &rx);
        floors.push(with_fetch);
        floors_without_fetch.push(without_fetch);
    }
    latencies.sort();
    floors.sort();
    floors_without_fetch.sort();
    let idle_after_rss = server.rss_kib();

    // 2. Throughput: every build queued at once.
    let start = Instant::now();
    let mut ids = Vec::with_capacity(args.builds);
    for _ in 0..args.builds {
        ids.push(server.trigger("trivial").await);
    }
    server.wait_all(&ids, || {}).await;
    let throughput = args.builds as f64 / start.elapsed().as_secs_f64();
    drop(server);

    // 3. Memory while `concurrent` builds run at once.
    let server = Server::start(dir.path(), &repo, args.concurrent).await;
    let mut ids = Vec::with_capacity(args.concurrent);
    for _ in 0..args.concurrent {
        ids.push(server.trigger("hold").await);
    }
    let mut peak_rss = server.rss_kib();
    let mut last_sample = Instant::now();
    let pid = server.child.id();
    server
        .wait_all(&ids, || {
            if last_sample.elapsed() >= RSS_SAMPLE_EVERY {
                last_sample = Instant::now();
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(kib) = status
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    {
                        peak_rss = peak_rss.max(kib);
                    }
                }
            }
        })
        .await;

    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let (f50, f99) = (percentile(&floors, 0.5), percentile(&floors, 0.99));
    let (n50, n99) = (percentile(&floors_without_fetch, 0.5), percentile(&floors_without_fetch, 0.99));
    println!("| measure ({} builds, {} round trips) | Gantry | plain tools | ratio |", args.builds, args.roundtrips);
    println!("|---|---|---|---|");
    let delay = humantime::format_duration(args.remote_delay);
    println!("| webhook round trip, remote answering after {delay}, p50 | {} | | |", ms(percentile(&answers, 0.5)));
    println!("| webhook round trip, remote answering after {delay}, p99 | {} | | |", ms(percentile(&answers, 0.99)));
    println!(
        "| webhook → step running, p50 | {} | {} | {:.2}× |",
        ms(p50),
        ms(f50),
        p50.as_secs_f64() / f50.as_secs_f64()
    );
    println!(
        "| webhook → step running, p99 | {} | {} | {:.2}× |",
        ms(p99),
        ms(f99),
        p99.as_secs_f64() / f99.as_secs_f64()
    );
    println!("| plain tools without the fetch, p50 / p99 | | {} / {} | |", ms(n50), ms(n99));
    println!("| trivial builds per second | {throughput:.1} | | |");
    println!(
        "| server RSS idle (start / after the latency run) | {:.1} / {:.1} MiB | | |",
        idle_rss as f64 / 1024.0,
        idle_after_rss as f64 / 1024.0
    );
    println!("| server RSS peak, {} concurrent builds | {:.1} MiB | | |", args.concurrent, peak_rss as f64 / 1024.0);
}

/// A `KiB` field of `/proc/PID/status` (`VmRSS`, `RssAnon`, …); `None` once the process is gone.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
