//! Live builds: what `GET /api/builds/{id}/events` and the dashboard's feeds hear, and how.
//!
//! Owns two things. The event vocabulary: [`WireEvent`], an event of a build as the stream sends
//! it (`build`, `step`, `log`, `host`, `report`, with its JSON made once and shared by every
//! listener), and the functions that make each kind's JSON from store rows. And [`LiveBuilds`],
//! the broadcast registry: one bounded `tokio::sync::broadcast` channel per build that somebody
//! follows (created by the first listener, fed by the persister after each commit, closed once
//! the build's final status is stored), plus one small channel of [`Change`]s (no log lines) for
//! the repo-level feeds.
//!
//! A slow listener never slows a build: a broadcast send never waits, and a listener that falls
//! more than [`BUILD_CHANNEL_CAPACITY`] events behind is told it lagged (the stream then ends and
//! the client resumes from the store with `Last-Event-ID`). Memory is bounded by the channels'
//! capacities, whatever the number or speed of listeners. This module stores nothing and reads
//! no rows; the persister and `http::events` do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use gantry_web::ansi;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::store::reports::ReportRow;
use crate::store::{BuildId, BuildRow, HostRow, LogLine, StepRow};

/// How many events one build's channel holds for its slowest listener before that listener
/// lags. Larger than the persister's batch, so a listener that keeps up never lags.
pub const BUILD_CHANNEL_CAPACITY: usize = 8192;

/// How many changes the repo-level channel holds for its slowest listener.
pub const CHANGES_CAPACITY: usize = 1024;

/// One event of a build, ready to send: its id in the build's sequence, its kind (the SSE
/// `event:` name) and its JSON (the `data:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireEvent {
    pub seq: i64,
    pub kind: &'static str,
    pub data: String,
}

/// Something about a build that the repo-level feeds show: a step or host event, or (with no
/// event) a change of the build's status such as being queued or finished.
#[derive(Debug, Clone)]
pub struct Change {
    pub build: BuildId,
    pub event: Option<Arc<WireEvent>>,
}

/// A unix-milliseconds timestamp as RFC 3339, the API's time format.
fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("event JSON always serialises")
}

/// The `build` event: the build as `GET /api/builds/{id}` shows it, without hosts and stages.
#[derive(Serialize)]
struct BuildJson<'a> {
    id: i64,
    repo: &'a str,
    number: i64,
    commit: &'a str,
    branch: &'a str,
    trigger: &'static str,
    status: &'static str,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    error: Option<&'a str>,
}

pub fn build_json(b: &BuildRow) -> String {
    to_json(&BuildJson {
        id: b.id.0,
        repo: &b.repo,
        number: b.number,
        commit: &b.commit,
        branch: &b.branch,
        trigger: b.trigger.as_str(),
        status: b.status.as_str(),
        created_at: rfc3339(b.created_at),
        started_at: b.started_at.map(rfc3339),
        finished_at: b.finished_at.map(rfc3339),
        error: b.error.as_deref(),
    })
}

/// The `step` event: a step as the `stages` of `GET /api/builds/{id}` show it, with its build and
/// its index in that list (which `log` events name).
#[derive(Serialize)]
struct StepJson<'a> {
    build: i64,
    index: i64,
    name: &'a str,
    host: &'a str,
    kind: &'static str,
    status: &'static str,
    exit_code: Option<i64>,
    started_at: Option<String>,
    finished_at: Option<String>,
    duration_ms: Option<i64>,
}

pub fn step_json(s: &StepRow) -> String {
    to_json(&StepJson {
        build: s.build_id.0,
        index: s.idx,
        name: &s.name,
        host: &s.host,
        kind: s.kind.as_str(),
        status: s.status.as_str(),
        exit_code: s.exit_code,
        started_at: s.started_at.map(rfc3339),
        finished_at: s.finished_at.map(rfc3339),
        duration_ms: s.duration_ms(),
    })
}

