//! Signing in and out: `GET /login` (the form), `POST /login`, `POST /logout`.
//!
//! `GET /login` makes an anonymous session (living [`LOGIN_FORM_TTL`]) only to hold the form's
//! CSRF token; `csrf` checks that token on `POST /login` like on every other form. A successful
//! sign-in gets a new session id (no fixation), a new CSRF token and the configured lifetime,
//! then a 303 to `next` (a path on this server only). A failure answers 401 with the form again
//! and the same words whether the user exists or not; for an unknown user a dummy hash is
//! verified so the answer takes as long. Every failure is logged once, through
//! [`log_sign_in_failure`]. Argon2 runs on the blocking pool, never on the async threads.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use gantry_web::{LoginPage, Page, Viewer};
use secrecy::SecretString;
use serde::Deserialize;
use tower_sessions::session::Expiry;
use tower_sessions::Session;

use super::auth::{safe_next, SignedIn, Via, CSRF_KEY, LOGIN_FORM_TTL};
use super::csrf;
use super::pages::PageError;
use super::{AppState, HttpError};
use crate::auth::throttle::Verdict;
use crate::auth::{check_password, check_user_name, log_sign_in_failure, password, SignInFailure};
use crate::config::AuthConfig;
use crate::store::sessions::USER_ID_KEY;

/// What a failed sign-in says, for an unknown user and a wrong password alike.
pub const WRONG_CREDENTIALS: &str = "wrong user name or password";

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/login", get(login_form).post(sign_in)).route("/logout", post(sign_out))
}

#[derive(Debug, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// The sign-in form's fields (`csrf` is checked by the CSRF layer before this handler runs).
#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: SecretString,
    next: Option<String>,
}

fn session_error(error: tower_sessions::session::Error) -> PageError {
    PageError(HttpError::Session(error))
}

async fn login_form(
    State(state): State<AppState>,
    session: Session,
    query: Result<Query<NextQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let next = safe_next(query.ok().and_then(|Query(q)| q.next).as_deref());
    if let Some(user_id) = session.get::<i64>(USER_ID_KEY).await.map_err(session_error)? {
        if state.store.user(crate::store::UserId(user_id)).await?.is_some() {
            return Ok(Redirect::to(&next).into_response());
        }
    }
    let csrf = form_token(&session).await?;
    render(StatusCode::OK, &LoginPage { next, user: String::new(), error: None, csrf })
}

/// The session's CSRF token; a session without one (a new visitor) gets one and the short life
/// of a sign-in form.
async fn form_token(session: &Session) -> Result<String, PageError> {
    if let Some(token) = session.get::<String>(CSRF_KEY).await.map_err(session_error)? {
        return Ok(token);
    }
    let token = csrf::new_token();
    session.insert(CSRF_KEY, &token).await.map_err(session_error)?;
    let ttl = time::Duration::try_from(LOGIN_FORM_TTL).expect("the form's lifetime fits");
    session.set_expiry(Some(Expiry::OnInactivity(ttl)));
    Ok(token)
}

fn render(status: StatusCode, page: &LoginPage) -> Result<Response, PageError> {
    let html = page
        .render(&Viewer::Unknown)
        .map_err(|e| PageError(HttpError::Internal(format!("rendering the sign-in page failed: {e}"))))?;
    Ok((status, Html(html)).into_response())
}

/// The address a request comes from: its peer's, or, when the peer is one of the
/// `trusted_proxies`, the last address in the proxy's `client_ip_header`. A header from anyone
/// else is ignored, so a client cannot choose the address its failures count against.
pub fn client_address(auth: &AuthConfig, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    if !auth.trusted_proxies.iter().any(|proxy| proxy.contains(&peer)) {
        return peer;
    }
    headers
        .get_all(auth.client_ip_header.as_str())
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
        .next_back()
        .unwrap_or(peer)
}

async fn sign_in(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    State(state): State<AppState>,
    session: Session,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, PageError> {
    let client = client_address(&state.config.auth, peer.ip(), &headers);
    let csrf = form_token(&session).await?;
    let Ok(Form(form)) = form else {
        let error = "the sign-in form is incomplete: give a user name and a password".to_string();
        let page = LoginPage { next: "/".to_string(), user: String::new(), error: Some(error), csrf };
        return render(StatusCode::BAD_REQUEST, &page);
    };
    let next = safe_next(form.next.as_deref());
    let refuse = |status, user: &str, error: String| {
        let shown = if user.len() <= crate::auth::MAX_USER_NAME_LEN { user.to_string() } else { String::new() };
        render(status, &LoginPage { next: next.clone(), user: shown, error: Some(error), csrf: csrf.clone() })
    };
    if let Verdict::Refuse { retry_after } = state.throttle.check(client, &form.user, Instant::now()) {
        log_sign_in_failure(client, &form.user, SignInFailure::Throttled);
        let mut answer = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            &form.user,
            format!("too many failed sign-ins: try again in {} minutes", retry_after.as_secs().div_ceil(60)),
        )?;
        answer.headers_mut().insert(header::RETRY_AFTER, retry_after.as_secs().max(1).into());
        return Ok(answer);
    }
    // A failure counts against the address and the name, and its answer is delayed once they
    // have failed a few times.
    let failed = |reason: SignInFailure| {
        log_sign_in_failure(client, &form.user, reason);
        state.throttle.failed(client, &form.user, Instant::now())
    };
    if let Err(problem) = check_user_name(&form.user).and_then(|()| check_password(&form.password)) {
        tokio::time::sleep(failed(SignInFailure::BadInput)).await;
        return refuse(StatusCode::BAD_REQUEST, &form.user, problem.to_string());
    }

    let user = state.store.user_by_name(&form.user).await?;
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let password = form.password;
    let matches = tokio::task::spawn_blocking(move || match stored {
        Some(hash) => password::verify_password(&password, &hash),
        None => {
            password::verify_nobody(&password);
            false
        }
    })
    .await
    .map_err(|e| PageError(HttpError::Internal(format!("verifying a password failed: {e}"))))?;
    let user = match (user, matches) {
        (Some(user), true) => user,
        (found, _) => {
            let reason = if found.is_some() { SignInFailure::WrongPassword } else { SignInFailure::UnknownUser };
            tokio::time::sleep(failed(reason)).await;
            return refuse(StatusCode::UNAUTHORIZED, &form.user, WRONG_CREDENTIALS.to_string());
        }
    };

    // A new id for the signed-in session: whoever knew the anonymous one (it may have been
    // planted) learns nothing.
    session.cycle_id().await.map_err(session_error)?;
    session.insert(USER_ID_KEY, user.id.0).await.map_err(session_error)?;
    session.insert(CSRF_KEY, csrf::new_token()).await.map_err(session_error)?;
    let ttl = time::Duration::try_from(state.config.auth.session_ttl).unwrap_or(time::Duration::days(366));
    session.set_expiry(Some(Expiry::OnInactivity(ttl)));
    state.throttle.succeeded(client, &form.user);
    tracing::info!(client = %client, user = %user.name, "signed in");
    Ok(Redirect::to(&next).into_response())
}

/// Sign out: the session is deleted from the store and its cookie removed. A request made with
/// an API token has no session; it is sent to the sign-in page all the same.
async fn sign_out(SignedIn(user): SignedIn, session: Session) -> Result<Response, PageError> {
    if let Via::Session { .. } = user.via {
        session.flush().await.map_err(session_error)?;
        tracing::info!(user = %user.name, "signed out");
    }
    Ok(Redirect::to("/login").into_response())
}
