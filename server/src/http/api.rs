//! The JSON API of the contract (§4): repos, their builds (paged newest first with `?before=`
//! and filtered by branch, status and trigger; the next page is also in a `Link` header), one
//! build with its hosts and steps (a build's log is `logs`'s), its JUnit reports summarised
//! (failures that are new since the branch's previous build marked), and queueing, cancelling
//! or re-running a build by hand.
//!
//! Handlers turn store rows into the JSON shapes below and ask the scheduler to queue, cancel or
//! re-run; they never run git or SQL themselves beyond what the scheduler and store offer. Reads
//! take [`Reader`]; queueing, cancelling and re-running take [`Member`] as their first argument,
//! so a request without credentials is refused (401) before its body is read, and a read-only
//! user's with 403. [`queue_manual`] is also what the repo page's build form calls.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gantry_web::ReportView;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::{AuthUser, Member, Reader};
use super::history::{history_href, repo_segment, HistoryParams};
use super::{configured_repo, parse_build_id, report_views, rfc3339, AppState, HttpError};
use crate::config::RepoConfig;
use crate::git::GitError;
use crate::scheduler::{Cancelled, Enqueued, Rerun};
use crate::store::{BuildId, BuildRow, HostRow, NewBuild, RefKind, StepRow, TestKey, Trigger};

/// `GET /api/repos/{repo}/builds` returns this many builds without `?limit=`.
pub const DEFAULT_BUILD_LIST_LIMIT: u32 = 50;

/// The most builds one list request returns.
pub const MAX_BUILD_LIST_LIMIT: u32 = 1000;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/repos", get(list_repos))
        .route("/api/repos/{repo}/builds", get(list_builds).post(queue_build))
        .route("/api/builds/{id}", get(get_build))
        .route("/api/builds/{id}/reports", get(get_reports))
        .route("/api/builds/{id}/cancel", post(cancel_build))
        .route("/api/builds/{id}/rerun", post(rerun_build))
}

