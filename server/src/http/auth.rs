//! Who may do what, decided in one place: the extractors every handler takes ([`Reader`],
//! [`SignedIn`], [`Member`], [`Admin`]), the session cookie's settings, and the refusal of
//! tokens in URLs.
//!
//! A request is identified by an API token (`Authorization: Bearer gantry_…`, looked up by its
//! SHA-256 together with its owner) or by the session cookie (the session names a user id; the
//! user's row is read again on every request, so a removed user is signed out at once and a
//! changed role applies at once). A state-changing handler takes [`Member`] or [`Admin`] as its
//! *first* argument, so a request without credentials is refused before its body is read; a
//! handler without one of these extractors cannot know who is asking. Webhooks authenticate by
//! their signatures (`hooks`) and `/login` and `/static` are public: none of them takes one.
//!
//! Refusals: the API answers 401 with `WWW-Authenticate: Bearer` and a JSON error; a page asked
//! for without signing in redirects (303) to `/login?next=PATH`; a read-only user trying to
//! change something gets 403. CSRF is `csrf`'s job, a layer over the whole router.

use std::time::Duration;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use tokio_util::sync::CancellationToken;
use tower_sessions::cookie::SameSite;
use tower_sessions::session::Expiry;
use tower_sessions::{ExpiredDeletion, Session, SessionManagerLayer};

use super::pages::PageError;
use super::{error_response, AppState, HttpError};
use crate::auth::token;
use crate::config::Config;
use crate::store::sessions::USER_ID_KEY;
use crate::store::tokens::LAST_USED_RESOLUTION;
use crate::store::{now_ms, Role, Store, TokenId, UserId, UserRow};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "gantry_session";

/// The session key holding the session's CSRF token.
pub const CSRF_KEY: &str = "csrf";

/// How long the anonymous session `GET /login` makes (to hold the form's CSRF token) lives.
pub const LOGIN_FORM_TTL: Duration = Duration::from_secs(60 * 60);

/// How often expired sessions are deleted from the store.
pub const SESSION_SWEEP_EVERY: Duration = Duration::from_secs(10 * 60);

/// Query parameters that carry tokens elsewhere; a request naming one is refused, because URLs
/// end up in logs, browser histories and `Referer` headers.
pub const TOKEN_QUERY_PARAMETERS: [&str; 3] = ["access_token", "token", "private_token"];

/// The session cookie: `gantry_session`, HttpOnly, SameSite=Lax, Secure when the public URL is
/// https; a session lasts `[auth] session_ttl` from when it was last written (signing in).
pub fn session_layer(config: &Config, store: Store) -> SessionManagerLayer<Store> {
    let ttl = time::Duration::try_from(config.auth.session_ttl).unwrap_or(time::Duration::days(366));
    SessionManagerLayer::new(store)
        .with_name(SESSION_COOKIE)
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(config.public_url.as_ref().is_some_and(|url| url.is_https()))
        .with_path("/")
        .with_expiry(Expiry::OnInactivity(ttl))
}

/// Delete expired sessions every [`SESSION_SWEEP_EVERY`] until `shutdown` (an expired session is
/// never loaded meanwhile; this only keeps the table small).
pub async fn sweep_expired_sessions(store: Store, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SESSION_SWEEP_EVERY) => {}
        }
        if let Err(error) = store.delete_expired().await {
            tracing::warn!(%error, "deleting expired sessions failed");
        }
    }
}

/// A signed-in user, as this request identified them.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: UserId,
    pub name: String,
    pub role: Role,
    pub via: Via,
}

/// How a request proved who it is.
#[derive(Debug, Clone)]
pub enum Via {
    /// The session cookie; the session's CSRF token is what its forms carry.
    Session { csrf: String },
    /// An API token.
    Token(TokenId),
}

impl AuthUser {
    fn new(user: UserRow, via: Via) -> AuthUser {
        AuthUser { id: user.id, name: user.name, role: user.role, via }
    }

