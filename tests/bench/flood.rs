//! `cargo bench -p gantry --bench builds -- --flood [--runs N] [--bin PATH] [--baseline-bin PATH]`: what hostile
//! traffic that costs its sender nothing costs the server.
//!
//! 1. Memory: [`FLOOD_BODIES`] forged webhooks (a GitHub push with a wrong signature) of
//!    [`FLOOD_BODY_BYTES`] each, sent at once on their own connections; the server's resident
//!    memory idle before, its peak during (sampled every [`RSS_SAMPLE_EVERY`]), and
//!    [`SETTLE`] after the last answer; and how the requests were answered.
//! 2. Connections: the server started with a soft open-files limit of [`SOFT_NOFILE`] (a common
//!    default), then [`IDLE_CONNECTIONS`] connections opened that never send anything; how many
//!    of them the server holds (its file descriptors, from `/proc/PID/fd`, less those it had
//!    before), and the latency of [`PROBES`] dashboard requests (`GET /` with a token, each on a
//!    new connection) while they are open, and how many of those got no answer within
//!    [`PROBE_DEADLINE`]. This binary is given long header and idle timeouts here, so what is
//!    measured is the connection cap, not the timeouts.
//!
//! Each is done `--runs` times (3 by default) on a fresh server; the medians are printed. With
//! `--baseline-bin`, an older `gantry` (before `[http]` existed) is measured the same way; with
//! `--bin`, that `gantry` is measured instead of the one cargo built.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{make_repo, ms, percentile, Server};

/// Forged webhooks sent at once.
pub const FLOOD_BODIES: usize = 128;

/// The size of each: the largest webhook the server accepts.
pub const FLOOD_BODY_BYTES: usize = 8 * 1024 * 1024;

/// How often the server's resident memory is read during the flood.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// How long after the flood's last answer its "after" memory is read.
pub const SETTLE: Duration = Duration::from_secs(5);

/// How long one forged delivery may take before the benchmark gives up on it.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(120);

/// The soft open-files limit the server is started with in the connections measure.
pub const SOFT_NOFILE: u64 = 1024;

/// Idle connections opened in the connections measure: more than [`SOFT_NOFILE`].
pub const IDLE_CONNECTIONS: usize = 1500;

/// Dashboard requests timed while the idle connections are open.
pub const PROBES: usize = 200;

/// A probe unanswered after this long counts as refused.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// How long opening one idle connection may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(1);

/// Idle connections given up on before the benchmark stops opening more.
const MAX_CONNECT_FAILURES: usize = 5;

/// This binary's `[http]` section in the connections measure: the cap, not the timeouts.
const LONG_TIMEOUTS: &str = "\n[http]\nheader_timeout = \"10m\"\nidle_timeout = \"10m\"\n";

struct MemoryRun {
    idle_kib: u64,
    peak_kib: u64,
    after_kib: u64,
    answers: std::collections::BTreeMap<String, usize>,
    took: Duration,
}

struct ConnectionsRun {
    nofile: String,
    /// Idle connections the client managed to open (the rest timed out connecting).
    opened: usize,
    held: usize,
    closed_by_server: usize,
    p50: Duration,
    p99: Duration,
    unanswered: usize,
}

