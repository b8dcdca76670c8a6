//! Commit statuses on the wire: each forge's request for "this commit is in this state" and what
//! its answer means.
//!
//! GitHub: `POST {api}/repos/{owner}/{repo}/statuses/{sha}` with `Authorization: Bearer`, the
//! `application/vnd.github+json` media type and an `X-GitHub-Api-Version`; states `pending`,
//! `success`, `failure`, `error`. GitLab: `POST {api}/projects/{id}/statuses/{sha}` (the project's
//! path URL-encoded as one segment, or its numeric id) with `PRIVATE-TOKEN`; states `pending`,
//! `running`, `success`, `failed`, `canceled`, `skipped`. Gitea and Forgejo: `POST
//! {api}/repos/{owner}/{repo}/statuses/{sha}` with `Authorization: token`; GitHub's four states.
//! `tests/fixtures/forge-api/` holds the forges' own descriptions the tests check these against.
//!
//! Everything here is pure: no network, no store, no clock but the one passed in. The token goes
//! into a header marked sensitive and into nothing else: not the URL, not an error.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use crate::store::statuses::CommitState;

/// The GitHub REST API version Gantry speaks (sent as `X-GitHub-Api-Version`).
pub const GITHUB_API_VERSION: &str = "2022-11-28";

/// GitHub's media type for its REST API.
pub const GITHUB_MEDIA_TYPE: &str = "application/vnd.github+json";

/// The API base when `forge_api` is not given: GitHub.
pub const GITHUB_DEFAULT_API: &str = "https://api.github.com";

/// The API base when `forge_api` is not given: GitLab.com.
pub const GITLAB_DEFAULT_API: &str = "https://gitlab.com/api/v4";

/// GitHub cuts descriptions at 140 characters; every forge gets at most that many.
pub const MAX_DESCRIPTION_CHARS: usize = 140;

/// The longest wait a forge's `Retry-After` (or rate-limit reset) may ask for; a longer one is
/// cut to this, so a status is never held back for hours.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// How much of a forge's answer is kept as "the forge's words" when it has no `message`.
pub const MAX_FORGE_WORDS: usize = 300;

const GITLAB_TOKEN_HEADER: &str = "private-token";
const GITHUB_API_VERSION_HEADER: &str = "x-github-api-version";
const GITHUB_RATE_LIMIT_REMAINING: &str = "x-ratelimit-remaining";
const GITHUB_RATE_LIMIT_RESET: &str = "x-ratelimit-reset";

/// A path segment: everything but unreserved characters is escaped (GitLab's `group/project`
/// becomes `group%2Fproject`, as its API asks).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Which forge a repo reports to (its `forge` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    #[serde(rename = "github")]
    GitHub,
    #[serde(rename = "gitlab")]
    GitLab,
    Gitea,
    Forgejo,
}

impl ForgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::GitHub => "github",
            ForgeKind::GitLab => "gitlab",
            ForgeKind::Gitea => "gitea",
            ForgeKind::Forgejo => "forgejo",
        }
    }

    /// The forge's name as people write it, for messages.
    pub fn display_name(self) -> &'static str {
        match self {
            ForgeKind::GitHub => "GitHub",
            ForgeKind::GitLab => "GitLab",
            ForgeKind::Gitea => "Gitea",
            ForgeKind::Forgejo => "Forgejo",
        }
    }

    /// The API base used without `forge_api`; self-hosted forges (Gitea, Forgejo) have none.
    pub fn default_api(self) -> Option<&'static str> {
        match self {
            ForgeKind::GitHub => Some(GITHUB_DEFAULT_API),
            ForgeKind::GitLab => Some(GITLAB_DEFAULT_API),
            ForgeKind::Gitea | ForgeKind::Forgejo => None,
        }
    }

    /// The forge's word for `state`.
    pub fn state(self, state: CommitState) -> &'static str {
        match self {
            ForgeKind::GitLab => match state {
                CommitState::Pending => "pending",
                CommitState::Running => "running",
                CommitState::Success => "success",
                CommitState::Failure | CommitState::Error => "failed",
                CommitState::Cancelled => "canceled",
                CommitState::Skipped => "skipped",
            },
            // GitHub, Gitea and Forgejo know four states. A skipped build is not a red mark
            // (the team chose not to build that ref) and a cancelled one is not a verdict.
            ForgeKind::GitHub | ForgeKind::Gitea | ForgeKind::Forgejo => match state {
                CommitState::Pending | CommitState::Running => "pending",
                CommitState::Success | CommitState::Skipped => "success",
                CommitState::Failure => "failure",
                CommitState::Error | CommitState::Cancelled => "error",
            },
        }
    }
}