#[derive(Debug, Serialize)]
pub struct RepoJson {
    pub name: String,
    pub url: String,
    pub last_build: Option<BuildJson>,
    pub last_error: Option<String>,
    pub last_polled_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BuildJson {
    pub id: i64,
    pub repo: String,
    pub number: i64,
    pub commit: String,
    pub branch: String,
    pub ref_kind: &'static str,
    pub trigger: &'static str,
    pub status: &'static str,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    /// The build this one re-runs.
    pub rerun_of: Option<i64>,
    /// Set when `ref_kind` is `pull_request`; `branch` is then the request's source branch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequestJson>,
}

/// The pull (merge) request a build built the head of.
#[derive(Debug, Serialize)]
pub struct PullRequestJson {
    pub number: i64,
    pub source: String,
    pub target: String,
}

#[derive(Debug, Serialize)]
pub struct BuildDetailJson {
    #[serde(flatten)]
    pub build: BuildJson,
    pub hosts: Vec<HostJson>,
    pub stages: Vec<StageJson>,
}

#[derive(Debug, Serialize)]
pub struct HostJson {
    pub role: String,
    pub provider: String,
    pub address: Option<String>,
    pub state: &'static str,
    pub provisioned_at: Option<String>,
    pub torn_down_at: Option<String>,
    pub provision_ms: Option<i64>,
    pub teardown_ms: Option<i64>,
    pub error: Option<String>,
    /// What kept the host apart from other builds' hosts (`user gantry-host-3, network namespace
    /// of b12`); `null` for hosts not provisioned, or recorded before it was.
    pub isolation: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StageJson {
    pub name: String,
    pub host: String,
    pub kind: &'static str,
    pub status: &'static str,
    pub exit_code: Option<i64>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
}

/// One stage's JUnit report, summarised (see `gantry_web::parse_junit`).
#[derive(Debug, Serialize)]
pub struct ReportJson {
    pub stage: String,
    pub path: String,
    pub tests: u64,
    pub failures: u64,
    pub errors: u64,
    pub skipped: u64,
    /// Why the report could not be read (`not valid JUnit XML: …`); the counts are then zero.
    pub error: Option<String>,
    /// The first failed or errored cases, in file order.
    pub failing: Vec<FailingCaseJson>,
    /// How many more failed or errored cases the report has than `failing` lists.
    pub failing_omitted: u64,
}

#[derive(Debug, Serialize)]
pub struct FailingCaseJson {
    pub classname: String,
    pub name: String,
    pub message: Option<String>,
    pub text: String,
    /// It passed in the previous build of the branch that reported tests.
    pub new_failure: bool,
}

impl From<ReportView> for ReportJson {
    fn from(r: ReportView) -> ReportJson {
        let s = r.summary;
        ReportJson {
            stage: r.stage,
            path: r.path,
            tests: s.tests,
            failures: s.failures,
            errors: s.errors,
            skipped: s.skipped,
            error: s.error,
            failing: s
                .failing
                .into_iter()
                .map(|c| FailingCaseJson {
                    classname: c.classname,
                    name: c.name,
                    message: c.message,
                    text: c.text,
                    new_failure: false,
                })
                .collect(),
            failing_omitted: s.omitted_failing,
        }
    }
}

impl From<&BuildRow> for BuildJson {
    fn from(b: &BuildRow) -> BuildJson {
        BuildJson {
            id: b.id.0,
            repo: b.repo.clone(),
            number: b.number,
            commit: b.commit.clone(),
            branch: b.branch.clone(),
            ref_kind: b.ref_kind.as_str(),
            trigger: b.trigger.as_str(),
            status: b.status.as_str(),
            created_at: rfc3339(b.created_at),
            started_at: b.started_at.map(rfc3339),
            finished_at: b.finished_at.map(rfc3339),
            error: b.error.clone(),
            rerun_of: b.rerun_of.map(|id| id.0),
            pull_request: b.pull_request.as_ref().map(|pr| PullRequestJson {
                number: pr.number,
                source: pr.source.clone(),
                target: pr.target.clone(),
            }),
        }
    }
}

impl From<&HostRow> for HostJson {
    fn from(h: &HostRow) -> HostJson {
        HostJson {
            role: h.role.clone(),
            provider: h.provider.clone(),
            address: h.address.map(|a| a.to_string()),
            state: h.state.as_str(),
            provisioned_at: h.provisioned_at.map(rfc3339),
            torn_down_at: h.torn_down_at.map(rfc3339),
            provision_ms: h.provision_ms,
            teardown_ms: h.teardown_ms,
            error: h.error.clone(),
            isolation: h.isolation.clone(),
        }
    }
}

impl From<&StepRow> for StageJson {
    fn from(s: &StepRow) -> StageJson {
        StageJson {
            name: s.name.clone(),
            host: s.host.clone(),
            kind: s.kind.as_str(),
            status: s.status.as_str(),
            exit_code: s.exit_code,
            started_at: s.started_at.map(rfc3339),
            finished_at: s.finished_at.map(rfc3339),
            duration_ms: s.duration_ms(),
        }
    }
}

async fn list_repos(_: Reader, State(state): State<AppState>) -> Result<Json<Vec<RepoJson>>, HttpError> {
    let mut repos = Vec::with_capacity(state.config.repos.len());
    for repo in &state.config.repos {
        let row = state.store.repo(&repo.name).await?;
        let last_build = state.store.last_build_of_repo(&repo.name).await?;
        repos.push(RepoJson {
            name: repo.name.clone(),
            url: repo.url.to_string(),
            last_build: last_build.as_ref().map(BuildJson::from),
            last_error: row.as_ref().and_then(|r| r.last_error.clone()),
            last_polled_at: row.and_then(|r| r.last_polled_at).map(rfc3339),
        });
    }
    Ok(Json(repos))
}

/// `GET /api/repos/{repo}/builds[?limit=N][&before=ID][&branch=B][&status=S][&trigger=T]`: a
/// page of the repo's builds, newest first. The next older page is `before` the last build's id;
/// a `Link: <…>; rel="next"` header names it while there is one.
async fn list_builds(
    _: Reader,
    State(state): State<AppState>,
    Path(repo): Path<String>,
    query: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Response, HttpError> {
    let request = HistoryParams::parse(query, MAX_BUILD_LIST_LIMIT)?;
    let repo = configured_repo(&state, &repo)?;
    let limit = request.limit.unwrap_or(DEFAULT_BUILD_LIST_LIMIT);
    let page = state.store.history(&repo.name, &request.filter, request.before, limit).await?;
    let builds: Vec<BuildJson> = page.builds.iter().map(BuildJson::from).collect();
    let mut response = Json(builds).into_response();
    if let Some(older) = page.older {
        let path = format!("/api/repos/{}/builds", repo_segment(&repo.name));
        let next = history_href(&path, &request.filter, Some(older), request.limit);
        if let Ok(link) = HeaderValue::from_str(&format!("<{next}>; rel=\"next\"")) {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    Ok(response)
}

/// The body of `POST /api/repos/{repo}/builds`: a branch (its current head is built), a commit,
/// or both (that commit, labelled with that branch).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueRequest {
    branch: Option<String>,
    commit: Option<String>,
}

async fn queue_build(
    Member(user): Member,
    State(state): State<AppState>,
    Path(repo): Path<String>,
    body: Result<Json<QueueRequest>, JsonRejection>,
) -> Result<Response, HttpError> {
    let repo = configured_repo(&state, &repo)?;
    let Json(request) = body.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    let build = queue_manual(&state, repo, &user, request.branch, request.commit).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "build": build.id.0 }))).into_response())
}