pub async fn flood_bench(runs: usize, bin: Option<&Path>, baseline: Option<&Path>) {
    let dir = tempfile::TempDir::new().unwrap();
    let fifo = dir.path().join("unused-fifo");
    let (repo, _) = make_repo(dir.path(), &fifo);
    let ours = bin.unwrap_or(Path::new(env!("CARGO_BIN_EXE_gantry")));
    let mut binaries = vec![("this gantry", ours)];
    if let Some(baseline) = baseline {
        binaries.push(("baseline", baseline));
    }
    for (name, binary) in binaries {
        let mut memory = Vec::new();
        let mut connections = Vec::new();
        for run in 0..runs {
            let server = Server::start_full(dir.path(), repo.to_str().unwrap(), 4, "", binary, None).await;
            let measured = memory_flood(&server).await;
            eprintln!(
                "{name} run {}: idle {} peak {} after {} ({:?}) {:?}",
                run + 1,
                mib(measured.idle_kib),
                mib(measured.peak_kib),
                mib(measured.after_kib),
                measured.took,
                measured.answers
            );
            memory.push(measured);
            drop(server);
            let extra = if binary == ours { LONG_TIMEOUTS } else { "" };
            let server =
                Server::start_full(dir.path(), repo.to_str().unwrap(), 4, extra, binary, Some(SOFT_NOFILE)).await;
            let measured = idle_connections(&server).await;
            eprintln!(
                "{name} run {}: {} opened, {} held, {} closed, p50 {} p99 {}, {} unanswered",
                run + 1,
                measured.opened,
                measured.held,
                measured.closed_by_server,
                ms(measured.p50),
                ms(measured.p99),
                measured.unanswered
            );
            connections.push(measured);
        }
        report(name, &memory, &connections);
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn median<T: Copy + Ord>(values: impl Iterator<Item = T>) -> T {
    let mut values: Vec<T> = values.collect();
    values.sort();
    values[values.len() / 2]
}

fn report(name: &str, memory: &[MemoryRun], connections: &[ConnectionsRun]) {
    let runs = memory.len();
    let header: Vec<String> = (1..=runs).map(|i| format!("run {i}")).collect();
    println!("\n{name}: {FLOOD_BODIES} forged webhooks of {} MiB at once", FLOOD_BODY_BYTES / (1024 * 1024));
    println!("| measure | {} | median |", header.join(" | "));
    println!("|---|{}---|", "---|".repeat(runs));
    let row = |label: &str, values: Vec<u64>, show: &dyn Fn(u64) -> String| {
        let cells: Vec<String> = values.iter().map(|&v| show(v)).collect();
        println!("| {label} | {} | {} |", cells.join(" | "), show(median(values.iter().copied())));
    };
    row("RSS idle before", memory.iter().map(|m| m.idle_kib).collect(), &mib);
    row("RSS peak during", memory.iter().map(|m| m.peak_kib).collect(), &mib);
    row(&format!("RSS {} s after", SETTLE.as_secs()), memory.iter().map(|m| m.after_kib).collect(), &mib);
    let millis = |v: u64| format!("{v} ms");
    row(
        "flood duration",
        memory.iter().map(|m| u64::try_from(m.took.as_millis()).unwrap_or(u64::MAX)).collect(),
        &millis,
    );
    for (i, m) in memory.iter().enumerate() {
        println!("answers, run {}: {:?}", i + 1, m.answers);
    }
    println!("\n{name}: {IDLE_CONNECTIONS} idle connections, soft open-files limit {SOFT_NOFILE} at start");
    println!("| measure | {} | median |", header.join(" | "));
    println!("|---|{}---|", "---|".repeat(runs));
    let count = |v: u64| v.to_string();
    println!(
        "| open-files limit (soft/hard) | {} | |",
        connections.iter().map(|c| c.nofile.clone()).collect::<Vec<_>>().join(" | ")
    );
    row("idle connections opened", connections.iter().map(|c| c.opened as u64).collect(), &count);
    row("idle connections held", connections.iter().map(|c| c.held as u64).collect(), &count);
    row("closed by the server", connections.iter().map(|c| c.closed_by_server as u64).collect(), &count);
    let micros = |v: u64| ms(Duration::from_micros(v));
    let as_micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    row(&format!("dashboard p50 ({PROBES} probes)"), connections.iter().map(|c| as_micros(c.p50)).collect(), &micros);
    row("dashboard p99", connections.iter().map(|c| as_micros(c.p99)).collect(), &micros);
    row(
        &format!("probes unanswered within {} s", PROBE_DEADLINE.as_secs()),
        connections.iter().map(|c| c.unanswered as u64).collect(),
        &count,
    );
}

/// The flood of item 1, against `server`.
async fn memory_flood(server: &Server) -> MemoryRun {
    // Warm up: the first requests allocate the pools and caches an idle server keeps.
    for _ in 0..20 {
        server.api.http.get(server.api.url("/")).send().await.unwrap().bytes().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = server.child.id();
    let idle_kib = server.rss_kib();
    let body: Arc<Vec<u8>> = Arc::new(vec![b' '; FLOOD_BODY_BYTES]);
    let address = server.api.base.trim_start_matches("http://").to_string();
    let peak = Arc::new(AtomicU64::new(idle_kib));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = super::status_kib(pid, "VmRSS") {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(RSS_SAMPLE_EVERY).await;
            }
        })
    };
    let start = Instant::now();
    let deliveries: Vec<_> =
        (0..FLOOD_BODIES).map(|i| tokio::spawn(forged_delivery(address.clone(), Arc::clone(&body), i))).collect();
    let mut answers = std::collections::BTreeMap::new();
    for delivery in deliveries {
        *answers.entry(delivery.await.unwrap()).or_insert(0) += 1;
    }
    let took = start.elapsed();
    tokio::time::sleep(SETTLE).await;
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    MemoryRun { idle_kib, peak_kib: peak.load(Ordering::Relaxed), after_kib: server.rss_kib(), answers, took }
}

