//! No credential leaks, and a log a machine can read: a repo URL's token or password never
//! appears on a page, in an API answer, in a build's error, in a repo's last fetch error or in the
//! server's log, while git still gets it; and the log carries no terminal colour codes when it is
//! not written to a terminal. Both run the real `gantry` binary with its log going to a file, so
//! they assert on the log text the server really writes.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::{header, HeaderMap, StatusCode};
use base64::Engine;
use serde_json::{json, Value};

use crate::helpers::*;

/// The token of an `https://TOKEN@host/…` URL.
const TOKEN: &str = "TOKENq7Zx3v";
/// The password of an `https://user:password@host/…` URL.
const PASSWORD: &str = "PASSw0rdK9m";
/// The password of an `ssh://user:password@host/…` URL.
const SSH_PASSWORD: &str = "SSHpa55Lr2";
const CREDENTIALS: [&str; 3] = [TOKEN, PASSWORD, SSH_PASSWORD];

/// A git server on loopback that asks for credentials and turns every one down, recording the
/// `Authorization` headers it was sent.
async fn refusing_git_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let recorded = Arc::clone(&recorded);
        async move {
            if let Some(auth) = headers.get(header::AUTHORIZATION) {
                recorded.lock().unwrap().push(auth.to_str().unwrap_or_default().to_string());
            }
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Basic realm=\"git\"")], "")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, seen)
}

/// A polled repo whose URL is `url` (the test helpers take a URL where a path usually goes).
fn remote_repo(name: &str, url: &str) -> RepoConfig {
    RepoConfig {
        name: name.to_string(),
        url: url.into(),
        poll_interval: Some("100ms"),
        cancel_superseded: true,
        provider: None,
        secrets: Vec::new(),
    }
}

/// Write the configuration of `repos` into `dir` and start the real binary on it, its log going
/// to `dir/gantry.log` with the filter `rust_log`.
async fn start_server(dir: &Path, repos: &[RepoConfig], rust_log: &str) -> ServerProcess {
    let config = dir.join("gantry.toml");
    std::fs::write(&config, config_toml(dir, repos, 2)).unwrap();
    let log = File::create(dir.join("gantry.log")).unwrap();
    ServerProcess::start_logging(&config, &free_loopback_port(), &[("RUST_LOG", rust_log)], Stdio::from(log)).await
}

/// Every answer a client can get about these repos and builds: each page, each `/api/*` read.
async fn every_surface(server: &ServerProcess, repos: &[&str], builds: &[i64]) -> Vec<(String, String)> {
    let mut paths = vec!["/".to_string(), "/api/repos".to_string()];
    for repo in repos {
        paths.push(format!("/repos/{repo}"));
        paths.push(format!("/api/repos/{repo}/builds"));
    }
    for id in builds {
        for suffix in ["", "/log", "/reports"] {
            paths.push(format!("/api/builds/{id}{suffix}"));
        }
        paths.push(format!("/builds/{id}"));
    }
    let mut answers = Vec::new();
    for path in paths {
        let response = server.client.get(format!("{}{path}", server.base)).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        answers.push((format!("GET {path}"), response.text().await.unwrap()));
    }
    answers
}

#[tokio::test]
async fn repo_url_credentials_appear_on_no_page_api_answer_error_or_log_line() {
    let (git_server, authorizations) = refusing_git_server().await;
    let closed = free_loopback_port();
    let repos = [
        remote_repo("tokened", &format!("http://{TOKEN}@{closed}/acme/shop.git")),
        remote_repo("passworded", &format!("http://gantry-bot:{PASSWORD}@{git_server}/acme/shop.git")),
        remote_repo("sshed", &format!("ssh://deploy:{SSH_PASSWORD}@{closed}/acme/shop.git")),
    ];
    let names: Vec<&str> = repos.iter().map(|r| r.name.as_str()).collect();
    let dir = tempfile::TempDir::new().unwrap();
    // Debug level: every line the server can log is in the file, not only warnings.
    let server = start_server(dir.path(), &repos, "debug").await;
    let api = crate::client::Client { http: server.client.clone(), base: server.base.clone() };

    // Queued through the API (a branch and a commit: both fetch) and pushed by a forge.
    let mut answers = Vec::new();
    let mut builds = Vec::new();
    for name in &names {
        for request in [json!({ "branch": "main" }), json!({ "commit": "ab".repeat(20) })] {
            let response =
                api.http.post(api.url(&format!("/api/repos/{name}/builds"))).json(&request).send().await.unwrap();
            assert_eq!(response.status(), 502, "POST /api/repos/{name}/builds {request}");
            answers.push((format!("POST /api/repos/{name}/builds {request}"), response.text().await.unwrap()));
        }
        let body = push_payload("github-push.json", "refs/heads/main", &"cd".repeat(20));
        let (status, answer) = api.deliver(name, &github_headers("push", &body, &unique_delivery()), body).await;
        assert_eq!(status, 202, "{answer}");
        builds.push(answer["build"].as_i64().unwrap());
        answers.push((format!("POST /hooks/{name}"), answer.to_string()));
    }

    // Each pushed build ends errored, saying which repo could not be fetched.
    for (id, name) in builds.iter().zip(&names) {
        let start = Instant::now();
        let build = loop {
            let build = server.build(*id).await;
            if is_final(&build["status"]) {
                break build;
            }
            assert!(start.elapsed() < EVENT_DEADLINE, "build {id} never finished: {build:#}");
            tokio::time::sleep(POLL_EVERY).await;
        };
        assert_eq!(build["status"], "errored", "{build:#}");
        let error = build["error"].as_str().unwrap();
        assert!(error.starts_with(&format!("fetching repo \"{name}\" failed: ")), "{error}");
    }
    // The poller has recorded a fetch error on every repo.
    let listed = server
        .wait_repos_until("all recorded a fetch error", |l| {
            l.as_array().unwrap().iter().all(|r| r["last_error"].is_string())
        })
        .await;
    // The URLs are shown, without their credentials.
    let shown: Vec<&str> = listed.as_array().unwrap().iter().map(|r| r["url"].as_str().unwrap()).collect();
    for expected in [
        format!("http://***@{closed}/acme/shop.git"),
        format!("http://***@{git_server}/acme/shop.git"),
        format!("ssh://***@{closed}/acme/shop.git"),
    ] {
        assert!(shown.contains(&expected.as_str()), "{expected} not in {shown:?}");
    }
    // Git itself was given the real credentials.
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("gantry-bot:{PASSWORD}")));
    assert!(authorizations.lock().unwrap().contains(&basic), "git never sent the URL's credentials");

    answers.extend(every_surface(&server, &names, &builds).await);
    for (what, body) in &answers {
        for secret in CREDENTIALS {
            assert!(!body.contains(secret), "{what} shows a credential: {body}");
        }
    }
    let repo_page = &answers.iter().find(|(what, _)| what == "GET /repos/tokened").unwrap().1;
    assert!(repo_page.contains(&format!("http://***@{closed}/acme/shop.git")), "the page shows the URL");
    assert!(repo_page.contains("fetching repo"), "the page shows the fetch error: {repo_page}");

    drop(server);
    let log = std::fs::read_to_string(dir.path().join("gantry.log")).unwrap();
    for name in &names {
        for line in ["fetch failed", "poll failed", "pushed commit unavailable"] {
            assert!(
                log.lines().any(|l| l.contains(line) && l.contains(&format!("repo={name}"))),
                "the log has no {line:?} line for {name}:\n{log}"
            );
        }
    }
    for secret in CREDENTIALS {
        let leaking: Vec<&str> = log.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaking.is_empty(), "the server's log shows a credential:\n{}", leaking.join("\n"));
    }
}

