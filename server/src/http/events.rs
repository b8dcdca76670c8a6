//! Server-sent events: `GET /api/builds/{id}/events`, everything that happens to one build
//! (contract §4), and `GET /api/events[?repo=NAME]`, the small feed of build and step changes
//! the repo page and the repository list follow.
//!
//! A build's stream is exact: every event carries its id in the build's sequence (`store::events`).
//! The handler subscribes to the build's live channel *before* it reads the store, then sends
//! what the store has after the client's `Last-Event-ID` (or, for a new client, the build's state
//! as of one id), page by page, and then follows the channel, skipping what it already sent: no
//! gap, no duplicate. The stream ends after the build's final status (its id is the build's last
//! event id plus one); a client that resumes after it gets 204, which tells `EventSource` to stop.
//! A client that falls behind the channel is dropped, and resumes from the store. A stream whose
//! channel stays quiet for [`STORE_CHECK_EVERY`] asks the store whether it missed anything (a
//! build on another server reaches this one's channel through notices, which can be lost while
//! the connection that hears them is down), and ends if the build did. Reads only:
//! every handler takes [`Reader`]; nothing here writes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;

use super::auth::Reader;
use super::{configured_repo, parse_build_id, AppState, HttpError};
use crate::live::{self, Change, LiveBuilds, WireEvent};
use crate::store::events::{Snapshot, StoredEvent};
use crate::store::{BuildId, Store};

/// How many stored events one read of a catching-up stream takes.
pub const REPLAY_PAGE: u32 = 256;

/// How many events already in the live channel are sent together.
pub const LIVE_BURST: usize = 64;

/// A comment line keeps idle streams open through proxies this often.
pub const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(15);

/// How long a stream waits on a quiet live channel before it asks the store whether there is
/// more: events of a build on another server arrive through that server's notices, and a notice
/// sent while this server's listening connection was down is lost (the build's end included).
pub const STORE_CHECK_EVERY: Duration = Duration::from_secs(5);

/// How long `EventSource` waits before reconnecting (after a drop for falling behind, say).
pub const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// How many builds' repos a feed remembers.
pub const FEED_REPO_CACHE: usize = 1024;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/builds/{id}/events", get(build_events)).route("/api/events", get(feed))
}

/// Where a build's stream is.
enum Phase {
    /// Sending what the store has after `Cursor::last_sent`.
    Replay,
    /// Following the live channel.
    Live,
    /// The channel closed (the build's final status is stored), or the build was final when the
    /// stream began: send what is left and the final status.
    Finish,
    Done,
}

/// The state of one build's stream.
struct Cursor {
    store: Store,
    live: LiveBuilds,
    build: BuildId,
    /// The build's live channel (taken out only when the stream is dropped).
    receiver: Option<Receiver<Arc<WireEvent>>>,
    /// The id of the last event sent.
    last_sent: i64,
    /// The build was final when the stream began: after the replay comes the end.
    was_final: bool,
    phase: Phase,
    /// `retry:` goes with the first event.
    sent_any: bool,
}

impl Drop for Cursor {
    fn drop(&mut self) {
        // Forget the build's channel if this was its last listener.
        drop(self.receiver.take());
        self.live.release(self.build);
    }
}

impl Cursor {
    fn event(&mut self, id: i64, kind: &str, data: &str) -> Event {
        let event = Event::default().id(id.to_string()).event(kind).data(data);
        if self.sent_any {
            event
        } else {
            self.sent_any = true;
            event.retry(RECONNECT_AFTER)
        }
    }

    fn wire(&mut self, event: &WireEvent) -> Event {
        self.last_sent = event.seq;
        self.event(event.seq, event.kind, &event.data)
    }

    fn stored(&mut self, event: &StoredEvent) -> Event {
        self.last_sent = event.seq();
        match event {
            StoredEvent::Log(line) => {
                let wire = live::log_event(line);
                self.event(wire.seq, wire.kind, &wire.data)
            }
            StoredEvent::Other(other) => {
                let kind = other.kind.as_str();
                self.event(other.seq, kind, &other.data)
            }
        }
    }

    /// The client fell so far behind that the channel dropped events for it: end its stream (it
    /// resumes from the store with Last-Event-ID).
    fn drop_slow(&mut self, missed: u64) {
        tracing::debug!(build = %self.build, missed, "a slow listener was dropped; it resumes from the store");
        self.phase = Phase::Done;
    }

