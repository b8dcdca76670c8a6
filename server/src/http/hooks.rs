//! `POST /hooks/{repo}`: forge webhooks (contract §3).
//!
//! The repo is looked up before the body is read; `forge::verify_and_parse` checks the signature
//! before it parses anything. A push is built only after its commit is fetched from the repo's
//! *configured* URL (never a URL from the payload) and the pipeline of that commit accepts the
//! branch. Answers: 202 `{"build": ID}` when queued; 200 when there is nothing to build (ping,
//! deletion, duplicate delivery, filtered branch); 202 for events Gantry does not act on; 401 for
//! a bad or missing signature, 400 for a malformed delivery, 404 for an unknown repo, 413 for a
//! body over [`forge::MAX_WEBHOOK_BYTES`].

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::json;

use super::configured_repo;
use super::{AppState, HttpError};
use crate::config::RepoConfig;
use crate::forge::{self, PushEvent, WebhookError, WebhookEvent};
use crate::scheduler::Enqueued;
use crate::store::{NewBuild, RefKind, Trigger};

/// A body over the limit is still read (and dropped) up to this many bytes before the 413 goes
/// out, so the forge reads the answer instead of a reset connection; beyond it the connection is
/// simply closed.
pub const MAX_DRAINED_BYTES: usize = 64 * 1024 * 1024;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/hooks/{repo}", post(receive))
}

async fn receive(
    State(state): State<AppState>,
    Path(repo): Path<String>,
    request: Request,
) -> Result<Response, HttpError> {
    let repo = configured_repo(&state, &repo)?;
    let (parts, body) = request.into_parts();
    let body = read_limited(body).await?;
    let event = forge::verify_and_parse(&parts.headers, &body, &repo.secret).map_err(|e| match e {
        WebhookError::MissingSignature | WebhookError::BadSignature => HttpError::Unauthorized(e.to_string()),
        WebhookError::UnknownForge | WebhookError::Malformed(_) => HttpError::BadRequest(e.to_string()),
    })?;
    match event {
        WebhookEvent::Ping => Ok(nothing_to_build(StatusCode::OK, "pong")),
        WebhookEvent::Other(kind) => {
            tracing::debug!(repo = %repo.name, event = %kind, "webhook event ignored");
            Ok(nothing_to_build(StatusCode::ACCEPTED, &format!("{kind} events are not acted on")))
        }
        WebhookEvent::Push(push) => push_received(&state, repo, push).await,
    }
}

/// The body, at most [`forge::MAX_WEBHOOK_BYTES`] of it.
async fn read_limited(body: Body) -> Result<Vec<u8>, HttpError> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| HttpError::BadRequest(format!("reading the body failed: {e}")))?;
        seen = seen.saturating_add(chunk.len());
        if seen <= forge::MAX_WEBHOOK_BYTES {
            bytes.extend_from_slice(&chunk);
        } else if seen > MAX_DRAINED_BYTES {
            break;
        }
    }
    if seen > forge::MAX_WEBHOOK_BYTES {
        return Err(HttpError::PayloadTooLarge(forge::MAX_WEBHOOK_BYTES));
    }
    Ok(bytes)
}

fn nothing_to_build(status: StatusCode, reason: &str) -> Response {
    (status, Json(json!({ "queued": false, "reason": reason }))).into_response()
}

async fn push_received(state: &AppState, repo: &RepoConfig, push: PushEvent) -> Result<Response, HttpError> {
    if push.deleted {
        return Ok(nothing_to_build(StatusCode::OK, &format!("{} was deleted", push.git_ref)));
    }
    if let Some(delivery) = &push.delivery {
        if state.store.has_delivery(&repo.name, delivery).await? {
            return Ok(nothing_to_build(StatusCode::OK, "this delivery was handled before"));
        }
    }
    let (name, ref_kind) = match (push.branch, push.tag) {
        (Some(branch), _) => (branch, RefKind::Branch),
        (None, Some(tag)) => (tag, RefKind::Tag),
        (None, None) => {
            return Ok(nothing_to_build(StatusCode::OK, &format!("{} is neither a branch nor a tag", push.git_ref)))
        }
    };
    match state.scheduler.ensure_commit(repo, &push.after).await {
        // Only branches are filtered by `on.branches`; a pushed tag always builds.
        Ok(commit) if ref_kind == RefKind::Branch => {
            if !state.scheduler.wants_branch(&repo.name, commit, &name).await {
                return Ok(nothing_to_build(StatusCode::OK, &format!("the pipeline does not build branch {name}")));
            }
        }
        Ok(_) => {}
        // Queued anyway: the build records why it could not run.
        Err(error) => tracing::warn!(repo = %repo.name, commit = %push.after, %error, "pushed commit unavailable"),
    }
    let new = NewBuild { repo: repo.name.clone(), commit: push.after, branch: name, ref_kind, trigger: Trigger::Push };
    match state.scheduler.enqueue(new, push.delivery.as_deref()).await? {
        Enqueued::Queued(build) => Ok((StatusCode::ACCEPTED, Json(json!({ "build": build.id.0 }))).into_response()),
        Enqueued::DuplicateDelivery => Ok(nothing_to_build(StatusCode::OK, "this delivery was handled before")),
    }
}
