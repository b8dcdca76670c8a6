//! `cargo bench -p gantry --bench builds -- --logs`: what build logs cost the server.
//!
//! 1. Log lines stored per second for one build whose step prints `seq 1000000`: a million
//!    lines over the time from the step's start to the build's end (every line stored).
//! 2. Produced-to-received latency of a log line over the event stream: a step prints the time
//!    (`date +%s%N`) every 10 ms, a client following `GET /api/builds/{id}/events` notes when
//!    each line arrives; p50 and p99 of the differences (one machine, one clock).
//! 3. The server's resident memory while [`FOLLOWERS`] clients follow a 200,000-line build
//!    (each reads every event to the end), and after it; then, on a fresh server, before and
//!    after a build of 2,000,000 lines that nobody follows.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::sse::connect;
use super::{git, ms, percentile, Server, BUILD_DEADLINE, POLL_EVERY, RSS_SAMPLE_EVERY};

/// Clients following the 200,000-line build.
const FOLLOWERS: usize = 20;

/// Lines the latency step prints, one every 10 ms.
const LATENCY_LINES: usize = 300;

/// A repository with one branch per measured pipeline.
fn repo(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("logs-repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let branches = [
        ("million", "seq 1 1000000".to_string()),
        ("latency", format!("for i in $(seq 1 {LATENCY_LINES}); do date +%s%N; sleep 0.01; done")),
        ("follow", "seq 1 200000 | sed 's/$/ a log line of a typical length, with some words in it/'".to_string()),
        ("two-million", "seq 1 2000000".to_string()),
    ];
    for (branch, step) in branches {
        git(&repo, &["checkout", "-q", "-B", branch]);
        let pipeline =
            format!("version: 1\nhosts:\n  app: {{}}\nstages:\n  - name: step\n    host: app\n    run: {step:?}\n");
        std::fs::write(repo.join(".gantry.yml"), pipeline).unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["-c", "user.name=b", "-c", "user.email=b@b.invalid", "commit", "-q", "-m", branch]);
    }
    repo
}

async fn build_json(server: &Server, id: i64) -> Value {
    server.api.http.get(server.api.url(&format!("/api/builds/{id}"))).send().await.unwrap().json().await.unwrap()
}

/// Wait for build `id` to pass, sampling the server's RSS meanwhile; the build and the peak RSS.
async fn finish(server: &Server, id: i64) -> (Value, u64) {
    let start = Instant::now();
    let mut peak = server.rss_kib();
    loop {
        let build = build_json(server, id).await;
        peak = peak.max(server.rss_kib());
        if !matches!(build["status"].as_str(), Some("queued" | "provisioning" | "running")) {
            assert_eq!(build["status"], "passed", "{build:#}");
            return (build, peak);
        }
        assert!(start.elapsed() < BUILD_DEADLINE, "the build did not finish");
        tokio::time::sleep(RSS_SAMPLE_EVERY.max(POLL_EVERY)).await;
    }
}

fn time_of(value: &Value) -> SystemTime {
    humantime::parse_rfc3339(value.as_str().unwrap()).unwrap()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Let the server settle (its idle tasks, the allocator) before reading its RSS.
async fn settled_rss(server: &Server) -> u64 {
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.rss_kib()
}

pub async fn logs_bench() {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let repo = repo(dir.path());
    let server = Server::start_with(dir.path(), &repo, 4, "", Path::new(env!("CARGO_BIN_EXE_gantry"))).await;
    let idle = settled_rss(&server).await;

    // 1. A million lines stored.
    let id = server.trigger("million").await;
    let (build, _) = finish(&server, id).await;
    let step = build["stages"].as_array().unwrap().iter().find(|s| s["name"] == "step").unwrap().clone();
    let took = time_of(&build["finished_at"]).duration_since(time_of(&step["started_at"])).unwrap();
    let lines_per_second = 1_000_000.0 / took.as_secs_f64();

    // 2. Latency of a line over the event stream.
    let id = server.trigger("latency").await;
    let (_, stream) = connect(&server.api.http, &server.api.url(&format!("/api/builds/{id}/events")), None).await;
    let mut stream = stream.unwrap();
    let mut latencies = Vec::with_capacity(LATENCY_LINES);
    while let Some(event) = stream.next().await {
        if event.event != "log" {
            continue;
        }
        let Ok(produced) = event.json()["text"].as_str().unwrap().parse::<u128>() else { continue };
        let received = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        latencies.push(Duration::from_nanos(received.saturating_sub(produced) as u64));
    }
    latencies.sort();

    // 3. Memory while 20 clients follow a 200,000-line build, and after it.
    let before_follow = settled_rss(&server).await;
    let id = server.trigger("follow").await;
    let url = server.api.url(&format!("/api/builds/{id}/events"));
    let mut followers = Vec::new();
    for _ in 0..FOLLOWERS {
        let http = server.api.http.clone();
        let url = url.clone();
        followers.push(tokio::spawn(async move {
            // Each follows from the build's first event, resuming when it was dropped.
            let mut last = 0;
            let mut lines = 0usize;
            loop {
                let (status, stream) = connect(&http, &url, Some(last)).await;
                if status == 204 {
                    return lines;
                }
                let mut stream = stream.unwrap();
                while let Some(event) = stream.next().await {
                    last = event.seq();
                    lines += usize::from(event.event == "log");
                }
            }
        }));
    }
    let (_, follow_peak) = finish(&server, id).await;
    let mut peak = follow_peak;
    for follower in followers {
        let lines = follower.await.unwrap();
        assert!(lines >= 200_000, "a follower got {lines} lines");
        peak = peak.max(server.rss_kib());
    }
    let after_follow = settled_rss(&server).await;
    let split_follow = server.rss_split_kib();
    server.dump_smaps("after-follow");
    drop(server);

    // 4. Before and after 2,000,000 lines nobody follows.
    let big = Server::start_with(
        dir.path(),
        &repo,
        4,
        "[logs]\nmax_lines_per_step = 2000000\n",
        Path::new(env!("CARGO_BIN_EXE_gantry")),
    )
    .await;
    let big_before = settled_rss(&big).await;
    let split_before = big.rss_split_kib();
    big.dump_smaps("before");
    let id = big.trigger("two-million").await;
    let (_, big_peak) = finish(&big, id).await;
    let big_after = settled_rss(&big).await;
    let split_after = big.rss_split_kib();
    big.dump_smaps("after");

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| log lines stored per second (`seq 1000000`, step start → build end) | {lines_per_second:.0} ({:.2} s) |",
        took.as_secs_f64()
    );
    println!(
        "| log line produced → received over the event stream, p50 / p99 ({} lines) | {} / {} |",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99))
    );
    println!("| server RSS idle at start | {} |", mib(idle));
    println!(
        "| server RSS before / peak while {FOLLOWERS} clients follow a 200,000-line build / after | {} / {} / {} |",
        mib(before_follow),
        mib(peak),
        mib(after_follow)
    );
    println!(
        "| of which anonymous / file-backed, after the 20 clients | {} / {} |",
        mib(split_follow.0),
        mib(split_follow.1)
    );
    println!(
        "| server RSS before / peak / after a 2,000,000-line build (fresh server) | {} / {} / {} |",
        mib(big_before),
        mib(big_peak),
        mib(big_after)
    );
    println!(
        "| of which anonymous / file-backed, before and after the 2,000,000-line build | {} / {} → {} / {} |",
        mib(split_before.0),
        mib(split_before.1),
        mib(split_after.0),
        mib(split_after.1)
    );
}
