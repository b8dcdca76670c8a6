//! The persister: consumes one build's [`BuildEvent`]s, writes them to the store and then
//! broadcasts them to live listeners.
//!
//! Events are written in batches: whatever is waiting in the channel (up to
//! [`MAX_EVENTS_PER_BATCH`]) goes into one transaction, so a flood of output costs one commit
//! per batch while a quiet build's events are written the moment they arrive. The persister
//! always drains its channel, even when the database fails, so the executor is never blocked by
//! storage; a failed batch is logged and dropped. It decides nothing about the build itself.
//!
//! A JUnit report is also stored case by case (`store::test_cases`, read by the one JUnit
//! reader, `gantry_web::parse_junit_cases`), and each finished step's duration is observed in
//! the metrics.

use std::collections::BTreeMap;
use std::time::SystemTime;

use std::sync::Arc;

use gantry_event::{BuildEvent, StepId, StepKind};
use gantry_runner::provider::HostId;
use gantry_web::{parse_junit_cases, CaseOutcome, FailureKind};
use tokio::sync::{broadcast, mpsc};

use super::BuildUpdate;
use crate::metrics::Metrics;
use crate::store::hosts::HostPhase;
use crate::store::{self, to_ms, BuildId, LogLine, NewTestCase, Store, TestOutcome};

/// At most this many events are written in one transaction.
pub const MAX_EVENTS_PER_BATCH: usize = 2048;

/// At most this many cases of one report are stored as test cases (the report itself is kept
/// whole).
pub const MAX_CASES_PER_REPORT: usize = 50_000;

/// What the persister remembers about one build between batches.
struct BuildLog {
    build: BuildId,
    host_ids: BTreeMap<String, HostId>,
    steps: Vec<StepId>,
    /// The next log line's sequence number.
    next_seq: i64,
    metrics: Arc<Metrics>,
}

/// Persist every event of `build` until the executor drops its sender.
pub(super) async fn persist(
    store: Store,
    build: BuildId,
    host_ids: BTreeMap<String, HostId>,
    mut events: mpsc::Receiver<BuildEvent>,
    updates: broadcast::Sender<BuildUpdate>,
    metrics: Arc<Metrics>,
) {
    let mut log = BuildLog { build, host_ids, steps: Vec::new(), next_seq: 0, metrics };
    let mut batch = Vec::new();
    while let Some(first) = events.recv().await {
        batch.push(first);
        while batch.len() < MAX_EVENTS_PER_BATCH {
            match events.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        if let Err(error) = log.write(&store, &batch).await {
            tracing::error!(build = %build, %error, events = batch.len(), "failed to store build events");
        }
        for event in batch.drain(..) {
            // Nobody listening is normal: the dashboard subscribes only while a page is open.
            let _ = updates.send(BuildUpdate::Event { build, event });
        }
    }
}

impl BuildLog {
    async fn write(&mut self, store: &Store, batch: &[BuildEvent]) -> store::Result<()> {
        let mut tx = store.begin().await?;
        let mut lines = Vec::new();
        for event in batch {
            self.apply(&mut tx, event, &mut lines).await?;
        }
        store::logs::insert_lines(&mut tx, self.build, &lines).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Write one event; log lines are collected into `lines` and inserted together at the end of
    /// the batch.
    async fn apply(
        &mut self,
        conn: &mut store::Connection,
        event: &BuildEvent,
        lines: &mut Vec<LogLine>,
    ) -> store::Result<()> {
        let build = self.build;
        match event {
            BuildEvent::Log { step, at, stream, text } => {
                lines.push(LogLine {
                    step_idx: *step as i64,
                    seq: self.next_seq,
                    at: to_ms(*at),
                    stream: *stream,
                    text: text.clone(),
                });
                self.next_seq += 1;
            }
            BuildEvent::Planned { steps } => {
                store::steps::insert_planned(conn, build, steps).await?;
                self.steps = steps.clone();
            }
            BuildEvent::Running { .. } => store::builds::mark_running(conn, build).await?,
            BuildEvent::StepStarted { step, at } => {
                store::steps::start(conn, build, *step, to_ms(*at)).await?;
            }
            BuildEvent::StepFinished { step, at, status, exit_code } => {
                let at = to_ms(*at);
                let started = store::steps::finish(conn, build, *step, *status, *exit_code, at).await?;
                if let (Some(started), Some(planned)) = (started, self.steps.get(*step)) {
                    self.metrics.step_finished(planned.kind, *status, at - started);
                }
                // A host's provision and teardown times are those of its steps.
                let phase = match self.steps.get(*step).map(|s| s.kind) {
                    Some(StepKind::Provision) => Some(HostPhase::Provision),
                    Some(StepKind::Teardown) => Some(HostPhase::Teardown),
                    _ => None,
                };
                if let Some(phase) = phase {
                    let role = &self.steps[*step].host;
                    let took = started.map(|started| at - started);
                    store::hosts::record_step_times(conn, build, role, phase, at, took).await?;
                }
            }
            BuildEvent::HostProvisioned { role, address, provider_id } => {
                store::hosts::mark_provisioned(conn, build, role, *address, provider_id).await?;
            }
            BuildEvent::HostTornDown { role, error } => match self.host_ids.get(role) {
                Some(host_id) => {
                    store::hosts::mark_torn_down(conn, &host_id.0, error.as_deref(), to_ms(SystemTime::now()), None)
                        .await?;
                }
                None => tracing::warn!(build = %build, %role, "teardown reported for an unknown host"),
            },
            BuildEvent::Report { step, path, content } => {
                store::reports::insert(conn, build, *step as i64, path, content).await?;
                let stage = self.steps.get(*step).map_or("", |s| s.name.as_str());
                let cases = test_cases(content);
                store::test_cases::replace_report(conn, build, *step as i64, stage, path, &cases).await?;
            }
        }
        Ok(())
    }
}

/// The cases of a JUnit report, as the store keeps them; none when it is not JUnit XML (the
/// build page says why, from the stored report).
fn test_cases(content: &[u8]) -> Vec<NewTestCase> {
    let Ok(cases) = parse_junit_cases(content) else { return Vec::new() };
    cases
        .into_iter()
        .take(MAX_CASES_PER_REPORT)
        .map(|case| NewTestCase {
            classname: case.classname,
            name: case.name,
            outcome: match case.outcome {
                CaseOutcome::Passed => TestOutcome::Passed,
                CaseOutcome::Skipped => TestOutcome::Skipped,
                CaseOutcome::Failed(FailureKind::Failure) => TestOutcome::Failed,
                CaseOutcome::Failed(FailureKind::Error) => TestOutcome::Errored,
            },
            duration_ms: case.duration_ms.and_then(|ms| i64::try_from(ms).ok()),
            message: case.message,
        })
        .collect()
}
