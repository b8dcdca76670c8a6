//! What every end-to-end test needs: a git repository to push to, a running server, signed
//! webhook deliveries, and ways to wait for a build and to look for leftover host processes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::client::{self, Client};

/// How long a build may take before a test gives up on it. Generous: CI machines are slow and
/// shared, and the demo starts PostgreSQL.
pub const BUILD_DEADLINE: Duration = Duration::from_secs(180);

/// How long to wait for something the server does in the background (a poll, a cancellation).
pub const EVENT_DEADLINE: Duration = Duration::from_secs(60);

/// How often a test re-reads the API while it waits.
pub const POLL_EVERY: Duration = Duration::from_millis(25);

pub const SECRET: &str = "It's a Secret to Everybody";

/// The admin every test server has; its API token is what [`TestApp::client`] sends.
pub const ADMIN: &str = "admin";

/// The admin's password.
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// A git repository on disk with a `main` branch, the way a forge's would be.
pub struct TestRepo {
    dir: TempDir,
    repo: git2::Repository,
}

impl TestRepo {
    pub fn new() -> TestRepo {
        let dir = TempDir::new().unwrap();
        let repo =
            git2::Repository::init_opts(dir.path(), git2::RepositoryInitOptions::new().initial_head("main")).unwrap();
        TestRepo { dir, repo }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write `files` into the tree of `branch` (on top of its current tree) and commit them.
    /// Returns the commit's full sha.
    pub fn commit(&self, branch: &str, files: &[(&str, &str)]) -> String {
        self.commit_with_message(branch, files, "test commit")
    }

    /// [`TestRepo::commit`] with the commit message `message`.
    pub fn commit_with_message(&self, branch: &str, files: &[(&str, &str)], message: &str) -> String {
        let parent = self
            .repo
            .find_branch(branch, git2::BranchType::Local)
            .ok()
            .map(|b| b.get().peel_to_commit().unwrap())
            .or_else(|| self.repo.head().ok().map(|h| h.peel_to_commit().unwrap()));
        let mut index = git2::Index::new().unwrap();
        if let Some(parent) = &parent {
            index.read_tree(&parent.tree().unwrap()).unwrap();
        }
        for (path, contents) in files {
            let blob = self.repo.blob(contents.as_bytes()).unwrap();
            let mode = if path.ends_with(".sh") { 0o100755 } else { 0o100644 };
            let entry = git2::IndexEntry {
                ctime: git2::IndexTime::new(0, 0),
                mtime: git2::IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode,
                uid: 0,
                gid: 0,
                file_size: contents.len() as u32,
                id: blob,
                flags: 0,
                flags_extended: 0,
                path: path.as_bytes().to_vec(),
            };
            index.add(&entry).unwrap();
        }
        let tree = self.repo.find_tree(index.write_tree_to(&self.repo).unwrap()).unwrap();
        let sig = git2::Signature::now("Test", "test@gantry.invalid").unwrap();
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let oid =
            self.repo.commit(Some(&format!("refs/heads/{branch}")), &sig, &sig, message, &tree, &parents).unwrap();
        oid.to_string()
    }

    /// Commit every file below `dir` (as the demo's files are laid out) onto `branch`.
    pub fn commit_dir(&self, branch: &str, dir: &Path) -> String {
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files);
        let refs: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
        self.commit(branch, &refs)
    }

