//! The scheduler against a real SQLite file, real git repositories and the real local provider.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use gantry_runner::provider::local::{LocalConfig, LocalProvider};

use crate::providers::Providers;
use gantry_runner::StepStatus;

use super::*;
use crate::config::RepoConfig;
use crate::git::testing::commit;
use crate::store::{HostState, RefKind, Trigger};

/// How long a test waits for a build before failing.
const DEADLINE: Duration = Duration::from_secs(60);

const ONE_STAGE: &str =
    "version: 1\nhosts:\n  app: {}\nstages:\n  - name: only\n    host: app\n    run: echo hello from the stage\n";

const SLOW_STAGE: &str = "version: 1\nhosts:\n  app: {}\nstages:\n  - name: wait\n    host: app\n    run: sleep 600\n";

struct Harness {
    scheduler: Scheduler,
    store: Store,
    updates: broadcast::Receiver<BuildUpdate>,
    upstream: tempfile::TempDir,
    data: tempfile::TempDir,
}

/// A distinct /24 per harness, away from the e2e suite's and the runner's ranges.
fn next_addresses() -> ipnet::Ipv4Net {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("127.61.{}.0/24", n % 250 + 1).parse().unwrap()
}

async fn harness(cancel_superseded: bool) -> Harness {
    let upstream = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut repo = RepoConfig::new("acme", upstream.path().to_str().unwrap(), "secret");
    repo.cancel_superseded = cancel_superseded;
    let config = Config { data_dir: data.path().to_path_buf(), repos: vec![repo], ..Config::default() };
    let store = Store::open(&config.database_path()).await.unwrap();
    store.upsert_repo("acme", upstream.path().to_str().unwrap()).await.unwrap();
    let provider = LocalProvider::new(LocalConfig {
        root: data.path().join("hosts"),
        addresses: next_addresses(),
        run_as: Some(config.provider.local.run_as.clone()),
        isolate_network: config.provider.local.isolate_network,
        egress: config.provider.local.egress,
    })
    .unwrap();
    let scheduler = Scheduler::new(
        store.clone(),
        Arc::new(Mirrors::new(data.path().join("repos"))),
        Providers::from_providers([Arc::new(provider) as Arc<dyn gantry_runner::provider::Provider>]),
        Arc::new(config),
        CancellationToken::new(),
    );
    let updates = scheduler.subscribe();
    Harness { scheduler, store, updates, upstream, data }
}

impl Harness {
    fn new_build(&self, commit: &str, branch: &str) -> NewBuild {
        NewBuild {
            repo: "acme".into(),
            commit: commit.into(),
            branch: branch.into(),
            ref_kind: RefKind::Branch,
            trigger: Trigger::Manual,
        }
    }

    async fn enqueue(&self, commit: &str, branch: &str) -> BuildRow {
        match self.scheduler.enqueue(self.new_build(commit, branch), None).await.unwrap() {
            Enqueued::Queued(build) => build,
            Enqueued::DuplicateDelivery => panic!("no delivery was given"),
        }
    }

    /// Wait until `build` is final, and return its row. The scheduler stores a build's end
    /// before it broadcasts it, so looking again after each update never misses it.
    async fn finished(&mut self, build: BuildId) -> BuildRow {
        let start = Instant::now();
        loop {
            let row = self.store.build(build).await.unwrap().unwrap();
            if row.status.is_final() {
                return row;
            }
            let left = DEADLINE.checked_sub(start.elapsed()).expect("the build never finished");
            match tokio::time::timeout(left, self.updates.recv()).await.expect("the build never finished") {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("the scheduler went away"),
            }
        }
    }

    /// Wait until the step named `name` of `build` is running.
    async fn step_running(&mut self, build: BuildId, name: &str) {
        let start = Instant::now();
        loop {
            let steps = self.store.steps(build).await.unwrap();
            if steps.iter().any(|s| s.name == name && s.status == StepStatus::Running) {
                return;
            }
            let left = DEADLINE.checked_sub(start.elapsed()).expect("the step never started");
            let _ = tokio::time::timeout(left, self.updates.recv()).await.expect("the step never started");
        }
    }

