//! Running steps: every host's setup, then the stages, each started as soon as its needs passed
//! and concurrently with the others. A step's script runs under its timeout and the build's
//! cancellation, its output is streamed into the log up to the plan's [`LogLimits`] (a notice
//! marks where it was cut, another counts what was not kept), and a stage's JUnit reports are
//! collected while its host is still up.
//!
//! What a stage waits for is decided in `plan`; provisioning, pushing and teardown are not done
//! here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use super::plan::Readiness;
use super::{human_bytes, LogLimits, Run, MAX_REPORT_BYTES};
use crate::event::{BuildEvent, StepIndex, StepKind, StepStatus};
use crate::pipeline::Stage;
use crate::transport::{ExecOutcome, ExecRequest, OutputLine, Transport};

/// Output lines buffered between a transport and the executor for one step.
const STEP_OUTPUT_BUFFER_LINES: usize = 1024;

type StageFuture<'f> = Pin<Box<dyn Future<Output = (usize, StepStatus)> + Send + 'f>>;

impl Run<'_> {
    pub(super) async fn setup_all(&self) {
        let pipeline = self.pipeline();
        let setups = pipeline.hosts.iter().filter_map(|host| {
            let script = host.setup.as_ref()?;
            let step = self.host_step(StepKind::Setup, &host.role)?;
            Some(async move {
                if self.cancel.is_cancelled() {
                    return self.finish(step, StepStatus::Cancelled, None).await;
                }
                let secrets = match self.step_secrets(&host.secrets) {
                    Ok(secrets) => secrets,
                    Err(message) => {
                        self.start(step).await;
                        return self.refuse_step(step, message).await;
                    }
                };
                let request = ExecRequest {
                    script: script.clone(),
                    cwd: self.working_dir(&host.role).to_string(),
                    env: self.step_env(&host.role, None),
                    secrets,
                    mask: self.mask.clone(),
                    timeout: host.setup_timeout,
                };
                self.run_script(step, &host.role, &request).await;
            })
        });
        futures::future::join_all(setups).await;
    }

    /// Start every stage whose needs all passed, as soon as they have; skip the dependents of
    /// anything that did not pass; cancel what has not started once the build is cancelled.
    pub(super) async fn run_stages(&self) {
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

    async fn run_stage(&self, i: usize, step: StepIndex) -> (usize, StepStatus) {
        let stage = &self.pipeline().stages[i];
        let secrets = match self.step_secrets(&stage.secrets) {
            Ok(secrets) => secrets,
            Err(message) => {
                self.refuse_step(step, message).await;
                return (i, StepStatus::Failed);
            }
        };
        let request = ExecRequest {
            script: stage.run.clone(),
            cwd: self.working_dir(&stage.host).to_string(),
            env: self.step_env(&stage.host, Some(&stage.env)),
            secrets,
            mask: self.mask.clone(),
            timeout: stage.timeout,
        };
        let status = self
            .run_started_script(step, &stage.host, &request, |transport| self.collect_reports(step, stage, transport))
            .await;
        (i, status)
    }

    /// A started step whose script cannot run (a secret it names is missing): it fails with the
    /// reason in its log, and the build errors.
    async fn refuse_step(&self, step: StepIndex, message: String) {
        self.system_line(step, &message).await;
        self.error(format!("{}: {message}", self.steps[step].name));
        self.finish(step, StepStatus::Failed, None).await;
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
        let mut log = LogBudget::new(self.plan.log_limits);
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
        } else if log.dropped == 1 {
            let limits = log.limits;
            let why = format!(
                "output cut here: a step keeps at most {} lines and {} of output (the server's [logs] \
                 max_lines_per_step and max_bytes_per_step); the rest is not stored",
                limits.max_lines,
                human_bytes(limits.max_bytes)
            );
            self.system_line(step, &why).await;
        }
    }

    /// Fetch the stage's JUnit reports from its host (relative to its working directory).
    async fn collect_reports(&self, step: StepIndex, stage: &Stage, transport: Arc<dyn Transport>) {
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
}

/// What is left of one step's log allowance.
struct LogBudget {
    limits: LogLimits,
    lines: usize,
    bytes: usize,
    /// Lines not stored once the allowance ran out.
    dropped: usize,
}

impl LogBudget {
    fn new(limits: LogLimits) -> LogBudget {
        LogBudget { limits, lines: 0, bytes: 0, dropped: 0 }
    }

    /// Whether `text` may be stored; counts it either way.
    fn admit(&mut self, text: &str) -> bool {
        if self.dropped == 0 && self.lines < self.limits.max_lines && self.bytes + text.len() <= self.limits.max_bytes {
            self.lines += 1;
            self.bytes += text.len();
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_budget_stops_at_the_line_cap_and_counts_the_rest() {
        let limits = LogLimits::default();
        let mut budget = LogBudget::new(limits);
        let admitted = (0..limits.max_lines + 7).filter(|_| budget.admit("x")).count();
        assert_eq!(admitted, limits.max_lines);
        assert_eq!(budget.dropped, 7);
    }

    #[test]
    fn the_log_budget_stops_at_the_byte_cap() {
        let limits = LogLimits { max_lines: 1_000, max_bytes: 8 * 1024 * 1024 };
        let mut budget = LogBudget::new(limits);
        let line = "y".repeat(1024 * 1024);
        let admitted = (0..10).filter(|_| budget.admit(&line)).count();
        assert_eq!(admitted, limits.max_bytes / line.len());
        assert!(!budget.admit("short"), "nothing is stored after the first dropped line");
    }
}
