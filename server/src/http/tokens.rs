//! A user's API tokens: `GET /settings/tokens` lists the signed-in user's tokens (label, created,
//! last used), `POST /settings/tokens` creates one and shows it once on the answer page, and
//! `POST /settings/tokens/{id}/revoke` revokes one. Also `GET /api/users`, the users an admin
//! manages.
//!
//! Listing needs any signed-in user; creating and revoking need a member or admin ([`Member`],
//! the handlers' first argument), and only ever touch the user's own tokens. The token value
//! exists only in the answer that creates it (sent with `Cache-Control: no-store`).

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use gantry_web::{NewTokenView, Page, TokenView, TokensPage};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::auth::{Admin, AuthUser, Member, SignedIn};
use super::pages::{viewer, PageError};
use super::{rfc3339, AppState, HttpError};
use crate::auth::token;
use crate::store::{now_ms, TokenId};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/settings/tokens", get(list).post(create))
        .route("/settings/tokens/{id}/revoke", post(revoke))
        .route("/api/users", get(list_users))
}

#[derive(Deserialize)]
struct NewTokenForm {
    label: String,
}

/// The tokens page of `user`, with a token just made or a refusal to show.
async fn page(
    state: &AppState,
    user: &AuthUser,
    new_token: Option<NewTokenView>,
    error: Option<String>,
) -> Result<Html<String>, PageError> {
    let tokens = state
        .store
        .tokens_of_user(user.id)
        .await?
        .into_iter()
        .map(|t| TokenView { id: t.id.0, label: t.label, created_at_ms: t.created_at, last_used_at_ms: t.last_used_at })
        .collect();
    let page = TokensPage {
        user: user.name.clone(),
        tokens,
        new_token,
        can_manage: user.role.may_change_state(),
        error,
        csrf: user.csrf().unwrap_or_default().to_string(),
        now_ms: now_ms(),
    };
    page.render(&viewer(Some(user)))
        .map(Html)
        .map_err(|e| PageError(HttpError::Internal(format!("rendering the tokens page failed: {e}"))))
}

async fn list(SignedIn(user): SignedIn, State(state): State<AppState>) -> Result<Html<String>, PageError> {
    page(&state, &user, None, None).await
}

async fn create(
    Member(user): Member,
    State(state): State<AppState>,
    form: Result<Form<NewTokenForm>, FormRejection>,
) -> Result<Response, PageError> {
    let label = form.map(|Form(f)| f.label.trim().to_string()).unwrap_or_default();
    if let Err(problem) = token::check_label(&label) {
        return Ok((StatusCode::BAD_REQUEST, page(&state, &user, None, Some(problem)).await?).into_response());
    }
    let new = token::generate();
    let row = state.store.insert_token(user.id, &label, &token::hash_secret(&new)).await?;
    tracing::info!(user = %user.name, token = %row.id, label = %row.label, "API token created");
    let shown = NewTokenView { label, token: new.expose_secret().to_string() };
    let mut response = page(&state, &user, Some(shown), None).await?.into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn revoke(
    Member(user): Member,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let id = id.parse().map(TokenId).map_err(|_| HttpError::NotFound(format!("no token {id:?}")))?;
    if !state.store.delete_token(user.id, id).await? {
        return Err(PageError(HttpError::NotFound(format!("you have no token {id}"))));
    }
    tracing::info!(user = %user.name, token = %id, "API token revoked");
    Ok(Redirect::to("/settings/tokens").into_response())
}

#[derive(Debug, Serialize)]
struct UserJson {
    name: String,
    role: &'static str,
    created_at: String,
}

/// `GET /api/users`: every user with their role, for admins.
async fn list_users(Admin(_): Admin, State(state): State<AppState>) -> Result<Json<Vec<UserJson>>, HttpError> {
    let users = state.store.users().await?;
    Ok(Json(
        users
            .into_iter()
            .map(|u| UserJson { name: u.name, role: u.role.as_str(), created_at: rfc3339(u.created_at) })
            .collect(),
    ))
}