    fn host_dirs(&self) -> Vec<std::path::PathBuf> {
        match std::fs::read_dir(self.data.path().join("hosts")) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

#[tokio::test]
async fn enqueue_supersedes_older_queued_builds_of_the_same_branch() {
    let h = harness(true).await;
    let sha = commit(h.upstream.path(), "main", &[(".gantry.yml", ONE_STAGE)]);
    // Not started: everything stays queued unless superseded.
    let old = h.enqueue(&sha, "main").await;
    let dev = h.enqueue(&sha, "dev").await;
    let new = h.enqueue(&sha, "main").await;
    assert_eq!(h.store.build(old.id).await.unwrap().unwrap().status, BuildStatus::Cancelled);
    assert_eq!(h.store.build(dev.id).await.unwrap().unwrap().status, BuildStatus::Queued);
    assert_eq!(h.store.build(new.id).await.unwrap().unwrap().status, BuildStatus::Queued);

    let h = harness(false).await;
    let first = h.enqueue(&sha, "main").await;
    h.enqueue(&sha, "main").await;
    assert_eq!(h.store.build(first.id).await.unwrap().unwrap().status, BuildStatus::Queued);
}

#[tokio::test]
async fn a_repeated_delivery_queues_nothing() {
    let h = harness(true).await;
    let sha = commit(h.upstream.path(), "main", &[(".gantry.yml", ONE_STAGE)]);
    let first = h.scheduler.enqueue(h.new_build(&sha, "main"), Some("d-1")).await.unwrap();
    assert!(matches!(first, Enqueued::Queued(_)));
    let again = h.scheduler.enqueue(h.new_build(&sha, "main"), Some("d-1")).await.unwrap();
    assert_eq!(again, Enqueued::DuplicateDelivery);
    assert_eq!(h.store.builds_of_repo("acme", 10).await.unwrap().len(), 1);
    let unknown = h.scheduler.enqueue(NewBuild { repo: "nope".into(), ..h.new_build(&sha, "main") }, None).await;
    assert!(matches!(unknown, Err(SchedulerError::UnknownRepo(_))));
}

#[tokio::test]
async fn a_build_runs_and_every_event_is_stored() {
    let mut h = harness(true).await;
    let sha = commit(h.upstream.path(), "main", &[(".gantry.yml", ONE_STAGE)]);
    h.scheduler.recover().await.unwrap();
    h.scheduler.start();
    let build = h.enqueue(&sha, "main").await;
    let done = h.finished(build.id).await;
    assert_eq!(done.status, BuildStatus::Passed, "{done:?}");
    assert!(done.started_at.is_some() && done.finished_at.is_some());

    let steps = h.store.steps(build.id).await.unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    for expected in ["provision:app", "only", "teardown:app"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    assert!(steps.iter().all(|s| s.status == StepStatus::Passed), "{steps:?}");
    let only = steps.iter().find(|s| s.name == "only").unwrap();
    assert_eq!(only.exit_code, Some(0));
    let log = h.store.log_lines(build.id, Some(only.idx), None).await.unwrap();
    assert_eq!(log.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["hello from the stage"]);

    let hosts = h.store.hosts_of_build(build.id).await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].host_id, format!("b{}-app", build.id));
    assert_eq!(hosts[0].state, HostState::TornDown);
    let provision = steps.iter().find(|s| s.name == "provision:app").unwrap();
    assert_eq!(hosts[0].provision_ms, provision.duration_ms());
    assert_eq!(hosts[0].provisioned_at, provision.finished_at);
    let teardown = steps.iter().find(|s| s.name == "teardown:app").unwrap();
    assert_eq!(hosts[0].teardown_ms, teardown.duration_ms());
    assert_eq!(hosts[0].torn_down_at, teardown.finished_at);
    assert!(hosts[0].address.is_some_and(|a| a.to_string() != "127.0.0.1"));
    assert!(h.host_dirs().is_empty());
}

#[tokio::test]
async fn a_missing_or_invalid_pipeline_errors_the_build_before_any_host() {
    let mut h = harness(true).await;
    let missing = commit(h.upstream.path(), "main", &[("README", "no pipeline here")]);
    let invalid = commit(
        h.upstream.path(),
        "broken",
        &[(".gantry.yml", "version: 1\nhosts:\n  web: {}\nstages:\n  - name: unit\n    host: dbb\n    run: true\n")],
    );
    h.scheduler.start();
    let first = h.enqueue(&missing, "main").await;
    let second = h.enqueue(&invalid, "broken").await;
    let unreachable = h.enqueue(&"ab".repeat(20), "gone").await;

    let done = h.finished(first.id).await;
    assert_eq!(done.status, BuildStatus::Errored);
    assert!(done.error.as_deref().unwrap().contains("no .gantry.yml"), "{done:?}");
    let done = h.finished(second.id).await;
    assert_eq!(done.status, BuildStatus::Errored);
    assert!(done.error.as_deref().unwrap().contains(".gantry.yml:6:"), "{done:?}");
    let done = h.finished(unreachable.id).await;
    assert_eq!(done.status, BuildStatus::Errored);
    assert!(done.error.as_deref().unwrap().contains("is not in"), "{done:?}");
    for id in [first.id, second.id, unreachable.id] {
        assert!(h.store.hosts_of_build(id).await.unwrap().is_empty());
    }
    assert!(h.host_dirs().is_empty());
}

#[tokio::test]
async fn a_newer_build_stops_the_running_one_and_cancel_stops_a_build() {
    let mut h = harness(true).await;
    let slow = commit(h.upstream.path(), "main", &[(".gantry.yml", SLOW_STAGE)]);
    h.scheduler.start();
    let old = h.enqueue(&slow, "main").await;
    h.step_running(old.id, "wait").await;
    let fast = commit(h.upstream.path(), "main", &[(".gantry.yml", ONE_STAGE)]);
    let new = h.enqueue(&fast, "main").await;

    let done = h.finished(old.id).await;
    assert_eq!(done.status, BuildStatus::Cancelled);
    assert!(done.error.as_deref().unwrap().contains("superseded"), "{done:?}");
    let steps = h.store.steps(old.id).await.unwrap();
    assert_eq!(steps.iter().find(|s| s.name == "wait").unwrap().status, StepStatus::Cancelled);
    assert_eq!(h.finished(new.id).await.status, BuildStatus::Passed);

    let slow_again = h.enqueue(&slow, "other").await;
    h.step_running(slow_again.id, "wait").await;
    assert_eq!(h.scheduler.cancel(slow_again.id).await.unwrap(), Cancelled::Stopping);
    let done = h.finished(slow_again.id).await;
    assert_eq!(done.status, BuildStatus::Cancelled);
    assert_eq!(h.scheduler.cancel(slow_again.id).await.unwrap(), Cancelled::AlreadyFinished);
    assert_eq!(h.scheduler.cancel(BuildId(999_999)).await.unwrap(), Cancelled::NotFound);
    assert!(h.host_dirs().is_empty());
}

#[tokio::test]
async fn concurrency_is_capped_and_the_queue_drains_in_order() {
    let mut h = harness(false).await;
    let sha = commit(h.upstream.path(), "main", &[(".gantry.yml", ONE_STAGE)]);
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(h.enqueue(&sha, "main").await.id);
    }
    h.scheduler.start();
    for id in &ids {
        assert_eq!(h.finished(*id).await.status, BuildStatus::Passed);
    }
    // A slot is a build's hosts: from its first step (provisioning) to its last (teardown's end),
    // at most `limit` builds hold any. The next build may start while one's final status is
    // stored, so builds are counted by their steps' times, not by their updates.
    let mut edges = Vec::new();
    for id in &ids {
        let steps = h.store.steps(*id).await.unwrap();
        let first = steps.iter().filter_map(|s| s.started_at).min().unwrap();
        let last = steps.iter().filter_map(|s| s.finished_at).max().unwrap();
        // At one millisecond an end comes before a start: a slot freed and taken again.
        edges.extend([(first, 1_i32), (last, -1)]);
    }
    edges.sort();
    let (mut holding, mut most) = (0, 0_i32);
    for (_, change) in edges {
        holding += change;
        most = most.max(holding);
    }
    let limit = i32::try_from(crate::config::DEFAULT_MAX_CONCURRENT_BUILDS).unwrap();
    assert!(most <= limit && most > 1, "{most} builds held hosts at once; the limit is {limit}");
    let mut started = Vec::new();
    for id in &ids {
        started.push(h.store.build(*id).await.unwrap().unwrap().started_at.unwrap());
    }
    assert!(started.windows(2).all(|w| w[0] <= w[1]), "claimed oldest first: {started:?}");
}