#[tokio::test]
async fn credentials_an_older_server_stored_in_errors_are_taken_out_at_start() {
    let dir = tempfile::TempDir::new().unwrap();
    let closed = free_loopback_port();
    let url = format!("http://{TOKEN}@{closed}/acme/shop.git");
    // What a server before RepoUrl stored: fetch errors quoting the URL whole.
    let leaked = format!("fetching {url} failed: failed to connect to 127.0.0.1: Connection refused");
    let store = gantry::store::Store::open(&dir.path().join("gantry.db")).await.unwrap();
    store.upsert_repo("tokened", &url).await.unwrap();
    store.set_repo_error("tokened", Some(&leaked)).await.unwrap();
    let new = gantry::store::NewBuild {
        repo: "tokened".to_string(),
        commit: "ab".repeat(20),
        branch: "main".to_string(),
        ref_kind: gantry::store::RefKind::Branch,
        trigger: gantry::store::Trigger::Push,
    };
    let id = store.insert_build(&new).await.unwrap().id;
    store.finish_build(id, gantry_event::BuildStatus::Errored, Some(&leaked)).await.unwrap();
    store.close().await;

    // Not polled: the stored error stays the one the old server wrote.
    let mut repo = remote_repo("tokened", &url);
    repo.poll_interval = None;
    let server = start_server(dir.path(), &[repo], "debug").await;
    let answers = every_surface(&server, &["tokened"], &[id.0]).await;
    let scrubbed = format!("fetching http://***@{closed}/acme/shop.git failed");
    for (what, body) in &answers {
        assert!(!body.contains(TOKEN), "{what} shows the token: {body}");
    }
    let build: Value =
        serde_json::from_str(&answers.iter().find(|(w, _)| w.ends_with(&format!("/api/builds/{}", id.0))).unwrap().1)
            .unwrap();
    assert!(build["error"].as_str().unwrap().starts_with(&scrubbed), "{build:#}");
    let listed: Value = serde_json::from_str(&answers.iter().find(|(w, _)| w == "GET /api/repos").unwrap().1).unwrap();
    assert!(listed[0]["last_error"].as_str().unwrap().starts_with(&scrubbed), "{listed:#}");
    drop(server);
    let log = std::fs::read_to_string(dir.path().join("gantry.log")).unwrap();
    assert!(log.contains("took the URL's credentials out of stored errors"), "{log}");
    assert!(!log.contains(TOKEN), "the server's log shows the token");
}

#[tokio::test]
async fn the_server_log_has_no_colour_codes_when_it_is_not_a_terminal() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo hi"))]);
    let dir = tempfile::TempDir::new().unwrap();
    // Debug level: lines of every level the build writes, each with key=value fields (which a
    // coloured log sets in italics).
    let server = start_server(dir.path(), &[RepoConfig::new("shop", &repo)], "debug").await;
    let api = crate::client::Client { http: server.client.clone(), base: server.base.clone() };
    let id = api.trigger("shop", "main").await;
    let start = Instant::now();
    while !is_final(&server.build(id).await["status"]) {
        assert!(start.elapsed() < BUILD_DEADLINE, "build {id} never finished");
        tokio::time::sleep(POLL_EVERY).await;
    }
    drop(server);

    let log = std::fs::read_to_string(dir.path().join("gantry.log")).unwrap();
    assert!(log.contains("gantry is ready") && log.contains("build finished"), "the log is written:\n{log}");
    assert!(!log.contains("\u{1b}["), "the log carries terminal colour codes:\n{log:?}");
}
