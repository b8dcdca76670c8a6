//! The server under a bounded flood of everything that costs an attacker nothing: idle
//! connections, heads and bodies sent a byte at a time, bodies over the size limit, and forged
//! webhooks, together more connections than the server's cap, while real builds run. The builds
//! pass, a signed push gets through, the dashboard answers every probe within a second, and
//! afterwards the server's resident memory and open file descriptors (read from
//! `/proc/PID/status` and `/proc/PID/fd` of the real binary) come back to where they started.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::hardening::{
    dashboard_answers, forged_gitlab_head, fresh_connection_client, read_until_closed, status_and_header,
    CLOSE_DEADLINE, TRICKLE_EVERY,
};
use crate::helpers::*;

/// How long the flood lasts.
const FLOOD_FOR: Duration = Duration::from_secs(20);

/// How often the dashboard is probed during the flood.
const PROBE_EVERY: Duration = Duration::from_millis(200);

/// How long memory and file descriptors may take to come back after the flood.
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

/// How far above where it started the server's resident memory may settle.
const RSS_TOLERANCE_KIB: u64 = 10 * 1024;

/// The server's limits: a cap the flood exceeds, and timeouts short enough to matter in seconds.
const HTTP: &str = "\n[http]\nmax_connections = 64\nheader_timeout = \"2s\"\nidle_timeout = \"1s\"\n\
                    body_timeout = \"3s\"\nbody_budget_bytes = 8_388_608\nbody_budget_wait = \"250ms\"\n";

/// Attackers of each kind, each on a connection of its own at a time.
const IDLE: usize = 40;
const SLOW_HEADS: usize = 40;
const SLOW_BODIES: usize = 16;
const OVERSIZED: usize = 2;
const FORGED: usize = 6;

/// A body over the webhook limit (8 MiB), and a forged one under it.
const OVERSIZED_BYTES: usize = 12 * 1024 * 1024;
const FORGED_BYTES: usize = 2 * 1024 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Connect, then send nothing until the server closes the connection; again, until `stop`.
async fn idle(address: String, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let Ok(mut stream) = TcpStream::connect(&address).await else { continue };
        tokio::select! {
            () = stop.cancelled() => return,
            _ = read_until_closed(&mut stream, CLOSE_DEADLINE) => {}
        }
    }
}

