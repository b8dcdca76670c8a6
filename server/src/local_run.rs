//! `gantry run [DIR]`: a working tree's pipeline on the local provider, without a server, a
//! database or a forge.
//!
//! It reads `DIR/.gantry.yml` through a [`WorkDirSource`], validates it (printing every
//! diagnostic), runs the executor on hosts under `DATA_DIR/hosts`, prints each output line
//! prefixed with its step as it arrives, then a summary table. Ctrl-C cancels the build, which
//! still tears every host down. It owns no state beyond one build and never touches the server's
//! database.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use gantry_event::{BuildEvent, BuildStatus, StepId, StepStatus};
use gantry_runner::pipeline::{self, LoadError, PipelineFile, SecretNames, PIPELINE_FILE};
use gantry_runner::provider::local::{LocalConfig, LocalProvider};
use gantry_runner::provider::HostId;
use gantry_runner::source::WorkDirSource;
use gantry_runner::{execute, BuildInfo, BuildPlan};
use gantry_web::format_duration_ms;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Exit code when the build passed.
pub const EXIT_PASSED: i32 = 0;
/// Exit code when the build failed, errored or was cancelled.
pub const EXIT_FAILED: i32 = 1;
/// Exit code when there is no valid pipeline file to run.
pub const EXIT_INVALID: i32 = 2;

/// The user host steps run as when `gantry run` runs as root (as `scripts/install-deps` creates
/// it); without it, steps run as root.
pub const RUN_AS_USER: &str = "gantry-host";

/// Addresses of `gantry run`'s hosts: beside the server's default pool (127.0.10.0/24), so a
/// local run on a machine that also serves builds does not take a server host's address.
pub const LOCAL_RUN_ADDRESSES: &str = "127.0.11.0/24";

/// The commit shown when DIR is not a git repository (or has no commit yet).
const NO_COMMIT: &str = "0000000000000000000000000000000000000000";

/// The branch shown when DIR is not on a branch of a git repository.
const NO_BRANCH: &str = "local";

/// Events buffered between the executor and the printer.
const EVENT_BUFFER: usize = 1024;

/// Run `dir`'s pipeline on hosts under `data_dir/hosts`. Returns the process exit code:
/// [`EXIT_PASSED`], [`EXIT_FAILED`] or [`EXIT_INVALID`].
pub async fn run_local(dir: &Path, data_dir: &Path) -> anyhow::Result<i32> {
    let root = std::fs::canonicalize(dir).with_context(|| format!("failed to open {}", dir.display()))?;
    let source = Arc::new(WorkDirSource { root: root.clone() });
    let file_name = dir.join(PIPELINE_FILE).display().to_string();
    let pipeline =
        match pipeline::load_file(&file_name, PipelineFile::InSource(PIPELINE_FILE), source.as_ref(), SecretNames::Any)
        {
            Ok(pipeline) => pipeline,
            Err(LoadError::Missing { .. }) => {
                eprintln!("{file_name}: no pipeline file (gantry run looks for {PIPELINE_FILE} at the root of DIR)");
                return Ok(EXIT_INVALID);
            }
            Err(LoadError::Read(error)) => return Err(error).with_context(|| format!("failed to read {file_name}")),
            Err(LoadError::Invalid(diagnostics)) => {
                eprintln!("{diagnostics}");
                return Ok(EXIT_INVALID);
            }
        };

    let provider =
        Arc::new(LocalProvider::new(provider_config(data_dir)).context("failed to set up the local provider")?);
    let info = build_info(&root);
    println!("gantry run: {} at {} ({})", info.repo, &info.commit[..12], info.branch);
    let host_ids: BTreeMap<String, HostId> =
        pipeline.hosts.iter().map(|h| (h.role.clone(), HostId(format!("{}-{}", info.key, h.role)))).collect();
    let plan = BuildPlan {
        info,
        pipeline: Arc::new(pipeline),
        source,
        host_ids,
        secrets: BTreeMap::new(),
        log_limits: Default::default(),
    };

    let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
    let cancel = CancellationToken::new();
    let build = tokio::spawn(execute(plan, provider, events_tx, cancel.clone()));
    let interrupt = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("gantry run: cancelling; tearing the hosts down");
                cancel.cancel();
            }
        })
    };
    let steps = print_events(events).await;
    let result = build.await.context("the build task failed")?;
    interrupt.abort();

    print_summary(&steps);
    match (&result.status, &result.error) {
        (status, Some(error)) => println!("build {}: {error}", status.as_str()),
        (status, None) => println!("build {}", status.as_str()),
    }
    Ok(if result.status == BuildStatus::Passed { EXIT_PASSED } else { EXIT_FAILED })
}

fn provider_config(data_dir: &Path) -> LocalConfig {
    let mut config = LocalConfig::new(data_dir.join("hosts"));
    config.addresses = LOCAL_RUN_ADDRESSES.parse().expect("LOCAL_RUN_ADDRESSES is a valid network");
    if nix::unistd::geteuid().is_root() {
        match nix::unistd::User::from_name(RUN_AS_USER) {
            Ok(Some(_)) => config.run_as = Some(RUN_AS_USER.to_string()),
            _ => eprintln!("gantry run: running as root and user {RUN_AS_USER} does not exist: host steps run as root"),
        }
    }
    config
}

