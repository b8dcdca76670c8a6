//! `cargo bench -p gantry --bench builds -- --history`: whether the pages stay as fast with a long
//! history as with a short one.
//!
//! For each size in [`SIZES`] a fresh server (the real release binary) gets that many finished
//! builds of one repo, each with five steps, written straight into its database in one statement
//! (a fixture: queueing 100,000 real builds would take hours), then answers the requests of
//! [`REQUESTS`]: the repo page (its history table and stage grid), a page of it deep in the
//! history, a filtered one, the JSON list, the repo list, the badge and the metrics. Each request
//! is timed [`SAMPLES`] times per run over [`RUNS`] runs; the table shows the median of the runs'
//! medians for each size.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::{git, ms, percentile, Server};

/// The history sizes compared.
const SIZES: [i64; 2] = [100, 100_000];

/// Runs per size; each gives a median per request.
const RUNS: usize = 3;

/// Timed requests of each kind per run.
const SAMPLES: usize = 50;

/// Untimed requests before the first run, so caches are warm on both sizes alike.
const WARMUP: usize = 20;

/// What is timed, by name: `{mid}` is replaced by the id of a build in the middle of the history.
const REQUESTS: [(&str, &str); 7] = [
    ("repo page (newest 50)", "/repos/bench"),
    ("repo page deep in the history", "/repos/bench?before={mid}"),
    ("repo page, branch main only", "/repos/bench?branch=main"),
    ("GET /api/repos/bench/builds", "/api/repos/bench/builds"),
    ("repo list", "/"),
    ("badge", "/badge/bench.svg"),
    ("metrics", "/metrics"),
];

/// A repository whose `main` runs `true`.
fn repo(dir: &Path) -> PathBuf {
    let repo = dir.join("history-repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let pipeline = "version: 1\nhosts:\n  app: {}\nstages:\n  - name: step\n    host: app\n    run: \"true\"\n";
    std::fs::write(repo.join(".gantry.yml"), pipeline).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["-c", "user.name=b", "-c", "user.email=b@b.invalid", "commit", "-q", "-m", "main"]);
    repo
}

/// Write `count` finished builds of `bench` (every seventh failed, branches `main`, `dev` and a
/// hundred topics by turns), each with five steps, into the server's database under `data`.
async fn seed(data: &Path, count: i64) {
    let options = SqliteConnectOptions::new().filename(data.join("gantry.db")).busy_timeout(Duration::from_secs(30));
    let mut conn = options.connect().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO builds (repo, number, commit_sha, branch, ref_kind, trigger, status, created_at, started_at, \
                             finished_at) \
         SELECT 'bench', i, printf('%040x', i), \
                CASE i % 4 WHEN 0 THEN 'dev' WHEN 1 THEN 'topic-' || (i % 100) ELSE 'main' END, 'branch', \
                CASE WHEN i % 13 = 0 THEN 'manual' ELSE 'push' END, \
                CASE WHEN i % 7 = 0 THEN 'failed' ELSE 'passed' END, \
                1700000000000 + i * 60000, 1700000000000 + i * 60000 + 100, 1700000000000 + i * 60000 + 5000 \
         FROM n",
    )
    .bind(count)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "WITH k(idx, kind, name) AS (VALUES (0, 'provision', 'provision:app'), (1, 'push', 'push:app'), \
           (2, 'stage', 'build'), (3, 'stage', 'test'), (4, 'teardown', 'teardown:app')) \
         INSERT INTO steps (build_id, idx, kind, name, host, status, exit_code, started_at, finished_at) \
         SELECT b.id, k.idx, k.kind, k.name, 'app', 'passed', 0, b.started_at + k.idx * 900, \
                b.started_at + k.idx * 900 + 800 \
         FROM builds b, k",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    conn.close().await.unwrap();
}

/// The one `data-*` directory the server made under `dir`.
fn data_dir(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("data-"))
        .expect("the server's data directory")
}

/// How long `GET path` takes, answered 200.
async fn time(server: &Server, path: &str) -> Duration {
    let start = Instant::now();
    let response = server.api.http.get(server.api.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.bytes().await.unwrap();
    start.elapsed()
}

pub async fn history_bench() {
    let dir = tempfile::TempDir::new().unwrap();
    let repo = repo(dir.path());
    // medians[request][size] = the median of the runs' medians.
    let mut medians = vec![Vec::new(); REQUESTS.len()];
    for size in SIZES {
        let own = dir.path().join(format!("size-{size}"));
        std::fs::create_dir_all(&own).unwrap();
        let server = Server::start(&own, &repo, 1).await;
        let seeding = Instant::now();
        seed(&data_dir(&own), size).await;
        eprintln!("seeded {size} builds in {:.1}s", seeding.elapsed().as_secs_f64());
        let paths: Vec<String> = REQUESTS.iter().map(|(_, p)| p.replace("{mid}", &(size / 2).to_string())).collect();
        for path in &paths {
            for _ in 0..WARMUP {
                time(&server, path).await;
            }
        }
        let mut runs: Vec<Vec<Duration>> = vec![Vec::new(); REQUESTS.len()];
        for _ in 0..RUNS {
            for (i, path) in paths.iter().enumerate() {
                let mut samples = Vec::with_capacity(SAMPLES);
                for _ in 0..SAMPLES {
                    samples.push(time(&server, path).await);
                }
                samples.sort();
                runs[i].push(percentile(&samples, 0.5));
            }
        }
        for (i, mut run_medians) in runs.into_iter().enumerate() {
            run_medians.sort();
            medians[i].push(percentile(&run_medians, 0.5));
        }
    }
    println!("| request (median of {RUNS} runs of {SAMPLES}) | {} builds | {} builds | ratio |", SIZES[0], SIZES[1]);
    println!("|---|---|---|---|");
    for ((name, _), times) in REQUESTS.iter().zip(&medians) {
        let ratio = times[1].as_secs_f64() / times[0].as_secs_f64();
        println!("| {name} | {} | {} | {ratio:.2}× |", ms(times[0]), ms(times[1]));
    }
}