    /// The session's CSRF token, when the request came with the session cookie.
    pub fn csrf(&self) -> Option<&str> {
        match &self.via {
            Via::Session { csrf } => Some(csrf),
            Via::Token(_) => None,
        }
    }
}

/// Anyone who may read: a signed-in user or token, or anybody when `[auth] public_read` is on.
pub struct Reader {
    pub user: Option<AuthUser>,
}

/// Any signed-in user or token, whatever the role.
pub struct SignedIn(pub AuthUser);

/// A member or an admin: may queue, cancel and re-run builds and manage their own tokens.
pub struct Member(pub AuthUser);

/// An admin.
pub struct Admin(pub AuthUser);

impl FromRequestParts<AppState> for Reader {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Reader, AuthRejection> {
        match authenticate(parts, state).await? {
            Some(user) => Ok(Reader { user: Some(user) }),
            None if state.config.auth.public_read => Ok(Reader { user: None }),
            None => Err(AuthRejection::new(parts, Refusal::SignInRequired)),
        }
    }
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<SignedIn, AuthRejection> {
        signed_in(parts, state).await.map(SignedIn)
    }
}

impl FromRequestParts<AppState> for Member {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Member, AuthRejection> {
        let user = signed_in(parts, state).await?;
        if !user.role.may_change_state() {
            let message = format!("{} is a read-only user and may not change anything", user.name);
            return Err(AuthRejection::new(parts, Refusal::Forbidden(message)));
        }
        Ok(Member(user))
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Admin, AuthRejection> {
        let user = signed_in(parts, state).await?;
        if user.role != Role::Admin {
            let message = format!("only an admin may do this; {} is a {}", user.name, user.role);
            return Err(AuthRejection::new(parts, Refusal::Forbidden(message)));
        }
        Ok(Admin(user))
    }
}

async fn signed_in(parts: &mut Parts, state: &AppState) -> Result<AuthUser, AuthRejection> {
    authenticate(parts, state).await?.ok_or_else(|| AuthRejection::new(parts, Refusal::SignInRequired))
}

/// The user a request's credentials name: its bearer token if it has an `Authorization` header
/// (which must then be a valid one), else its session; `None` without either.
async fn authenticate(parts: &Parts, state: &AppState) -> Result<Option<AuthUser>, AuthRejection> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let Some(presented) = presented else {
            return Err(AuthRejection::new(parts, Refusal::BadCredentials("use Authorization: Bearer TOKEN")));
        };
        if !token::looks_like_token(presented) {
            return Err(AuthRejection::new(parts, Refusal::BadCredentials("unknown or revoked token")));
        }
        let owner = state.store.token_user(&token::hash(presented)).await.map_err(|e| internal(parts, e.into()))?;
        let Some(owner) = owner else {
            return Err(AuthRejection::new(parts, Refusal::BadCredentials("unknown or revoked token")));
        };
        note_token_use(&state.store, owner.token, owner.last_used_at);
        return Ok(Some(AuthUser::new(owner.user, Via::Token(owner.token))));
    }
    let Some(session) = parts.extensions.get::<Session>() else { return Ok(None) };
    let session_error = |e: tower_sessions::session::Error| internal(parts, e.into());
    let Some(user_id) = session.get::<i64>(USER_ID_KEY).await.map_err(session_error)? else {
        return Ok(None);
    };
    let Some(user) = state.store.user(UserId(user_id)).await.map_err(|e| internal(parts, e.into()))? else {
        return Ok(None);
    };
    let csrf = session.get::<String>(CSRF_KEY).await.map_err(session_error)?.unwrap_or_default();
    Ok(Some(AuthUser::new(user, Via::Session { csrf })))
}

/// Record a token's use when its `last_used_at` is older than [`LAST_USED_RESOLUTION`], in the
/// background: the request does not wait for the write.
fn note_token_use(store: &Store, token: TokenId, last_used_at: Option<i64>) {
    let resolution = i64::try_from(LAST_USED_RESOLUTION.as_millis()).unwrap_or(i64::MAX);
    if last_used_at.is_some_and(|at| now_ms().saturating_sub(at) < resolution) {
        return;
    }
    let store = store.clone();
    tokio::spawn(async move {
        if let Err(error) = store.touch_token(token).await {
            tracing::warn!(%token, %error, "recording a token's use failed");
        }
    });
}

