//! Two real `gantry serve` processes on one PostgreSQL database (contract section 8): one queue
//! that runs each build exactly once on whichever server claims it, a server_id that a second
//! server cannot take, and a server killed with SIGKILL in the middle of a build, whose build the
//! other one ends `interrupted` (its page there following it live to that end) and whose SSH-pool
//! host it tears down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::client::Client;
use crate::helpers::*;
use crate::postgres;
use crate::postgres_server::installed;
use crate::sse::{connect, SseEvent, SseStream};
use crate::ssh::pool_machine_toml;
use crate::sshd::Sshd;

/// The shortest `server_timeout` the configuration accepts, so the take-over comes quickly.
const SERVER_TIMEOUT: &str = "3s";

/// One server's configuration file, in a data directory of its own, on the shared `database`.
fn server_config(dir: &Path, database: &str, server_id: &str, repos: &[RepoConfig], ssh: &str) -> PathBuf {
    let config = dir.join("gantry.toml");
    let top =
        format!("database_url = \"{database}\"\nserver_id = \"{server_id}\"\nserver_timeout = \"{SERVER_TIMEOUT}\"\n");
    std::fs::write(&config, format!("{top}{}{ssh}", config_toml(dir, repos, 4))).unwrap();
    config
}

/// Servers `one` and `two` on `database`, each in a data directory of its own (kept alive with
/// them), with the repo `shop` and the extra configuration `ssh`.
async fn two_servers(database: &str, shop: &RepoConfig, ssh: &str) -> ([TempDir; 2], Vec<ServerProcess>) {
    let dirs = [TempDir::new().unwrap(), TempDir::new().unwrap()];
    let configs: Vec<PathBuf> = ["one", "two"]
        .iter()
        .zip(&dirs)
        .map(|(id, dir)| server_config(dir.path(), database, id, std::slice::from_ref(shop), ssh))
        .collect();
    (dirs, start_servers(&configs).await)
}

/// Start the servers of `configs`; the first one's admin token serves them all (one database).
async fn start_servers(configs: &[PathBuf]) -> Vec<ServerProcess> {
    let token = cli_admin_token(&configs[0]);
    let mut servers = Vec::new();
    for config in configs {
        std::fs::write(config.with_extension("token"), &token).unwrap();
        servers.push(ServerProcess::start(config, &free_loopback_port()).await);
    }
    servers
}

fn api(server: &ServerProcess) -> Client {
    Client { http: server.client.clone(), base: server.base.clone() }
}