    pub fn tag(&self, name: &str, sha: &str) {
        let object = self.repo.revparse_single(sha).unwrap();
        self.repo.tag_lightweight(name, &object, false).unwrap();
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// The path of a file shipped in the repository (fixtures, the demo).
pub fn workspace_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A distinct /24 of 127.0.0.0/8 for each app this test process starts, so concurrently running
/// tests never lease the same host address.
pub fn next_address_range() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // 127.70.x.0 – 127.79.x.0: away from the default 127.0.10.0/24 and the runner's tests.
    format!("127.{}.{}.0/24", 70 + (std::process::id() % 10), n % 250 + 1)
}

/// One `[[repo]]` of the server's configuration.
pub struct RepoConfig {
    pub name: String,
    pub url: PathBuf,
    pub poll_interval: Option<&'static str>,
    pub cancel_superseded: bool,
    /// `local` when `None`.
    pub provider: Option<&'static str>,
    /// Pipeline secrets by name, each read from a file.
    pub secrets: Vec<(&'static str, PathBuf)>,
}

impl RepoConfig {
    pub fn new(name: &str, repo: &TestRepo) -> RepoConfig {
        RepoConfig {
            name: name.to_string(),
            url: repo.path().to_path_buf(),
            poll_interval: None,
            cancel_superseded: true,
            provider: None,
            secrets: Vec::new(),
        }
    }
}

/// The configuration file text for a server with `repos` in `data_dir`.
pub fn config_toml(data_dir: &Path, repos: &[RepoConfig], max_concurrent_builds: usize) -> String {
    let mut toml = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nmax_concurrent_builds = {max_concurrent_builds}\n\n\
         [provider.local]\naddresses = \"{}\"\n",
        data_dir.to_str().unwrap(),
        next_address_range(),
    );
    for repo in repos {
        toml.push_str(&format!(
            "\n[[repo]]\nname = \"{}\"\nurl = {:?}\nsecret = \"{SECRET}\"\ncancel_superseded = {}\n",
            repo.name,
            repo.url.to_str().unwrap(),
            repo.cancel_superseded,
        ));
        if let Some(interval) = repo.poll_interval {
            toml.push_str(&format!("poll_interval = \"{interval}\"\n"));
        }
        if let Some(provider) = repo.provider {
            toml.push_str(&format!("provider = \"{provider}\"\n"));
        }
        if !repo.secrets.is_empty() {
            let entries: Vec<String> = repo
                .secrets
                .iter()
                .map(|(name, file)| format!("{name} = {{ file = {:?} }}", file.to_str().unwrap()))
                .collect();
            toml.push_str(&format!("secrets = {{ {} }}\n", entries.join(", ")));
        }
    }
    toml
}

/// A server running in this test process.
pub struct TestApp {
    pub address: SocketAddr,
    /// Sends the admin's API token (`Authorization: Bearer`) with every request.
    pub client: reqwest::Client,
    /// The admin's API token.
    pub token: String,
    pub data_dir: TempDir,
    /// The store: SQLite in `data_dir`, or PostgreSQL when the configuration has a `database_url`.
    database: gantry::store::Location,
    shutdown: Option<gantry::ShutdownHandle>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// An HTTP client that sends `token` as `Authorization: Bearer` with every request.
pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

/// An HTTP client with no credentials that does not follow redirects.
pub fn anonymous_client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

pub async fn spawn_app(repos: &[RepoConfig]) -> TestApp {
    spawn_app_with(repos, 4).await
}

pub async fn spawn_app_with(repos: &[RepoConfig], max_concurrent_builds: usize) -> TestApp {
    spawn_app_with_toml(repos, max_concurrent_builds, "").await
}

/// A server whose configuration has `extra` (more `[provider.*]` sections) after the repos.
pub async fn spawn_app_with_toml(repos: &[RepoConfig], max_concurrent_builds: usize, extra: &str) -> TestApp {
    spawn_app_configured(repos, max_concurrent_builds, "", extra).await
}

/// A server whose configuration starts with the top-level keys `top` (e.g. `public_url`) and ends
/// with the tables `extra` (e.g. `[auth]`). It has the user [`ADMIN`], added as `gantry user add`
/// adds users (on the running server's database), and its client sends the admin's token.
pub async fn spawn_app_configured(
    repos: &[RepoConfig],
    max_concurrent_builds: usize,
    top: &str,
    extra: &str,
) -> TestApp {
    spawn_app_signed_in(repos, max_concurrent_builds, top, extra, None).await
}

/// The in-process servers' warnings and errors (a batch of events that could not be stored, a
/// teardown that failed), captured with each test's output and shown when it fails. `RUST_LOG`
/// chooses other levels.
fn log_warnings() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        // Another subscriber already set (by a test of its own) is fine.
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// [`spawn_app_configured`] with the admin token `token` instead of a new admin: for a second
/// server on the database (`database_url` in `top`) of one that made the admin.
pub async fn spawn_app_signed_in(
    repos: &[RepoConfig],
    max_concurrent_builds: usize,
    top: &str,
    extra: &str,
    token: Option<&str>,
) -> TestApp {
    log_warnings();
    let data_dir = TempDir::new().unwrap();
    let toml = format!("{top}\n{}{extra}", config_toml(data_dir.path(), repos, max_concurrent_builds));
    let config = gantry::config::Config::from_toml_str(&toml).expect("test configuration parses");
    let database = config.database();
    let app = gantry::Application::build(config).await.expect("server starts");
    let address = app.address();
    let shutdown = app.shutdown_handle();
    let task = tokio::spawn(app.run_until_stopped());
    let token = match token {
        Some(token) => token.to_string(),
        None => add_user_with_token(&database, ADMIN, gantry::store::Role::Admin, ADMIN_PASSWORD).await,
    };
    TestApp {
        address,
        client: client_with_token(&token),
        token,
        data_dir,
        database,
        shutdown: Some(shutdown),
        task: Some(task),
    }
}

/// Add a user to the database at `database` and make them a token, through the functions the
/// `gantry user add` and `gantry token create` commands call, on a store of their own (as the
/// commands open one while the server runs).
pub async fn add_user_with_token(
    database: &gantry::store::Location,
    name: &str,
    role: gantry::store::Role,
    password: &str,
) -> String {
    use secrecy::{ExposeSecret, SecretString};
    let store = gantry::store::Store::open_location(database).await.unwrap();
    gantry::auth::admin::add_user(&store, name, role, &SecretString::from(password)).await.unwrap();
    let token = gantry::auth::admin::create_token(&store, name, "e2e").await.unwrap();
    store.close().await;
    token.expose_secret().to_string()
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// The server's database file, for opening a store of one's own as the commands do.
    pub fn database(&self) -> &gantry::store::Location {
        &self.database
    }

    /// A store of its own on the app's database, as `gantry` commands open one while it runs.
    pub async fn open_store(&self) -> gantry::store::Store {
        gantry::store::Store::open_location(&self.database).await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Queue a manual build of `branch` and return its id.
    pub async fn trigger(&self, repo: &str, branch: &str) -> i64 {
        self.api().trigger(repo, branch).await
    }

    /// The calls the benchmark makes too, on this server.
    pub fn api(&self) -> Client {
        Client { http: self.client.clone(), base: format!("http://{}", self.address) }
    }

    pub async fn builds(&self, repo: &str) -> Vec<Value> {
        self.get_json(&format!("/api/repos/{repo}/builds?limit=100")).await.as_array().unwrap().clone()
    }

    pub async fn log(&self, id: i64, stage: Option<&str>) -> String {
        let path = match stage {
            Some(stage) => format!("/api/builds/{id}/log?stage={stage}"),
            None => format!("/api/builds/{id}/log"),
        };
        let (status, body) = self.get_text(&path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Deliver a webhook with the given headers and body.
    pub async fn deliver(&self, repo: &str, headers: &[(&str, String)], body: Vec<u8>) -> (u16, Value) {
        self.api().deliver(repo, headers, body).await
    }

    /// Deliver GitHub's published push payload, pointed at `sha` on `git_ref`.
    pub async fn github_push(&self, repo: &str, git_ref: &str, sha: &str) -> (u16, Value) {
        let body = push_payload("github-push.json", git_ref, sha);
        let headers = github_headers("push", &body, &unique_delivery());
        self.deliver(repo, &headers, body).await
    }

    /// Every host directory left under the data directory.
    pub fn host_dirs(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.data_dir.path().join("hosts")) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Processes started by this app's hosts that are still alive.
    pub fn host_processes(&self) -> Vec<String> {
        host_processes_under(&self.data_dir.path().join("hosts"))
    }

    /// Wait until this app's hosts have no process left and no directory, or fail.
    pub async fn assert_hosts_gone(&self) {
        let start = Instant::now();
        loop {
            let (procs, dirs) = (self.host_processes(), self.host_dirs());
            if procs.is_empty() && dirs.is_empty() {
                return;
            }
            assert!(start.elapsed() < EVENT_DEADLINE, "left behind: processes {procs:?}, dirs {dirs:?}");
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.take().unwrap().shutdown();
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// A Gantry that answers `GET /api/builds/{id}` and `GET /api/repos`: the in-process [`TestApp`]
/// or a [`ServerProcess`]. Waiting for a build or a repo is the same poll of that JSON for both.
#[allow(async_fn_in_trait)] // the tests' own trait: no caller needs its futures to be `Send`
pub trait BuildsApi {
    /// The build's JSON (an error's, when the server answers one).
    async fn build(&self, id: i64) -> Value;

    /// Poll the API until `check` accepts the build, or fail after `deadline`.
    async fn wait_build_until(&self, id: i64, deadline: Duration, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let build = self.build(id).await;
            if check(&build) {
                return build;
            }
            assert!(start.elapsed() < deadline, "build {id} never {what}: {build:#}");
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// The build once it has a final status, failing after [`BUILD_DEADLINE`].
    async fn wait_for_build(&self, id: i64) -> Value {
        self.wait_build_until(id, BUILD_DEADLINE, "finished", |b| is_final(&b["status"])).await
    }

    /// The repos' JSON list.
    async fn repos(&self) -> Value;

    /// Poll the repo list until `check` accepts it, or fail after [`EVENT_DEADLINE`] saying that
    /// it never did `what`.
    async fn wait_repos_until(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let repos = self.repos().await;
            if check(&repos) {
                return repos;
            }
            assert!(start.elapsed() < EVENT_DEADLINE, "the repos never {what}: {repos:#}");
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// The first repo's fetch error, once one is recorded.
    async fn wait_repo_error(&self) -> String {
        let repos = self.wait_repos_until("recorded a fetch error", |r| r[0]["last_error"].is_string()).await;
        repos[0]["last_error"].as_str().unwrap().to_string()
    }
}

impl BuildsApi for TestApp {
    async fn build(&self, id: i64) -> Value {
        self.get_json(&format!("/api/builds/{id}")).await
    }

    async fn repos(&self) -> Value {
        self.get_json("/api/repos").await
    }
}

impl BuildsApi for ServerProcess {
    async fn build(&self, id: i64) -> Value {
        self.client.get(format!("{}/api/builds/{id}", self.base)).send().await.unwrap().json().await.unwrap()
    }

    async fn repos(&self) -> Value {
        self.client.get(format!("{}/api/repos", self.base)).send().await.unwrap().json().await.unwrap()
    }
}

pub fn is_final(status: &Value) -> bool {
    !matches!(status.as_str(), Some("queued" | "provisioning" | "running"))
}

/// `name → status` for a build's steps.
pub fn step_statuses(build: &Value) -> BTreeMap<String, String> {
    build["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["status"].as_str().unwrap().to_string()))
        .collect()
}

pub fn step<'a>(build: &'a Value, name: &str) -> &'a Value {
    build["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {build:#}"))
}

/// Live processes (zombies excluded) whose environment has a `HOME` below `hosts_dir`: every host
/// step starts with its host directory as `HOME`, and its children inherit it.
pub fn host_processes_under(hosts_dir: &Path) -> Vec<String> {
    let prefix = format!("HOME={}/", hosts_dir.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if zombie {
            continue;
        }
        if environ.split(|&b| b == 0).any(|var| var.starts_with(prefix.as_bytes())) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!("{pid}: {}", String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

pub fn unique_delivery() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("delivery-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A published forge payload from `tests/fixtures/webhooks/`, with its ref and head commit
/// replaced by ours (the fixtures name commits of other repositories).
pub fn push_payload(fixture: &str, git_ref: &str, sha: &str) -> Vec<u8> {
    let path = workspace_path(&format!("tests/fixtures/webhooks/{fixture}"));
    let mut payload: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    payload["ref"] = json!(git_ref);
    payload["after"] = json!(sha);
    if payload.get("checkout_sha").is_some() {
        payload["checkout_sha"] = json!(sha);
    }
    serde_json::to_vec(&payload).unwrap()
}

/// The signature Gitea and Forgejo send for `body` under the tests' webhook secret.
pub fn hmac_hex(body: &[u8]) -> String {
    client::hmac_hex(SECRET, body)
}

pub fn github_headers(event: &str, body: &[u8], delivery: &str) -> Vec<(&'static str, String)> {
    client::github_headers(SECRET, event, body, delivery)
}

/// A pipeline file of one host and one stage running `script`.
pub fn one_stage_pipeline(script: &str) -> String {
    format!("version: 1\nhosts:\n  app: {{}}\nstages:\n  - name: only\n    host: app\n    run: {script:?}\n")
}

/// A pipeline file of one host and one stage named `stage` that runs `script`, then writes `junit`
/// (JUnit XML) to `reports/unit.xml`, names it in `reports:` and exits with `exit_code`.
pub fn junit_pipeline(stage: &str, script: &str, junit: &str, exit_code: i32) -> String {
    let indent = |text: &str| text.lines().map(|l| format!("      {l}\n")).collect::<String>();
    format!(
        "version: 1\nhosts:\n  app: {{}}\nstages:\n  - name: {stage}\n    host: app\n    run: |\n{}      mkdir -p reports\n      \
         cat > reports/unit.xml <<'XML'\n{}      XML\n      exit {exit_code}\n    reports: [reports/unit.xml]\n",
        indent(script),
        indent(junit),
    )
}

/// Whether `html` shows `text` escaped, in either of the spellings an HTML escaper may choose
/// (`&lt;` or `&#60;`).
pub fn shows_escaped(html: &str, text: &str) -> bool {
    let named = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;");
    let numeric = text
        .replace('&', "&#38;")
        .replace('<', "&#60;")
        .replace('>', "&#62;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;");
    html.contains(&named) || html.contains(&numeric)
}

/// The real `gantry` binary in a process of its own, for tests that kill it or give it an
/// environment of its own.
pub struct ServerProcess {
    child: Child,
    pub base: String,
    /// Sends an admin's API token, made with `gantry user add` and `gantry token create`.
    pub client: reqwest::Client,
}

/// Run the real `gantry` binary with `args` and `stdin`; its stdout when it succeeds.
pub fn gantry_command(args: &[&str], stdin: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!("gantry {args:?}: {}{stdout}", String::from_utf8_lossy(&output.stderr)))
    }
}

/// An admin's API token for the server of `config`: made once with the real `gantry user add`
/// and `gantry token create`, then kept beside the configuration for the server's restarts.
pub fn cli_admin_token(config: &Path) -> String {
    let saved = config.with_extension("token");
    if let Ok(token) = std::fs::read_to_string(&saved) {
        return token;
    }
    let config = config.to_str().unwrap();
    gantry_command(&["user", "add", ADMIN, "--admin", "--config", config], &format!("{ADMIN_PASSWORD}\n")).unwrap();
    let token = gantry_command(&["token", "create", ADMIN, "--label", "e2e", "--config", config], "").unwrap();
    let token = token.trim().to_string();
    std::fs::write(&saved, &token).unwrap();
    token
}

impl ServerProcess {
    /// The calls the benchmark makes too (queue a build, deliver a webhook), on this server.
    pub fn api(&self) -> Client {
        Client { http: self.client.clone(), base: self.base.clone() }
    }

    /// Start the real `gantry` binary and wait until it answers.
    pub async fn start(config: &Path, listen: &str) -> ServerProcess {
        ServerProcess::start_with_env(config, listen, &[]).await
    }

    /// Start it with extra environment variables.
    pub async fn start_with_env(config: &Path, listen: &str, env: &[(&str, &str)]) -> ServerProcess {
        ServerProcess::start_logging(config, listen, env, Stdio::inherit()).await
    }

    /// Start it with its log (standard error) written to `log`.
    pub async fn start_logging_to(config: &Path, listen: &str, log: &Path) -> ServerProcess {
        ServerProcess::start_logging(config, listen, &[], std::fs::File::create(log).unwrap().into()).await
    }

    /// Start it with extra environment variables and its log (stderr) going to `log`, such as a
    /// file the test reads afterwards. `NO_COLOR` is not passed on: the log is what the server
    /// writes by itself.
    pub async fn start_logging(config: &Path, listen: &str, env: &[(&str, &str)], log: Stdio) -> ServerProcess {
        let client = client_with_token(&cli_admin_token(config));
        let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["serve", "--config", config.to_str().unwrap(), "--listen", listen])
            .env_remove("NO_COLOR")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = ServerProcess { child, base: format!("http://{listen}"), client };
        let start = Instant::now();
        while reqwest::get(format!("{}/api/repos", server.base)).await.is_err() {
            assert!(start.elapsed() < EVENT_DEADLINE, "gantry serve never answered");
            tokio::time::sleep(POLL_EVERY).await;
        }
        server
    }

    /// The server process's id, to read its `/proc` entries.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_loopback_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A file a host step waits for: the test opens the gate when it has seen what the step did
/// before it, so "while the step still runs" needs no timing.
pub struct Gate {
    dir: TempDir,
}

impl Gate {
    pub fn new() -> Gate {
        let dir = TempDir::new().unwrap();
        // Host steps may run as another user: they must be able to look for the file.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        Gate { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("open")
    }

    /// A shell command that returns once the gate is open.
    pub fn wait_command(&self) -> String {
        format!("while [ ! -e {} ]; do sleep 0.02; done", self.path().display())
    }

    pub fn open(&self) {
        std::fs::write(self.path(), "").unwrap();
    }

    pub fn close(&self) {
        std::fs::remove_file(self.path()).unwrap();
    }
}
