//! The dashboard's pages: `/` (repos), `/repos/{repo}` (history and stage grid), `/builds/{id}`
//! (hosts, test reports, steps and their logs), and the stylesheet.
//!
//! Handlers fill the `web` crate's view models from store rows and let it render; all markup and
//! escaping is the `web` crate's. Every page handler takes [`Reader`] first: without a sign-in (or
//! `public_read`) it redirects to `/login`. Errors are shown as an HTML error page with the right
//! status.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use gantry_web::{
    BuildPage, BuildSummary, ErrorPage, GitRef, HostView, LogLineView, Page, PullRequestRef, RepoListPage, RepoPage,
    RepoSummary, SignedInView, StepSummary, StepView, Viewer, CSS, CSS_PATH,
};

use super::auth::{AuthUser, Reader};
use super::{configured_repo, parse_build_id, report_views, AppState, HttpError};
use crate::store::{now_ms, BuildRow, HostRow, RefKind, StepRow};

/// The repo page shows this many of the newest builds.
pub const REPO_PAGE_BUILDS: u32 = 50;

/// The build page shows at most this many of the last lines of each step; the raw log has all.
pub const BUILD_PAGE_LINES_PER_STEP: u32 = 2000;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(repo_list))
        .route("/repos/{repo}", get(repo_page))
        .route("/builds/{id}", get(build_page))
        .route(CSS_PATH, get(stylesheet))
}

/// An error shown as a page.
pub(super) struct PageError(pub HttpError);

impl From<HttpError> for PageError {
    fn from(error: HttpError) -> PageError {
        PageError(error)
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(error: crate::store::StoreError) -> PageError {
        PageError(HttpError::Store(error))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let page = ErrorPage {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            message: self.0.public_message(),
        };
        // An error may come before anyone was identified: its top bar names nobody.
        match page.render(&Viewer::Unknown) {
            Ok(html) => (status, Html(html)).into_response(),
            Err(error) => {
                tracing::error!(%error, "rendering the error page failed");
                status.into_response()
            }
        }
    }
}

fn render(page: &impl Page, reader: &Reader) -> Result<Html<String>, PageError> {
    page.render(&viewer(reader.user.as_ref()))
        .map(Html)
        .map_err(|e| PageError(HttpError::Internal(format!("rendering a page failed: {e}"))))
}

/// Who the top bar shows: the user (with the sign-out form's token when signed in by the session
/// cookie), or the offer to sign in.
pub(super) fn viewer(user: Option<&AuthUser>) -> Viewer {
    match user {
        Some(user) => Viewer::SignedIn(SignedInView {
            name: user.name.clone(),
            role: user.role.as_str().to_string(),
            csrf: user.csrf().map(str::to_string),
        }),
        None => Viewer::Anonymous,
    }
}

async fn stylesheet() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS)
}

fn build_summary(b: &BuildRow) -> BuildSummary {
    BuildSummary {
        id: b.id.0,
        repo: b.repo.clone(),
        number: b.number,
        status: b.status,
        git_ref: match (b.ref_kind, &b.pull_request) {
            (RefKind::Tag, _) => GitRef::Tag(b.branch.clone()),
            (RefKind::PullRequest, Some(pr)) => {
                GitRef::PullRequest(PullRequestRef::new(pr.number, pr.source.clone(), pr.target.clone()))
            }
            (RefKind::Branch | RefKind::PullRequest, _) => GitRef::Branch(b.branch.clone()),
        },
        commit: b.commit.clone(),
        trigger: b.trigger.as_str().to_string(),
        created_at_ms: b.created_at,
        started_at_ms: b.started_at,
        finished_at_ms: b.finished_at,
    }
}

fn step_summary(s: &StepRow) -> StepSummary {
    StepSummary {
        index: s.idx,
        kind: s.kind,
        name: s.name.clone(),
        host: s.host.clone(),
        status: s.status,
        exit_code: s.exit_code,
        started_at_ms: s.started_at,
        finished_at_ms: s.finished_at,
    }
}