    /// The live channel was quiet for [`STORE_CHECK_EVERY`]: read what the store has that the
    /// channel did not bring, and end with the build if it is final.
    async fn check_store(&mut self) -> Result<(), HttpError> {
        let Some((status, event_seq)) = self.store.event_head(self.build).await? else {
            self.phase = Phase::Done;
            return Ok(());
        };
        if status.is_final() {
            self.was_final = true;
            self.phase = Phase::Replay;
        } else if self.last_sent < event_seq {
            self.phase = Phase::Replay;
        }
        Ok(())
    }

    /// The events the stream sends next; empty only once it is done.
    async fn next_events(&mut self) -> Result<Vec<Event>, HttpError> {
        loop {
            match self.phase {
                Phase::Replay => {
                    let page = self.store.events_after(self.build, self.last_sent, REPLAY_PAGE).await?;
                    if page.is_empty() {
                        self.phase = if self.was_final { Phase::Finish } else { Phase::Live };
                        continue;
                    }
                    return Ok(page.iter().map(|event| self.stored(event)).collect());
                }
                Phase::Live => {
                    let receiver = self.receiver.as_mut().expect("the receiver lives as long as the stream");
                    let received = tokio::select! {
                        received = receiver.recv() => received,
                        () = self.live.shutdown().cancelled() => {
                            self.phase = Phase::Done;
                            continue;
                        }
                        () = tokio::time::sleep(STORE_CHECK_EVERY) => {
                            self.check_store().await?;
                            continue;
                        }
                    };
                    match received {
                        Ok(first) => {
                            let mut events = Vec::new();
                            let mut next = Some(first);
                            while let Some(event) = next.take() {
                                if event.seq == self.last_sent + 1 {
                                    events.push(self.wire(&event));
                                } else if event.seq > self.last_sent + 1 {
                                    // Never expected: the store has what the channel skipped.
                                    tracing::warn!(build = %self.build, after = self.last_sent, got = event.seq,
                                        "gap in a live stream; reading the store");
                                    self.phase = Phase::Replay;
                                    break;
                                }
                                if events.len() >= LIVE_BURST {
                                    break;
                                }
                                let receiver =
                                    self.receiver.as_mut().expect("the receiver lives as long as the stream");
                                match receiver.try_recv() {
                                    Ok(event) => next = Some(event),
                                    Err(TryRecvError::Lagged(missed)) => self.drop_slow(missed),
                                    Err(TryRecvError::Empty) => {}
                                    Err(TryRecvError::Closed) => self.phase = Phase::Finish,
                                }
                            }
                            if !events.is_empty() {
                                return Ok(events);
                            }
                        }
                        Err(RecvError::Lagged(missed)) => self.drop_slow(missed),
                        Err(RecvError::Closed) => self.phase = Phase::Finish,
                    }
                }
                Phase::Finish => {
                    let Some(snapshot) = self.store.event_snapshot(self.build).await? else {
                        self.phase = Phase::Done;
                        continue;
                    };
                    if self.last_sent < snapshot.event_seq {
                        self.was_final = true;
                        self.phase = Phase::Replay;
                        continue;
                    }
                    self.phase = Phase::Done;
                    if snapshot.build.status.is_final() {
                        let data = live::build_json(&snapshot.build);
                        return Ok(vec![self.event(snapshot.event_seq + 1, "build", &data)]);
                    }
                }
                Phase::Done => return Ok(Vec::new()),
            }
        }
    }
}

/// A new client's first events: the build's state as of the snapshot's id. A final build's
/// status goes last, with the id after it, and ends the stream.
fn snapshot_events(cursor: &mut Cursor, snapshot: &Snapshot) -> Vec<Event> {
    let id = snapshot.event_seq;
    let mut events = Vec::new();
    let is_final = snapshot.build.status.is_final();
    if !is_final {
        let data = live::build_json(&snapshot.build);
        events.push(cursor.event(id, "build", &data));
    }
    for step in &snapshot.steps {
        events.push(cursor.event(id, "step", &live::step_json(step)));
    }
    for host in &snapshot.hosts {
        events.push(cursor.event(id, "host", &live::host_json(host)));
    }
    for report in &snapshot.reports {
        let stage = snapshot
            .steps
            .iter()
            .find(|s| s.idx == report.step_idx)
            .map_or_else(|| format!("step {}", report.step_idx), |s| s.name.clone());
        events.push(cursor.event(id, "report", &live::report_json(snapshot.build.id, &stage, report)));
    }
    cursor.last_sent = id;
    if is_final {
        let data = live::build_json(&snapshot.build);
        events.push(cursor.event(id + 1, "build", &data));
        cursor.phase = Phase::Done;
    }
    events
}