impl std::fmt::Display for ForgeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.display_name())
    }
}

/// One state to put on one commit.
#[derive(Debug, Clone, Copy)]
pub struct Status<'a> {
    pub commit: &'a str,
    pub state: CommitState,
    pub context: &'a str,
    pub description: &'a str,
    /// The build's page; omitted when the server has no `public_url`.
    pub target_url: Option<&'a str>,
    /// GitLab only: the branch or tag the status refers to.
    pub git_ref: Option<&'a str>,
}

/// Where a repo's statuses go.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub kind: ForgeKind,
    /// The API base, without a trailing `/`.
    pub api: &'a str,
    /// `owner/name`; GitLab: the project's path or numeric id.
    pub project: &'a str,
}

/// A request ready to send: the token is inside `headers`, marked sensitive.
#[derive(Debug)]
pub struct StatusRequest {
    pub url: String,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("forge_project {0:?} is not of the form owner/name")]
    Project(String),
    #[error("the forge token cannot be sent in an HTTP header (it holds a control character)")]
    Token,
}

/// The request that sets `status` on `target`.
pub fn request(target: Target<'_>, token: &SecretString, status: Status<'_>) -> Result<StatusRequest, StatusError> {
    let api = target.api.trim_end_matches('/');
    let sha = utf8_percent_encode(status.commit, SEGMENT);
    let mut headers = HeaderMap::new();
    let description: String = status.description.chars().take(MAX_DESCRIPTION_CHARS).collect();
    let (url, auth, body) = match target.kind {
        ForgeKind::GitLab => {
            let project = utf8_percent_encode(target.project, SEGMENT);
            let mut body = json!({
                "state": target.kind.state(status.state),
                "name": status.context,
                "description": description,
            });
            if let Some(url) = status.target_url {
                body["target_url"] = url.into();
            }
            if let Some(git_ref) = status.git_ref {
                body["ref"] = git_ref.into();
            }
            let token = sensitive(token.expose_secret())?;
            (
                format!("{api}/projects/{project}/statuses/{sha}"),
                (HeaderName::from_static(GITLAB_TOKEN_HEADER), token),
                body,
            )
        }
        ForgeKind::GitHub | ForgeKind::Gitea | ForgeKind::Forgejo => {
            let (owner, name) = owner_and_name(target.project)?;
            let mut body = json!({
                "state": target.kind.state(status.state),
                "context": status.context,
                "description": description,
            });
            if let Some(url) = status.target_url {
                body["target_url"] = url.into();
            }
            let scheme = if target.kind == ForgeKind::GitHub { "Bearer" } else { "token" };
            let token = sensitive(&format!("{scheme} {}", token.expose_secret()))?;
            if target.kind == ForgeKind::GitHub {
                headers.insert(ACCEPT, HeaderValue::from_static(GITHUB_MEDIA_TYPE));
                headers.insert(GITHUB_API_VERSION_HEADER, HeaderValue::from_static(GITHUB_API_VERSION));
            } else {
                headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
            }
            (format!("{api}/repos/{owner}/{name}/statuses/{sha}"), (AUTHORIZATION, token), body)
        }
    };
    headers.insert(auth.0, auth.1);
    Ok(StatusRequest { url, headers, body })
}

fn sensitive(value: &str) -> Result<HeaderValue, StatusError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| StatusError::Token)?;
    value.set_sensitive(true);
    Ok(value)
}

/// `owner/name`, each escaped as a path segment.
fn owner_and_name(project: &str) -> Result<(String, String), StatusError> {
    match project.split_once('/') {
        Some((owner, name)) if !owner.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((utf8_percent_encode(owner, SEGMENT).to_string(), utf8_percent_encode(name, SEGMENT).to_string()))
        }
        _ => Err(StatusError::Project(project.to_string())),
    }
}

/// Whether `project` is a valid `forge_project` for `kind` (config validation).
pub fn check_project(kind: ForgeKind, project: &str) -> Result<(), StatusError> {
    match kind {
        ForgeKind::GitLab if !project.trim().is_empty() => Ok(()),
        ForgeKind::GitLab => Err(StatusError::Project(project.to_string())),
        _ => owner_and_name(project).map(|_| ()),
    }
}

/// What a forge's answer means for the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Worth trying again: after `after` when the forge said so (`Retry-After`, a rate limit's
    /// reset), otherwise after the reporter's own backoff.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Refused for good (bad token, no such project or commit, a state it does not accept):
    /// trying again would only be refused again.
    Refused {
        reason: String,
    },
}