/// Queue a manual build of `repo` for `user`: a branch's current head (fetched first), a commit
/// (fetched if missing; labelled with `branch` when given, else with a branch whose head it is),
/// or both.
pub(super) async fn queue_manual(
    state: &AppState,
    repo: &RepoConfig,
    user: &AuthUser,
    branch: Option<String>,
    commit: Option<String>,
) -> Result<BuildRow, HttpError> {
    let (commit, branch) = match (branch, commit) {
        (None, None) => return Err(HttpError::BadRequest("give a \"branch\" or a \"commit\" to build".to_string())),
        (Some(branch), None) => {
            state.scheduler.fetch(repo).await.map_err(|e| HttpError::BadGateway(e.to_string()))?;
            let head = state
                .mirrors
                .resolve_branch(&repo.name, &branch)
                .await
                .map_err(|e| HttpError::Internal(e.to_string()))?
                .ok_or_else(|| HttpError::NotFound(format!("no branch {branch:?} in {}", repo.name)))?;
            (head, branch)
        }
        (branch, Some(commit)) => {
            let oid = state.scheduler.ensure_commit(repo, &commit).await.map_err(|e| match e {
                GitError::BadCommitId { .. } => HttpError::BadRequest(e.to_string()),
                GitError::CommitNotFound { .. } => HttpError::NotFound(e.to_string()),
                GitError::Fetch { .. } => HttpError::BadGateway(e.to_string()),
                other => HttpError::Internal(other.to_string()),
            })?;
            let branch = match branch {
                Some(branch) => branch,
                None => branch_at(state, &repo.name, &oid.to_string()).await?,
            };
            (oid, branch)
        }
    };
    let new = NewBuild {
        repo: repo.name.clone(),
        commit: commit.to_string(),
        branch,
        ref_kind: RefKind::Branch,
        trigger: Trigger::Manual,
    };
    match state.scheduler.enqueue(new, None).await? {
        Enqueued::Queued(build) => {
            tracing::info!(build = %build.id, repo = %build.repo, user = %user.name, "build queued by hand");
            Ok(build)
        }
        Enqueued::DuplicateDelivery => Err(HttpError::Internal("a manual build was taken for a redelivery".into())),
    }
}