/// The `host` event: a host as the `hosts` of `GET /api/builds/{id}` show it.
#[derive(Serialize)]
struct HostJson<'a> {
    build: i64,
    role: &'a str,
    provider: &'a str,
    address: Option<String>,
    state: &'static str,
    provisioned_at: Option<String>,
    torn_down_at: Option<String>,
    provision_ms: Option<i64>,
    teardown_ms: Option<i64>,
    error: Option<&'a str>,
}

pub fn host_json(h: &HostRow) -> String {
    to_json(&HostJson {
        build: h.build_id.0,
        role: &h.role,
        provider: &h.provider,
        address: h.address.map(|a| a.to_string()),
        state: h.state.as_str(),
        provisioned_at: h.provisioned_at.map(rfc3339),
        torn_down_at: h.torn_down_at.map(rfc3339),
        provision_ms: h.provision_ms,
        teardown_ms: h.teardown_ms,
        error: h.error.as_deref(),
    })
}

/// The `report` event: a stage's JUnit report summarised, as `GET /api/builds/{id}/reports` has
/// it (without the failing cases' texts).
#[derive(Serialize)]
struct ReportJson<'a> {
    build: i64,
    step: i64,
    stage: &'a str,
    path: &'a str,
    tests: u64,
    failures: u64,
    errors: u64,
    skipped: u64,
    error: Option<String>,
}

pub fn report_json(build: BuildId, stage: &str, report: &ReportRow) -> String {
    let summary = gantry_web::parse_junit(&report.content);
    to_json(&ReportJson {
        build: build.0,
        step: report.step_idx,
        stage,
        path: &report.path,
        tests: summary.tests,
        failures: summary.failures,
        errors: summary.errors,
        skipped: summary.skipped,
        error: summary.error,
    })
}

/// The `log` event, and one line of the log window API: `step` is the step's index, `line` its
/// number within the step, `seq` its event id. `spans` (the text with its colours as classes, see
/// `gantry_web::ansi`) is there only when the text has escape or control characters.
#[derive(Serialize)]
pub struct LogJson<'a> {
    pub step: i64,
    pub line: i64,
    pub seq: i64,
    pub at: String,
    pub stream: &'static str,
    pub text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spans: Option<Vec<ansi::Span>>,
}

impl<'a> LogJson<'a> {
    pub fn new(line: &'a LogLine) -> LogJson<'a> {
        LogJson {
            step: line.step_idx,
            line: line.line,
            seq: line.seq,
            at: rfc3339(line.at),
            stream: line.stream.as_str(),
            text: &line.text,
            spans: (!ansi::is_plain(&line.text)).then(|| ansi::render(&line.text)),
        }
    }
}

pub fn log_event(line: &LogLine) -> WireEvent {
    WireEvent { seq: line.seq, kind: "log", data: to_json(&LogJson::new(line)) }
}

/// Hand the memory freed after a build or a stream back to the system. glibc keeps freed memory
/// in per-thread arenas: without this a server that stored a few million lines, or streamed them
/// to a few clients, stays tens of megabytes larger than it needs (measured by the logs bench).
pub(crate) fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas; it takes no
    // pointer and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

struct Inner {
    builds: Mutex<HashMap<BuildId, broadcast::Sender<Arc<WireEvent>>>>,
    changes: broadcast::Sender<Change>,
    /// Cancelled when the server stops: every stream ends.
    shutdown: CancellationToken,
}

/// The live channels of the builds somebody follows; cheap to clone.
#[derive(Clone)]
pub struct LiveBuilds {
    inner: Arc<Inner>,
}

impl LiveBuilds {
    pub fn new(shutdown: CancellationToken) -> LiveBuilds {
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        LiveBuilds { inner: Arc::new(Inner { builds: Mutex::default(), changes, shutdown }) }
    }

    /// Follow `build` from now on. Subscribe *before* reading the store: whatever is committed
    /// after the read is then in the channel (events in both are told apart by their ids).
    pub fn subscribe(&self, build: BuildId) -> broadcast::Receiver<Arc<WireEvent>> {
        let mut builds = self.inner.builds.lock().expect("live builds poisoned");
        builds.entry(build).or_insert_with(|| broadcast::channel(BUILD_CHANNEL_CAPACITY).0).subscribe()
    }