fn internal(parts: &Parts, error: HttpError) -> AuthRejection {
    AuthRejection::new(parts, Refusal::Internal(error))
}

/// Why a request was refused.
#[derive(Debug)]
pub enum Refusal {
    /// No credentials, where some are needed.
    SignInRequired,
    /// A token (or `Authorization` header) that does not identify anybody.
    BadCredentials(&'static str),
    /// Signed in, but the role does not allow this.
    Forbidden(String),
    Internal(HttpError),
}

/// A refusal, answered the way the surface it happened on expects.
#[derive(Debug)]
pub struct AuthRejection {
    refusal: Refusal,
    /// The request was to the JSON API (JSON answers, no redirects).
    api: bool,
    /// For a page read without signing in: where to come back to after signing in.
    next: Option<String>,
}

impl AuthRejection {
    fn new(parts: &Parts, refusal: Refusal) -> AuthRejection {
        let path = parts.uri.path();
        let api = path.starts_with("/api/");
        let reading = parts.method == Method::GET || parts.method == Method::HEAD;
        let next = (!api && reading).then(|| parts.uri.path_and_query().map_or(path, |p| p.as_str()).to_string());
        AuthRejection { refusal, api, next }
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let (error, challenge) = match self.refusal {
            Refusal::SignInRequired => {
                if let Some(next) = self.next {
                    return Redirect::to(&login_url(&next)).into_response();
                }
                (
                    HttpError::Unauthorized("sign in, or send an API token as Authorization: Bearer TOKEN".into()),
                    "Bearer",
                )
            }
            Refusal::BadCredentials(why) => {
                (HttpError::Unauthorized(why.to_string()), "Bearer error=\"invalid_token\"")
            }
            Refusal::Forbidden(why) => (HttpError::Forbidden(why), ""),
            Refusal::Internal(error) => (error, ""),
        };
        if !self.api {
            return PageError(error).into_response();
        }
        let mut response = error.into_response();
        if response.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

/// `/login?next=PATH`, PATH percent-encoded.
pub fn login_url(next: &str) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new()).append_pair("next", next).finish();
    format!("/login?{query}")
}

/// A redirect target after signing in: a path on this server (`/…` but not `//…`, which browsers
/// read as another host), in visible ASCII without `\\` (a `Location` header carries nothing
/// else); anything else is `/`.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next)
            if next.starts_with('/')
                && !next.starts_with("//")
                && next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            next.to_string()
        }
        _ => "/".to_string(),
    }
}

/// Refuse, before anything else, a request that carries a token in its query string: the token
/// is already in somebody's logs; the answer says where tokens go. The query itself is never
/// logged.
pub async fn refuse_tokens_in_urls(request: Request, next: Next) -> Response {
    let named = request.uri().query().is_some_and(|query| {
        form_urlencoded::parse(query.as_bytes())
            .any(|(name, _)| TOKEN_QUERY_PARAMETERS.iter().any(|p| p.eq_ignore_ascii_case(&name)))
    });
    if named {
        let error = HttpError::BadRequest(
            "tokens go in the Authorization header (Authorization: Bearer TOKEN), never in the URL".to_string(),
        );
        return error_response(request.uri().path(), error);
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_on_this_server_are_followed_after_signing_in() {
        for good in ["/", "/builds/7", "/repos/shop?x=1#top", "/settings/tokens"] {
            assert_eq!(safe_next(Some(good)), good);
        }
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "javascript:alert(1)",
            "",
            "builds/7",
            "/a\r\nSet-Cookie: x=1",
            "/a\\b",
            "/é",
            "/a b",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn the_login_url_encodes_where_to_come_back_to() {
        assert_eq!(login_url("/builds/7?stage=a b&x=1"), "/login?next=%2Fbuilds%2F7%3Fstage%3Da+b%26x%3D1");
    }
}
