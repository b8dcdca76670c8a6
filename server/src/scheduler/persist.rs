//! The persister: consumes one build's [`BuildEvent`]s, writes them to the store and then
//! broadcasts them to live listeners.
//!
//! Events are written in batches: whatever is waiting in the channel (up to
//! [`MAX_EVENTS_PER_BATCH`]) is written together (`store::events::EventWriter`: one transaction
//! on SQLite; on PostgreSQL its row changes, then its lines and events in one statement), so a
//! flood of output costs one write per batch while a quiet build's events are written the moment
//! they arrive. Every event a listener sees takes the next number of the build's event sequence
//! (`store::events`) in the statement or transaction that stores it, and log lines their number
//! within their step; only once the batch is stored is it sent to the build's live channel
//! (`crate::live`), so a listener that subscribed and then read the store misses nothing.
//!
//! When the database fails, a batch is tried again a few times ([`STORE_RETRIES`], about 9 s in
//! all, while the executor's events wait in the channel), so a short outage loses nothing.
//! A batch that still fails is logged and its events dropped (their numbers are handed out again),
//! and the persister goes on draining its channel, each later batch tried once, so the executor
//! is never held up by storage for longer than those retries. It counts what it dropped: a build
//! whose events were not all recorded must not end `passed` (the scheduler decides; see
//! `Scheduler::run`).
//!
//! A JUnit report is also stored case by case (`store::test_cases`, read by the one JUnit
//! reader, `gantry_web::parse_junit_cases`), and each finished step's duration is observed in
//! the metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};

use gantry_event::{BuildEvent, StepId, StepKind, Stream};
use gantry_runner::provider::HostId;
use gantry_web::{parse_junit_cases, CaseOutcome, FailureKind};
use tokio::sync::{broadcast, mpsc};

use super::BuildUpdate;
use crate::live::{self, Change, LiveBuilds, WireEvent};
use crate::metrics::Metrics;
use crate::store::events::{EventKind, EventRow, StoredEvent};
use crate::store::hosts::{HostPhase, Provisioned, StepTimes};
use crate::store::reports::ReportRow;
use crate::store::{self, to_ms, BuildId, HostRow, LogLine, NewTestCase, StepRow, Store, TestOutcome};

/// At most this many events are written in one transaction.
pub const MAX_EVENTS_PER_BATCH: usize = 2048;

/// A batch stops growing once its log lines hold this much text: a flood of long lines (up to
/// 16 KiB each) is written a few MiB at a time, never as one 2,048-line statement of 32 MiB.
pub const MAX_LOG_BYTES_PER_BATCH: usize = 4 << 20;

/// How many times a batch the database refused is tried again, the waits growing from
/// [`STORE_RETRY_MIN_DELAY`] to [`STORE_RETRY_MAX_DELAY`] (about 9 s in all: a restart of
/// PostgreSQL, a failover), before its events are dropped. Only until the build's first loss:
/// after it, batches are tried once.
pub const STORE_RETRIES: usize = 8;
pub const STORE_RETRY_MIN_DELAY: Duration = Duration::from_millis(100);
pub const STORE_RETRY_MAX_DELAY: Duration = Duration::from_secs(2);

/// At most this many cases of one report are stored as test cases (the report itself is kept
/// whole).
pub const MAX_CASES_PER_REPORT: usize = 50_000;

/// What the persister remembers about one build between batches.
struct BuildLog {
    build: BuildId,
    host_ids: BTreeMap<String, HostId>,
    steps: Vec<StepId>,
    /// The last event id handed out.
    last_seq: i64,
    /// The last line number of each step.
    step_lines: Vec<i64>,
    /// When each step started, as its row says.
    step_started: Vec<Option<i64>>,
    metrics: Arc<Metrics>,
}

/// What the persister did with a build's events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Persisted {
    /// Log lines stored.
    pub lines: u64,
    /// Events (log lines included) dropped because the database refused their batch.
    pub lost: u64,
}

/// What one batch wrote, to broadcast once it is committed.
#[derive(Default)]
struct Written {
    lines: Vec<LogLine>,
    others: Vec<EventRow>,
}

