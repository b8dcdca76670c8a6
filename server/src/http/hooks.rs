//! `POST /hooks/{repo}`: forge webhooks (contract §3 and §7).
//!
//! The repo is looked up before the body is read; `forge::verify_and_parse` checks the signature
//! before it parses anything, and a ref or branch name git would refuse is a malformed delivery.
//! A push or a pull request event is then stored with its queued build in one transaction
//! ([`Scheduler::accept_delivery`]) and answered at once: fetching the commit (always from the
//! repo's *configured* URL, never from a URL in the payload), reading `.gantry.yml` and applying
//! `on` happen afterwards in the scheduler, so nothing after the answer depends on the connection
//! staying open. Answers: 202 `{"build": ID}` when queued (a ref the pipeline turns out not to
//! build ends as a `skipped` build); 202 `{"cancelled": [...]}` for a closed request; 200 when
//! there is nothing to build (ping, deletion, a delivery id or a signed body seen before); 202 for
//! events Gantry does not act on; 401 for a bad or missing signature, 400 for a malformed
//! delivery, 404 for an unknown repo, 413 for a body over [`forge::MAX_WEBHOOK_BYTES`].

use axum::body::{Body, HttpBody};
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::configured_repo;
use super::{AppState, HttpError};
use crate::config::RepoConfig;
use crate::forge::{self, PullRequestAction, PullRequestEvent, PushEvent, WebhookError, WebhookEvent};
use crate::scheduler::{Accepted, DeliveryRequest, IncomingDelivery};
use crate::store::{NewBuild, PullRequest, RefKind, Trigger};

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
    let (forge, event_name) = forge::describe(&parts.headers).ok_or(HttpError::BadRequest("unknown forge".into()))?;
    let received =
        Received { repo, forge: forge.as_str(), event: &event_name, body_sha256: hex::encode(Sha256::digest(&body)) };
    match event {
        WebhookEvent::Ping => Ok(nothing_to_build(StatusCode::OK, "pong")),
        WebhookEvent::Other(kind) => {
            tracing::debug!(repo = %repo.name, event = %kind, "webhook event ignored");
            Ok(nothing_to_build(StatusCode::ACCEPTED, &format!("{kind} events are not acted on")))
        }
        WebhookEvent::Push(push) => push_received(&state, &received, push).await,
        WebhookEvent::PullRequest(request) => pull_request_received(&state, &received, request).await,
    }
}

/// An authenticated delivery, as it is recorded.
struct Received<'a> {
    repo: &'a RepoConfig,
    forge: &'static str,
    event: &'a str,
    body_sha256: String,
}

/// The body, at most [`forge::MAX_WEBHOOK_BYTES`] of it. A body that declares its length is
/// read into one buffer of that size (the body budget of `http::limits` has reserved it); one
/// that declares more than the limit is only drained.
async fn read_limited(body: Body) -> Result<Vec<u8>, HttpError> {
    let declared = usize::try_from(HttpBody::size_hint(&body).lower()).unwrap_or(usize::MAX);
    let keep = declared <= forge::MAX_WEBHOOK_BYTES;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::with_capacity(if keep { declared } else { 0 });
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| HttpError::BadRequest(format!("reading the body failed: {e}")))?;
        seen = seen.saturating_add(chunk.len());
        if keep && seen <= forge::MAX_WEBHOOK_BYTES {
            bytes.extend_from_slice(&chunk);
        } else if seen > MAX_DRAINED_BYTES {
            break;
        }
    }
    if !keep {
        return Err(HttpError::PayloadTooLarge(forge::MAX_WEBHOOK_BYTES));
    }
    if seen > forge::MAX_WEBHOOK_BYTES {
        return Err(HttpError::PayloadTooLarge(forge::MAX_WEBHOOK_BYTES));
    }
    Ok(bytes)
}

fn nothing_to_build(status: StatusCode, reason: &str) -> Response {
    (status, Json(json!({ "queued": false, "reason": reason }))).into_response()
}

async fn push_received(state: &AppState, received: &Received<'_>, push: PushEvent) -> Result<Response, HttpError> {
    if push.deleted {
        return Ok(nothing_to_build(StatusCode::OK, &format!("{} was deleted", push.git_ref)));
    }
    let (name, ref_kind) = match (push.branch, push.tag) {
        (Some(branch), _) => (branch, RefKind::Branch),
        (None, Some(tag)) => (tag, RefKind::Tag),
        (None, None) => {
            return Ok(nothing_to_build(StatusCode::OK, &format!("{} is neither a branch nor a tag", push.git_ref)))
        }
    };
    let new = NewBuild {
        repo: received.repo.name.clone(),
        commit: push.after,
        branch: name,
        ref_kind,
        trigger: Trigger::Push,
    };
    let request = DeliveryRequest::Build { new, pull_request: None };
    accept(state, received, push.delivery.as_deref(), request).await
}

async fn pull_request_received(
    state: &AppState,
    received: &Received<'_>,
    event: PullRequestEvent,
) -> Result<Response, HttpError> {
    let request = match event.action {
        PullRequestAction::Build => {
            let new = NewBuild {
                repo: received.repo.name.clone(),
                commit: event.head_sha,
                branch: event.source.clone(),
                ref_kind: RefKind::PullRequest,
                trigger: Trigger::Push,
            };
            let pr = PullRequest {
                number: event.number,
                source: event.source,
                target: event.target,
                head_ref: event.head_ref,
            };
            DeliveryRequest::Build { new, pull_request: Some(pr) }
        }
        PullRequestAction::Closed { merged } => DeliveryRequest::CloseRequest { number: event.number, merged },
    };
    accept(state, received, event.delivery.as_deref(), request).await
}

/// Store the delivery with what it asks for, and answer.
async fn accept(
    state: &AppState,
    received: &Received<'_>,
    delivery_id: Option<&str>,
    request: DeliveryRequest,
) -> Result<Response, HttpError> {
    let incoming = IncomingDelivery {
        repo: &received.repo.name,
        forge: received.forge,
        event: received.event,
        delivery_id,
        body_sha256: &received.body_sha256,
        request,
    };
    match state.scheduler.accept_delivery(incoming).await? {
        Accepted::Queued(build) => Ok((StatusCode::ACCEPTED, Json(json!({ "build": build.id.0 }))).into_response()),
        Accepted::Closed { cancelled } => {
            let ids: Vec<i64> = cancelled.iter().map(|id| id.0).collect();
            Ok((StatusCode::ACCEPTED, Json(json!({ "queued": false, "cancelled": ids }))).into_response())
        }
        Accepted::Duplicate => Ok(nothing_to_build(StatusCode::OK, "this delivery was handled before")),
    }
}
