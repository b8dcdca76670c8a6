//! The server on PostgreSQL (`database_url`, contract section 8): builds run and show as on
//! SQLite, the state outlives the server, a database it cannot reach stops it at once with
//! one clear error that never shows the URL's password, and a database lost in the middle of a
//! build never lets that build show as passed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::Browser;
use crate::helpers::*;
use crate::postgres;
use crate::postgres_server::installed;

#[tokio::test]
async fn a_server_on_postgresql_runs_builds_shows_them_and_keeps_them_across_a_restart() {
    if !installed() {
        return;
    }
    let url = postgres::server().database();
    let top = format!("database_url = \"{url}\"");
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo hello from postgres"))]);
    let repos = [RepoConfig::new("shop", &repo)];
    let app = spawn_app_configured(&repos, 2, &top, "").await;
    // One after the other: a second build of the branch queued at once would supersede the first.
    let first = app.trigger("shop", "main").await;
    assert_eq!(app.wait_for_build(first).await["status"], "passed");
    let second = app.trigger("shop", "main").await;
    assert_eq!(app.wait_for_build(second).await["status"], "passed");
    let (status, page) = app.get_text(&format!("/builds/{second}")).await;
    assert_eq!(status, 200);
    assert!(page.contains("hello from postgres"), "the build page shows the log line");
    let builds = app.get_json("/api/repos/shop/builds").await;
    let numbers: Vec<i64> = builds.as_array().unwrap().iter().map(|b| b["number"].as_i64().unwrap()).collect();
    assert_eq!(numbers, [2, 1]);
    assert!(!app.data_dir.path().join("gantry.db").exists(), "no SQLite database beside a PostgreSQL one");
    let token = app.token.clone();
    app.stop().await;

    // Another server on the same database sees what the first one recorded and numbers on.
    let again = spawn_app_signed_in(&repos, 2, &top, "", Some(&token)).await;
    assert_eq!(again.get_json(&format!("/api/builds/{first}")).await["status"], "passed");
    let third = again.trigger("shop", "main").await;
    let build = again.wait_for_build(third).await;
    assert_eq!((build["status"].as_str(), build["number"].as_i64()), (Some("passed"), Some(3)));
    again.stop().await;
}

#[test]
fn an_unreachable_database_stops_the_server_with_one_clear_error_and_no_password() {
    // A port of 127.0.0.1 with nobody listening: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("gantry.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\ndatabase_url = \"postgres://gantry:hunter2@127.0.0.1:{port}/ci\"\n",
            dir.path().join("data").to_str().unwrap()
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let error = gantry_command(&["serve", "--config", config.to_str().unwrap()], "").unwrap_err();
    assert!(error.contains(&format!("failed to open the database postgres://127.0.0.1:{port}/ci")), "{error}");
    assert_eq!(error.matches("Connection refused").count(), 1, "the cause is said once: {error}");
    assert!(!error.contains("hunter2"), "the password is shown: {error}");
    // Not a hang until some pool's timeout: the refusal is the answer.
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}: {error}", started.elapsed());

    // A URL that is not PostgreSQL's is a configuration error, also without the URL.
    std::fs::write(&config, "database_url = \"mysql://root:hunter2@127.0.0.1/ci\"\n").unwrap();
    let error = gantry_command(&["serve", "--config", config.to_str().unwrap()], "").unwrap_err();
    assert!(error.contains("database_url: must be a postgres:// URL"), "{error}");
    assert!(!error.contains("hunter2"), "the password is shown: {error}");
}

/// Whether the server's log at `log` has a line containing `wanted`.
fn logged(log: &Path, wanted: &str) -> bool {
    std::fs::read_to_string(log).unwrap_or_default().lines().any(|line| line.contains(wanted))
}

