//! Drives one build: provision → push → setup → stages → collect reports → teardown, emitting a
//! [`BuildEvent`] for everything that happens.
//!
//! Teardown runs once for every host that was asked for, on every exit path (pass, fail, timeout,
//! cancellation, a provisioning error), under its own timeout and outside the build's
//! cancellation. The executor reaches hosts only through the [`Provider`] and the transports it
//! hands out; it knows nothing of how they are stored or shown, and it never leaves a step pending
//! or running when it returns.
//!
//! The plan announced by [`BuildEvent::Planned`] lists the steps in the order they run: every
//! `provision:ROLE` (hosts in file order), every `push:ROLE` (hosts that receive code, data or
//! config), every `setup:ROLE` (hosts with a setup), the stages in file order, and every
//! `teardown:ROLE`.
//!
//! This module owns [`execute`], the state of one running build, provisioning and the teardown
//! that always runs. The steps in between live beside it: `plan` (which steps a build has, when a
//! stage may start, what each step sees in its environment), `push` (code, data and rendered
//! config to the hosts) and `stages` (setups and stages with their timeouts, cancellation, capped
//! logs and report collection).

mod plan;
mod push;
mod stages;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use secrecy::ExposeSecret;
use tokio::sync::{mpsc, OnceCell};
use tokio_util::sync::CancellationToken;

use crate::event::{BuildEvent, BuildStatus, StepId, StepIndex, StepKind, StepStatus, Stream};
use crate::mask::Masker;
use crate::pipeline::Pipeline;
use crate::provider::{HostRequest, Provider};
use crate::transport::Transport;

pub use plan::{gantry_env, plan_steps, BuildInfo, BuildPlan};

/// How long tearing one host down may take before it is reported as failed.
pub const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(300);

/// A step's log keeps this many lines unless the plan's [`LogLimits`] say otherwise; then a
/// notice where it was cut and one with the count of what was not kept.
pub const DEFAULT_MAX_LOG_LINES_PER_STEP: usize = 1_000_000;

/// A step's log keeps this many bytes unless the plan's [`LogLimits`] say otherwise (a million
/// lines of a few hundred characters); then the same notices.
pub const DEFAULT_MAX_LOG_BYTES_PER_STEP: usize = 512 * 1024 * 1024;

/// How much of one step's output a build keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub max_lines: usize,
    pub max_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> LogLimits {
        LogLimits { max_lines: DEFAULT_MAX_LOG_LINES_PER_STEP, max_bytes: DEFAULT_MAX_LOG_BYTES_PER_STEP }
    }
}

/// A report file larger than this is not collected.
pub const MAX_REPORT_BYTES: usize = 8 * 1024 * 1024;

/// Where a host that receives the code keeps it, relative to its home; steps run there.
const CODE_DIR: &str = "src";

/// Where pushed data lands, relative to the host's home.
const DATA_DIR: &str = "data";

/// Every line Gantry itself writes into a step's log starts with this.
const SYSTEM_PREFIX: &str = "[gantry]";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    /// Passed, Failed, Cancelled or Errored.
    pub status: BuildStatus,
    /// Why the build errored (provisioning failed, a template did not render, ...).
    pub error: Option<String>,
}

/// Run a build to the end. Never panics on a host's failure; every host is torn down before this
/// returns. Cancel through `cancel`, never by dropping the returned future: a dropped build
/// cannot tear its hosts down (a restarted server's reaper would have to).
pub async fn execute(
    plan: BuildPlan,
    provider: Arc<dyn Provider>,
    events: mpsc::Sender<BuildEvent>,
    cancel: CancellationToken,
) -> BuildResult {
    let steps = plan_steps(&plan.pipeline);
    let run = Run {
        statuses: Mutex::new(vec![StepStatus::Pending; steps.len()]),
        steps,
        plan: &plan,
        provider: provider.as_ref(),
        events,
        cancel,
        hosts: Mutex::new(BTreeMap::new()),
        errors: Mutex::new(Vec::new()),
        code_archive: OnceCell::new(),
        mask: Masker::new(plan.secrets.values().map(|value| value.expose_secret())),
    };
    run.emit(BuildEvent::Planned { steps: run.steps.clone() }).await;
    tracing::info!(build = plan.info.number, repo = %plan.info.repo, commit = %plan.info.commit, "build started");

    run.run_phases().await;
    run.teardown_all().await;
    run.settle_leftovers();
    let result = run.result();
    tracing::info!(build = plan.info.number, status = result.status.as_str(), error = ?result.error, "build finished");
    result
}

/// A host once provisioned.
#[derive(Clone)]
struct LiveHost {
    address: IpAddr,
    provider_id: String,
    transport: Arc<dyn Transport>,
}