#[tokio::test]
async fn shutdown_interrupts_running_builds_and_tears_their_hosts_down() {
    let mut h = harness(true).await;
    let slow = commit(h.upstream.path(), "main", &[(".gantry.yml", SLOW_STAGE)]);
    h.scheduler.start();
    let build = h.enqueue(&slow, "main").await;
    h.step_running(build.id, "wait").await;
    h.scheduler.shutdown().await;
    let row = h.store.build(build.id).await.unwrap().unwrap();
    assert_eq!(row.status, BuildStatus::Interrupted);
    assert_eq!(h.store.hosts_of_build(build.id).await.unwrap()[0].state, HostState::TornDown);
    assert!(h.host_dirs().is_empty());
    // A stopped scheduler claims nothing more.
    let later = h.enqueue(&slow, "dev").await;
    assert_eq!(h.store.build(later.id).await.unwrap().unwrap().status, BuildStatus::Queued);
}

#[tokio::test]
async fn recovery_interrupts_what_a_crash_left_and_reaps_its_hosts() {
    let h = harness(true).await;
    let sha = commit(h.upstream.path(), "main", &[(".gantry.yml", ONE_STAGE)]);
    // What a killed server leaves: a claimed build with a recorded host whose directory exists.
    let build = h.store.insert_build(&h.new_build(&sha, "main")).await.unwrap();
    h.store.claim_next_build(&h.scheduler.server().id).await.unwrap().unwrap();
    // And a build another server sharing the database runs, with its host: not this server's.
    let theirs = h.store.insert_build(&h.new_build(&sha, "dev")).await.unwrap();
    h.store.claim_next_build("another-server").await.unwrap().unwrap();
    let mut conn = h.store.writer().acquire().await.unwrap();
    store::hosts::insert_requested(&mut conn, theirs.id, &[("app", &format!("b{}-app", theirs.id))], "ssh")
        .await
        .unwrap();
    drop(conn);
    let host_id = format!("b{}-app", build.id);
    let mut tx = h.store.begin().await.unwrap();
    store::hosts::insert_requested(&mut tx, build.id, &[("app", &host_id)], "local").await.unwrap();
    store::steps::insert_planned(
        &mut tx,
        build.id,
        &[gantry_runner::StepId::host_step(gantry_runner::StepKind::Provision, "app")],
    )
    .await
    .unwrap();
    store::steps::start(&mut tx, build.id, 0, store::now_ms()).await.unwrap();
    tx.commit().await.unwrap();
    let home = h.data.path().join("hosts").join(&host_id);
    std::fs::create_dir_all(home.join("src")).unwrap();

    h.scheduler.recover().await.unwrap();
    let row = h.store.build(build.id).await.unwrap().unwrap();
    assert_eq!(row.status, BuildStatus::Interrupted);
    assert_eq!(h.store.steps(build.id).await.unwrap()[0].status, StepStatus::Cancelled);
    let left: Vec<String> = h.store.hosts_not_torn_down().await.unwrap().into_iter().map(|h| h.host_id).collect();
    assert_eq!(left, [format!("b{}-app", theirs.id)], "only the other server's host is left");
    assert!(!home.exists(), "the host directory was removed");
    assert_eq!(h.store.build(theirs.id).await.unwrap().unwrap().status, BuildStatus::Provisioning);
}