/// One forged delivery: the head and body written while the answer is read, so an answer sent
/// before the body was read is seen. What it got: a status code, or how the connection ended.
async fn forged_delivery(address: String, body: Arc<Vec<u8>>, i: usize) -> String {
    let stream = match TcpStream::connect(&address).await {
        Ok(stream) => stream,
        Err(error) => return format!("connect failed: {}", error.kind()),
    };
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /hooks/bench HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: push\r\nX-GitHub-Delivery: flood-{i}\r\nX-Hub-Signature-256: sha256={}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        "0".repeat(64),
        body.len()
    );
    let writer = tokio::spawn(async move {
        let _ = write.write_all(head.as_bytes()).await;
        let _ = write.write_all(&body).await;
        // Kept open until the answer is read: a half-closed connection may be taken for a gone one.
        tokio::time::sleep(DELIVERY_DEADLINE).await;
        drop(write);
    });
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    let outcome = tokio::time::timeout(DELIVERY_DEADLINE, async {
        loop {
            match read.read(&mut buffer).await {
                Ok(0) => return None,
                Ok(n) => {
                    answer.extend_from_slice(&buffer[..n]);
                    if answer.len() >= 12 {
                        return Some(String::from_utf8_lossy(&answer[9..12]).to_string());
                    }
                }
                Err(error) => return Some(format!("{:?}", error.kind())),
            }
        }
    })
    .await;
    writer.abort();
    match outcome {
        Ok(Some(status)) => status,
        Ok(None) => "closed without an answer".to_string(),
        Err(_) => "no answer in time".to_string(),
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|entries| entries.count()).unwrap_or(0)
}

/// The measure of item 2, against `server` (started with the low soft limit).
async fn idle_connections(server: &Server) -> ConnectionsRun {
    let pid = server.child.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().skip(3).take(2).collect::<Vec<_>>().join("/"))
        .unwrap_or_default();
    // The dashboard's own pools are warm before the idle connections arrive.
    server.api.http.get(server.api.url("/")).send().await.unwrap().bytes().await.unwrap();
    let before = open_fds(pid);
    let address = server.api.base.trim_start_matches("http://").to_string();
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    let mut failed = 0;
    for _ in 0..IDLE_CONNECTIONS {
        // A server that stopped accepting leaves its backlog full: connecting then times out.
        match tokio::time::timeout(CONNECT_DEADLINE, TcpStream::connect(&address)).await {
            Ok(Ok(stream)) => idle.push(stream),
            _ => {
                failed += 1;
                if failed >= MAX_CONNECT_FAILURES {
                    break;
                }
            }
        }
    }
    // Let the server accept what it will.
    let mut last = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = open_fds(pid);
        if now == last {
            break;
        }
        last = now;
    }
    let held = open_fds(pid).saturating_sub(before);

    let bearer = format!("Bearer {}", server.token);
    let probe_client = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(PROBE_DEADLINE).build().unwrap();
    let mut latencies = Vec::with_capacity(PROBES);
    let mut unanswered = 0;
    for _ in 0..PROBES {
        let start = Instant::now();
        let answer = probe_client.get(server.api.url("/")).header(reqwest::header::AUTHORIZATION, &bearer).send().await;
        let answered = match answer {
            Ok(response) => response.status() == 200 && response.bytes().await.is_ok(),
            Err(_) => false,
        };
        if answered {
            latencies.push(start.elapsed());
        } else {
            unanswered += 1;
        }
    }
    latencies.sort();
    let closed_by_server = idle
        .iter()
        .filter(|stream| {
            // End of file, a reset, or the bare 503 of a refused connection; WouldBlock: still open.
            let mut byte = [0u8; 1];
            !matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    let (p50, p99) = if latencies.is_empty() {
        (PROBE_DEADLINE, PROBE_DEADLINE)
    } else {
        (percentile(&latencies, 0.5), percentile(&latencies, 0.99))
    };
    ConnectionsRun { nofile, opened: idle.len(), held, closed_by_server, p50, p99, unanswered }
}
