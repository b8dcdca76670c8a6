//! The dashboard's buttons, as plain HTML forms that work without script: build a branch or a
//! commit from the repo page (`POST /repos/{repo}/builds`), cancel (`POST /builds/{id}/cancel`)
//! and re-run (`POST /builds/{id}/rerun`) from the build page. Each answers with a redirect (303)
//! to the page to look at next: the new build's, or the cancelled build's.
//!
//! Every handler takes [`Member`] first (a reader gets 403, nobody signed in 401) and does what
//! the JSON API does for the same action; the `csrf` layer has checked the form's token before a
//! handler runs. Errors are shown as pages.

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::post;
use axum::{Form, Router};
use serde::Deserialize;

use super::api::{queue_manual, rerun};
use super::auth::Member;
use super::pages::PageError;
use super::{configured_repo, parse_build_id, AppState, HttpError};
use crate::scheduler::Cancelled;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/repos/{repo}/builds", post(build))
        .route("/builds/{id}/cancel", post(cancel))
        .route("/builds/{id}/rerun", post(rerun_page))
}

/// The repo page's build form. Its `csrf` field is the layer's business.
#[derive(Debug, Deserialize)]
struct BuildForm {
    #[serde(default)]
    branch: String,
    #[serde(default)]
    commit: String,
}

async fn build(
    Member(user): Member,
    State(state): State<AppState>,
    Path(repo): Path<String>,
    form: Result<Form<BuildForm>, FormRejection>,
) -> Result<Response, PageError> {
    let repo = configured_repo(&state, &repo)?;
    let Form(form) = form.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    let given = |field: String| Some(field.trim().to_string()).filter(|f| !f.is_empty());
    let build = queue_manual(&state, repo, &user, given(form.branch), given(form.commit)).await?;
    Ok(Redirect::to(&format!("/builds/{}", build.id)).into_response())
}

async fn cancel(
    Member(user): Member,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let id = parse_build_id(&id)?;
    tracing::info!(build = %id, user = %user.name, "cancel asked for from the build page");
    match state.scheduler.cancel(id).await.map_err(HttpError::from)? {
        Cancelled::NotFound => Err(PageError(HttpError::NotFound(format!("no build {id}")))),
        Cancelled::Dequeued | Cancelled::Stopping | Cancelled::AlreadyFinished => {
            Ok(Redirect::to(&format!("/builds/{id}")).into_response())
        }
    }
}

async fn rerun_page(
    Member(user): Member,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let build = rerun(&state, &user, parse_build_id(&id)?).await?;
    Ok(Redirect::to(&format!("/builds/{}", build.id)).into_response())
}