/// The state of one running build.
struct Run<'a> {
    plan: &'a BuildPlan,
    provider: &'a dyn Provider,
    events: mpsc::Sender<BuildEvent>,
    cancel: CancellationToken,
    steps: Vec<StepId>,
    statuses: Mutex<Vec<StepStatus>>,
    hosts: Mutex<BTreeMap<String, LiveHost>>,
    /// Infrastructure errors; any makes the build `errored`.
    errors: Mutex<Vec<String>>,
    /// The tree of the commit as `src/…`, packed once for every host that receives it.
    code_archive: OnceCell<Result<Arc<Vec<u8>>, String>>,
    /// Masks the build's secrets in every log line, report and error before it leaves the build.
    mask: Masker,
}

/// How a phase ended, deciding whether the next one starts.
enum PhaseEnd {
    Continue,
    /// Something failed for good: every step not yet run is skipped.
    Stop,
}

impl<'a> Run<'a> {
    fn pipeline(&self) -> &'a Pipeline {
        &self.plan.pipeline
    }

    /// Report an event, with the build's secrets masked in what it carries of a step's output.
    async fn emit(&self, event: BuildEvent) {
        let event = match event {
            BuildEvent::Log { step, at, stream, text } => {
                BuildEvent::Log { step, at, stream, text: self.mask.mask(&text).into_owned() }
            }
            BuildEvent::Report { step, path, mut content } => {
                self.mask.mask_bytes(&mut content);
                BuildEvent::Report { step, path, content }
            }
            other => other,
        };
        // A caller that stopped listening still gets its hosts torn down; nothing to do here.
        let _ = self.events.send(event).await;
    }

    fn index(&self, kind: StepKind, name: &str) -> Option<StepIndex> {
        self.steps.iter().position(|s| s.kind == kind && s.name == name)
    }

    fn host_step(&self, kind: StepKind, role: &str) -> Option<StepIndex> {
        self.index(kind, &format!("{}:{role}", kind.as_str()))
    }

    fn status(&self, step: StepIndex) -> StepStatus {
        self.statuses.lock().expect("statuses poisoned")[step]
    }

    fn error(&self, message: String) {
        let message = self.mask.mask(&message).into_owned();
        tracing::warn!(build = self.plan.info.number, error = %message, "build error");
        self.errors.lock().expect("errors poisoned").push(message);
    }

    fn host(&self, role: &str) -> Option<LiveHost> {
        self.hosts.lock().expect("hosts poisoned").get(role).cloned()
    }

    fn addresses(&self) -> BTreeMap<String, IpAddr> {
        self.hosts.lock().expect("hosts poisoned").iter().map(|(role, host)| (role.clone(), host.address)).collect()
    }

    async fn start(&self, step: StepIndex) {
        self.statuses.lock().expect("statuses poisoned")[step] = StepStatus::Running;
        self.emit(BuildEvent::StepStarted { step, at: SystemTime::now() }).await;
    }

    async fn finish(&self, step: StepIndex, status: StepStatus, exit_code: Option<i32>) {
        self.statuses.lock().expect("statuses poisoned")[step] = status;
        self.emit(BuildEvent::StepFinished { step, at: SystemTime::now(), status, exit_code }).await;
    }

    async fn system_line(&self, step: StepIndex, text: &str) {
        let text = format!("{SYSTEM_PREFIX} {text}");
        self.emit(BuildEvent::Log { step, at: SystemTime::now(), stream: Stream::System, text }).await;
    }

    /// Provision, push, setup and stages; teardown is the caller's, so it runs however these end.
    async fn run_phases(&self) {
        if let PhaseEnd::Stop = self.provision_all().await {
            return self.close_pending(StepStatus::Skipped).await;
        }
        if self.cancel.is_cancelled() {
            return self.close_pending(StepStatus::Cancelled).await;
        }
        if let PhaseEnd::Stop = self.push_all().await {
            return self.close_pending(StepStatus::Skipped).await;
        }
        if self.cancel.is_cancelled() {
            return self.close_pending(StepStatus::Cancelled).await;
        }
        self.emit(BuildEvent::Running { at: SystemTime::now() }).await;
        self.setup_all().await;
        self.run_stages().await;
    }

    /// Finish every pending step except teardowns with `status`.
    async fn close_pending(&self, status: StepStatus) {
        for step in 0..self.steps.len() {
            if self.steps[step].kind != StepKind::Teardown && self.status(step) == StepStatus::Pending {
                self.finish(step, status, None).await;
            }
        }
    }

    async fn provision_all(&self) -> PhaseEnd {
        let pipeline = self.pipeline();
        let results = futures::future::join_all(pipeline.hosts.iter().map(|host| self.provision(host))).await;
        if results.iter().all(|ok| *ok) {
            PhaseEnd::Continue
        } else {
            PhaseEnd::Stop
        }
    }

    async fn provision(&self, host: &crate::pipeline::HostDef) -> bool {
        let Some(step) = self.host_step(StepKind::Provision, &host.role) else { return false };
        self.start(step).await;
        let Some(id) = self.plan.host_ids.get(&host.role) else {
            let message = format!("no host id was recorded for host {}", host.role);
            self.system_line(step, &message).await;
            self.error(message);
            self.finish(step, StepStatus::Failed, None).await;
            return false;
        };
        let request = HostRequest {
            id: id.clone(),
            build: self.plan.info.key.clone(),
            role: host.role.clone(),
            image: host.image.clone(),
            size: host.size.clone(),
            build_timeout: self.pipeline().total_timeout(),
        };
        // Provisioning is not cancelled half-way: a host being created is easier to tear down
        // once it exists than while the provider is still creating it.
        match self.provider.provision(&request).await {
            Ok(provisioned) => {
                let live = LiveHost {
                    address: provisioned.address,
                    provider_id: provisioned.provider_id.clone(),
                    transport: provisioned.transport,
                };
                self.hosts.lock().expect("hosts poisoned").insert(host.role.clone(), live);
                self.emit(BuildEvent::HostProvisioned {
                    role: host.role.clone(),
                    address: provisioned.address,
                    provider_id: provisioned.provider_id.clone(),
                    isolation: provisioned.isolation.clone(),
                })
                .await;
                self.system_line(
                    step,
                    &format!("host {} is {} ({})", host.role, provisioned.address, provisioned.provider_id),
                )
                .await;
                self.finish(step, StepStatus::Passed, None).await;
                true
            }
            Err(e) => {
                let message = e.to_string();
                self.system_line(step, &message).await;
                self.error(message);
                self.finish(step, StepStatus::Failed, None).await;
                false
            }
        }
    }

    /// Tear every host down concurrently, each under [`TEARDOWN_TIMEOUT`], whatever happened
    /// before and whether or not the build is cancelled.
    async fn teardown_all(&self) {
        let pipeline = self.pipeline();
        let teardowns = pipeline.hosts.iter().filter_map(|host| {
            let step = self.host_step(StepKind::Teardown, &host.role)?;
            Some(self.teardown(step, &host.role))
        });
        futures::future::join_all(teardowns).await;
    }

    async fn teardown(&self, step: StepIndex, role: &str) {
        let Some(id) = self.plan.host_ids.get(role) else {
            // Never provisioned, so nothing to destroy.
            return self.finish(step, StepStatus::Skipped, None).await;
        };
        self.start(step).await;
        // The transport goes first: nothing may use the host while it is destroyed.
        let provider_id = self.hosts.lock().expect("hosts poisoned").remove(role).map(|h| h.provider_id);
        let error = match tokio::time::timeout(TEARDOWN_TIMEOUT, self.provider.teardown(id, provider_id.as_deref()))
            .await
        {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => {
                Some(format!("teardown of {id} did not finish within {}", humantime::format_duration(TEARDOWN_TIMEOUT)))
            }
        };
        if let Some(message) = &error {
            self.system_line(step, message).await;
            self.error(message.clone());
        }
        self.emit(BuildEvent::HostTornDown { role: role.to_string(), error: error.clone() }).await;
        let status = if error.is_none() { StepStatus::Passed } else { StepStatus::Failed };
        self.finish(step, status, None).await;
    }

    /// No step stays pending or running once the build is over (a defensive sweep: the phases
    /// above already finish every step they own).
    fn settle_leftovers(&self) {
        let mut statuses = self.statuses.lock().expect("statuses poisoned");
        for (step, status) in statuses.iter_mut().enumerate() {
            if !status.is_final() {
                tracing::error!(build = self.plan.info.number, step = %self.steps[step].name, "step left unfinished");
                *status = StepStatus::Skipped;
                let _ = self.events.try_send(BuildEvent::StepFinished {
                    step,
                    at: SystemTime::now(),
                    status: StepStatus::Skipped,
                    exit_code: None,
                });
            }
        }
    }

    fn result(&self) -> BuildResult {
        let errors = self.errors.lock().expect("errors poisoned");
        if !errors.is_empty() {
            return BuildResult { status: BuildStatus::Errored, error: Some(errors.join("; ")) };
        }
        let statuses = self.statuses.lock().expect("statuses poisoned");
        let status = if self.cancel.is_cancelled() && statuses.contains(&StepStatus::Cancelled) {
            BuildStatus::Cancelled
        } else if statuses.iter().any(|s| matches!(s, StepStatus::Failed | StepStatus::TimedOut)) {
            BuildStatus::Failed
        } else {
            BuildStatus::Passed
        };
        BuildResult { status, error: None }
    }
}

fn human_bytes(n: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    if n >= MIB {
        format!("{:.1} MiB", n as f64 / MIB as f64)
    } else if n >= KIB {
        format!("{:.1} KiB", n as f64 / KIB as f64)
    } else {
        format!("{n} bytes")
    }
}
