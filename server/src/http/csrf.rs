//! Cross-site request forgery protection, written once as a layer over the whole router.
//!
//! A state-changing request (POST, PUT, PATCH, DELETE) that a browser could send on its own, with
//! the session cookie attached, must prove it comes from one of our pages:
//!
//! 1. a cross-site request (`Sec-Fetch-Site: cross-site`, or an `Origin` that is neither this
//!    server's public URL nor the host it was sent to) is refused with 403;
//! 2. a request carrying the session cookie must carry the session's CSRF token (synchronizer
//!    token pattern), in the `X-CSRF-Token` header or the `csrf` field of a form body; the form
//!    body is read (at most [`MAX_FORM_BYTES`]) and handed on intact. `POST /login` is checked
//!    the same way against the anonymous session `GET /login` made.
//!
//! Requests with an `Authorization` header (API tokens: a browser never adds one by itself) and
//! webhooks (`/hooks/*`, signed by the forge) are not checked here. Tokens are compared in
//! constant time.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use subtle::ConstantTimeEq;
use tower_sessions::Session;

use super::auth::{CSRF_KEY, SESSION_COOKIE};
use super::{error_response, AppState, HttpError};
use crate::config::Config;

/// The header a script (or a page's fetch) sends the token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The form field the token travels in; the templates name it too.
pub const CSRF_FIELD: &str = gantry_web::CSRF_FIELD;

/// The largest form body read to find the token; larger forms are refused with 413. Gantry's
/// forms are a few hundred bytes.
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// Random bytes in a CSRF token.
pub const CSRF_TOKEN_BYTES: usize = 32;

/// The path of the sign-in form, checked although it comes before anyone is signed in.
pub const LOGIN_PATH: &str = "/login";

/// A new random CSRF token.
pub fn new_token() -> String {
    let mut random = [0u8; CSRF_TOKEN_BYTES];
    getrandom::fill(&mut random).expect("the system's random source works");
    URL_SAFE_NO_PAD.encode(random)
}

/// Whether `presented` is `expected`, in time independent of where they differ.
pub fn tokens_match(expected: &str, presented: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// The middleware: see the module's description.
pub async fn protect(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    if is_safe(request.method()) || path.starts_with("/hooks/") || request.headers().contains_key(header::AUTHORIZATION)
    {
        return next.run(request).await;
    }
    if let Some(why) = cross_site(request.headers(), &state.config) {
        tracing::warn!(path = %path, why, "cross-site request refused");
        return error_response(&path, HttpError::Forbidden(format!("cross-site request refused: {why}")));
    }
    if !has_session_cookie(request.headers()) && path != LOGIN_PATH {
        // Nothing a forged request could ride on; the handler's extractor asks for credentials.
        return next.run(request).await;
    }
    let expected = match request.extensions().get::<Session>() {
        Some(session) => match session.get::<String>(CSRF_KEY).await {
            Ok(token) => token,
            Err(error) => return error_response(&path, HttpError::Session(error)),
        },
        None => None,
    };
    let (request, presented) = match presented_token(request).await {
        Ok(found) => found,
        Err(error) => return error_response(&path, error),
    };
    match (expected, presented) {
        (Some(expected), Some(presented)) if tokens_match(&expected, &presented) => next.run(request).await,
        _ => error_response(
            &path,
            HttpError::Forbidden(
                "the form's security token is missing or out of date: reload the page and try again".to_string(),
            ),
        ),
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// Why the request is cross-site, if it is.
fn cross_site(headers: &HeaderMap, config: &Config) -> Option<&'static str> {
    if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")) {
        return Some("Sec-Fetch-Site is cross-site");
    }
    let origin = headers.get(header::ORIGIN)?;
    let Ok(origin) = origin.to_str() else { return Some("the Origin header is not text") };
    let origin = origin.to_ascii_lowercase();
    let public = config.public_url.as_ref().is_some_and(|url| url.origin() == origin);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_ascii_lowercase);
    let same_host = host.is_some_and(|host| origin == format!("http://{host}") || origin == format!("https://{host}"));
    (!public && !same_host).then_some("the Origin is not this server")
}