/// The client's `Last-Event-ID`, when it sent a number.
fn last_event_id(headers: &HeaderMap) -> Option<i64> {
    headers.get("last-event-id")?.to_str().ok()?.trim().parse().ok().filter(|id: &i64| *id >= 0)
}

async fn build_events(
    _: Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let build = parse_build_id(&id)?;
    let live = state.scheduler.live().clone();
    // Subscribe first: whatever is committed after the reads below is then in the channel.
    let receiver = live.subscribe(build);
    let mut cursor = Cursor {
        store: state.store.clone(),
        live,
        build,
        receiver: Some(receiver),
        last_sent: 0,
        was_final: false,
        phase: Phase::Replay,
        sent_any: false,
    };
    let snapshot =
        state.store.event_snapshot(build).await?.ok_or_else(|| HttpError::NotFound(format!("no build {build}")))?;
    cursor.was_final = snapshot.build.status.is_final();
    let final_id = snapshot.event_seq + 1;
    let first = match last_event_id(&headers) {
        // Everything was sent, the final status included: 204 tells EventSource to stop.
        Some(last) if cursor.was_final && last >= final_id => return Ok(StatusCode::NO_CONTENT.into_response()),
        Some(last) if last <= snapshot.event_seq => {
            cursor.last_sent = last;
            Vec::new()
        }
        // No id, or one this build never handed out: start from the build's state.
        _ => snapshot_events(&mut cursor, &snapshot),
    };
    let rest = stream::unfold(cursor, |mut cursor| async move {
        match cursor.next_events().await {
            Ok(events) if events.is_empty() => None,
            Ok(events) => Some((events, cursor)),
            Err(error) => {
                tracing::error!(build = %cursor.build, %error, "a build's event stream failed");
                None
            }
        }
    });
    let events = stream::iter(std::iter::once(first)).chain(rest).flat_map(stream::iter).map(Ok::<_, Infallible>);
    Ok(sse(events))
}

fn sse(events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE_EVERY)).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    repo: Option<String>,
}

/// The state of one feed.
struct Feed {
    store: Store,
    live: LiveBuilds,
    changes: Receiver<Change>,
    repo: Option<String>,
    /// The repo of each build seen, so a step change costs no read.
    repos: HashMap<BuildId, String>,
}

impl Feed {
    async fn repo_of(&mut self, build: BuildId) -> Result<Option<String>, HttpError> {
        if let Some(repo) = self.repos.get(&build) {
            return Ok(Some(repo.clone()));
        }
        let Some(row) = self.store.build(build).await? else { return Ok(None) };
        if self.repos.len() >= FEED_REPO_CACHE {
            self.repos.clear();
        }
        self.repos.insert(build, row.repo.clone());
        Ok(Some(row.repo))
    }

    /// The next event for this feed; `None` ends it.
    async fn next_event(&mut self) -> Result<Option<Event>, HttpError> {
        loop {
            let change = tokio::select! {
                change = self.changes.recv() => change,
                () = self.live.shutdown().cancelled() => return Ok(None),
            };
            let change = match change {
                Ok(change) => change,
                // The page reloads what it shows when its feed reconnects.
                Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return Ok(None),
            };
            let Some(repo) = self.repo_of(change.build).await? else { continue };
            if self.repo.as_ref().is_some_and(|wanted| *wanted != repo) {
                continue;
            }
            match change.event {
                Some(event) => return Ok(Some(Event::default().event(event.kind).data(&event.data))),
                None => {
                    let Some(row) = self.store.build(change.build).await? else { continue };
                    return Ok(Some(Event::default().event("build").data(live::build_json(&row))));
                }
            }
        }
    }
}

/// `GET /api/events[?repo=NAME]`: `build` events (a build was queued or changed status) and
/// `step`, `host` and `report` events of every build (of one repo), no log lines and no ids. A
/// client that falls behind is dropped; the dashboard then reloads what it shows.
async fn feed(
    _: Reader,
    State(state): State<AppState>,
    query: Result<Query<FeedQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(query) = query.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    if let Some(repo) = &query.repo {
        configured_repo(&state, repo)?;
    }
    let live = state.scheduler.live().clone();
    let feed =
        Feed { store: state.store.clone(), changes: live.changes(), live, repo: query.repo, repos: HashMap::new() };
    let events = stream::unfold(feed, |mut feed| async move {
        match feed.next_event().await {
            Ok(Some(event)) => Some((Ok::<_, Infallible>(event), feed)),
            Ok(None) => None,
            Err(error) => {
                tracing::error!(%error, "a build feed failed");
                None
            }
        }
    });
    Ok(sse(events))
}
