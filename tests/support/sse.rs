//! A minimal server-sent events client over reqwest, for the e2e suite and the benchmark: it
//! connects (optionally with `Last-Event-ID`), parses `id:`, `event:` and `data:` lines into
//! events, and reports the end of the stream. Included by path from `tests/e2e/main.rs` and
//! `tests/bench/builds.rs`.

use std::time::Instant;

/// One event as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
    /// When its last line arrived.
    pub received: Instant,
}

impl SseEvent {
    /// The id as a number (the build streams' ids are numbers).
    pub fn seq(&self) -> i64 {
        self.id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("event without a number id: {self:?}"))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// An open stream.
pub struct SseStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
    /// The fields of the event being read.
    id: Option<String>,
    event: String,
    data: Vec<String>,
}

/// Open `url` as an event stream; the status and, on 200, the stream.
pub async fn connect(client: &reqwest::Client, url: &str, last_event_id: Option<i64>) -> (u16, Option<SseStream>) {
    let mut request = client.get(url).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    if status != 200 {
        return (status, None);
    }
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("text/event-stream"), "content-type {content_type:?}");
    (status, Some(SseStream { response, buffer: Vec::new(), id: None, event: String::new(), data: Vec::new() }))
}

impl SseStream {
    /// The next event, or `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let line = String::from_utf8(line).unwrap();
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    if self.data.is_empty() && self.event.is_empty() {
                        continue;
                    }
                    let event = SseEvent {
                        id: self.id.clone(),
                        event: std::mem::take(&mut self.event),
                        data: std::mem::take(&mut self.data).join("\n"),
                        received: Instant::now(),
                    };
                    return Some(event);
                }
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value).to_string();
                match field {
                    "id" => self.id = Some(value),
                    "event" => self.event = value,
                    "data" => self.data.push(value),
                    _ => {}
                }
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Every event until the server ends the stream.
    pub async fn collect(mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}
