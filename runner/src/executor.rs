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

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, OnceCell};
use tokio_util::sync::CancellationToken;

use crate::event::{BuildEvent, BuildStatus, StepId, StepIndex, StepKind, StepStatus, Stream};
use crate::pipeline::{render_template, Pipeline, TemplateContext};
use crate::provider::{HostId, HostRequest, Provider};
use crate::source::Source;
use crate::transport::{ExecOutcome, ExecRequest, OutputLine, Transport};

/// How long tearing one host down may take before it is reported as failed.
pub const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(300);

/// A step's log keeps at most this many lines; then one truncation notice.
pub const MAX_LOG_LINES_PER_STEP: usize = 50_000;

/// A step's log keeps at most this many bytes; then one truncation notice.
pub const MAX_LOG_BYTES_PER_STEP: usize = 8 * 1024 * 1024;

/// A report file larger than this is not collected.
pub const MAX_REPORT_BYTES: usize = 8 * 1024 * 1024;

/// Output lines buffered between a transport and the executor for one step.
const STEP_OUTPUT_BUFFER_LINES: usize = 1024;

/// Where a host that receives the code keeps it, relative to its home; steps run there.
const CODE_DIR: &str = "src";

/// Where pushed data lands, relative to the host's home.
const DATA_DIR: &str = "data";

/// Every line Gantry itself writes into a step's log starts with this.
const SYSTEM_PREFIX: &str = "[gantry]";

/// What the build is, as steps see it in `GANTRY_*` variables and templates see it in `build.*`.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    /// The build's key on its server (`b42`), unique among the server's builds; its hosts'
    /// ids start with it and providers group a build's hosts by it.
    pub key: String,
    pub number: u64,
    pub commit: String,
    pub branch: String,
    pub repo: String,
}

pub struct BuildPlan {
    pub info: BuildInfo,
    pub pipeline: Arc<Pipeline>,
    pub source: Arc<dyn Source>,
    /// One id per host role, recorded durably by the caller before `execute` runs.
    pub host_ids: BTreeMap<String, HostId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    /// Passed, Failed, Cancelled or Errored.
    pub status: BuildStatus,
    /// Why the build errored (provisioning failed, a template did not render, ...).
    pub error: Option<String>,
}

/// The steps of a build, in the order [`BuildEvent::Planned`] announces them.
pub fn plan_steps(pipeline: &Pipeline) -> Vec<StepId> {
    let mut steps = Vec::new();
    for host in &pipeline.hosts {
        steps.push(StepId::host_step(StepKind::Provision, &host.role));
    }
    for host in &pipeline.hosts {
        if receives_push(pipeline, &host.role) {
            steps.push(StepId::host_step(StepKind::Push, &host.role));
        }
    }
    for host in &pipeline.hosts {
        if host.setup.is_some() {
            steps.push(StepId::host_step(StepKind::Setup, &host.role));
        }
    }
    for stage in &pipeline.stages {
        steps.push(StepId { kind: StepKind::Stage, name: stage.name.clone(), host: stage.host.clone() });
    }
    for host in &pipeline.hosts {
        steps.push(StepId::host_step(StepKind::Teardown, &host.role));
    }
    steps
}

/// The variables every step sees besides the pipeline's own `env`: `GANTRY_BUILD`,
/// `GANTRY_COMMIT`, `GANTRY_BRANCH`, `GANTRY_REPO`, `GANTRY_HOST`, `GANTRY_HOST_ADDR` and
/// `GANTRY_HOST_<ROLE>` for every host.
pub fn gantry_env(info: &BuildInfo, role: &str, addresses: &BTreeMap<String, IpAddr>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        ("GANTRY_BUILD".to_string(), info.number.to_string()),
        ("GANTRY_COMMIT".to_string(), info.commit.clone()),
        ("GANTRY_BRANCH".to_string(), info.branch.clone()),
        ("GANTRY_REPO".to_string(), info.repo.clone()),
        ("GANTRY_HOST".to_string(), role.to_string()),
    ]);
    if let Some(address) = addresses.get(role) {
        env.insert("GANTRY_HOST_ADDR".to_string(), address.to_string());
    }
    for (other, address) in addresses {
        env.insert(format!("GANTRY_HOST_{}", other.to_uppercase().replace('-', "_")), address.to_string());
    }
    env
}

