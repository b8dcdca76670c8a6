//! The security headers every response carries, pages, API answers, errors and the stylesheet
//! alike: a Content-Security-Policy that allows no inline script or style and no framing, no
//! MIME sniffing, and no referrer sent to other sites.
//!
//! This module owns their values and adds them as one tower-http layer stack around the whole
//! router. A handler that sets one of these headers itself keeps its own value. It must not
//! decide who may see what (that is the sign-in's business).

use axum::http::{header, HeaderName, HeaderValue};
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

/// Only this server's own scripts, styles and images (and `data:` images) load; no page may
/// frame the dashboard, rewrite its base URL or post its forms elsewhere. The templates therefore
/// carry no inline `<script>`, `<style>` or `style=`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Every security header and its value.
pub const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "same-origin"),
    // For browsers older than `frame-ancestors`.
    (header::X_FRAME_OPTIONS, "DENY"),
];

/// `router` with the security headers on every response it gives, its fallback's included.
pub fn add<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    SECURITY_HEADERS.into_iter().fold(router, |router, (name, value)| {
        router.layer(SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value)))
    })
}