/// Wait until the server's log says `wanted`, failing after [`EVENT_DEADLINE`].
async fn wait_logged(log: &Path, wanted: &str) {
    let start = Instant::now();
    while !logged(log, wanted) {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(start.elapsed() < EVENT_DEADLINE, "the server never logged {wanted:?}:\n{text}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A TCP link from a port of 127.0.0.1 to PostgreSQL's, which the server's `database_url` names.
/// Cut, it drops every open connection and closes each new one at once: to the server, the
/// database has gone away (its connections break, new ones fail), as when PostgreSQL or its
/// machine stops.
struct DatabaseLink {
    port: u16,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl DatabaseLink {
    async fn start(upstream: u16) -> DatabaseLink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (accepting, open) = (Arc::clone(&up), Arc::clone(&connections));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                if !accepting.load(Ordering::SeqCst) {
                    continue;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                open.lock().unwrap().push(link);
            }
        });
        DatabaseLink { port, up, connections, accept }
    }

    /// `database_url` through the link, to the database `name`.
    fn url(&self, name: &str) -> String {
        format!("postgres://{}@127.0.0.1:{}/{name}", postgres::ROLE, self.port)
    }

    async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let open: Vec<_> = std::mem::take(&mut *self.connections.lock().unwrap());
        for link in open {
            link.abort();
            let _ = link.await;
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for DatabaseLink {
    fn drop(&mut self) {
        self.accept.abort();
        for link in self.connections.lock().unwrap().iter() {
            link.abort();
        }
    }
}

/// A server on a database of its own whose one build waits at a gate in its stage: the stage is
/// running when [`GatedOnItsOwn::start`] returns.
struct GatedOnItsOwn {
    url: String,
    link: DatabaseLink,
    gate: Gate,
    log: std::path::PathBuf,
    server: ServerProcess,
    api: crate::client::Client,
    id: i64,
    /// The commit it builds.
    sha: String,
    _repo: TestRepo,
    _dir: tempfile::TempDir,
}

impl GatedOnItsOwn {
    async fn start() -> GatedOnItsOwn {
        let direct = postgres::server().database();
        let link = DatabaseLink::start(postgres::server().port()).await;
        let url = link.url(direct.rsplit('/').next().unwrap());
        let dir = tempfile::TempDir::new().unwrap();
        let gate = Gate::new();
        let repo = TestRepo::new();
        let script = format!("echo before the gate; {}; echo after the gate", gate.wait_command());
        let sha = repo.commit("main", &[(".gantry.yml", &one_stage_pipeline(&script))]);
        let config = dir.path().join("gantry.toml");
        let top = format!("database_url = \"{url}\"\nserver_id = \"outage\"\n");
        let repos = [RepoConfig::new("shop", &repo)];
        std::fs::write(&config, format!("{top}{}", config_toml(dir.path(), &repos, 2))).unwrap();
        let log = dir.path().join("server.log");
        let server = ServerProcess::start_logging_to(&config, &free_loopback_port(), &log).await;
        let api = crate::client::Client { http: server.client.clone(), base: server.base.clone() };
        let id = api.trigger("shop", "main").await;
        server
            .wait_build_until(id, BUILD_DEADLINE, "ran its stage", |build| {
                build["stages"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["kind"] == "stage" && s["status"] == "running"))
            })
            .await;
        GatedOnItsOwn { url, link, gate, log, server, api, id, sha, _repo: repo, _dir: dir }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_whose_events_were_lost_with_the_database_ends_errored_once_it_is_back_never_passed() {
    if !installed() {
        return;
    }
    let gated = GatedOnItsOwn::start().await;
    // Someone watching the dashboard, signed in by the session cookie.
    let mut browser = Browser {
        http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        base: gated.server.base.clone(),
        cookie: None,
        csrf: String::new(),
    };
    assert_eq!(browser.sign_in(ADMIN, ADMIN_PASSWORD).await.status(), 303);
    // The database goes away while the stage runs; the stage then ends, and the rest of the
    // build happens with nowhere to record it.
    gated.link.cut().await;
    gated.gate.open();
    wait_logged(&gated.log, "failed to store build events: they are lost").await;
    wait_logged(&gated.log, "could not record the end of a build; trying again").await;
    assert!(!logged(&gated.log, "gantry::scheduler: build finished"), "no end was recorded without a database");
    // Meanwhile the server answers, and says what is wrong: 503, come back later.
    for path in ["/api/repos", &format!("/api/builds/{}", gated.id), "/"] {
        let response = gated.server.client.get(format!("{}{path}", gated.server.base)).send().await.unwrap();
        assert_eq!(response.status(), 503, "{path}");
        assert_eq!(response.headers()["retry-after"], "5", "{path}");
        let text = response.text().await.unwrap();
        assert!(text.contains("the database is unavailable"), "{path}: {text}");
    }
    let (status, page) = browser.get(&format!("/builds/{}", gated.id)).await;
    assert_eq!(status, 503, "a signed-in page: {page}");
    assert!(page.contains("the database is unavailable"), "{page}");
    // A forge's delivery too, so that it is sent again rather than taken for a bad one.
    let body = push_payload("github-push.json", "refs/heads/main", &gated.sha);
    let (status, answer) = gated.api.deliver("shop", &github_headers("push", &body, &unique_delivery()), body).await;
    assert_eq!(status, 503, "{answer}");

    gated.link.restore();
    let build = gated.server.wait_for_build(gated.id).await;
    assert_eq!(build["status"], "errored", "a build with lost events is not shown as passed: {build:#}");
    let error = build["error"].as_str().unwrap_or_default();
    assert!(error.contains("could not be recorded"), "the build says why: {build:#}");
    assert!(
        !error.contains(&gated.url) && !error.contains("postgres://"),
        "no database URL in a build's error: {error}"
    );

    // The server carries on: the next build runs and passes.
    let next = gated.api.trigger("shop", "main").await;
    assert_eq!(gated.server.wait_for_build(next).await["status"], "passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_back_within_seconds_loses_none_of_a_builds_events() {
    if !installed() {
        return;
    }
    let gated = GatedOnItsOwn::start().await;
    gated.link.cut().await;
    gated.gate.open();
    // The first refusal, then the database is back while the batch is being tried again.
    wait_logged(&gated.log, "storing build events failed; trying again").await;
    gated.link.restore();
    let build = gated.server.wait_for_build(gated.id).await;
    assert_eq!(build["status"], "passed", "{build:#}");
    assert!(!logged(&gated.log, "they are lost"), "nothing was dropped");
    let log = gated.server.client.get(format!("{}/api/builds/{}/log", gated.server.base, gated.id)).send().await;
    let log = log.unwrap().text().await.unwrap();
    assert!(log.contains("before the gate") && log.contains("after the gate"), "the whole log is stored: {log}");
}
