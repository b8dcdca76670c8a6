//! The event stream of a build (`GET /api/builds/{id}/events`, contract §4) against a real
//! server and real builds: the order and ids of events, resuming with `Last-Event-ID` in the
//! middle of a build and after its end with nothing missing and nothing twice (checked against
//! `GET /api/builds/{id}/log`), the end of the stream after the final status, the state a late
//! client gets, a slow client dropped without slowing the build, and the repo-level feed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;
use crate::sse::{connect, SseEvent, SseStream};

/// A directory the host steps (which may run as another user) can look into, holding the gate
/// file a step waits for.
struct Gate {
    dir: tempfile::TempDir,
}

impl Gate {
    fn new() -> Gate {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        Gate { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("open")
    }

    /// Shell that waits (within the step) until the gate is opened.
    fn wait(&self) -> String {
        format!("while [ ! -e {} ]; do sleep 0.02; done", self.path().display())
    }

    fn open(&self) {
        std::fs::write(self.path(), "").unwrap();
    }
}

/// A pipeline whose stage prints `before` lines, waits for the gate, then prints `after` lines
/// (the last one in red).
fn gated_pipeline(gate: &Gate, before: u32, after: u32) -> String {
    let script = format!(
        "for i in $(seq 1 {before}); do echo before $i; done\n{}\nfor i in $(seq 1 {after}); do echo after $i; done\nprintf '\\033[31mred <b>done</b>\\033[0m\\n'\n",
        gate.wait()
    );
    format!("version: 1\nhosts:\n  app: {{}}\nstages:\n  - name: only\n    host: app\n    run: {script:?}\n")
}

fn events_url(app: &TestApp, id: i64) -> String {
    app.url(&format!("/api/builds/{id}/events"))
}

/// Wait until the step `only` has logged `lines` lines.
async fn wait_for_lines(app: &TestApp, id: i64, lines: usize) {
    let start = Instant::now();
    loop {
        // 404 until the build is planned.
        let (status, log) = app.get_text(&format!("/api/builds/{id}/log?stage=only")).await;
        if status == 200 && log.lines().count() >= lines {
            return;
        }
        assert!(start.elapsed() < BUILD_DEADLINE, "the step never logged {lines} lines: {log}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The texts of the `log` events among `events`.
fn log_texts(events: &[SseEvent]) -> Vec<String> {
    events.iter().filter(|e| e.event == "log").map(|e| e.json()["text"].as_str().unwrap().to_string()).collect()
}

/// Every line of the build's whole log, as the raw log has them.
async fn full_log(app: &TestApp, id: i64) -> Vec<String> {
    app.log(id, None).await.lines().map(str::to_string).collect()
}

/// Ids after the first `skip` events go up by exactly one: no gap, no duplicate.
fn assert_consecutive(events: &[SseEvent], skip: usize) {
    for pair in events[skip..].windows(2) {
        assert_eq!(pair[1].seq(), pair[0].seq() + 1, "ids jump between {:?} and {:?}", pair[0], pair[1]);
    }
}

#[tokio::test]
async fn a_new_client_gets_the_state_then_every_event_in_order_and_the_stream_ends_after_the_final_status() {
    let gate = Gate::new();
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &gated_pipeline(&gate, 3, 50))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    let id = app.trigger("shop", "main").await;
    wait_for_lines(&app, id, 3).await;

    let (status, stream) = connect(&app.client, &events_url(&app, id), None).await;
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    // The state first: the build running, every step, the host; all with the id of the last
    // stored event, and no old log line.
    let mut first = Vec::new();
    while first.len() < 2 || first.last().is_some_and(|e: &SseEvent| e.event != "host") {
        first.push(stream.next().await.expect("the state"));
    }
    assert_eq!(first[0].event, "build");
    assert_eq!(first[0].json()["status"], "running");
    let state_id = first[0].seq();
    assert!(first.iter().all(|e| e.seq() == state_id && e.event != "log"), "{first:?}");
    let steps: Vec<Value> = first.iter().filter(|e| e.event == "step").map(SseEvent::json).collect();
    let api = app.build(id).await;
    assert_eq!(steps.len(), api["stages"].as_array().unwrap().len());
    let only = steps.iter().find(|s| s["name"] == "only").unwrap();
    assert_eq!(only["status"], "running");
    assert_eq!(only["build"], id);

    gate.open();
    let rest = stream.collect().await;
    let last = rest.last().unwrap();
    assert_eq!(last.event, "build", "the stream ends with the final status");
    assert_eq!(last.json()["status"], "passed");
    assert_eq!(rest[0].seq(), state_id + 1, "the first live event follows the state");
    assert_consecutive(&rest, 0);

    // Every line after the three already logged, exactly once, in order.
    let received = log_texts(&rest);
    let log = full_log(&app, id).await;
    let only_lines: Vec<String> = app.log(id, Some("only")).await.lines().map(str::to_string).collect();
    assert_eq!(received[..51], only_lines[3..]);
    assert!(received.iter().all(|line| log.contains(line)));
    let red = rest.iter().find(|e| e.event == "log" && e.json()["text"].as_str().unwrap().contains("red")).unwrap();
    assert_eq!(red.json()["spans"][0]["class"], "ansi-fg-1");
    assert_eq!(red.json()["spans"][0]["text"], "red <b>done</b>");

    // Step events end as the API shows the steps, every one of them finished.
    let final_steps: Vec<Value> = rest.iter().filter(|e| e.event == "step").map(SseEvent::json).collect();
    let api = app.build(id).await;
    for stage in api["stages"].as_array().unwrap() {
        let mut last_seen = final_steps
            .iter()
            .rev()
            .find(|s| s["name"] == stage["name"])
            .cloned()
            .unwrap_or_else(|| steps.iter().find(|s| s["name"] == stage["name"]).cloned().unwrap());
        let object = last_seen.as_object_mut().unwrap();
        object.remove("build");
        object.remove("index");
        assert_eq!(&last_seen, stage, "the step event says what the API says");
    }
    assert!(rest.iter().any(|e| e.event == "host" && e.json()["state"] == "torn_down"));

    // After the end, the final id asks for nothing more: 204 stops EventSource.
    let (status, _) = connect(&app.client, &events_url(&app, id), Some(last.seq())).await;
    assert_eq!(status, 204);
    app.stop().await;
}

#[tokio::test]
async fn resuming_with_last_event_id_mid_build_and_after_the_end_misses_nothing_and_repeats_nothing() {
    let gate = Gate::new();
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &gated_pipeline(&gate, 300, 2000))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    let id = app.trigger("shop", "main").await;
    wait_for_lines(&app, id, 300).await;

    // From the start (id 0): the store has the first part; stop reading in the middle of it.
    let (_, stream) = connect(&app.client, &events_url(&app, id), Some(0)).await;
    let mut stream = stream.unwrap();
    let mut first = Vec::new();
    while first.len() < 150 {
        first.push(stream.next().await.unwrap());
    }
    drop(stream);
    assert_eq!(first[0].seq(), 1);
    assert_consecutive(&first, 0);

    // Resume while the build still waits, then let it finish while this stream follows it live.
    let (_, stream) = connect(&app.client, &events_url(&app, id), Some(first.last().unwrap().seq())).await;
    let mut stream = stream.unwrap();
    let mut second = Vec::new();
    while second.len() < 100 {
        second.push(stream.next().await.unwrap());
    }
    gate.open();
    // Drop this one too, mid-flood, and resume once more.
    while second.len() < 900 {
        second.push(stream.next().await.unwrap());
    }
    drop(stream);
    let (_, stream) = connect(&app.client, &events_url(&app, id), Some(second.last().unwrap().seq())).await;
    let third = stream.unwrap().collect().await;
    assert_eq!(third.last().unwrap().event, "build");

    let all: Vec<SseEvent> = first.iter().chain(&second).chain(&third).cloned().collect();
    assert_consecutive(&all, 0);
    assert_eq!(log_texts(&all), full_log(&app, id).await, "the stream's lines are the stored log, once each");

    // After the end: a resume from the middle replays the rest and the final status, the same
    // events with the same ids.
    let middle = second[400].seq();
    let (_, stream) = connect(&app.client, &events_url(&app, id), Some(middle)).await;
    let replay = stream.unwrap().collect().await;
    let expected: Vec<(Option<String>, String, String)> =
        all.iter().filter(|e| e.seq() > middle).map(|e| (e.id.clone(), e.event.clone(), e.data.clone())).collect();
    let got: Vec<(Option<String>, String, String)> =
        replay.iter().map(|e| (e.id.clone(), e.event.clone(), e.data.clone())).collect();
    assert_eq!(got.len(), expected.len());
    // The final status is read again when replayed: compare it by its id and status only.
    assert_eq!(got[..got.len() - 1], expected[..expected.len() - 1]);
    assert_eq!(replay.last().unwrap().seq(), all.last().unwrap().seq());
    app.stop().await;
}

#[tokio::test]
async fn a_client_connecting_after_the_end_gets_the_final_state_and_the_stream_ends() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo hello; exit 3"))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    let id = app.trigger("shop", "main").await;
    let build = app.wait_for_build(id).await;
    assert_eq!(build["status"], "failed");

    let (status, stream) = connect(&app.client, &events_url(&app, id), None).await;
    assert_eq!(status, 200);
    let events = stream.unwrap().collect().await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "build");
    assert_eq!(last.json()["status"], "failed");
    let state_id = events[0].seq();
    assert_eq!(last.seq(), state_id + 1, "the final status is the event after the last stored one");
    assert!(events[..events.len() - 1].iter().all(|e| e.seq() == state_id && e.event != "log"));
    let only = events.iter().find(|e| e.event == "step" && e.json()["name"] == "only").unwrap().json();
    assert_eq!(only["status"], "failed");
    assert_eq!(only["exit_code"], 3);
    assert!(events.iter().any(|e| e.event == "host" && e.json()["state"] == "torn_down"));

