//! The HTTP surface: the router, the state every handler shares, and the one error type every
//! handler returns.
//!
//! `api` is the JSON API of the contract, `hooks` receives forge webhooks, `pages` renders the
//! dashboard through the `web` crate, `actions` takes its forms (build, cancel, re-run),
//! `history` parses history queries and lists tests across builds, `badge` and `metrics` serve
//! `/badge/{repo}.svg` and `/metrics`, `login` and `tokens` sign people in and out and manage
//! their API tokens. Who may do what is decided by `auth`'s extractors, which every handler but the
//! webhooks, the sign-in form and the stylesheet takes; `csrf` guards every form, as a layer.
//! `serve` holds the connections (the accept loop, its timeouts and cap) and `limits` what a
//! request's body may cost. Handlers translate between HTTP and the scheduler or store;
//! they hold no SQL and run no builds. Client errors (4xx) tell the client what was wrong; server
//! errors (5xx) are logged with their cause and answered with a generic message, never echoing
//! internals.

mod actions;
mod api;
mod assets;
pub mod auth;
mod badge;
pub mod csrf;
mod events;
mod headers;
mod history;
mod hooks;
pub mod limits;
mod login;
mod logs;
mod metrics;
mod pages;
pub mod serve;
mod tokens;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{middleware, Router};
use gantry_web::{parse_junit, ReportView};
use serde_json::json;
use tower_http::timeout::RequestBodyDeadlineLayer;
use tower_http::trace::TraceLayer;

use crate::config::{Config, RepoConfig};
use crate::git::Mirrors;
use crate::scheduler::Scheduler;
use crate::store::reports::ReportRow;
use crate::store::{BuildId, StepRow, Store, StoreError};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub scheduler: Scheduler,
    pub mirrors: Arc<Mirrors>,
    /// Failed sign-ins by client address and user name.
    pub throttle: Arc<crate::auth::throttle::LoginThrottle>,
    /// The bytes of unauthenticated request bodies held at once (`limits`).
    pub body_budget: Arc<limits::BodyBudget>,
}

/// The whole application's routes. Unknown paths answer 404.
///
/// Layers, outermost first: a token in the query string is refused before anything else (and
/// before the request is traced); then the budget of unauthenticated bodies (`limits`), whose
/// 503s are counted and logged there rather than each traced as a server error; then the body's
/// deadline (`[http] body_timeout`); then tracing; then sessions (the cookie); then CSRF, which
/// reads the session. Every route but the webhooks' has its body
/// extractors (JSON, forms) capped at [`limits::MAX_AUTHENTICATED_BODY_BYTES`]; they run after
/// the credentials are checked, so a request without them is refused before its body is read. Serve it with [`serve::serve`], which puts
/// the client's address in each request (the sign-in handler logs it).
pub fn router(state: AppState) -> Router {
    let sessions = auth::session_layer(&state.config, state.store.clone());
    let routes = Router::new()
        .merge(api::routes())
        .merge(assets::routes())
        .merge(events::routes())
        .merge(logs::routes())
        .merge(actions::routes())
        .merge(badge::routes())
        .merge(history::routes())
        .merge(metrics::routes())
        .merge(pages::routes())
        .merge(login::routes())
        .merge(tokens::routes())
        .layer(DefaultBodyLimit::max(limits::MAX_AUTHENTICATED_BODY_BYTES))
        .merge(hooks::routes().route_layer(middleware::from_fn_with_state(state.clone(), metrics::count_webhook)))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), csrf::protect))
        .layer(sessions)
        .layer(TraceLayer::new_for_http())
        .layer(RequestBodyDeadlineLayer::new(state.config.http.body_timeout))
        .layer(middleware::from_fn_with_state(state.clone(), limits::budget_unauthenticated_bodies))
        .layer(middleware::from_fn(auth::refuse_tokens_in_urls));
    // The security headers go on every answer, a refused token's included.
    headers::add(routes).with_state(state)
}

/// Unknown paths: JSON under `/api/` and `/hooks/`, an HTML page elsewhere.
async fn not_found(uri: Uri) -> Response {
    error_response(uri.path(), HttpError::NotFound(format!("nothing at {}", uri.path())))
}

/// `error` answered the way requests to `path` expect: JSON under `/api/` and `/hooks/`, an HTML
/// page elsewhere.
pub(crate) fn error_response(path: &str, error: HttpError) -> Response {
    if path.starts_with("/api/") || path.starts_with("/hooks/") {
        error.into_response()
    } else {
        pages::PageError(error).into_response()
    }
}