fn has_session_cookie(headers: &HeaderMap) -> bool {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).any(|cookies| {
        cookies
            .split(';')
            .any(|cookie| cookie.trim_start().split_once('=').is_some_and(|(name, _)| name == SESSION_COOKIE))
    })
}

/// The token the request presents (header first, then a form field), and the request, whose
/// body is intact.
async fn presented_token(request: Request) -> Result<(Request, Option<String>), HttpError> {
    if let Some(value) = request.headers().get(CSRF_HEADER) {
        let token = value.to_str().ok().map(str::to_string);
        return Ok((request, token));
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Ok((request, None));
    }
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FORM_BYTES as u64) {
        return Err(HttpError::PayloadTooLarge(MAX_FORM_BYTES));
    }
    let (parts, body) = request.into_parts();
    let bytes =
        axum::body::to_bytes(body, MAX_FORM_BYTES).await.map_err(|_| HttpError::PayloadTooLarge(MAX_FORM_BYTES))?;
    let token =
        form_urlencoded::parse(&bytes).find(|(name, _)| name == CSRF_FIELD).map(|(_, value)| value.into_owned());
    Ok((Request::from_parts(parts, Body::from(bytes)), token))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let token = new_token();
        assert_eq!(token.len(), 43);
        assert_ne!(token, new_token());
        assert!(tokens_match(&token, &token.clone()));
        assert!(!tokens_match(&token, &token[..42]));
        assert!(!tokens_match(&token, ""));
        assert!(!tokens_match("", ""), "an empty expected token matches nothing");
    }

    #[test]
    fn a_request_from_another_origin_is_cross_site() {
        let config = Config::from_toml_str("public_url = \"https://ci.example.com\"\n").unwrap();
        let local = Config::default();
        let own = [("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")];
        assert_eq!(cross_site(&headers(&own), &local), None);
        assert_eq!(cross_site(&headers(&[("host", "127.0.0.1:8080")]), &local), None, "no Origin: nothing to judge");
        assert_eq!(cross_site(&headers(&[("host", "x"), ("origin", "https://CI.example.com")]), &config), None);
        assert_eq!(cross_site(&headers(&[("host", "x"), ("sec-fetch-site", "same-origin")]), &local), None);
        for bad in [
            vec![("host", "127.0.0.1:8080"), ("origin", "http://evil.example")],
            vec![("host", "127.0.0.1:8080"), ("origin", "null")],
            vec![("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8081")],
            vec![("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")],
        ] {
            assert!(cross_site(&headers(&bad), &local).is_some(), "{bad:?}");
        }
        let evil = [("host", "ci.example.com"), ("origin", "https://evil.example")];
        assert!(cross_site(&headers(&evil), &config).is_some());
    }

    #[test]
    fn only_the_session_cookie_counts() {
        assert!(has_session_cookie(&headers(&[("cookie", "a=1; gantry_session=xyz")])));
        assert!(has_session_cookie(&headers(&[("cookie", "a=1"), ("cookie", "gantry_session=xyz")])));
        assert!(!has_session_cookie(&headers(&[("cookie", "not_gantry_session=1; gantry_sessionx=2")])));
        assert!(!has_session_cookie(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn the_form_token_is_found_and_the_body_handed_on_intact() {
        let body = "label=ci&csrf=abc%2B1";
        let request = Request::builder()
            .method(Method::POST)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        let (request, token) = presented_token(request).await.unwrap();
        assert_eq!(token.as_deref(), Some("abc+1"));
        let bytes = axum::body::to_bytes(request.into_body(), usize::MAX).await.unwrap();
        assert_eq!(bytes, body.as_bytes());

        let header = Request::builder().method(Method::POST).header(CSRF_HEADER, "h").body(Body::empty()).unwrap();
        assert_eq!(presented_token(header).await.unwrap().1.as_deref(), Some("h"));
        let json = Request::builder().method(Method::POST).body(Body::from("{\"csrf\":\"x\"}")).unwrap();
        assert_eq!(presented_token(json).await.unwrap().1, None);

        let big = Request::builder()
            .method(Method::POST)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("a".repeat(MAX_FORM_BYTES + 1)))
            .unwrap();
        assert!(matches!(presented_token(big).await, Err(HttpError::PayloadTooLarge(_))));
    }
}