/// Persist every event of `build` until the executor drops its sender; says how many log lines
/// it stored and how many events it lost. `last_seq` is the build's last event id handed out
/// when it was claimed.
#[allow(clippy::too_many_arguments)]
pub(super) async fn persist(
    store: Store,
    build: BuildId,
    last_seq: i64,
    host_ids: BTreeMap<String, HostId>,
    mut events: mpsc::Receiver<BuildEvent>,
    updates: broadcast::Sender<BuildUpdate>,
    live: LiveBuilds,
    metrics: Arc<Metrics>,
) -> Persisted {
    let mut log = BuildLog {
        build,
        host_ids,
        steps: Vec::new(),
        last_seq,
        step_lines: Vec::new(),
        step_started: Vec::new(),
        metrics,
    };
    let mut batch = Vec::new();
    let mut lost = 0u64;
    while let Some(first) = events.recv().await {
        fill_batch(&mut batch, first, &mut events);
        let retries = if lost == 0 { STORE_RETRIES } else { 0 };
        let mut waits = ExponentialBuilder::new()
            .with_min_delay(STORE_RETRY_MIN_DELAY)
            .with_max_delay(STORE_RETRY_MAX_DELAY)
            .with_max_times(retries)
            .build();
        loop {
            let (last_seq, step_lines, step_started) = (log.last_seq, log.step_lines.clone(), log.step_started.clone());
            let error = match log.write(&store, &batch).await {
                Ok(written) => {
                    publish(&live, build, written);
                    break;
                }
                Err(error) => error,
            };
            (log.last_seq, log.step_lines, log.step_started) = (last_seq, step_lines, step_started);
            match waits.next() {
                Some(wait) => {
                    tracing::warn!(build = %build, %error, events = batch.len(), "storing build events failed; trying again");
                    tokio::time::sleep(wait).await;
                }
                None => {
                    tracing::error!(build = %build, %error, events = batch.len(), "failed to store build events: they are lost");
                    lost += batch.len() as u64;
                    break;
                }
            }
        }
        // Log lines stay off the scheduler's updates: its one listener, the forge reporter, needs
        // only to know that a build is under way. Live listeners get lines from `LiveBuilds`,
        // above.
        for event in batch.drain(..) {
            if !matches!(event, BuildEvent::Log { .. }) {
                // Nobody listening is normal.
                let _ = updates.send(BuildUpdate::Event { build });
            }
        }
    }
    Persisted { lines: log.step_lines.iter().map(|&lines| lines.unsigned_abs()).sum(), lost }
}

/// Start a batch with `first` and add what is waiting in `events`, up to [`MAX_EVENTS_PER_BATCH`]
/// events and [`MAX_LOG_BYTES_PER_BATCH`] of log text.
fn fill_batch(batch: &mut Vec<BuildEvent>, first: BuildEvent, events: &mut mpsc::Receiver<BuildEvent>) {
    let mut text_bytes = log_bytes(&first);
    batch.push(first);
    while batch.len() < MAX_EVENTS_PER_BATCH && text_bytes < MAX_LOG_BYTES_PER_BATCH {
        match events.try_recv() {
            Ok(event) => {
                text_bytes += log_bytes(&event);
                batch.push(event);
            }
            Err(_) => break,
        }
    }
}

/// The bytes of log text `event` carries.
fn log_bytes(event: &BuildEvent) -> usize {
    match event {
        BuildEvent::Log { text, .. } => text.len(),
        _ => 0,
    }
}

/// Send events another server stored (read back from the store, in order) to this server's
/// listeners of the build and its repo-level feeds, as if they had been written here.
pub fn publish_stored(live: &LiveBuilds, build: BuildId, events: Vec<StoredEvent>) {
    let mut written = Written::default();
    for event in events {
        match event {
            StoredEvent::Log(line) => written.lines.push(line),
            StoredEvent::Other(other) => written.others.push(other),
        }
    }
    publish(live, build, written);
}

