//! Shared fixtures: git repositories, pipelines built in code, a provider on an address pool of
//! its own, and a build runner that records every event.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_runner::event::{BuildEvent, StepStatus, Stream};
use gantry_runner::pipeline::{HostDef, Pipeline, Push, Stage, Trigger};
use gantry_runner::provider::local::{LocalConfig, LocalProvider};
use gantry_runner::provider::HostId;
use gantry_runner::source::Source;
use gantry_runner::{execute, BuildInfo, BuildPlan, BuildResult};
use ipnet::Ipv4Net;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::prerequisite::missing_prerequisite;

/// How long a test waits for something that should happen quickly (a process to exit).
pub const WAIT_DEADLINE: Duration = Duration::from_secs(20);

/// The pause between two checks of a polled condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The user `scripts/install-deps` creates for host steps when the server runs as root, and the
/// prefix of the pool it creates (`gantry-host-1` …).
pub const RUN_AS_USER: &str = "gantry-host";

/// A distinct /24 of 127.0.0.0/8 per provider this test process creates, so tests running
/// concurrently never share an address: 127.60.x.0 – 127.69.x.0, away from the default pool
/// (127.0.10.0/24) and the end-to-end suite (127.70 – 127.79).
pub fn address_pool() -> Ipv4Net {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("127.{}.{}.0/24", 60 + std::process::id() % 10, n % 250 + 1).parse().unwrap()
}

/// A data dir and a local provider with hosts under `data/hosts`.
pub struct TestProvider {
    pub data: tempfile::TempDir,
    pub provider: Arc<LocalProvider>,
}

impl TestProvider {
    pub fn new() -> TestProvider {
        Self::with(|_| {})
    }

    pub fn with(configure: impl FnOnce(&mut LocalConfig)) -> TestProvider {
        let data = tempfile::tempdir().unwrap();
        let mut config = LocalConfig::new(data.path().join("hosts"));
        config.addresses = address_pool();
        configure(&mut config);
        let provider = Arc::new(LocalProvider::new(config).unwrap());
        TestProvider { data, provider }
    }

    pub fn root(&self) -> PathBuf {
        self.provider.root().to_path_buf()
    }

    /// Entries left in the hosts directory.
    pub fn leftover_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.root()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }
}

/// The run-as user when the tests run as root and it exists; otherwise `None`, after
/// [`missing_prerequisite`] said why.
#[track_caller]
pub fn run_as_user() -> Option<nix::unistd::User> {
    if !nix::unistd::geteuid().is_root() {
        missing_prerequisite(
            "not running as root, so steps cannot run as another user",
            "run the suite as root, as CI does",
        );
        return None;
    }
    let user = nix::unistd::User::from_name(RUN_AS_USER).unwrap();
    if user.is_none() {
        missing_prerequisite(&format!("user {RUN_AS_USER} does not exist"), "scripts/install-deps creates it");
    }
    user
}

/// The pool of host users (`gantry-host-1` …) when the tests run as root and it exists;
/// otherwise `None`, after [`missing_prerequisite`] said why.
#[track_caller]
pub fn pool_users() -> Option<Vec<nix::unistd::User>> {
    if !nix::unistd::geteuid().is_root() {
        missing_prerequisite(
            "not running as root, so hosts cannot run as users of their own",
            "run the suite as root, as CI does",
        );
        return None;
    }
    let users: Vec<nix::unistd::User> =
        (1..).map_while(|n| nix::unistd::User::from_name(&format!("{RUN_AS_USER}-{n}")).unwrap()).collect();
    if users.is_empty() {
        missing_prerequisite(&format!("no user pool {RUN_AS_USER}-1 …"), "scripts/install-deps creates it");
        return None;
    }
    Some(users)
}

/// A git repository in a temporary directory, committed to with git2.
pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub repo: git2::Repository,
}

