//! A forge's API on loopback for the end-to-end suite: it records every request Gantry sends and
//! answers with what the test scripted (201 by default). Git itself is served by the test repo's
//! plain path, as everywhere in the suite.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;

use crate::helpers::{TestRepo, POLL_EVERY, SECRET};

/// A `[[repo]]` table for `repo` with more keys (`forge_*`, `secrets_for_pull_requests`, ...),
/// to append to a test server's configuration.
pub fn repo_table(name: &str, repo: &TestRepo, keys: &str) -> String {
    format!("\n[[repo]]\nname = \"{name}\"\nurl = {:?}\nsecret = \"{SECRET}\"\n{keys}\n", repo.path().to_str().unwrap())
}

/// One request the stand-in received, and what it answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub answered: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The state the request set (GitHub, Gitea and GitLab all call it `state`).
    pub fn state(&self) -> &str {
        self.body["state"].as_str().unwrap_or_default()
    }
}

/// An answer the stand-in gives: a status, extra headers and a body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Answer {
    pub fn new(status: u16, body: &str) -> Answer {
        Answer { status, headers: Vec::new(), body: body.to_string() }
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Answer {
        self.headers.push((name, value.to_string()));
        self
    }
}

#[derive(Default)]
struct Script {
    recorded: Vec<Recorded>,
    /// Answers for the next requests whose path starts with the key, in order.
    next: Vec<(String, VecDeque<Answer>)>,
    /// The answer for every other request whose path starts with the key.
    always: Vec<(String, Answer)>,
}

#[derive(Clone)]
pub struct ForgeStandIn {
    pub address: SocketAddr,
    script: Arc<Mutex<Script>>,
}

impl ForgeStandIn {
    pub async fn start() -> ForgeStandIn {
        let script = Arc::new(Mutex::new(Script::default()));
        let app = Router::new().fallback(record).with_state(Arc::clone(&script));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        ForgeStandIn { address, script }
    }

    /// The API base of a forge mounted at `prefix` (`/github`, `/gitea/api/v1`, ...).
    pub fn api(&self, prefix: &str) -> String {
        format!("http://{}{prefix}", self.address)
    }

    /// Answer the next requests under `prefix` with `answers`, in order, then as before.
    pub fn answer_next(&self, prefix: &str, answers: Vec<Answer>) {
        self.script.lock().unwrap().next.push((prefix.to_string(), answers.into()));
    }

    /// Answer every request under `prefix` with `answer` (once the scripted ones are used).
    pub fn answer_always(&self, prefix: &str, answer: Answer) {
        self.script.lock().unwrap().always.push((prefix.to_string(), answer));
    }

    /// Every request under `prefix` so far, in the order received.
    pub fn requests(&self, prefix: &str) -> Vec<Recorded> {
        self.script.lock().unwrap().recorded.iter().filter(|r| r.path.starts_with(prefix)).cloned().collect()
    }

    /// Wait until the requests under `prefix` satisfy `done`, or fail after `deadline`.
    pub async fn wait_for(&self, prefix: &str, deadline: Duration, what: &str, done: impl Fn(&[Recorded]) -> bool) {
        let start = Instant::now();
        loop {
            let requests = self.requests(prefix);
            if done(&requests) {
                return;
            }
            let states: Vec<(&str, u16)> = requests.iter().map(|r| (r.state(), r.answered)).collect();
            assert!(start.elapsed() < deadline, "{prefix}: never {what}; got {states:?}");
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

async fn record(
    State(script): State<Arc<Mutex<Script>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let mut script = script.lock().unwrap();
    let scripted = script.next.iter_mut().find(|(prefix, queue)| path.starts_with(prefix) && !queue.is_empty());
    let answer = match scripted {
        Some((_, queue)) => queue.pop_front().unwrap(),
        None => script
            .always
            .iter()
            .rev()
            .find(|(prefix, _)| path.starts_with(prefix))
            .map(|(_, answer)| answer.clone())
            .unwrap_or_else(|| Answer::new(201, r#"{"id": 1}"#)),
    };
    script.recorded.push(Recorded {
        method: method.to_string(),
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        answered: answer.status,
    });
    let mut response = (StatusCode::from_u16(answer.status).unwrap(), answer.body).into_response();
    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
    for (name, value) in answer.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}
