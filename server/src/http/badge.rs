//! `GET /badge/{repo}.svg[?branch=NAME]`: the status badge of a repo's newest build that ran to
//! a verdict (passed, failed or errored; not one cancelled, interrupted or still running), of
//! one branch when asked, as an SVG image a README can show.
//!
//! Who may see it: a badge tells how a repo's builds went, which is what its pages tell, so it is
//! a read like any other (contract §5) and takes [`Reader`]: anyone when `public_read` is on
//! (the usual case for a badge in a public README), otherwise a signed-in browser or a token. A
//! badge open to everybody on a private server would leak its branch names and their state.
//! Answers may be cached for [`BADGE_MAX_AGE`]: by anyone when reads are public, by the browser
//! only (`private`) otherwise.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use gantry_web::Badge;
use serde::Deserialize;

use super::auth::Reader;
use super::{configured_repo, AppState, HttpError};

/// How long a badge may be cached: a few builds' worth of staleness at most.
pub const BADGE_MAX_AGE: Duration = Duration::from_secs(60);

/// The `Content-Type` of a badge.
pub const SVG_CONTENT_TYPE: &str = "image/svg+xml";

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/badge/{file}", get(badge))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BadgeQuery {
    branch: Option<String>,
}

async fn badge(
    _: Reader,
    State(state): State<AppState>,
    Path(file): Path<String>,
    query: Result<Query<BadgeQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(query) = query.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    let name =
        file.strip_suffix(".svg").ok_or_else(|| HttpError::NotFound(format!("no badge {file:?}: ask for REPO.svg")))?;
    let repo = configured_repo(&state, name)?;
    let branch = query.branch.filter(|b| !b.is_empty());
    let build = state.store.last_verdict(&repo.name, branch.as_deref()).await?;
    let svg = Badge::for_status(build.map(|b| b.status))
        .render()
        .map_err(|e| HttpError::Internal(format!("rendering a badge failed: {e}")))?;
    let visibility = if state.config.auth.public_read { "public" } else { "private" };
    let cache = format!("{visibility}, max-age={}", BADGE_MAX_AGE.as_secs());
    Ok(([(header::CONTENT_TYPE, SVG_CONTENT_TYPE.to_string()), (header::CACHE_CONTROL, cache)], svg).into_response())
}