/// A build id from the path; anything that is not one names no build.
fn parse_build_id(raw: &str) -> Result<BuildId, HttpError> {
    raw.parse().map(BuildId).map_err(|_| HttpError::NotFound(format!("no build {raw:?}")))
}

/// The configured repo named in the path.
fn configured_repo<'a>(state: &'a AppState, name: &str) -> Result<&'a RepoConfig, HttpError> {
    state.config.repo(name).ok_or_else(|| HttpError::NotFound(format!("no repo named {name:?}")))
}

/// The build's stored reports summarised, each named after the stage (of `steps`) that wrote it.
fn report_views(steps: &[StepRow], reports: Vec<ReportRow>) -> Vec<ReportView> {
    reports
        .into_iter()
        .map(|report| ReportView {
            stage: steps
                .iter()
                .find(|s| s.idx == report.step_idx)
                .map_or_else(|| format!("step {}", report.step_idx), |s| s.name.clone()),
            summary: parse_junit(&report.content),
            path: report.path,
        })
        .collect()
}

/// What a request that needed the database hears while the database cannot be reached, and when
/// to come back.
pub const DATABASE_UNAVAILABLE: &str = "the database is unavailable; try again shortly";
pub const DATABASE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the state of what it names (re-running a running build).
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The server holds as many request bodies as it will; the answer says when to come back.
    #[error("the server is busy; try again in {} seconds", .0.as_secs())]
    Busy(Duration),
    /// A git remote could not be reached; the detail is logged and shown on the repo's page.
    #[error("fetching the repository failed: {0}")]
    BadGateway(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The session store failed: it carries the database's errors as text.
    #[error("the session store failed: {0}")]
    Session(#[from] tower_sessions::session::Error),
    #[error("{0}")]
    Internal(String),
}

impl HttpError {
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            HttpError::Forbidden(_) => StatusCode::FORBIDDEN,
            HttpError::NotFound(_) => StatusCode::NOT_FOUND,
            HttpError::Conflict(_) => StatusCode::CONFLICT,
            HttpError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            _ if self.database_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::Store(_) | HttpError::Session(_) | HttpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// When a client may try again, for the `Retry-After` of a 503.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpError::Busy(wait) => Some(*wait),
            _ if self.database_unavailable() => Some(DATABASE_RETRY_AFTER),
            _ => None,
        }
    }

    /// Whether the request failed because the database could not be reached.
    fn database_unavailable(&self) -> bool {
        match self {
            HttpError::Store(e) => e.is_unavailable(),
            HttpError::Session(tower_sessions::session::Error::Store(e)) => crate::store::sessions::says_unavailable(e),
            _ => false,
        }
    }

    /// What the client is told: a 4xx says what was wrong; a 5xx is logged here with its cause
    /// and answered with a generic message.
    fn public_message(&self) -> String {
        let status = self.status();
        // Being busy is no fault of the server's: it says so, and a flood of them is not logged.
        if !status.is_server_error() || matches!(self, HttpError::Busy(_)) {
            return self.to_string();
        }
        if self.database_unavailable() {
            tracing::warn!(error = %self, "request failed: the database is unavailable");
            return DATABASE_UNAVAILABLE.to_string();
        }
        tracing::error!(error = %self, status = status.as_u16(), "request failed");
        match self {
            HttpError::BadGateway(_) => "fetching the repository failed; see the repo's page".to_string(),
            _ => "internal server error".to_string(),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after();
        let response = (self.status(), axum::Json(json!({ "error": self.public_message() }))).into_response();
        with_retry_after(response, retry_after)
    }
}

/// `response` with a `Retry-After` header of `wait`, when there is one.
pub(crate) fn with_retry_after(mut response: Response, wait: Option<Duration>) -> Response {
    if let Some(wait) = wait {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
    }
    response
}

impl From<crate::scheduler::SchedulerError> for HttpError {
    fn from(error: crate::scheduler::SchedulerError) -> HttpError {
        match error {
            crate::scheduler::SchedulerError::Store(e) => HttpError::Store(e),
            crate::scheduler::SchedulerError::UnknownRepo(name) => {
                HttpError::NotFound(format!("no repo named {name:?}"))
            }
        }
    }
}

/// A unix-milliseconds timestamp as RFC 3339 (`2024-05-01T12:00:00.123Z`), the API's time format.
pub fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}
