//! A build's log over HTTP, in the two shapes people and pages need: the raw text
//! (`GET /api/builds/{id}/log[?stage=NAME][&download=true]`, contract §4) streamed from the store
//! page by page with a file name for saving it, and windows of one step's lines as JSON
//! (`GET /api/builds/{id}/lines?step=N&from=N&limit=N`) that the build page loads as it scrolls.
//!
//! Neither ever holds a whole log: a million-line step is read in pages of
//! [`RAW_PAGE_LINES`]; a window is at most [`MAX_WINDOW_LINES`]. Reads only: every handler takes
//! [`Reader`].

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::stream;
use serde::{Deserialize, Serialize};

use super::auth::Reader;
use super::{parse_build_id, AppState, HttpError};
use crate::live::LogJson;
use crate::store::{BuildId, BuildRow, LogLine, StepRow, Store};

/// Lines read from the store for each piece of a raw log.
pub const RAW_PAGE_LINES: u32 = 5_000;

/// A window has this many lines unless `limit` says otherwise.
pub const DEFAULT_WINDOW_LINES: u32 = 500;

/// The most lines one window request returns.
pub const MAX_WINDOW_LINES: u32 = 5_000;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/builds/{id}/log", get(raw_log)).route("/api/builds/{id}/lines", get(window))
}

async fn existing_build(state: &AppState, id: BuildId) -> Result<BuildRow, HttpError> {
    state.store.build(id).await?.ok_or_else(|| HttpError::NotFound(format!("no build {id}")))
}

async fn step_named(state: &AppState, id: BuildId, name: &str) -> Result<StepRow, HttpError> {
    state
        .store
        .step_by_name(id, name)
        .await?
        .ok_or_else(|| HttpError::NotFound(format!("build {id} has no step {name:?}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuery {
    stage: Option<String>,
    /// `true`: the browser saves the file instead of showing it.
    #[serde(default)]
    download: bool,
}

/// A file name made of `parts`, with anything but letters, digits, `.`, `_` and `-` replaced.
fn file_name(parts: &[&str]) -> String {
    parts
        .join("-")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect::<String>()
        + ".log"
}

/// Where a raw log's next page starts.
#[derive(Clone, Copy)]
enum RawCursor {
    /// One step's lines from this line number on.
    Step {
        step: i64,
        from: i64,
    },
    /// The build's lines after this event id.
    Build {
        after: i64,
    },
    Done,
}

async fn raw_page(store: &Store, build: BuildId, cursor: RawCursor) -> crate::store::Result<(Vec<LogLine>, RawCursor)> {
    let (lines, next) = match cursor {
        RawCursor::Step { step, from } => {
            let lines = store.step_lines(build, step, from, RAW_PAGE_LINES).await?;
            let next = lines.last().map_or(RawCursor::Done, |l| RawCursor::Step { step, from: l.line + 1 });
            (lines, next)
        }
        RawCursor::Build { after } => {
            let lines = store.build_lines_after(build, after, RAW_PAGE_LINES).await?;
            let next = lines.last().map_or(RawCursor::Done, |l| RawCursor::Build { after: l.seq });
            (lines, next)
        }
        RawCursor::Done => (Vec::new(), RawCursor::Done),
    };
    let next = if lines.len() < RAW_PAGE_LINES as usize { RawCursor::Done } else { next };
    Ok((lines, next))
}

/// The log as plain text, one line per output line: the build's (every step's, in the order the
/// lines were produced) or one step's. Streamed; `Content-Disposition` names the file.
async fn raw_log(
    _: Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<RawQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(query) = query.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    let id = parse_build_id(&id)?;
    let build = existing_build(&state, id).await?;
    let number = build.number.to_string();
    let (cursor, name) = match &query.stage {
        Some(stage) => {
            let step = step_named(&state, id, stage).await?;
            (RawCursor::Step { step: step.idx, from: 1 }, file_name(&[&build.repo, &number, &step.name]))
        }
        None => (RawCursor::Build { after: 0 }, file_name(&[&build.repo, &number])),
    };
    let store = state.store.clone();
    let pieces = stream::unfold(cursor, move |cursor| {
        let store = store.clone();
        async move {
            if let RawCursor::Done = cursor {
                return None;
            }
            match raw_page(&store, id, cursor).await {
                Ok((lines, next)) => {
                    let mut text = String::with_capacity(lines.iter().map(|l| l.text.len() + 1).sum());
                    for line in &lines {
                        text.push_str(&line.text);
                        text.push('\n');
                    }
                    Some((Ok::<_, std::io::Error>(text), next))
                }
                Err(error) => {
                    // The status is sent already: the cut body is what the client sees.
                    tracing::error!(build = %id, %error, "reading a raw log failed");
                    Some((Err(std::io::Error::other("reading the log failed")), RawCursor::Done))
                }
            }
        }
    });
    let disposition = if query.download { "attachment" } else { "inline" };
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, format!("{disposition}; filename=\"{name}\"")),
        ],
        Body::from_stream(pieces),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowQuery {
    /// The step's index (as `step` events and `log` lines name it).
    step: Option<i64>,
    /// Or the step's name.
    stage: Option<String>,
    /// The first line's number (from 1); without it, the last `limit` lines.
    from: Option<i64>,
    limit: Option<u32>,
}

/// A window of one step's log.
#[derive(Serialize)]
struct WindowJson<'a> {
    build: i64,
    step: i64,
    name: String,
    /// How many lines the step has stored now.
    total: i64,
    /// The first line's number.
    from: i64,
    lines: Vec<LogJson<'a>>,
}

async fn window(
    _: Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<WindowQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(query) = query.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    let id = parse_build_id(&id)?;
    existing_build(&state, id).await?;
    let step = match (query.step, &query.stage) {
        (Some(idx), None) => state
            .store
            .steps(id)
            .await?
            .into_iter()
            .find(|s| s.idx == idx)
            .ok_or_else(|| HttpError::NotFound(format!("build {id} has no step {idx}")))?,
        (None, Some(name)) => step_named(&state, id, name).await?,
        _ => return Err(HttpError::BadRequest("give the step's index (step=N) or its name (stage=NAME)".into())),
    };
    let limit = query.limit.unwrap_or(DEFAULT_WINDOW_LINES).clamp(1, MAX_WINDOW_LINES);
    let total =
        state.store.log_line_counts(id).await?.into_iter().find(|(idx, _)| *idx == step.idx).map_or(0, |(_, n)| n);
    let from = match query.from {
        Some(from) if from >= 1 => from,
        Some(_) => return Err(HttpError::BadRequest("lines are numbered from 1".into())),
        None => (total - i64::from(limit) + 1).max(1),
    };
    let lines = state.store.step_lines(id, step.idx, from, limit).await?;
    let body = WindowJson {
        build: id.0,
        step: step.idx,
        name: step.name.clone(),
        total,
        from,
        lines: lines.iter().map(LogJson::new).collect(),
    };
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_keep_only_safe_characters() {
        assert_eq!(file_name(&["shop", "12", "unit tests"]), "shop-12-unit_tests.log");
        assert_eq!(file_name(&["a\"b", "1", "setup:web"]), "a_b-1-setup_web.log");
    }
}
