//! `GET /metrics`: the server's metrics in the Prometheus text format (contract §4), and the
//! layer over the webhook route that counts deliveries by the status code they were answered
//! with.
//!
//! Metrics are a read like any other (contract §5): they take [`Reader`], so a Prometheus server
//! scrapes with an API token (`authorization: { credentials_file: … }` in its scrape config), or
//! with none when `public_read` is on. The numbers and their encoding are `crate::metrics`'; this
//! module reads the states it needs from the store and answers.

use std::collections::BTreeMap;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::auth::Reader;
use super::{AppState, HttpError};
use crate::metrics::{Snapshot, CONTENT_TYPE};

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(_: Reader, State(state): State<AppState>) -> Result<Response, HttpError> {
    let live_builds = state.store.live_build_counts().await?;
    let mut hosts_alive: BTreeMap<String, i64> = BTreeMap::new();
    for host in state.store.hosts_not_torn_down().await? {
        *hosts_alive.entry(host.provider).or_default() += 1;
    }
    let mut providers: Vec<String> = state.config.repos.iter().map(|r| r.provider.as_str().to_string()).collect();
    providers.sort();
    providers.dedup();
    let snapshot = Snapshot { live_builds, hosts_alive: hosts_alive.into_iter().collect(), providers };
    let text = state.scheduler.metrics().encode(&snapshot);
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// Count a webhook delivery by the status code it is answered with, whatever answered it (the
/// handler, or a refusal before it).
pub(super) async fn count_webhook(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    state.scheduler.metrics().webhook_answered(response.status().as_u16());
    response
}