/// Send `head`, then one byte of `trickle` at a time until the server closes the connection;
/// again, until `stop`.
async fn slow(address: String, head: String, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let Ok(mut stream) = TcpStream::connect(&address).await else { continue };
        if stream.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        let mut buffer = [0u8; 1024];
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                read = stream.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
                () = tokio::time::sleep(TRICKLE_EVERY) => {
                    if stream.write_all(b"a").await.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

/// Deliver forged bodies of `bytes` one after another until `stop`; the statuses answered.
async fn forged(address: String, bytes: usize, stop: CancellationToken) -> Vec<u16> {
    let body = Arc::new(vec![b' '; bytes]);
    let mut statuses = Vec::new();
    while !stop.is_cancelled() {
        let Ok(stream) = TcpStream::connect(&address).await else { continue };
        let (mut read, mut write) = stream.into_split();
        let head = forged_gitlab_head(address.parse().unwrap(), bytes, true);
        let body = Arc::clone(&body);
        // Written while the answer is read: a refusal may come before the body is read.
        let writer = tokio::spawn(async move {
            let _ = write.write_all(head.as_bytes()).await;
            let _ = write.write_all(&body).await;
            write
        });
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(CLOSE_DEADLINE, read.read_to_end(&mut answer)).await;
        writer.abort();
        // 0 when the connection was closed without an answer.
        statuses.push(status_and_header(&answer, "").0);
    }
    statuses
}

#[tokio::test]
async fn a_flood_of_idle_slow_oversized_and_forged_connections_while_builds_run() {
    let repo = TestRepo::new();
    let pipeline = one_stage_pipeline("for i in 1 2 3 4 5; do echo line $i; sleep 0.3; done");
    let sha = repo.commit("main", &[(".gantry.yml", &pipeline)]);
    // A branch per build: a newer build of a branch supersedes the one before it.
    for branch in ["one", "two"] {
        repo.commit(branch, &[(".gantry.yml", &pipeline)]);
    }
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("gantry.toml");
    std::fs::write(&config, format!("{}{HTTP}", config_toml(dir.path(), &[RepoConfig::new("shop", &repo)], 2)))
        .unwrap();
    let log = std::fs::File::create(dir.path().join("gantry.log")).unwrap();
    let listen = free_loopback_port();
    let server = ServerProcess::start_logging(&config, &listen, &[("RUST_LOG", "warn")], Stdio::from(log)).await;
    let pid = server.pid();
    let token = crate::helpers::cli_admin_token(&config);
    // A new connection for every call: a kept-alive one may be closed by the server just as a
    // request goes out on it (it is idle, and the flood keeps the server at its cap), and a
    // client cannot tell whether a POST it sent that way was received.
    let api = crate::client::Client { http: fresh_connection_client(&token), base: server.base.clone() };
    let address: std::net::SocketAddr = listen.parse().unwrap();

    // Warm up with what the server does on an ordinary day: a build, the dashboard read by a
    // few clients at once (the database's read pool opens its connections).
    let warm = api.trigger("shop", "main").await;
    wait_until_final(&api, warm).await;
    let dashboard = fresh_connection_client(&token);
    futures::future::join_all((0..16).map(|_| dashboard_answers(&dashboard, address))).await;
    let start_rss = rss_kib(pid);
    let start_fds = open_fds(pid);

    let stop = CancellationToken::new();
    let mut attackers = Vec::new();
    for _ in 0..IDLE {
        attackers.push(tokio::spawn(idle(listen.clone(), stop.clone())));
    }
    for _ in 0..SLOW_HEADS {
        let head = format!("GET / HTTP/1.1\r\nHost: {listen}\r\nX-Slow: ");
        attackers.push(tokio::spawn(slow(listen.clone(), head, stop.clone())));
    }
    for _ in 0..SLOW_BODIES {
        let head = forged_gitlab_head(address, 1024 * 1024, true);
        attackers.push(tokio::spawn(slow(listen.clone(), head, stop.clone())));
    }
    let mut floods = Vec::new();
    for _ in 0..OVERSIZED {
        floods.push(tokio::spawn(forged(listen.clone(), OVERSIZED_BYTES, stop.clone())));
    }
    for _ in 0..FORGED {
        floods.push(tokio::spawn(forged(listen.clone(), FORGED_BYTES, stop.clone())));
    }

    // Builds queued through the API and by a signed push, while the flood goes on.
    let started = Instant::now();
    let mut builds = vec![api.trigger("shop", "one").await, api.trigger("shop", "two").await];
    let push = push_payload("github-push.json", "refs/heads/main", &sha);
    let mut slowest = Duration::ZERO;
    let mut probes = 0;
    let pushed = loop {
        let (status, answer) =
            api.deliver("shop", &github_headers("push", &push, &unique_delivery()), push.clone()).await;
        if status == 202 {
            break answer["build"].as_i64().unwrap();
        }
        // A forge whose delivery is refused for now delivers it again later.
        assert_eq!(status, 503, "{answer}");
        assert!(started.elapsed() < FLOOD_FOR, "the signed push never got through");
        slowest = slowest.max(dashboard_answers(&dashboard, address).await);
        probes += 1;
    };
    builds.push(pushed);
    while started.elapsed() < FLOOD_FOR {
        slowest = slowest.max(dashboard_answers(&dashboard, address).await);
        probes += 1;
        tokio::time::sleep(PROBE_EVERY).await;
    }
    let peak_fds = open_fds(pid);
    let peak_rss = rss_kib(pid);
    stop.cancel();
    for attacker in attackers {
        attacker.await.unwrap();
    }
    let mut statuses = std::collections::BTreeMap::new();
    for flood in floods {
        for status in flood.await.unwrap() {
            *statuses.entry(status).or_insert(0) += 1;
        }
    }
    eprintln!("soak: {probes} probes, slowest {slowest:?}; forged and oversized answers {statuses:?}");
    eprintln!(
        "soak: at the end of the flood {peak_fds} fds, {peak_rss} KiB; at the start {start_fds}, {start_rss} KiB"
    );
    assert!(statuses.contains_key(&401), "forged deliveries were read and refused: {statuses:?}");
    assert!(statuses.contains_key(&413), "oversized deliveries were refused: {statuses:?}");
    // 0: closed without an answer, to make room for another connection while it was reading.
    assert!(statuses.keys().all(|s| [0, 401, 413, 503].contains(s)), "nothing else: {statuses:?}");

    for id in builds {
        let build = wait_until_final(&api, id).await;
        assert_eq!(build["status"], "passed", "{build:#}");
    }
    assert_settles(pid, start_rss, start_fds).await;
    dashboard_answers(&dashboard, address).await;
}

async fn wait_until_final(api: &crate::client::Client, id: i64) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let build: serde_json::Value =
            api.http.get(api.url(&format!("/api/builds/{id}"))).send().await.unwrap().json().await.unwrap();
        if is_final(&build["status"]) {
            return build;
        }
        assert!(started.elapsed() < BUILD_DEADLINE, "build {id} never finished: {build:#}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Wait until the server's resident memory is within [`RSS_TOLERANCE_KIB`] of `start_rss` and it
/// holds no more file descriptors than `start_fds`, or fail.
async fn assert_settles(pid: u32, start_rss: u64, start_fds: usize) {
    let started = Instant::now();
    loop {
        let (rss, fds) = (rss_kib(pid), open_fds(pid));
        if rss <= start_rss + RSS_TOLERANCE_KIB && fds <= start_fds {
            eprintln!("soak: settled after {:?} at {fds} fds, {rss} KiB", started.elapsed());
            return;
        }
        assert!(
            started.elapsed() < SETTLE_DEADLINE,
            "the server holds {fds} file descriptors (started with {start_fds}) and {rss} KiB (started with \
             {start_rss} KiB); open: {:?}",
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}