/// Send a committed batch to the build's listeners, in event order, and its events other than
/// log lines to the repo-level feeds.
fn publish(live: &LiveBuilds, build: BuildId, written: Written) {
    let others: Vec<Arc<WireEvent>> = written
        .others
        .into_iter()
        .map(|e| Arc::new(WireEvent { seq: e.seq, kind: e.kind.as_str(), data: e.data }))
        .collect();
    if let Some(sender) = live.sender(build) {
        let mut lines = written.lines.iter().peekable();
        let mut others = others.iter().peekable();
        loop {
            let next = match (lines.peek(), others.peek()) {
                (Some(line), Some(other)) if line.seq < other.seq => {
                    Arc::new(live::log_event(lines.next().expect("peeked")))
                }
                (Some(_), None) => Arc::new(live::log_event(lines.next().expect("peeked"))),
                (_, Some(_)) => Arc::clone(others.next().expect("peeked")),
                (None, None) => break,
            };
            // A send fails only when the last listener just left.
            let _ = sender.send(next);
        }
    }
    for event in others {
        live.changed(Change { build, event: Some(event) });
    }
}

impl BuildLog {
    async fn write(&mut self, store: &Store, batch: &[BuildEvent]) -> store::Result<Written> {
        let mut written = Written::default();
        let mut writer = store.event_writer().await?;
        // The provision and teardown steps whose times this batch already wrote to their host.
        let mut timed = Vec::new();
        for (i, event) in batch.iter().enumerate() {
            self.apply(&mut writer, event, &batch[i + 1..], &mut timed, &mut written).await?;
        }
        // The other servers sharing the database relay the batch to their own listeners, once
        // it is stored.
        store::events::append(&mut writer, store.server(), self.build, &written.lines, &written.others, self.last_seq)
            .await?;
        writer.done().await?;
        Ok(written)
    }

    /// Number a log line and collect it into `written`.
    fn line(&mut self, written: &mut Written, step: usize, at: SystemTime, stream: Stream, text: &str) {
        if self.step_lines.len() <= step {
            self.step_lines.resize(step + 1, 0);
        }
        self.step_lines[step] += 1;
        let line = self.step_lines[step];
        let seq = self.next_seq();
        written.lines.push(LogLine { step_idx: step as i64, line, seq, at: to_ms(at), stream, text: text.to_string() });
    }

    fn next_seq(&mut self) -> i64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// Record an event other than a log line, with `data` its JSON.
    fn record(&mut self, written: &mut Written, kind: EventKind, data: String) {
        let seq = self.next_seq();
        written.others.push(EventRow { seq, kind, data });
    }

    async fn record_build(&mut self, conn: &mut store::Connection, written: &mut Written) -> store::Result<()> {
        if let Some(row) = store::events::build(conn, self.build).await? {
            self.record(written, EventKind::Build, live::build_json(&row));
        }
        Ok(())
    }

    /// Record a step's event from the row its write returned.
    fn record_step(&mut self, written: &mut Written, row: Option<&StepRow>) {
        if let Some(row) = row {
            self.record(written, EventKind::Step, live::step_json(row));
        }
    }

    /// Record a host's event from the row its write returned.
    fn record_host(&mut self, written: &mut Written, row: Option<&HostRow>) {
        if let Some(row) = row {
            self.record(written, EventKind::Host, live::host_json(row));
        }
    }

    /// The end and duration of the step of `kind` of the host `role` when `later` (the rest of
    /// the batch) finishes it: its index, end and duration.
    fn host_step_end(&self, later: &[BuildEvent], kind: StepKind, role: &str) -> Option<(usize, i64, i64)> {
        later.iter().find_map(|event| match event {
            BuildEvent::StepFinished { step, at, .. }
                if self.steps.get(*step).is_some_and(|s| s.kind == kind && s.host == role) =>
            {
                let at = to_ms(*at);
                let started = self.step_started.get(*step).copied().flatten().unwrap_or(at);
                Some((*step, at, at - started))
            }
            _ => None,
        })
    }