    /// A listener of `build` stopped: forget the channel when nobody else listens. A persister
    /// still running simply finds no channel (and a later listener reads the store first).
    pub fn release(&self, build: BuildId) {
        let mut builds = self.inner.builds.lock().expect("live builds poisoned");
        if builds.get(&build).is_some_and(|sender| sender.receiver_count() == 0) {
            builds.remove(&build);
            drop(builds);
            return_freed_memory();
        }
    }

    /// The channel of `build` when somebody listens; call it after committing the events to
    /// send, so a listener that subscribed later finds them in the store.
    pub fn sender(&self, build: BuildId) -> Option<broadcast::Sender<Arc<WireEvent>>> {
        let builds = self.inner.builds.lock().expect("live builds poisoned");
        builds.get(&build).filter(|sender| sender.receiver_count() > 0).cloned()
    }

    /// Tell the repo-level feeds about a change (nobody listening is normal).
    pub fn changed(&self, change: Change) {
        let _ = self.inner.changes.send(change);
    }

    /// Follow every build's changes (no log lines) from now on.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// The build's final status is stored: its listeners get what is left in the channel, then
    /// learn it closed.
    pub fn close(&self, build: BuildId) {
        self.inner.builds.lock().expect("live builds poisoned").remove(&build);
        self.changed(Change { build, event: None });
        return_freed_memory();
    }

    /// Cancelled when the server stops, so no stream holds the shutdown up.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64) -> Arc<WireEvent> {
        Arc::new(WireEvent { seq, kind: "log", data: String::new() })
    }

    #[tokio::test]
    async fn a_channel_lives_while_somebody_listens_and_closes_with_the_build() {
        let live = LiveBuilds::new(CancellationToken::new());
        let build = BuildId(7);
        assert!(live.sender(build).is_none(), "nobody listens: the persister sends nothing");
        let mut first = live.subscribe(build);
        let mut second = live.subscribe(build);
        live.sender(build).unwrap().send(event(1)).unwrap();
        assert_eq!(first.recv().await.unwrap().seq, 1);
        drop(first);
        live.release(build);
        assert!(live.sender(build).is_some(), "the second listener keeps the channel");
        live.close(build);
        assert_eq!(second.recv().await.unwrap().seq, 1, "what was sent is still delivered");
        assert!(matches!(second.recv().await, Err(broadcast::error::RecvError::Closed)));
        assert!(live.sender(build).is_none());
    }

    #[tokio::test]
    async fn a_listener_that_falls_behind_is_told_it_lagged() {
        let live = LiveBuilds::new(CancellationToken::new());
        let build = BuildId(8);
        let mut slow = live.subscribe(build);
        let sender = live.sender(build).unwrap();
        for seq in 1..=(BUILD_CHANNEL_CAPACITY as i64 + 10) {
            sender.send(event(seq)).unwrap();
        }
        assert!(matches!(slow.recv().await, Err(broadcast::error::RecvError::Lagged(10))));
    }

    #[test]
    fn a_coloured_log_line_carries_its_spans_and_a_plain_one_does_not() {
        let mut line = LogLine {
            step_idx: 2,
            line: 5,
            seq: 40,
            at: 1_714_643_000_123,
            stream: gantry_event::Stream::Stdout,
            text: "plain".into(),
        };
        let plain: serde_json::Value = serde_json::from_str(&log_event(&line).data).unwrap();
        assert_eq!(
            plain,
            serde_json::json!({"step": 2, "line": 5, "seq": 40, "at": "2024-05-02T09:43:20.123Z", "stream": "stdout", "text": "plain"})
        );
        line.text = "\u{1b}[31mred".into();
        let coloured: serde_json::Value = serde_json::from_str(&log_event(&line).data).unwrap();
        assert_eq!(coloured["spans"], serde_json::json!([{"text": "red", "class": "ansi-fg-1"}]));
    }
}