/// Judge an answer of `kind` with `status`, `headers` and `body`; `now_unix` (seconds) is for a
/// rate limit's reset time.
pub fn judge(kind: ForgeKind, status: StatusCode, headers: &HeaderMap, body: &[u8], now_unix: u64) -> Verdict {
    if status.is_success() {
        return Verdict::Accepted;
    }
    let reason = format!("{kind} answered {status}: {}", forge_words(body));
    let retry_after = header_u64(headers, RETRY_AFTER.as_str()).map(Duration::from_secs);
    let rate_limit_exhausted = header_u64(headers, GITHUB_RATE_LIMIT_REMAINING) == Some(0);
    let reset_in =
        header_u64(headers, GITHUB_RATE_LIMIT_RESET).map(|at| Duration::from_secs(at.saturating_sub(now_unix)));
    let capped = |d: Duration| d.min(MAX_RETRY_AFTER);
    match status {
        // GitHub's secondary rate limit: 403 or 429 with Retry-After, or with the primary limit
        // spent (then wait for its reset).
        StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS if retry_after.is_some() => {
            Verdict::Retry { after: retry_after.map(capped), reason }
        }
        StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS if rate_limit_exhausted => {
            Verdict::Retry { after: reset_in.map(capped), reason }
        }
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => Verdict::Retry { after: None, reason },
        // GitLab: "an update is already in progress for this SHA/ref"; its docs say retry.
        StatusCode::CONFLICT if kind == ForgeKind::GitLab => Verdict::Retry { after: retry_after.map(capped), reason },
        status if status.is_server_error() => Verdict::Retry { after: retry_after.map(capped), reason },
        _ => Verdict::Refused { reason },
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The forge's own words for a refusal: its JSON `message` (GitHub, Gitea, GitLab all send one;
/// GitLab's may be an object of field errors), otherwise the start of the body.
pub fn forge_words(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Message {
        message: serde_json::Value,
    }
    let words = match serde_json::from_slice::<Message>(body) {
        Ok(Message { message: serde_json::Value::String(text) }) => text,
        Ok(Message { message }) => message.to_string(),
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    let words: String = words.chars().filter(|c| !c.is_control()).take(MAX_FORGE_WORDS).collect();
    if words.is_empty() {
        "no message".to_string()
    } else {
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";

    fn status(state: CommitState) -> Status<'static> {
        Status {
            commit: SHA,
            state,
            context: "gantry",
            description: "Build #3 passed",
            target_url: Some("https://ci.example.com/builds/3"),
            git_ref: Some("main"),
        }
    }

    fn token() -> SecretString {
        SecretString::from("tok-secret")
    }

    #[test]
    fn each_forge_gets_its_path_header_and_words() {
        let github = Target { kind: ForgeKind::GitHub, api: "https://api.github.com/", project: "octo/hello" };
        let req = request(github, &token(), status(CommitState::Running)).unwrap();
        assert_eq!(req.url, format!("https://api.github.com/repos/octo/hello/statuses/{SHA}"));
        assert_eq!(req.headers[AUTHORIZATION], "Bearer tok-secret");
        assert!(req.headers[AUTHORIZATION].is_sensitive());
        assert_eq!(req.headers[ACCEPT], GITHUB_MEDIA_TYPE);
        assert_eq!(req.headers[GITHUB_API_VERSION_HEADER], GITHUB_API_VERSION);
        assert_eq!(req.body["state"], "pending");
        assert_eq!(req.body["context"], "gantry");
        assert_eq!(req.body["target_url"], "https://ci.example.com/builds/3");

        let gitlab = Target { kind: ForgeKind::GitLab, api: GITLAB_DEFAULT_API, project: "group/sub/project" };
        let req = request(gitlab, &token(), status(CommitState::Cancelled)).unwrap();
        assert_eq!(req.url, format!("https://gitlab.com/api/v4/projects/group%2Fsub%2Fproject/statuses/{SHA}"));
        assert_eq!(req.headers[GITLAB_TOKEN_HEADER], "tok-secret");
        assert_eq!((req.body["state"].as_str(), req.body["name"].as_str()), (Some("canceled"), Some("gantry")));
        assert_eq!(req.body["ref"], "main");

        let gitea = Target { kind: ForgeKind::Forgejo, api: "https://code.example.org/api/v1", project: "team/app" };
        let mut plain = status(CommitState::Skipped);
        plain.target_url = None;
        let req = request(gitea, &token(), plain).unwrap();
        assert_eq!(req.url, format!("https://code.example.org/api/v1/repos/team/app/statuses/{SHA}"));
        assert_eq!(req.headers[AUTHORIZATION], "token tok-secret");
        assert_eq!(req.body["state"], "success");
        assert!(req.body.get("target_url").is_none());
        assert!(!format!("{req:?}").contains("tok-secret"), "the token never shows in Debug");
    }

    #[test]
    fn every_state_has_a_word_each_forge_accepts() {
        let all = [
            CommitState::Pending,
            CommitState::Running,
            CommitState::Success,
            CommitState::Failure,
            CommitState::Error,
            CommitState::Cancelled,
            CommitState::Skipped,
        ];
        for state in all {
            assert!(["pending", "success", "failure", "error"].contains(&ForgeKind::GitHub.state(state)));
            assert!(["pending", "running", "success", "failed", "canceled", "skipped"]
                .contains(&ForgeKind::GitLab.state(state)));
        }
    }

    #[test]
    fn projects_and_descriptions_are_checked_and_cut() {
        assert!(check_project(ForgeKind::GitHub, "octo/hello").is_ok());
        for bad in ["octo", "octo/", "/hello", "a/b/c"] {
            assert!(check_project(ForgeKind::Gitea, bad).is_err(), "{bad}");
        }
        assert!(check_project(ForgeKind::GitLab, "a/b/c").is_ok() && check_project(ForgeKind::GitLab, "42").is_ok());
        let long = "x".repeat(500);
        let mut s = status(CommitState::Failure);
        s.description = &long;
        let github = Target { kind: ForgeKind::GitHub, api: GITHUB_DEFAULT_API, project: "o/r" };
        let req = request(github, &token(), s).unwrap();
        assert_eq!(req.body["description"].as_str().unwrap().chars().count(), MAX_DESCRIPTION_CHARS);
    }

    #[test]
    fn answers_are_judged_retry_or_refuse() {
        let none = HeaderMap::new();
        let judge_gh = |code: u16, headers: &HeaderMap, body: &str| {
            judge(ForgeKind::GitHub, StatusCode::from_u16(code).unwrap(), headers, body.as_bytes(), 1_000)
        };
        assert_eq!(judge_gh(201, &none, "{}"), Verdict::Accepted);
        assert!(matches!(judge_gh(502, &none, "bad gateway"), Verdict::Retry { after: None, .. }));
        let Verdict::Refused { reason } = judge_gh(401, &none, r#"{"message":"Bad credentials"}"#) else {
            panic!("401 is final")
        };
        assert_eq!(reason, "GitHub answered 401 Unauthorized: Bad credentials");
        assert!(matches!(judge_gh(404, &none, "{}"), Verdict::Refused { .. }));
        assert!(matches!(judge_gh(403, &none, r#"{"message":"Resource not accessible"}"#), Verdict::Refused { .. }));

        let mut retry_after = HeaderMap::new();
        retry_after.insert(RETRY_AFTER, HeaderValue::from_static("30"));
        assert_eq!(
            judge_gh(403, &retry_after, "{}"),
            Verdict::Retry { after: Some(Duration::from_secs(30)), reason: "GitHub answered 403 Forbidden: {}".into() }
        );
        let mut spent = HeaderMap::new();
        spent.insert(GITHUB_RATE_LIMIT_REMAINING, HeaderValue::from_static("0"));
        spent.insert(GITHUB_RATE_LIMIT_RESET, HeaderValue::from_static("1090"));
        assert!(
            matches!(judge_gh(429, &spent, ""), Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(90))
        );
        let mut far = HeaderMap::new();
        far.insert(RETRY_AFTER, HeaderValue::from_static("999999"));
        assert!(matches!(judge_gh(429, &far, ""), Verdict::Retry { after: Some(d), .. } if d == MAX_RETRY_AFTER));
        let conflict = judge(ForgeKind::GitLab, StatusCode::CONFLICT, &none, b"{}", 0);
        assert!(matches!(conflict, Verdict::Retry { .. }));
    }

    #[test]
    fn the_forges_words_are_its_message_or_the_start_of_its_body() {
        assert_eq!(forge_words(br#"{"message": "404 Project Not Found"}"#), "404 Project Not Found");
        assert_eq!(forge_words(br#"{"message": {"state": ["is invalid"]}}"#), r#"{"state":["is invalid"]}"#);
        assert_eq!(forge_words(b"<html>\n502 Bad Gateway</html>"), "<html>502 Bad Gateway</html>");
        assert_eq!(forge_words(b""), "no message");
        assert_eq!(forge_words(&vec![b'x'; 5000]).len(), MAX_FORGE_WORDS);
    }
}