/// One file of a commit.
pub enum Entry<'a> {
    File(&'a str),
    Executable(&'a str),
    Symlink(&'a str),
}

impl TestRepo {
    pub fn new() -> TestRepo {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        TestRepo { dir, repo }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write `files` into the work tree and commit everything on HEAD.
    pub fn commit(&self, files: &[(&str, Entry<'_>)]) -> git2::Oid {
        for (path, entry) in files {
            let full = self.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            match entry {
                Entry::File(text) => std::fs::write(&full, text).unwrap(),
                Entry::Executable(text) => {
                    std::fs::write(&full, text).unwrap();
                    std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o755)).unwrap();
                }
                Entry::Symlink(target) => std::os::unix::fs::symlink(target, &full).unwrap(),
            }
        }
        let mut index = self.repo.index().unwrap();
        index.add_all(["*"], git2::IndexAddOption::DEFAULT, None).unwrap();
        index.write().unwrap();
        let tree = self.repo.find_tree(index.write_tree().unwrap()).unwrap();
        let signature = git2::Signature::now("Gantry Tests", "tests@gantry.invalid").unwrap();
        let parent = self.repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        self.repo.commit(Some("HEAD"), &signature, &signature, "test commit", &tree, &parents).unwrap()
    }
}

pub fn host(role: &str, setup: Option<&str>) -> HostDef {
    HostDef {
        role: role.to_string(),
        image: None,
        size: None,
        setup: setup.map(str::to_string),
        setup_timeout: Duration::from_secs(60),
        secrets: Vec::new(),
    }
}

pub fn stage(name: &str, host: &str, needs: &[&str], run: &str) -> Stage {
    Stage {
        name: name.to_string(),
        host: host.to_string(),
        needs: needs.iter().map(|n| n.to_string()).collect(),
        timeout: Duration::from_secs(60),
        env: BTreeMap::new(),
        run: run.to_string(),
        reports: Vec::new(),
        secrets: Vec::new(),
    }
}

pub fn pipeline(hosts: Vec<HostDef>, stages: Vec<Stage>) -> Pipeline {
    Pipeline { hosts, push: Push::default(), env: BTreeMap::new(), stages, on: Trigger::default() }
}

/// Host ids unique across this test process: `t<pid>-<n>-<role>`.
pub fn host_ids(pipeline: &Pipeline) -> BTreeMap<String, HostId> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    pipeline.hosts.iter().map(|h| (h.role.clone(), HostId(format!("t{}-{n}-{}", std::process::id(), h.role)))).collect()
}

pub fn info() -> BuildInfo {
    BuildInfo {
        key: "b42".to_string(),
        number: 42,
        commit: "a".repeat(40),
        branch: "main".to_string(),
        repo: "shop".to_string(),
    }
}

pub fn plan(pipeline: Pipeline, source: Arc<dyn Source>) -> BuildPlan {
    let host_ids = host_ids(&pipeline);
    BuildPlan {
        info: info(),
        pipeline: Arc::new(pipeline),
        source,
        host_ids,
        secrets: BTreeMap::new(),
        log_limits: Default::default(),
    }
}

/// A source with nothing in it, for pipelines that push nothing.
pub fn empty_source() -> (tempfile::TempDir, Arc<dyn Source>) {
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(gantry_runner::source::WorkDirSource { root: dir.path().to_path_buf() });
    (dir, source)
}

/// Everything one build reported, in order.
pub struct Recorded {
    pub result: BuildResult,
    pub events: Vec<BuildEvent>,
    pub steps: Vec<gantry_runner::StepId>,
}

impl Recorded {
    pub fn index(&self, name: &str) -> usize {
        self.steps.iter().position(|s| s.name == name).unwrap_or_else(|| panic!("no step {name}"))
    }

    /// The final status of step `name`, from its one `StepFinished` event.
    pub fn status(&self, name: &str) -> StepStatus {
        let index = self.index(name);
        let finished: Vec<StepStatus> = self
            .events
            .iter()
            .filter_map(|e| match e {
                BuildEvent::StepFinished { step, status, .. } if *step == index => Some(*status),
                _ => None,
            })
            .collect();
        assert_eq!(finished.len(), 1, "step {name} finished {} times", finished.len());
        finished[0]
    }

    pub fn exit_code(&self, name: &str) -> Option<i32> {
        let index = self.index(name);
        self.events
            .iter()
            .find_map(|e| match e {
                BuildEvent::StepFinished { step, exit_code, .. } if *step == index => Some(*exit_code),
                _ => None,
            })
            .unwrap()
    }

    pub fn log(&self, name: &str) -> Vec<String> {
        self.log_lines(name).into_iter().map(|(_, text)| text).collect()
    }

    pub fn log_lines(&self, name: &str) -> Vec<(Stream, String)> {
        let index = self.index(name);
        self.events
            .iter()
            .filter_map(|e| match e {
                BuildEvent::Log { step, stream, text, .. } if *step == index => Some((*stream, text.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn all_statuses(&self) -> BTreeMap<String, StepStatus> {
        self.steps.iter().map(|s| (s.name.clone(), self.status(&s.name))).collect()
    }

    /// Position of the first event matching `f`.
    pub fn position(&self, f: impl Fn(&BuildEvent) -> bool) -> usize {
        self.events.iter().position(f).expect("no such event")
    }

    pub fn addresses(&self) -> BTreeMap<String, std::net::IpAddr> {
        self.events
            .iter()
            .filter_map(|e| match e {
                BuildEvent::HostProvisioned { role, address, .. } => Some((role.clone(), *address)),
                _ => None,
            })
            .collect()
    }
}

/// Run a build to its end, calling `on_event` for each event as it arrives (it may cancel).
pub async fn run_build_with(
    plan: BuildPlan,
    provider: Arc<LocalProvider>,
    mut on_event: impl FnMut(&BuildEvent, &CancellationToken),
) -> Recorded {
    let (tx, mut rx) = mpsc::channel(256);
    let cancel = CancellationToken::new();
    let build = tokio::spawn(execute(plan, provider, tx, cancel.clone()));
    let mut events = Vec::new();
    while let Some(event) = rx.recv().await {
        on_event(&event, &cancel);
        events.push(event);
    }
    let result = build.await.unwrap();
    let steps = match &events[0] {
        BuildEvent::Planned { steps } => steps.clone(),
        other => panic!("the first event is {other:?}, not Planned"),
    };
    Recorded { result, events, steps }
}

pub async fn run_build(plan: BuildPlan, provider: Arc<LocalProvider>) -> Recorded {
    run_build_with(plan, provider, |_, _| {}).await
}

/// Whether a process is gone (or a zombie nobody reaped yet: it runs nothing any more).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Poll `condition` until it holds or [`WAIT_DEADLINE`] passes.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Pids printed by a step as `pid=N` lines.
pub fn pids_in(lines: &[String]) -> Vec<i32> {
    lines.iter().filter_map(|l| l.strip_prefix("pid=")).map(|p| p.trim().parse().unwrap()).collect()
}