/// `server_id` of every build, from the database itself.
fn claims(database: &str) -> BTreeMap<i64, String> {
    let name = database.rsplit('/').next().unwrap();
    postgres::server()
        .psql(name, "SELECT id, COALESCE(server_id, '') FROM builds ORDER BY id")
        .lines()
        .map(|line| {
            let (id, server) = line.split_once('|').unwrap();
            (id.parse().unwrap(), server.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_builds_queued_on_two_servers_each_run_once_and_both_servers_run_some() {
    if !installed() {
        return;
    }
    let database = postgres::server().database();
    // Each run of the stage leaves a file of its own: a build run twice would leave two.
    let runs = TempDir::new().unwrap();
    std::fs::set_permissions(runs.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let repo = TestRepo::new();
    let script = format!("touch {}/run-$GANTRY_BUILD-$GANTRY_HOST_ID-$$", runs.path().display());
    // A push of a commit is built once, however often it is delivered: fifty pushes need fifty.
    let shas: Vec<String> = (0..50)
        .map(|i| repo.commit("main", &[(".gantry.yml", &one_stage_pipeline(&script)), ("n", &i.to_string())]))
        .collect();
    let mut shop = RepoConfig::new("shop", &repo);
    shop.cancel_superseded = false;
    let (_dirs, servers) = two_servers(&database, &shop, "").await;

    // A second server with a live server's id refuses to start, and says why.
    let third = TempDir::new().unwrap();
    let duplicate = server_config(third.path(), &database, "one", std::slice::from_ref(&shop), "");
    let error = gantry_command(&["serve", "--config", duplicate.to_str().unwrap()], "").unwrap_err();
    assert!(error.contains("server_id \"one\" is held by a running server"), "{error}");

    // Half through the API, half through GitHub's push webhook, to both servers in turn.
    let mut ids = Vec::new();
    for i in 0..100 {
        let client = api(&servers[i % 2]);
        let id = if i < 50 {
            client.trigger("shop", "main").await
        } else {
            let body = push_payload("github-push.json", "refs/heads/main", &shas[i - 50]);
            let (status, answer) =
                client.deliver("shop", &github_headers("push", &body, &unique_delivery()), body).await;
            assert_eq!(status, 202, "{answer}");
            answer["build"].as_i64().unwrap()
        };
        ids.push(id);
    }
    let deadline = Instant::now() + BUILD_DEADLINE * 4;
    for &id in &ids {
        loop {
            let build = servers[0].build(id).await;
            if is_final(&build["status"]) {
                assert_eq!(build["status"], "passed", "{build:#}");
                break;
            }
            assert!(Instant::now() < deadline, "build {id} never finished: {build:#}");
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
    let mut per_build: BTreeMap<i64, usize> = BTreeMap::new();
    for entry in std::fs::read_dir(runs.path()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        *per_build.entry(name.split('-').nth(1).unwrap().parse().unwrap()).or_default() += 1;
    }
    let expected: BTreeMap<i64, usize> = ids.iter().map(|&id| (id, 1)).collect();
    assert_eq!(per_build, expected, "every build ran exactly once");
    let claimed = claims(&database);
    let by = |server: &str| claimed.values().filter(|s| *s == server).count();
    println!("builds run: one {}, two {}", by("one"), by("two"));
    assert_eq!(by("one") + by("two"), 100, "{claimed:?}");
    assert!(by("one") > 0 && by("two") > 0, "both servers run builds: {claimed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_build_is_taken_over_its_build_interrupted_and_its_ssh_host_torn_down() {
    if !installed() {
        return;
    }
    let database = postgres::server().database();
    let machine = Sshd::start();
    let ssh = pool_machine_toml(&machine);
    let gate = Gate::new();
    // A step no other process on this machine runs: the test looks for it by its command line.
    let marker = format!("sleep {}", 7000 + std::process::id() % 1000);
    let script = format!("echo before the gate; {}; echo after the gate; {marker}", gate.wait_command());
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline(&script))]);
    let mut shop = RepoConfig::new("shop", &repo);
    shop.provider = Some("ssh");
    let (_dirs, mut servers) = two_servers(&database, &shop, &ssh).await;

    let id = api(&servers[0]).trigger("shop", "main").await;
    let holder = claimed_by(&database, id).await;
    let (dead, alive) = if holder == "one" { (0, 1) } else { (1, 0) };
    // The build's page on the other server follows it live.
    let (mut stream, mut seen) = follow(&servers[alive], id).await;
    next_log(&mut stream, &mut seen, "before the gate").await;
    gate.open();
    next_log(&mut stream, &mut seen, "after the gate").await;
    poll_until(BUILD_DEADLINE, &format!("the step never reached {marker:?}"), || pgrep(&marker)).await;
    servers[dead].kill9();
    let killed = Instant::now();

    let build: Value = loop {
        let build = servers[alive].build(id).await;
        let hosts_gone = build["hosts"].as_array().is_some_and(|h| h.iter().all(|h| h["state"] == "torn_down"));
        if build["status"] == "interrupted" && hosts_gone && !pgrep(&marker) {
            break build;
        }
        // server_timeout plus a minute.
        assert!(killed.elapsed() < Duration::from_secs(63), "not taken over: {build:#}");
        tokio::time::sleep(POLL_EVERY).await;
    };
    println!("taken over {:?} after the kill", killed.elapsed());
    assert_eq!(build["error"], json!(format!("its server {holder} stopped answering")));
    // The page that followed it saw the end too: the stream closes on the interrupted build.
    let last = last_event(&mut stream, &mut seen).await;
    assert_eq!(last.event, "build", "{seen:#?}");
    assert_eq!(last.json()["status"], "interrupted", "{last:?}");
}

/// A build on one of two servers whose step says "before the gate", waits for the gate, says
/// "after the gate" and runs `marker` (a command to find it by).
struct GatedBuild {
    database: String,
    gate: Gate,
    _dirs: [TempDir; 2],
    servers: Vec<ServerProcess>,
    id: i64,
    /// The `server_id` of the server running it.
    holder: String,
}

impl GatedBuild {
    async fn start(marker: &str) -> GatedBuild {
        let database = postgres::server().database();
        let gate = Gate::new();
        let repo = TestRepo::new();
        let script = format!("echo before the gate; {}; echo after the gate; {marker}", gate.wait_command());
        repo.commit("main", &[(".gantry.yml", &one_stage_pipeline(&script))]);
        let (_dirs, servers) = two_servers(&database, &RepoConfig::new("shop", &repo), "").await;
        let id = api(&servers[0]).trigger("shop", "main").await;
        let holder = claimed_by(&database, id).await;
        GatedBuild { database, gate, _dirs, servers, id, holder }
    }

    /// The server that does not run the build.
    fn other(&self) -> &ServerProcess {
        &self.servers[if self.holder == "one" { 1 } else { 0 }]
    }

    /// The server that runs it.
    fn holder_process(&self) -> &ServerProcess {
        &self.servers[if self.holder == "one" { 0 } else { 1 }]
    }
}

/// The server that claimed build `id`, once one has.
async fn claimed_by(database: &str, id: i64) -> String {
    let start = Instant::now();
    loop {
        if let Some(server) = claims(database).get(&id).filter(|s| !s.is_empty()) {
            return server.clone();
        }
        assert!(start.elapsed() < BUILD_DEADLINE, "build {id} was never claimed");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Follow build `id`'s event stream on `server` from its first event (`Last-Event-ID: 0`: a new
/// client would get the build's state instead, without the lines already stored); the events are
/// kept in the returned list as they are read, for the messages of failed assertions.
async fn follow(server: &ServerProcess, id: i64) -> (SseStream, Vec<SseEvent>) {
    let url = format!("{}/api/builds/{id}/events", server.base);
    let (status, stream) = connect(&server.client, &url, Some(0)).await;
    assert_eq!(status, 200);
    (stream.unwrap(), Vec::new())
}

/// Read `stream` up to a log line that says `wanted`.
async fn next_log(stream: &mut SseStream, seen: &mut Vec<SseEvent>, wanted: &str) {
    loop {
        let event = tokio::time::timeout(EVENT_DEADLINE, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no {wanted:?} on the other server: {seen:#?}"))
            .unwrap_or_else(|| panic!("the stream ended before {wanted:?}: {seen:#?}"));
        seen.push(event.clone());
        if event.event == "log" && event.json()["text"] == wanted {
            return;
        }
    }
}

/// Read `stream` to its end and return its last event.
async fn last_event(stream: &mut SseStream, seen: &mut Vec<SseEvent>) -> SseEvent {
    loop {
        match tokio::time::timeout(EVENT_DEADLINE, stream.next()).await.expect("the stream never ended") {
            Some(event) => seen.push(event),
            None => return seen.last().expect("the stream sent nothing").clone(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_server_streams_a_build_live_and_its_cancel_stops_it_where_it_runs() {
    if !installed() {
        return;
    }
    let marker = format!("sleep {}", 8000 + std::process::id() % 1000);
    let gated = GatedBuild::start(&marker).await;
    let (gate, id, other) = (&gated.gate, gated.id, gated.other());
    let (mut stream, mut seen) = follow(other, id).await;
    next_log(&mut stream, &mut seen, "before the gate").await;
    // Produced after the stream began: it can only have come live from the other server.
    gate.open();
    next_log(&mut stream, &mut seen, "after the gate").await;
    let ids: Vec<i64> = seen.iter().filter(|e| e.event == "log").map(SseEvent::seq).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "log ids go up without repeats: {ids:?}");

    // Cancelled through the server that does not run it; the one that does stops it at once.
    let response = other.client.post(format!("{}/api/builds/{id}/cancel", other.base)).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let last = last_event(&mut stream, &mut seen).await;
    assert_eq!(last.event, "build", "{seen:#?}");
    assert_eq!(last.json()["status"], "cancelled", "{last:?}");
    poll_until(EVENT_DEADLINE, "the cancelled step still runs", || !pgrep(&marker)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_the_other_server_catches_up_when_that_server_lost_the_notices() {
    if !installed() {
        return;
    }
    let gated = GatedBuild::start(&format!("sleep {}", 9000 + std::process::id() % 1000)).await;
    let (gate, id, other, database) = (&gated.gate, gated.id, gated.other(), &gated.database);
    let (mut stream, mut seen) = follow(other, id).await;
    next_log(&mut stream, &mut seen, "before the gate").await;

    // The other server's connection for notices is cut while it is stopped, so it cannot hear of
    // the next line: it reconnects when it runs again, and what was sent meanwhile is lost.
    let name = database.rsplit('/').next().unwrap();
    stop_and_cut_notices(name, other);
    gate.open();
    let stored = format!("SELECT count(*) FROM log_lines WHERE build_id = {id} AND text = 'after the gate'");
    poll_until(BUILD_DEADLINE, "the holder never stored the line", || {
        postgres::server().psql(name, &stored).trim() == "1"
    })
    .await;
    resume(other);

    // The page still gets the line (the stream reads the store when its channel stays quiet)…
    next_log(&mut stream, &mut seen, "after the gate").await;
    // …and, with its notices heard again, the end of the build.
    let response = other.client.post(format!("{}/api/builds/{id}/cancel", other.base)).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let last = last_event(&mut stream, &mut seen).await;
    assert_eq!(last.json()["status"], "cancelled", "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_whose_notice_was_lost_still_stops_the_build_where_it_runs() {
    if !installed() {
        return;
    }
    let marker = format!("sleep {}", 10000 + std::process::id() % 1000);
    let gated = GatedBuild::start(&marker).await;
    gated.gate.open();
    poll_until(BUILD_DEADLINE, &format!("the step never reached {marker:?}"), || pgrep(&marker)).await;
    // The server running the build cannot hear the cancel's notice.
    let name = gated.database.rsplit('/').next().unwrap();
    let (holder, other) = (gated.holder_process(), gated.other());
    stop_and_cut_notices(name, holder);
    let response = other.client.post(format!("{}/api/builds/{}/cancel", other.base, gated.id)).send().await.unwrap();
    assert_eq!(response.status(), 202);
    resume(holder);
    // It reads the request at its next heartbeat (a sixth of server_timeout).
    let start = Instant::now();
    loop {
        let build = other.build(gated.id).await;
        if build["status"] == "cancelled" && !pgrep(&marker) {
            break;
        }
        assert!(start.elapsed() < EVENT_DEADLINE, "the build was never stopped: {build:#}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Stop `server` (SIGSTOP) and terminate its connection listening for notices in PostgreSQL, so
/// every notice sent until it runs again (see [`resume`]) is lost to it. Keep it stopped for
/// less than server_timeout: the other server takes a silent one for dead.
fn stop_and_cut_notices(database: &str, server: &ServerProcess) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.pid() as i32), nix::sys::signal::Signal::SIGSTOP).unwrap();
    let listeners = postgres::server().psql(
        database,
        "SELECT pid, client_port FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    );
    let ports = client_ports(server.pid(), postgres::server().port());
    let cut: Vec<&str> = listeners
        .lines()
        .filter_map(|line| line.split_once('|'))
        .filter(|(_, port)| port.parse().is_ok_and(|port: u16| ports.contains(&port)))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(cut.len(), 1, "one listening connection of the server among {listeners:?} (its ports {ports:?})");
    postgres::server().psql(database, &format!("SELECT pg_terminate_backend({})", cut[0]));
}

/// Let a server stopped by [`stop_and_cut_notices`] run again.
fn resume(server: &ServerProcess) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.pid() as i32), nix::sys::signal::Signal::SIGCONT).unwrap();
}

/// The local ports of `pid`'s TCP connections to `port` on loopback (from `ss`).
fn client_ports(pid: u32, port: u16) -> Vec<u16> {
    let output = Command::new("ss").args(["-Htnp", "state", "established"]).output().unwrap();
    assert!(output.status.success(), "ss: {}", String::from_utf8_lossy(&output.stderr));
    let owner = format!("pid={pid},");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter(|line| line.contains(&owner))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Recv-Q, Send-Q, local address:port, peer address:port, process.
            let (local, peer) = (fields.get(2)?, fields.get(3)?);
            (peer.rsplit_once(':')?.1 == port.to_string()).then(|| local.rsplit_once(':')?.1.parse().ok())?
        })
        .collect()
}

/// Check `done` every [`POLL_EVERY`] until it holds; fail with `failure` after `deadline`.
async fn poll_until(deadline: Duration, failure: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < deadline, "{failure}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Whether a process whose command line contains `pattern` runs.
fn pgrep(pattern: &str) -> bool {
    Command::new("pgrep").args(["-f", pattern]).output().unwrap().status.success()
}