    /// Write one event; log lines are collected into `written` and inserted together at the end
    /// of the batch. `later` is the rest of the batch: a host's provisioning or teardown and the
    /// end of its step, which follows it, are one update of the host's row when both are in the
    /// batch (`timed` lists those steps).
    async fn apply(
        &mut self,
        conn: &mut store::Connection,
        event: &BuildEvent,
        later: &[BuildEvent],
        timed: &mut Vec<usize>,
        written: &mut Written,
    ) -> store::Result<()> {
        let build = self.build;
        match event {
            BuildEvent::Log { step, at, stream, text } => self.line(written, *step, *at, *stream, text),
            BuildEvent::Planned { steps } => {
                let (rows, build_row) = store::steps::insert_planned(conn, build, steps).await?;
                self.steps = steps.clone();
                if let Some(row) = build_row {
                    self.record(written, EventKind::Build, live::build_json(&row));
                }
                for row in &rows {
                    self.record_step(written, Some(row));
                }
            }
            BuildEvent::Running { .. } => {
                match store::builds::mark_running(conn, build).await? {
                    Some(row) => self.record(written, EventKind::Build, live::build_json(&row)),
                    // No longer provisioning (cancelled meanwhile): its state as it is.
                    None => self.record_build(conn, written).await?,
                }
            }
            BuildEvent::StepStarted { step, at } => {
                let row = store::steps::start(conn, build, *step, to_ms(*at)).await?;
                if self.step_started.len() <= *step {
                    self.step_started.resize(step + 1, None);
                }
                self.step_started[*step] = row.as_ref().and_then(|row| row.started_at);
                self.record_step(written, row.as_ref());
            }
            BuildEvent::StepFinished { step, at, status, exit_code } => {
                let at = to_ms(*at);
                let row = store::steps::finish(conn, build, *step, *status, *exit_code, at).await?;
                let started = row.as_ref().and_then(|row| row.started_at);
                if let (Some(started), Some(planned)) = (started, self.steps.get(*step)) {
                    self.metrics.step_finished(planned.kind, *status, at - started);
                }
                self.record_step(written, row.as_ref());
                // A host's provision and teardown times are those of its steps.
                let phase = match self.steps.get(*step).map(|s| s.kind) {
                    Some(StepKind::Provision) => Some(HostPhase::Provision),
                    Some(StepKind::Teardown) => Some(HostPhase::Teardown),
                    _ => None,
                };
                if let Some(phase) = phase.filter(|_| !timed.contains(step)) {
                    let role = self.steps[*step].host.clone();
                    let took = started.map(|started| at - started);
                    let row = store::hosts::record_step_times(conn, build, &role, phase, at, took).await?;
                    self.record_host(written, row.as_ref());
                }
            }
            BuildEvent::HostProvisioned { role, address, provider_id, isolation } => {
                let host = Provisioned { address: *address, provider_id, isolation };
                let times = self.host_step_end(later, StepKind::Provision, role).map(|(step, finished_at, took_ms)| {
                    timed.push(step);
                    StepTimes { finished_at, took_ms }
                });
                let row = store::hosts::mark_provisioned(conn, build, role, host, times).await?;
                self.record_host(written, row.as_ref());
            }
            BuildEvent::HostTornDown { role, error } => match self.host_ids.get(role) {
                Some(host_id) => {
                    let (at, took) = match self.host_step_end(later, StepKind::Teardown, role) {
                        Some((step, at, took)) => {
                            timed.push(step);
                            (at, Some(took))
                        }
                        None => (to_ms(SystemTime::now()), None),
                    };
                    let row = store::hosts::mark_torn_down(conn, &host_id.0, error.as_deref(), at, took).await?;
                    self.record_host(written, row.as_ref());
                }
                None => tracing::warn!(build = %build, %role, "teardown reported for an unknown host"),
            },
            BuildEvent::Report { step, path, content } => {
                store::reports::insert(conn, build, *step as i64, path, content).await?;
                let stage = self.steps.get(*step).map_or_else(|| format!("step {step}"), |s| s.name.clone());
                let cases = test_cases(content);
                store::test_cases::replace_report(conn, build, *step as i64, &stage, path, &cases).await?;
                let report = ReportRow { step_idx: *step as i64, path: path.clone(), content: content.clone() };
                let data = live::report_json(build, &stage, &report);
                self.record(written, EventKind::Report, data);
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

#[cfg(test)]
mod tests {
    use gantry_event::{StepStatus, Stream};

    use super::*;
    use crate::store::testing;
    use crate::store::HostState;

    /// A one-host build's provisioning and teardown, each as its step's start, the host's event
    /// and its step's end.
    fn host_lifecycle() -> [Vec<BuildEvent>; 2] {
        let at = |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let end = |step, ms| BuildEvent::StepFinished { step, at: at(ms), status: StepStatus::Passed, exit_code: None };
        let provision = vec![
            BuildEvent::StepStarted { step: 0, at: at(1_000) },
            BuildEvent::HostProvisioned {
                role: "app".into(),
                address: "127.0.10.9".parse().unwrap(),
                provider_id: "p".into(),
                isolation: "i".into(),
            },
            end(0, 1_004),
        ];
        let teardown = vec![
            BuildEvent::StepStarted { step: 2, at: at(1_010) },
            BuildEvent::HostTornDown { role: "app".into(), error: None },
            end(2, 1_017),
        ];
        [provision, teardown]
    }

    #[tokio::test]
    async fn a_hosts_event_and_its_steps_end_in_one_batch_are_one_update_with_the_same_outcome() {
        let (store, _dir) = testing::store_with_repo().await;
        let mut outcomes = Vec::new();
        for together in [true, false] {
            let build = store.insert_build(&testing::main_push()).await.unwrap();
            let host_id = HostId(format!("b{}-app", build.id));
            let mut conn = store.writer().acquire().await.unwrap();
            store::hosts::insert_requested(&mut conn, build.id, &[("app", &host_id.0)], "local").await.unwrap();
            drop(conn);
            let mut log = BuildLog {
                build: build.id,
                host_ids: BTreeMap::from([("app".to_string(), host_id)]),
                steps: Vec::new(),
                last_seq: 0,
                step_lines: Vec::new(),
                step_started: Vec::new(),
                metrics: Arc::new(Metrics::new()),
            };
            let steps = vec![
                StepId::host_step(StepKind::Provision, "app"),
                StepId { kind: StepKind::Stage, name: "test".into(), host: "app".into() },
                StepId::host_step(StepKind::Teardown, "app"),
            ];
            log.write(&store, &[BuildEvent::Planned { steps }]).await.unwrap();
            let mut host_events = 0;
            for phase in host_lifecycle() {
                let batches: Vec<Vec<BuildEvent>> =
                    if together { vec![phase] } else { phase.into_iter().map(|event| vec![event]).collect() };
                for batch in batches {
                    let written = log.write(&store, &batch).await.unwrap();
                    host_events += written.others.iter().filter(|e| e.kind == EventKind::Host).count();
                }
            }
            let host = store.hosts_of_build(build.id).await.unwrap().remove(0);
            outcomes.push((host.state, host.provisioned_at, host.provision_ms, host.torn_down_at, host.teardown_ms));
            // Apart, each phase updates the host twice: its event, then its step's times.
            assert_eq!(host_events, if together { 2 } else { 4 });
        }
        assert_eq!(outcomes[0], (HostState::TornDown, Some(1_004), Some(4), Some(1_017), Some(7)));
        assert_eq!(outcomes[0], outcomes[1]);
    }

    fn line(bytes: usize) -> BuildEvent {
        BuildEvent::Log { step: 0, at: SystemTime::UNIX_EPOCH, stream: Stream::Stdout, text: "x".repeat(bytes) }
    }

    #[tokio::test]
    async fn a_batch_stops_at_its_count_or_its_bytes_of_log_text() {
        let (sender, mut events) = mpsc::channel(4096);
        let mut batch = Vec::new();
        // Short lines: the count is the limit.
        for _ in 0..MAX_EVENTS_PER_BATCH + 10 {
            sender.send(line(10)).await.unwrap();
        }
        let first = events.recv().await.unwrap();
        fill_batch(&mut batch, first, &mut events);
        assert_eq!(batch.len(), MAX_EVENTS_PER_BATCH);
        batch.clear();
        let first = events.recv().await.unwrap();
        fill_batch(&mut batch, first, &mut events);
        assert_eq!(batch.len(), 10);
        batch.clear();
        // Lines of 16 KiB: the text is, at 4 MiB.
        for _ in 0..300 {
            sender.send(line(16 * 1024)).await.unwrap();
        }
        let first = events.recv().await.unwrap();
        fill_batch(&mut batch, first, &mut events);
        assert_eq!(batch.len(), MAX_LOG_BYTES_PER_BATCH / (16 * 1024));
        assert_eq!(events.len(), 300 - batch.len());
    }
}
