//! The dashboard's pages: `/` (repos), `/repos/{repo}` (one page of the history, filtered and
//! paged like the API's, with its stage grid), `/repos/{repo}/tests` (tests across builds),
//! `/builds/{id}` (hosts, test reports with new failures marked, steps and their logs), and the
//! stylesheet.
//!
//! Handlers fill the `web` crate's view models from store rows and let it render; all markup and
//! escaping is the `web` crate's. Every page handler takes [`Reader`] first: without a sign-in (or
//! `public_read`) it redirects to `/login`. A page shows the forms that act (see `actions`) only
//! to members and admins. Errors are shown as an HTML error page with the right status.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use gantry_web::{
    ActionForms, BuildLink, BuildPage, BuildSummary, ErrorPage, GitRef, HistoryFilterView, HistoryNav, HostView,
    LogLineView, Page, PullRequestRef, RepoListPage, RepoPage, RepoSummary, SignedInView, StepSummary, StepView,
    TestHistoryView, TestKeyView, TestRunView, TestsPage, Viewer, CSS, CSS_PATH,
};
use serde::Deserialize;

use super::auth::{AuthUser, Reader};
use super::history::{history_href, repo_segment, HistoryParams, HistoryRequest, TEST_HISTORY_BUILDS, TEST_RUNS_SHOWN};
use super::{configured_repo, parse_build_id, report_views, AppState, HttpError};
use crate::store::{now_ms, BuildId, BuildRow, HistoryPage, HostRow, Newer, RefKind, StepRow, TestHistory};

/// The repo page shows this many builds (fewer with `?limit=`).
pub const REPO_PAGE_BUILDS: u32 = 50;

/// The build page carries this many of the last lines of each step; its script loads the others
/// as the reader scrolls (`GET /api/builds/{id}/lines`), and the raw log has them all.
pub const BUILD_PAGE_LINES_PER_STEP: u32 = 500;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(repo_list))
        .route("/repos/{repo}", get(repo_page))
        .route("/repos/{repo}/tests", get(tests_page))
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
        let retry_after = self.0.retry_after();
        super::with_retry_after(self.page(), retry_after)
    }
}