fn host_view(h: &HostRow) -> HostView {
    HostView {
        role: h.role.clone(),
        provider: h.provider.clone(),
        provider_id: h.provider_id.clone(),
        address: h.address.map(|a| a.to_string()),
        state: h.state.as_str().to_string(),
        provisioned_at_ms: h.provisioned_at,
        torn_down_at_ms: h.torn_down_at,
        provision_ms: h.provision_ms,
        teardown_ms: h.teardown_ms,
        error: h.error.clone(),
    }
}

async fn repo_list(reader: Reader, State(state): State<AppState>) -> Result<Html<String>, PageError> {
    let mut repos = Vec::with_capacity(state.config.repos.len());
    for repo in &state.config.repos {
        let row = state.store.repo(&repo.name).await?;
        let last_build = state.store.last_build_of_repo(&repo.name).await?;
        repos.push(RepoSummary {
            name: repo.name.clone(),
            url: repo.url.to_string(),
            last_build: last_build.as_ref().map(build_summary),
            last_error: row.and_then(|r| r.last_error),
        });
    }
    render(&RepoListPage { repos, now_ms: now_ms() }, &reader)
}

async fn repo_page(
    reader: Reader,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Html<String>, PageError> {
    let repo = configured_repo(&state, &name)?;
    let row = state.store.repo(&repo.name).await?;
    let builds = state.store.builds_of_repo(&repo.name, REPO_PAGE_BUILDS).await?;
    let mut steps = state.store.steps_of_recent_builds(&repo.name, REPO_PAGE_BUILDS).await?;
    let builds = builds
        .iter()
        .map(|build| {
            // `steps` is ordered like `builds` (newest first), each build's steps in plan order.
            let count = steps.iter().take_while(|s| s.build_id == build.id).count();
            let own: Vec<StepSummary> = steps.drain(..count).map(|s| step_summary(&s)).collect();
            (build_summary(build), own)
        })
        .collect();
    let mut page =
        RepoPage::new(repo.name.clone(), repo.url.to_string(), row.and_then(|r| r.last_error), builds, now_ms());
    page.forge_notice = state.store.forge_error(&repo.name).await?.map(|(error, _)| error);
    render(&page, &reader)
}

async fn build_page(
    reader: Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let id = parse_build_id(&id)?;
    let build = state.store.build(id).await?.ok_or_else(|| HttpError::NotFound(format!("no build {id}")))?;
    let hosts = state.store.hosts_of_build(id).await?;
    let counts = state.store.log_line_counts(id).await?;
    let step_rows = state.store.steps(id).await?;
    let reports = report_views(&step_rows, state.store.reports(id).await?);
    let mut steps = Vec::new();
    for step in step_rows {
        let lines = state.store.log_lines(id, Some(step.idx), Some(BUILD_PAGE_LINES_PER_STEP)).await?;
        let total = counts.iter().find(|(idx, _)| *idx == step.idx).map_or(0, |(_, n)| *n);
        steps.push(StepView {
            step: step_summary(&step),
            omitted_lines: u64::try_from(total).unwrap_or(0).saturating_sub(lines.len() as u64),
            log: lines.into_iter().map(|l| LogLineView { at_ms: l.at, stream: l.stream, text: l.text }).collect(),
        });
    }
    let commit_message = match build.commit.parse() {
        Ok(oid) => state.mirrors.commit_message(&build.repo, oid).await.unwrap_or_else(|error| {
            tracing::warn!(build = %id, %error, "cannot read the commit message");
            None
        }),
        Err(_) => None,
    };
    let page = BuildPage {
        build: build_summary(&build),
        commit_message,
        error: build.error.clone(),
        hosts: hosts.iter().map(host_view).collect(),
        steps,
        reports,
        now_ms: now_ms(),
    };
    render(&page, &reader)
}
