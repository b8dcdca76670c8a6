//! History and tests across builds, as the API and the pages ask for them: the query of a
//! history page (`?before=ID&branch=&status=&trigger=&limit=`), the links to the pages beside
//! one, and `GET /api/repos/{repo}/tests[?flaky=true]`.
//!
//! Parsing a history query lives here so the JSON API and the repo page accept exactly the same
//! parameters; the store does the paging (keyset, see `store::history`). Reads take [`Reader`].

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use gantry_event::BuildStatus;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

use super::auth::Reader;
use super::{configured_repo, AppState, HttpError};
use crate::store::{BuildId, HistoryFilter, TestHistory, Trigger};

/// A tests listing looks at this many of the repo's newest builds without `?builds=`.
pub const TEST_HISTORY_BUILDS: u32 = 50;

/// The most builds a tests listing looks at.
pub const MAX_TEST_HISTORY_BUILDS: u32 = 500;

/// A tests listing shows this many of each test's newest runs.
pub const TEST_RUNS_SHOWN: u32 = 10;

/// What a path segment keeps unencoded in the links built here.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/repos/{repo}/tests", get(list_tests))
}

/// The query string of a history page. Empty values (a filter form's "any") do not filter.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryParams {
    before: Option<String>,
    limit: Option<String>,
    branch: Option<String>,
    status: Option<String>,
    trigger: Option<String>,
}

/// A history page asked for: which builds, from where, how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HistoryRequest {
    pub filter: HistoryFilter,
    pub before: Option<BuildId>,
    /// As asked (already capped); `None` for the default.
    pub limit: Option<u32>,
}

impl HistoryParams {
    /// The request these parameters make; a 400 names the parameter that is wrong.
    pub fn parse(
        query: Result<Query<HistoryParams>, QueryRejection>,
        max_limit: u32,
    ) -> Result<HistoryRequest, HttpError> {
        let Query(params) = query.map_err(|e| HttpError::BadRequest(e.body_text()))?;
        let given = |value: Option<String>| value.filter(|v| !v.is_empty());
        let status = match given(params.status) {
            Some(word) => Some(BuildStatus::parse(&word).ok_or_else(|| {
                HttpError::BadRequest(format!("status {word:?} is not a build status (passed, failed, running, …)"))
            })?),
            None => None,
        };
        let trigger =
            match given(params.trigger) {
                Some(word) => Some(Trigger::parse(&word).ok_or_else(|| {
                    HttpError::BadRequest(format!("trigger {word:?} is not one of push, poll, manual"))
                })?),
                None => None,
            };
        let before = match given(params.before) {
            Some(raw) => Some(
                raw.parse::<i64>()
                    .ok()
                    .filter(|id| *id > 0)
                    .map(BuildId)
                    .ok_or_else(|| HttpError::BadRequest(format!("before {raw:?} is not a build id")))?,
            ),
            None => None,
        };
        let limit = match given(params.limit) {
            Some(raw) => Some(
                raw.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| HttpError::BadRequest(format!("limit {raw:?} is not a positive number")))?
                    .min(max_limit),
            ),
            None => None,
        };
        Ok(HistoryRequest { filter: HistoryFilter { branch: given(params.branch), status, trigger }, before, limit })
    }
}