impl PageError {
    fn page(self) -> Response {
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

/// The forms a page offers `reader`: none unless they may change things.
fn action_forms(reader: &Reader) -> Option<ActionForms> {
    let user = reader.user.as_ref().filter(|user| user.role.may_change_state())?;
    Some(ActionForms { csrf: user.csrf().unwrap_or_default().to_string() })
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
        isolation: h.isolation.clone(),
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
    query: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Html<String>, PageError> {
    let request = HistoryParams::parse(query, REPO_PAGE_BUILDS)?;
    let repo = configured_repo(&state, &name)?;
    let row = state.store.repo(&repo.name).await?;
    let limit = request.limit.unwrap_or(REPO_PAGE_BUILDS);
    let page = state.store.history(&repo.name, &request.filter, request.before, limit).await?;
    let ids: Vec<BuildId> = page.builds.iter().map(|b| b.id).collect();
    let mut steps = state.store.steps_of_builds(&ids).await?;
    let builds = page
        .builds
        .iter()
        .map(|build| {
            // `steps` is ordered like `builds` (newest first), each build's steps in plan order.
            let count = steps.iter().take_while(|s| s.build_id == build.id).count();
            let own: Vec<StepSummary> = steps.drain(..count).map(|s| step_summary(&s)).collect();
            (build_summary(build), own)
        })
        .collect();
    let branches = match state.mirrors.branch_heads(&repo.name).await {
        Ok(heads) => heads.into_keys().collect(),
        Err(error) => {
            tracing::debug!(repo = %repo.name, %error, "no branch names to suggest");
            Vec::new()
        }
    };
    let mut view =
        RepoPage::new(repo.name.clone(), repo.url.to_string(), row.and_then(|r| r.last_error), builds, now_ms());
    view.history = history_nav(&repo.name, &request, &page);
    view.actions = action_forms(&reader);
    view.branches = branches;
    view.forge_notice = state.store.forge_error(&repo.name).await?.map(|(error, _)| error);
    render(&view, &reader)
}

/// The filter form's values and the links to the pages beside `page`.
fn history_nav(repo: &str, request: &HistoryRequest, page: &HistoryPage) -> HistoryNav {
    let path = format!("/repos/{}", repo_segment(repo));
    let filter = &request.filter;
    let href = |before: Option<BuildId>| history_href(&path, filter, before, request.limit);
    let active = filter.branch.is_some() || filter.status.is_some() || filter.trigger.is_some();
    HistoryNav {
        filter: HistoryFilterView {
            branch: filter.branch.clone().unwrap_or_default(),
            status: filter.status.map(|s| s.as_str().to_string()).unwrap_or_default(),
            trigger: filter.trigger.map(|t| t.as_str().to_string()).unwrap_or_default(),
        },
        older_href: page.older.map(|before| href(Some(before))),
        newer_href: page.newer.map(|newer| match newer {
            Newer::First => href(None),
            Newer::Before(before) => href(Some(before)),
        }),
        newest_href: matches!(page.newer, Some(Newer::Before(_))).then(|| href(None)),
        clear_href: active.then(|| path.clone()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestsPageQuery {
    flaky: Option<bool>,
}

async fn tests_page(
    reader: Reader,
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<TestsPageQuery>, QueryRejection>,
) -> Result<Html<String>, PageError> {
    let Query(query) = query.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    let repo = configured_repo(&state, &name)?;
    let flaky_only = query.flaky.unwrap_or(false);
    let tests = state.store.test_history(&repo.name, TEST_HISTORY_BUILDS, TEST_RUNS_SHOWN, flaky_only).await?;
    let page = TestsPage {
        repo: repo.name.clone(),
        tests: tests.into_iter().map(test_view).collect(),
        flaky_only,
        builds_looked_at: TEST_HISTORY_BUILDS,
        now_ms: now_ms(),
    };
    render(&page, &reader)
}

fn test_view(test: TestHistory) -> TestHistoryView {
    TestHistoryView {
        key: TestKeyView { stage: test.key.stage, classname: test.key.classname, name: test.key.name },
        flaky: test.flaky,
        runs: test
            .runs
            .into_iter()
            .map(|run| TestRunView {
                build_id: run.build.0,
                number: run.number,
                commit: run.commit,
                branch: run.branch,
                outcome: run.outcome.as_str().to_string(),
                duration_ms: run.duration_ms,
                message: run.message,
            })
            .collect(),
    }
}

/// Another build of the store as a link, when it exists.
async fn build_link(state: &AppState, id: BuildId) -> Result<Option<BuildLink>, PageError> {
    Ok(state.store.build(id).await?.map(|b| BuildLink { id: b.id.0, number: b.number }))
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
        let total = counts.iter().find(|(idx, _)| *idx == step.idx).map_or(0, |(_, n)| *n);
        let from = (total - i64::from(BUILD_PAGE_LINES_PER_STEP) + 1).max(1);
        let lines = if total == 0 {
            Vec::new()
        } else {
            state.store.step_lines(id, step.idx, from, BUILD_PAGE_LINES_PER_STEP).await?
        };
        steps.push(StepView {
            step: step_summary(&step),
            omitted_lines: u64::try_from(total).unwrap_or(0).saturating_sub(lines.len() as u64),
            log: lines
                .into_iter()
                .map(|l| LogLineView { number: l.line, at_ms: l.at, stream: l.stream, text: l.text })
                .collect(),
        });
    }
    let commit_message = match build.commit.parse() {
        Ok(oid) => state.mirrors.commit_message(&build.repo, oid).await.unwrap_or_else(|error| {
            tracing::warn!(build = %id, %error, "cannot read the commit message");
            None
        }),
        Err(_) => None,
    };
    let rerun_of = match build.rerun_of {
        Some(of) => build_link(&state, of).await?,
        None => None,
    };
    let (compared_with, new_failures) = match reports.iter().any(|r| !r.summary.failing.is_empty()) {
        true => match state.store.new_failures(&build).await? {
            Some((previous, new)) => (
                build_link(&state, previous).await?,
                new.into_iter().map(|k| TestKeyView { stage: k.stage, classname: k.classname, name: k.name }).collect(),
            ),
            None => (None, Vec::new()),
        },
        false => (None, Vec::new()),
    };
    let page = BuildPage {
        build: build_summary(&build),
        commit_message,
        error: build.error.clone(),
        hosts: hosts.iter().map(host_view).collect(),
        steps,
        reports,
        now_ms: now_ms(),
        actions: action_forms(&reader),
        rerun_of,
        compared_with,
        new_failures,
    };
    render(&page, &reader)
}