/// The commit and branch checked out in `root` when it is a git repository.
fn build_info(root: &Path) -> BuildInfo {
    let repo_name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "local".to_string());
    let (commit, branch) = match git2::Repository::open(root) {
        Ok(repo) => match repo.head() {
            Ok(head) => {
                let commit =
                    head.peel_to_commit().map(|c| c.id().to_string()).unwrap_or_else(|_| NO_COMMIT.to_string());
                let branch = if head.is_branch() { head.shorthand().ok().map(str::to_string) } else { None };
                (commit, branch.unwrap_or_else(|| NO_BRANCH.to_string()))
            }
            Err(_) => (NO_COMMIT.to_string(), NO_BRANCH.to_string()),
        },
        Err(_) => (NO_COMMIT.to_string(), NO_BRANCH.to_string()),
    };
    BuildInfo { key: format!("run-{}", std::process::id()), number: 1, commit, branch, repo: repo_name }
}

/// One row of the summary.
struct StepRow {
    id: StepId,
    status: StepStatus,
    exit_code: Option<i32>,
    started: Option<SystemTime>,
    finished: Option<SystemTime>,
}

/// Print every log line as `[step] text` as it arrives; return what the summary needs.
async fn print_events(mut events: mpsc::Receiver<BuildEvent>) -> Vec<StepRow> {
    let mut rows: Vec<StepRow> = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            BuildEvent::Planned { steps } => {
                rows = steps
                    .into_iter()
                    .map(|id| StepRow {
                        id,
                        status: StepStatus::Pending,
                        exit_code: None,
                        started: None,
                        finished: None,
                    })
                    .collect();
            }
            BuildEvent::Log { step, text, .. } => {
                let name = rows.get(step).map_or("?", |r| r.id.name.as_str());
                println!("[{name}] {text}");
            }
            BuildEvent::StepStarted { step, at } => {
                if let Some(row) = rows.get_mut(step) {
                    row.started = Some(at);
                    row.status = StepStatus::Running;
                }
            }
            BuildEvent::StepFinished { step, at, status, exit_code } => {
                if let Some(row) = rows.get_mut(step) {
                    row.finished = Some(at);
                    row.status = status;
                    row.exit_code = exit_code;
                    if !matches!(status, StepStatus::Passed) {
                        let code = exit_code.map(|c| format!(" (exit code {c})")).unwrap_or_default();
                        println!("[{}] {}{code}", row.id.name, status.as_str());
                    }
                }
            }
            BuildEvent::Report { step, path, content } => {
                let name = rows.get(step).map_or("?", |r| r.id.name.as_str());
                println!("[{name}] report {path} collected ({} bytes)", content.len());
            }
            BuildEvent::Running { .. } | BuildEvent::HostProvisioned { .. } | BuildEvent::HostTornDown { .. } => {}
        }
    }
    rows
}

fn print_summary(rows: &[StepRow]) {
    let width = rows.iter().map(|r| r.id.name.len()).max().unwrap_or(4).max(4);
    println!();
    println!("{:<width$}  {:<9}  {:>10}  exit", "step", "status", "duration");
    for row in rows {
        let duration = match (row.started, row.finished) {
            (Some(start), Some(end)) => format_duration_ms(
                end.duration_since(start).unwrap_or_default().as_millis().try_into().unwrap_or(i64::MAX),
            ),
            _ => "-".to_string(),
        };
        let exit = row.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".to_string());
        println!("{:<width$}  {:<9}  {:>10}  {exit}", row.id.name, row.status.as_str(), duration);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_falls_back_outside_a_repository() {
        let dir = tempfile::tempdir().unwrap();
        let info = build_info(dir.path());
        assert_eq!(info.commit, NO_COMMIT);
        assert_eq!(info.branch, NO_BRANCH);
        assert_eq!(info.repo, dir.path().file_name().unwrap().to_string_lossy());
    }

    #[test]
    fn build_info_reads_the_checked_out_branch_and_commit() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        let signature = git2::Signature::now("t", "t@gantry.invalid").unwrap();
        let tree = repo.find_tree(repo.index().unwrap().write_tree().unwrap()).unwrap();
        let commit = repo.commit(Some("refs/heads/feature"), &signature, &signature, "c", &tree, &[]).unwrap();
        repo.set_head("refs/heads/feature").unwrap();
        let info = build_info(dir.path());
        assert_eq!(info.commit, commit.to_string());
        assert_eq!(info.branch, "feature");
    }

    #[tokio::test]
    async fn a_working_tree_runs_and_reports_its_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(PIPELINE_FILE),
            "version: 1\nhosts:\n  app: {}\npush:\n  code:\n    to: [app]\nstages:\n  - name: check\n    host: app\n    run: test -f marker.txt\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("marker.txt"), "here").unwrap();
        assert_eq!(run_local(dir.path(), data.path()).await.unwrap(), EXIT_PASSED);

        std::fs::remove_file(dir.path().join("marker.txt")).unwrap();
        assert_eq!(run_local(dir.path(), data.path()).await.unwrap(), EXIT_FAILED);
        let hosts: Vec<_> = std::fs::read_dir(data.path().join("hosts")).unwrap().collect();
        assert!(hosts.is_empty(), "every host is torn down");

        std::fs::write(
            dir.path().join(PIPELINE_FILE),
            "version: 1\nhosts: {}\nstages: [{name: x, host: nowhere, run: 'true'}]\n",
        )
        .unwrap();
        assert_eq!(run_local(dir.path(), data.path()).await.unwrap(), EXIT_INVALID);
    }
}