/// A branch whose head is `commit`, for a build asked for by commit alone; `""` when none is.
async fn branch_at(state: &AppState, repo: &str, commit: &str) -> Result<String, HttpError> {
    let heads = state.mirrors.branch_heads(repo).await.map_err(|e| HttpError::Internal(e.to_string()))?;
    Ok(heads.into_iter().find(|(_, head)| head == commit).map(|(branch, _)| branch).unwrap_or_default())
}

async fn get_build(
    _: Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<BuildDetailJson>, HttpError> {
    let id = parse_build_id(&id)?;
    let build = state.store.build(id).await?.ok_or_else(|| HttpError::NotFound(format!("no build {id}")))?;
    let hosts = state.store.hosts_of_build(id).await?;
    let steps = state.store.steps(id).await?;
    Ok(Json(BuildDetailJson {
        build: BuildJson::from(&build),
        hosts: hosts.iter().map(HostJson::from).collect(),
        stages: steps.iter().map(StageJson::from).collect(),
    }))
}

async fn get_reports(
    _: Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<ReportJson>>, HttpError> {
    let id = parse_build_id(&id)?;
    let build = state.store.build(id).await?.ok_or_else(|| HttpError::NotFound(format!("no build {id}")))?;
    let steps = state.store.steps(id).await?;
    let reports = report_views(&steps, state.store.reports(id).await?);
    let new = if reports.iter().any(|r| !r.summary.failing.is_empty()) {
        state.store.new_failures(&build).await?.map(|(_, new)| new).unwrap_or_default()
    } else {
        Default::default()
    };
    let mut json = Vec::with_capacity(reports.len());
    for report in reports {
        let stage = report.stage.clone();
        let mut report = ReportJson::from(report);
        for case in &mut report.failing {
            let key = TestKey { stage: stage.clone(), classname: case.classname.clone(), name: case.name.clone() };
            case.new_failure = new.contains(&key);
        }
        json.push(report);
    }
    Ok(Json(json))
}

async fn cancel_build(
    Member(user): Member,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let id = parse_build_id(&id)?;
    tracing::info!(build = %id, user = %user.name, "cancel asked for");
    let (status, outcome) = match state.scheduler.cancel(id).await? {
        Cancelled::NotFound => return Err(HttpError::NotFound(format!("no build {id}"))),
        Cancelled::Dequeued => (StatusCode::OK, "cancelled"),
        Cancelled::Stopping => (StatusCode::ACCEPTED, "stopping"),
        Cancelled::AlreadyFinished => (StatusCode::OK, "already finished"),
    };
    Ok((status, Json(json!({ "build": id.0, "outcome": outcome }))).into_response())
}

/// `POST /api/builds/{id}/rerun` → 202 `{"build": NEW_ID}`: a new build of the same commit and
/// ref; 409 while the build is still queued or running.
async fn rerun_build(
    Member(user): Member,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let build = rerun(&state, &user, parse_build_id(&id)?).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "build": build.id.0 }))).into_response())
}

/// Re-run the build `id` for `user` (the API and the build page's button).
pub(super) async fn rerun(state: &AppState, user: &AuthUser, id: BuildId) -> Result<BuildRow, HttpError> {
    match state.scheduler.rerun(id).await? {
        Rerun::Queued(build) => {
            tracing::info!(build = %build.id, rerun_of = %id, user = %user.name, "re-run asked for");
            Ok(build)
        }
        Rerun::StillLive => {
            Err(HttpError::Conflict(format!("build {id} is still queued or running: cancel it or wait for it to end")))
        }
        Rerun::NotFound => Err(HttpError::NotFound(format!("no build {id}"))),
    }
}
