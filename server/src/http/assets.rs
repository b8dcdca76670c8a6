//! The dashboard's static assets besides the stylesheet (`pages` serves that one): the script
//! that makes pages live (`/static/gantry.js`) and the stylesheet of log colours
//! (`/static/ansi.css`, generated from the palette by `gantry_web::ansi`).
//!
//! They are public, like the stylesheet and the sign-in form: they carry no data. They are files
//! because the Content-Security-Policy allows no inline script or style.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use gantry_web::{ANSI_CSS_PATH, JS, JS_PATH};

use super::AppState;

/// The log colours' stylesheet, generated once.
static ANSI_CSS: LazyLock<String> = LazyLock::new(gantry_web::ansi::palette_css);

pub(super) fn routes() -> Router<AppState> {
    Router::new().route(JS_PATH, get(script)).route(ANSI_CSS_PATH, get(ansi_css))
}

async fn script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], JS)
}

async fn ansi_css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], ANSI_CSS.as_str())
}