fn receives_push(pipeline: &Pipeline, role: &str) -> bool {
    pipeline.has_code(role)
        || pipeline.push.data.iter().any(|d| d.to == role)
        || pipeline.push.config.iter().any(|c| c.host == role)
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
}

/// How a phase ended, deciding whether the next one starts.
enum PhaseEnd {
    Continue,
    /// Something failed for good: every step not yet run is skipped.
    Stop,
}

type StageFuture<'f> = Pin<Box<dyn Future<Output = (usize, StepStatus)> + Send + 'f>>;

impl<'a> Run<'a> {
    fn pipeline(&self) -> &'a Pipeline {
        &self.plan.pipeline
    }

    async fn emit(&self, event: BuildEvent) {
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

    async fn push_all(&self) -> PhaseEnd {
        let pipeline = self.pipeline();
        let pushes = pipeline.hosts.iter().filter_map(|host| {
            let step = self.host_step(StepKind::Push, &host.role)?;
            Some(self.push(step, &host.role))
        });
        let results = futures::future::join_all(pushes).await;
        if results.iter().all(|ok| *ok) {
            PhaseEnd::Continue
        } else {
            PhaseEnd::Stop
        }
    }

    async fn push(&self, step: StepIndex, role: &str) -> bool {
        if self.cancel.is_cancelled() {
            self.finish(step, StepStatus::Cancelled, None).await;
            return true;
        }
        self.start(step).await;
        let result = match self.host(role) {
            Some(host) => self.push_to(step, role, host.transport.as_ref()).await,
            None => Err(format!("host {role} was never provisioned")),
        };
        match result {
            Ok(()) => {
                self.finish(step, StepStatus::Passed, None).await;
                true
            }
            Err(message) => {
                let message = format!("push to {role} failed: {message}");
                self.system_line(step, &message).await;
                self.error(message);
                self.finish(step, StepStatus::Failed, None).await;
                false
            }
        }
    }

    /// Code, then data, then rendered config (which may land inside the code, e.g. `src/.env`).
    async fn push_to(&self, step: StepIndex, role: &str, transport: &dyn Transport) -> Result<(), String> {
        let pipeline = self.pipeline();
        if pipeline.has_code(role) {
            let archive = self.code_archive().await?;
            let size = archive.len();
            transport.upload_tar("", archive.as_ref().clone()).await.map_err(|e| e.to_string())?;
            self.system_line(
                step,
                &format!("code of {} → ~/{CODE_DIR} ({})", self.plan.info.commit, human_bytes(size)),
            )
            .await;
        }
        for data in pipeline.push.data.iter().filter(|d| d.to == role) {
            let from = data.from.clone();
            let archive = self.pack(move |source, out| source.archive(&from, DATA_DIR, out)).await?;
            let size = archive.len();
            transport.upload_tar("", archive).await.map_err(|e| e.to_string())?;
            let name = data.from.rsplit('/').next().unwrap_or(&data.from);
            self.system_line(step, &format!("data {} → ~/{DATA_DIR}/{name} ({})", data.from, human_bytes(size))).await;
        }
        let configs: Vec<_> = pipeline.push.config.iter().filter(|c| c.host == role).collect();
        if !configs.is_empty() {
            let context = self.template_context();
            for config in configs {
                let template = config.template.clone();
                let text = self
                    .pack(move |source, out| match source.read_file(&template)? {
                        Some(bytes) => out
                            .write_all(&bytes)
                            .map_err(|e| crate::source::SourceError::Io { path: template.clone().into(), source: e }),
                        None => Err(crate::source::SourceError::NotFound(template.clone())),
                    })
                    .await?;
                let text = String::from_utf8(text).map_err(|_| format!("template {} is not UTF-8", config.template))?;
                let rendered = render_template(&config.template, &text, &context).map_err(|e| e.to_string())?;
                transport.write_file(&config.path, rendered.into_bytes()).await.map_err(|e| e.to_string())?;
                self.system_line(step, &format!("config {} → ~/{}", config.template, config.path)).await;
            }
        }
        Ok(())
    }

    async fn code_archive(&self) -> Result<Arc<Vec<u8>>, String> {
        self.code_archive
            .get_or_init(|| async { self.pack(|source, out| source.archive("", CODE_DIR, out)).await.map(Arc::new) })
            .await
            .clone()
    }

    /// Run `f` against the source on a blocking thread (sources are synchronous), collecting what
    /// it writes.
    async fn pack<F>(&self, f: F) -> Result<Vec<u8>, String>
    where
        F: FnOnce(&dyn Source, &mut dyn std::io::Write) -> Result<(), crate::source::SourceError> + Send + 'static,
    {
        let source = Arc::clone(&self.plan.source);
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            f(source.as_ref(), &mut out).map(|()| out)
        })
        .await
        .map_err(|e| format!("reading the source panicked: {e}"))?
        .map_err(|e| e.to_string())
    }

    fn template_context(&self) -> TemplateContext {
        let info = &self.plan.info;
        TemplateContext {
            hosts: self.addresses(),
            build_number: info.number,
            commit: info.commit.clone(),
            branch: info.branch.clone(),
            repo_name: info.repo.clone(),
            env: self.pipeline().env.clone(),
        }
    }

    fn working_dir(&self, role: &str) -> &'static str {
        if self.pipeline().has_code(role) {
            CODE_DIR
        } else {
            ""
        }
    }

    fn step_env(&self, role: &str, stage_env: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
        let mut env = self.pipeline().env.clone();
        if let Some(stage_env) = stage_env {
            env.extend(stage_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        env.extend(gantry_env(&self.plan.info, role, &self.addresses()));
        env
    }

    async fn setup_all(&self) {
        let pipeline = self.pipeline();
        let setups = pipeline.hosts.iter().filter_map(|host| {
            let script = host.setup.as_ref()?;
            let step = self.host_step(StepKind::Setup, &host.role)?;
            Some(async move {
                if self.cancel.is_cancelled() {
                    return self.finish(step, StepStatus::Cancelled, None).await;
                }
                let request = ExecRequest {
                    script: script.clone(),
                    cwd: self.working_dir(&host.role).to_string(),
                    env: self.step_env(&host.role, None),
                    timeout: host.setup_timeout,
                };
                self.run_script(step, &host.role, &request).await;
            })
        });
        futures::future::join_all(setups).await;
    }

    /// Start every stage whose needs all passed, as soon as they have; skip the dependents of
    /// anything that did not pass; cancel what has not started once the build is cancelled.
    async fn run_stages(&self) {
        let pipeline = self.pipeline();
        let stage_steps: Vec<StepIndex> = pipeline
            .stages
            .iter()
            .map(|s| self.index(StepKind::Stage, &s.name).expect("every stage is planned"))
            .collect();
        let mut running: FuturesUnordered<StageFuture<'_>> = FuturesUnordered::new();
        loop {
            let mut changed = true;
            while changed {
                changed = false;
                for (i, stage) in pipeline.stages.iter().enumerate() {
                    let step = stage_steps[i];
                    if self.status(step) != StepStatus::Pending {
                        continue;
                    }
                    if self.cancel.is_cancelled() {
                        self.finish(step, StepStatus::Cancelled, None).await;
                        changed = true;
                        continue;
                    }
                    match self.readiness(stage) {
                        Readiness::Blocked(reason) => {
                            self.system_line(step, &format!("skipped: {reason}")).await;
                            self.finish(step, StepStatus::Skipped, None).await;
                            changed = true;
                        }
                        Readiness::Ready => {
                            // Marked running before the future is first polled, so this loop does
                            // not start it twice.
                            self.start(step).await;
                            running.push(Box::pin(self.run_stage(i, step)));
                            changed = true;
                        }
                        Readiness::Waiting => {}
                    }
                }
            }
            if running.is_empty() {
                break;
            }
            running.next().await;
        }
        // Needs that can never be met (only possible in a pipeline that skipped validation).
        for &step in &stage_steps {
            if self.status(step) == StepStatus::Pending {
                self.system_line(step, "skipped: its needs can never be met").await;
                self.finish(step, StepStatus::Skipped, None).await;
            }
        }
    }

    fn readiness(&self, stage: &crate::pipeline::Stage) -> Readiness {
        if let Some(setup) = self.host_step(StepKind::Setup, &stage.host) {
            match self.status(setup) {
                StepStatus::Passed => {}
                StepStatus::Pending | StepStatus::Running => return Readiness::Waiting,
                other => return Readiness::Blocked(format!("setup:{} {}", stage.host, other.as_str())),
            }
        }
        let mut waiting = false;
        for need in &stage.needs {
            let Some(step) = self.index(StepKind::Stage, need) else {
                return Readiness::Blocked(format!("it needs {need}, which is not a stage"));
            };
            match self.status(step) {
                StepStatus::Passed => {}
                StepStatus::Pending | StepStatus::Running => waiting = true,
                other => return Readiness::Blocked(format!("{need} {}", other.as_str())),
            }
        }
        if waiting {
            Readiness::Waiting
        } else {
            Readiness::Ready
        }
    }

    async fn run_stage(&self, i: usize, step: StepIndex) -> (usize, StepStatus) {
        let stage = &self.pipeline().stages[i];
        let request = ExecRequest {
            script: stage.run.clone(),
            cwd: self.working_dir(&stage.host).to_string(),
            env: self.step_env(&stage.host, Some(&stage.env)),
            timeout: stage.timeout,
        };
        let status = self
            .run_started_script(step, &stage.host, &request, |transport| self.collect_reports(step, stage, transport))
            .await;
        (i, status)
    }

    /// Run a step's script from start to finish.
    async fn run_script(&self, step: StepIndex, role: &str, request: &ExecRequest) -> StepStatus {
        self.start(step).await;
        self.run_started_script(step, role, request, |_| async {}).await
    }

    /// Run the script of a step already marked started, stream its capped output, run `after`
    /// (report collection) while the host is still up, and finish the step.
    async fn run_started_script<F, Fut>(
        &self,
        step: StepIndex,
        role: &str,
        request: &ExecRequest,
        after: F,
    ) -> StepStatus
    where
        F: FnOnce(Arc<dyn Transport>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let Some(host) = self.host(role) else {
            let message = format!("host {role} was never provisioned");
            self.system_line(step, &message).await;
            self.error(message);
            self.finish(step, StepStatus::Failed, None).await;
            return StepStatus::Failed;
        };
        let (output_tx, mut output) = mpsc::channel::<OutputLine>(STEP_OUTPUT_BUFFER_LINES);
        let mut log = LogBudget::default();
        let result = {
            let exec = host.transport.exec(request, &output_tx, &self.cancel);
            tokio::pin!(exec);
            loop {
                tokio::select! {
                    result = &mut exec => break result,
                    Some(line) = output.recv() => self.log_line(step, line, &mut log).await,
                }
            }
        };
        drop(output_tx);
        while let Ok(line) = output.try_recv() {
            self.log_line(step, line, &mut log).await;
        }
        if log.dropped > 0 {
            self.system_line(step, &format!("output truncated: {} more lines not stored", log.dropped)).await;
        }
        let (status, exit_code) = match result {
            Ok(ExecOutcome::Exited(0)) => (StepStatus::Passed, Some(0)),
            Ok(ExecOutcome::Exited(code)) => (StepStatus::Failed, Some(code)),
            Ok(ExecOutcome::TimedOut) => {
                self.system_line(step, &format!("timed out after {}", humantime::format_duration(request.timeout)))
                    .await;
                (StepStatus::TimedOut, None)
            }
            Ok(ExecOutcome::Cancelled) => {
                self.system_line(step, "cancelled").await;
                (StepStatus::Cancelled, None)
            }
            Err(e) => {
                let message = format!("{}: {e}", self.steps[step].name);
                self.system_line(step, &e.to_string()).await;
                self.error(message);
                (StepStatus::Failed, None)
            }
        };
        if matches!(status, StepStatus::Passed | StepStatus::Failed | StepStatus::TimedOut) {
            after(Arc::clone(&host.transport)).await;
        }
        self.finish(step, status, exit_code).await;
        status
    }

    async fn log_line(&self, step: StepIndex, line: OutputLine, log: &mut LogBudget) {
        if log.admit(&line.text) {
            self.emit(BuildEvent::Log { step, at: SystemTime::now(), stream: line.stream, text: line.text }).await;
        }
    }

    /// Fetch the stage's JUnit reports from its host (relative to its working directory).
    async fn collect_reports(&self, step: StepIndex, stage: &crate::pipeline::Stage, transport: Arc<dyn Transport>) {
        let cwd = self.working_dir(&stage.host);
        for report in &stage.reports {
            let path = if cwd.is_empty() { report.clone() } else { format!("{cwd}/{report}") };
            match transport.read_file(&path, MAX_REPORT_BYTES + 1).await {
                Ok(Some(content)) if content.len() > MAX_REPORT_BYTES => {
                    self.system_line(
                        step,
                        &format!("report {report} is larger than {}; not collected", human_bytes(MAX_REPORT_BYTES)),
                    )
                    .await;
                }
                Ok(Some(content)) => {
                    self.emit(BuildEvent::Report { step, path: report.clone(), content }).await;
                }
                Ok(None) => self.system_line(step, &format!("report {report} not found")).await,
                Err(e) => self.system_line(step, &format!("report {report} not collected: {e}")).await,
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

enum Readiness {
    Ready,
    Waiting,
    Blocked(String),
}

/// What is left of one step's log allowance.
#[derive(Default)]
struct LogBudget {
    lines: usize,
    bytes: usize,
    /// Lines not stored once the allowance ran out.
    dropped: usize,
}

impl LogBudget {
    /// Whether `text` may be stored; counts it either way.
    fn admit(&mut self, text: &str) -> bool {
        if self.dropped == 0 && self.lines < MAX_LOG_LINES_PER_STEP && self.bytes + text.len() <= MAX_LOG_BYTES_PER_STEP
        {
            self.lines += 1;
            self.bytes += text.len();
            true
        } else {
            self.dropped += 1;
            false
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_budget_stops_at_the_line_cap_and_counts_the_rest() {
        let mut budget = LogBudget::default();
        let admitted = (0..MAX_LOG_LINES_PER_STEP + 7).filter(|_| budget.admit("x")).count();
        assert_eq!(admitted, MAX_LOG_LINES_PER_STEP);
        assert_eq!(budget.dropped, 7);
    }

    #[test]
    fn the_log_budget_stops_at_the_byte_cap() {
        let mut budget = LogBudget::default();
        let line = "y".repeat(1024 * 1024);
        let admitted = (0..10).filter(|_| budget.admit(&line)).count();
        assert_eq!(admitted, MAX_LOG_BYTES_PER_STEP / line.len());
        assert!(!budget.admit("short"), "nothing is stored after the first dropped line");
    }

    #[test]
    fn host_variables_are_upper_cased_with_underscores() {
        let info = BuildInfo {
            key: "b7".into(),
            number: 7,
            commit: "c".repeat(40),
            branch: "main".into(),
            repo: "shop".into(),
        };
        let addresses = BTreeMap::from([
            ("db".to_string(), IpAddr::from([127, 0, 10, 1])),
            ("web-app".to_string(), IpAddr::from([127, 0, 10, 2])),
        ]);
        let env = gantry_env(&info, "web-app", &addresses);
        assert_eq!(env["GANTRY_HOST_WEB_APP"], "127.0.10.2");
        assert_eq!(env["GANTRY_HOST_DB"], "127.0.10.1");
        assert_eq!(env["GANTRY_HOST_ADDR"], "127.0.10.2");
        assert_eq!(env["GANTRY_HOST"], "web-app");
        assert_eq!(env["GANTRY_BUILD"], "7");
    }
}