    // Readers only: no credentials, no stream; an unknown build is 404.
    let anonymous = anonymous_client();
    let (status, _) = connect(&anonymous, &events_url(&app, id), None).await;
    assert_eq!(status, 401);
    let (status, _) = connect(&app.client, &events_url(&app, 999_999), None).await;
    assert_eq!(status, 404);
    app.stop().await;
}

/// How long the build `id` took, from the API's times.
async fn build_duration(app: &TestApp, id: i64) -> Duration {
    let build = app.wait_for_build(id).await;
    assert_eq!(build["status"], "passed", "{build:#}");
    let at = |field: &str| humantime::parse_rfc3339(build[field].as_str().unwrap()).unwrap();
    at("finished_at").duration_since(at("started_at")).unwrap()
}

#[tokio::test]
async fn a_slow_client_is_dropped_and_resumes_and_the_build_is_not_slowed() {
    const LINES: u32 = 200_000;
    let repo = TestRepo::new();
    let script = format!("seq 1 {LINES} | sed 's/$/ is a line long enough to fill the buffers of a slow reader soon/'");
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline(&script))]);
    repo.commit("alone", &[(".gantry.yml", &one_stage_pipeline(&script))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    // The same build without anybody listening, for comparison, at the same time: both see the
    // same machine (the test suite runs other tests beside this one).
    let alone = app.trigger("shop", "alone").await;
    let id = app.trigger("shop", "main").await;
    // A client that reads nothing while the build runs.
    let (_, stalled) = connect(&app.client, &events_url(&app, id), Some(0)).await;
    let stalled: SseStream = stalled.unwrap();
    let followed = build_duration(&app, id).await;
    let alone = build_duration(&app, alone).await;
    assert!(
        followed < alone * 2 + Duration::from_secs(5),
        "a stalled client slowed the build: {followed:?} against {alone:?} alone"
    );

    // When it reads at last, it finds its stream ended early, without the final status.
    let early = stalled.collect().await;
    let last = early.last().map_or(0, SseEvent::seq);
    assert!(early.last().is_none_or(|e| e.event != "build"), "the slow client was never dropped");
    // It resumes from where it was and gets the rest, nothing twice.
    let (_, rest) = connect(&app.client, &events_url(&app, id), Some(last)).await;
    let rest = rest.unwrap().collect().await;
    let all: Vec<SseEvent> = early.into_iter().chain(rest).collect();
    assert_consecutive(&all, 0);
    assert_eq!(all.last().unwrap().json()["status"], "passed");
    assert_eq!(log_texts(&all), full_log(&app, id).await);
    app.stop().await;
}

#[tokio::test]
async fn the_repo_feed_tells_of_queued_builds_and_their_steps() {
    let gate = Gate::new();
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &gated_pipeline(&gate, 1, 1))]);
    let other = TestRepo::new();
    other.commit("main", &[(".gantry.yml", &one_stage_pipeline("true"))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo), RepoConfig::new("docs", &other)]).await;
    let (status, feed) = connect(&app.client, &app.url("/api/events?repo=shop"), None).await;
    assert_eq!(status, 200);
    let mut feed = feed.unwrap();
    let docs = app.trigger("docs", "main").await;
    app.wait_for_build(docs).await;
    let id = app.trigger("shop", "main").await;

    let first = feed.next().await.unwrap();
    assert_eq!(first.event, "build", "{first:?}");
    assert_eq!(first.json()["id"], id, "the other repo's build is not in this feed");
    let start = Instant::now();
    loop {
        let event = feed.next().await.unwrap();
        assert_ne!(event.event, "log");
        assert_eq!(event.json().get("build").or(event.json().get("id")).unwrap(), &Value::from(id));
        if event.event == "step" && event.json()["name"] == "only" && event.json()["status"] == "running" {
            break;
        }
        assert!(start.elapsed() < BUILD_DEADLINE);
    }
    gate.open();
    loop {
        let event = feed.next().await.unwrap();
        if event.event == "build" && event.json()["status"] == "passed" {
            break;
        }
    }
    let (status, _) = connect(&app.client, &app.url("/api/events?repo=nope"), None).await;
    assert_eq!(status, 404);
    app.stop().await;
}
