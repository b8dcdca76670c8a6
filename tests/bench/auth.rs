//! `cargo bench -p gantry --bench builds -- --auth [--postgres] [--baseline-bin PATH]`: what
//! signing in and API tokens cost.
//!
//! 1. `POST /login`: the median of [`SIGN_INS`] sign-ins through the form (each after its own
//!    `GET /login`, which is not timed): mostly one argon2id verification.
//! 2. `GET /api/builds/{id}` of a finished build: with a bearer token (a SHA-256 and one indexed
//!    lookup of the token and its owner), against the same request without one, on the same
//!    binary with `public_read = true` and, given `--baseline-bin`, on a gantry from before users
//!    existed. The servers run side by side and are measured in alternating rounds, so all see the
//!    same machine. A baseline that has users is asked with its own token instead.
//!
//! With `--postgres` every server stores on a fresh database of the test suite's PostgreSQL
//! server (`tests/support/postgres.rs`) instead of SQLite.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{git, ms, percentile, postgres, Server, ADMIN, ADMIN_PASSWORD, BUILD_DEADLINE, POLL_EVERY};

/// Sign-ins timed.
const SIGN_INS: usize = 20;

/// Requests sent to each server before measuring.
const WARMUP_REQUESTS: usize = 200;

/// Rounds of requests; each round asks every server [`ROUND_REQUESTS`] times in turn.
const ROUNDS: usize = 10;
const ROUND_REQUESTS: usize = 300;

/// A repository whose `main` runs `true`.
fn repo(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("auth-repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let pipeline = "version: 1\nhosts:\n  app: {}\nstages:\n  - name: step\n    host: app\n    run: \"true\"\n";
    std::fs::write(repo.join(".gantry.yml"), pipeline).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["-c", "user.name=b", "-c", "user.email=b@b.invalid", "commit", "-q", "-m", "main"]);
    repo
}

/// Queue a build of `main` and wait until it has finished; its id.
async fn finished_build(server: &Server) -> i64 {
    let id = server.trigger("main").await;
    let start = Instant::now();
    while matches!(server.status(id).await.as_str(), "queued" | "provisioning" | "running") {
        assert!(start.elapsed() < BUILD_DEADLINE, "the build did not finish");
        tokio::time::sleep(POLL_EVERY).await;
    }
    id
}

/// One sign-in through the form: `GET /login` for the session and its CSRF token (not timed),
/// then the timed `POST /login`.
async fn sign_in(base: &str) -> Duration {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let form = http.get(format!("{base}/login")).send().await.unwrap();
    let cookie = form
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .find_map(|v| {
            v.to_str().ok()?.split(';').next().filter(|c| c.starts_with("gantry_session=")).map(str::to_string)
        })
        .expect("the form sets the session cookie");
    let html = form.text().await.unwrap();
    let csrf = html.split(r#"name="csrf" value=""#).nth(1).unwrap().split('"').next().unwrap().to_string();
    let start = Instant::now();
    let answer = http
        .post(format!("{base}/login"))
        .header(reqwest::header::COOKIE, cookie)
        .form(&[("csrf", csrf.as_str()), ("user", ADMIN), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(answer.status(), 303, "the sign-in failed");
    took
}

/// `count` sequential requests of `url` through `http`; each one's latency, whole body read.
async fn latencies(http: &reqwest::Client, url: &str, count: usize, into: &mut Vec<Duration>) {
    for _ in 0..count {
        let start = Instant::now();
        let response = http.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {url}");
        response.bytes().await.unwrap();
        into.push(start.elapsed());
    }
}

pub async fn auth_bench(baseline_bin: Option<&Path>, on_postgres: bool) {
    let dir = tempfile::TempDir::new().unwrap();
    let repo = repo(dir.path());
    let own = Path::new(env!("CARGO_BIN_EXE_gantry"));
    // Where each server stores: its own PostgreSQL database, or SQLite in its data directory.
    let database = || {
        if on_postgres {
            format!("database_url = \"{}\"\n", postgres::server().database())
        } else {
            String::new()
        }
    };
    let server = Server::start_with(dir.path(), &repo, 4, &database(), own).await;
    let public = format!("{}[auth]\npublic_read = true\n", database());
    let open = Server::start_with(dir.path(), &repo, 4, &public, own).await;
    let baseline = match baseline_bin {
        Some(binary) => {
            let version = Command::new(binary).arg("--version").output().unwrap();
            assert!(version.status.success(), "{} does not run", binary.display());
            Some(Server::start_with(dir.path(), &repo, 4, &database(), binary).await)
        }
        None => None,
    };

    let mut sign_ins = Vec::with_capacity(SIGN_INS);
    for _ in 0..SIGN_INS {
        sign_ins.push(sign_in(&server.api.base).await);
    }
    sign_ins.sort();

    // (what, client, url) per server; the bearer client sends the token, the others nothing.
    let anonymous = reqwest::Client::new();
    let mut targets = vec![
        (
            "with a bearer token",
            server.api.http.clone(),
            format!("{}/api/builds/{}", server.api.base, finished_build(&server).await),
        ),
        (
            "without (same binary, public_read)",
            anonymous.clone(),
            format!("{}/api/builds/{}", open.api.base, finished_build(&open).await),
        ),
    ];
    if let Some(baseline) = &baseline {
        let id = finished_build(baseline).await;
        let what = if baseline.token.is_empty() {
            "without (binary before users)"
        } else {
            "with a bearer token (--baseline-bin)"
        };
        // Its client sends its token when it has one.
        targets.push((what, baseline.api.http.clone(), format!("{}/api/builds/{id}", baseline.api.base)));
    }
    assert!(!server.token.is_empty());
    for (_, http, url) in &targets {
        latencies(http, url, WARMUP_REQUESTS, &mut Vec::new()).await;
    }
    let mut measured: Vec<Vec<Duration>> = vec![Vec::with_capacity(ROUNDS * ROUND_REQUESTS); targets.len()];
    for _ in 0..ROUNDS {
        for ((_, http, url), into) in targets.iter().zip(&mut measured) {
            latencies(http, url, ROUND_REQUESTS, into).await;
        }
    }

    println!("stored on {}", if on_postgres { "PostgreSQL" } else { "SQLite" });
    println!("| measure | median | p90 | p99 | ratio of medians |");
    println!("|---|---|---|---|---|");
    let (login50, login90, login99) =
        (percentile(&sign_ins, 0.5), percentile(&sign_ins, 0.9), percentile(&sign_ins, 0.99));
    println!("| POST /login ({SIGN_INS} sign-ins) | {} | {} | {} | |", ms(login50), ms(login90), ms(login99));
    let medians: Vec<Duration> = measured
        .iter_mut()
        .map(|l| {
            l.sort();
            percentile(l, 0.5)
        })
        .collect();
    for (i, ((what, _, _), l)) in targets.iter().zip(&measured).enumerate() {
        let ratio = if i == 0 {
            String::new()
        } else {
            format!("{:.2}×", medians[0].as_secs_f64() / medians[i].as_secs_f64())
        };
        println!(
            "| GET /api/builds/ID {what} ({} requests) | {} | {} | {} | {ratio} |",
            l.len(),
            ms(medians[i]),
            ms(percentile(l, 0.9)),
            ms(percentile(l, 0.99))
        );
    }
}