/// `path?query` for the history page of `filter` starting `before` (with `limit` when given).
pub(super) fn history_href(path: &str, filter: &HistoryFilter, before: Option<BuildId>, limit: Option<u32>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(branch) = &filter.branch {
        query.append_pair("branch", branch);
    }
    if let Some(status) = filter.status {
        query.append_pair("status", status.as_str());
    }
    if let Some(trigger) = filter.trigger {
        query.append_pair("trigger", trigger.as_str());
    }
    if let Some(limit) = limit {
        query.append_pair("limit", &limit.to_string());
    }
    if let Some(before) = before {
        query.append_pair("before", &before.0.to_string());
    }
    let query = query.finish();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

/// A repo's name as a path segment.
pub(super) fn repo_segment(repo: &str) -> String {
    utf8_percent_encode(repo, PATH_SEGMENT).to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestsQuery {
    /// Only the flaky tests.
    flaky: Option<bool>,
    /// How many of the newest builds to look at.
    builds: Option<u32>,
}

#[derive(Debug, Serialize)]
struct TestJson {
    stage: String,
    classname: String,
    name: String,
    /// It both passed and failed on one commit among the builds looked at.
    flaky: bool,
    /// The outcome of its newest run.
    last_outcome: &'static str,
    /// Its newest runs, newest first.
    runs: Vec<TestRunJson>,
}

#[derive(Debug, Serialize)]
struct TestRunJson {
    build: i64,
    number: i64,
    commit: String,
    branch: String,
    outcome: &'static str,
    duration_ms: Option<i64>,
    message: Option<String>,
}

impl From<TestHistory> for TestJson {
    fn from(test: TestHistory) -> TestJson {
        TestJson {
            last_outcome: test.runs.first().map_or("", |r| r.outcome.as_str()),
            stage: test.key.stage,
            classname: test.key.classname,
            name: test.key.name,
            flaky: test.flaky,
            runs: test
                .runs
                .into_iter()
                .map(|r| TestRunJson {
                    build: r.build.0,
                    number: r.number,
                    commit: r.commit,
                    branch: r.branch,
                    outcome: r.outcome.as_str(),
                    duration_ms: r.duration_ms,
                    message: r.message,
                })
                .collect(),
        }
    }
}

/// `GET /api/repos/{repo}/tests[?flaky=true][&builds=N]`: every test of the repo's newest builds
/// with its newest runs and whether it is flaky.
async fn list_tests(
    _: Reader,
    State(state): State<AppState>,
    Path(repo): Path<String>,
    query: Result<Query<TestsQuery>, QueryRejection>,
) -> Result<Json<Vec<TestJson>>, HttpError> {
    let Query(query) = query.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    let repo = configured_repo(&state, &repo)?;
    let builds = query.builds.unwrap_or(TEST_HISTORY_BUILDS).clamp(1, MAX_TEST_HISTORY_BUILDS);
    let tests = state.store.test_history(&repo.name, builds, TEST_RUNS_SHOWN, query.flaky.unwrap_or(false)).await?;
    Ok(Json(tests.into_iter().map(TestJson::from).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<HistoryRequest, HttpError> {
        let uri: axum::http::Uri = format!("/x?{query}").parse().unwrap();
        HistoryParams::parse(Query::try_from_uri(&uri), 100)
    }

    #[test]
    fn history_queries_parse_and_empty_fields_do_not_filter() {
        let request = parse("branch=feature%2Fa&status=failed&trigger=manual&before=42&limit=500").unwrap();
        assert_eq!(request.filter.branch.as_deref(), Some("feature/a"));
        assert_eq!(request.filter.status, Some(BuildStatus::Failed));
        assert_eq!(request.filter.trigger, Some(Trigger::Manual));
        assert_eq!((request.before, request.limit), (Some(BuildId(42)), Some(100)), "the limit is capped");
        let any = parse("branch=&status=&trigger=").unwrap();
        assert_eq!(any.filter, HistoryFilter::default());
        for bad in ["status=green", "trigger=cron", "before=x", "before=-1", "limit=0", "limit=many", "page=2"] {
            assert!(matches!(parse(bad), Err(HttpError::BadRequest(_))), "{bad}");
        }
    }

    #[test]
    fn history_links_keep_the_filter() {
        let filter =
            HistoryFilter { branch: Some("a&b c".to_string()), status: Some(BuildStatus::Passed), trigger: None };
        assert_eq!(
            history_href("/repos/shop", &filter, Some(BuildId(7)), None),
            "/repos/shop?branch=a%26b+c&status=passed&before=7"
        );
        assert_eq!(history_href("/repos/shop", &HistoryFilter::default(), None, None), "/repos/shop");
        assert_eq!(history_href("/x", &HistoryFilter::default(), None, Some(5)), "/x?limit=5");
        assert_eq!(repo_segment("my.repo-1_x/y"), "my.repo-1_x%2Fy");
    }
}
