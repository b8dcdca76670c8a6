//! The payloads of authenticated deliveries: pushes of branches and tags, and pull (merge)
//! request events, parsed into [`WebhookEvent`]s.
//!
//! Only the fields a build needs are read (ref, head commit, deletion; a request's number,
//! action, head commit, source and target branch); everything else a forge sends is ignored, and
//! nothing here fetches anything: in particular no URL of a payload is ever kept. Every ref and
//! branch name is checked the way git checks it (`git2::Reference::is_valid_name`), so a name git
//! would refuse (`..`, a space, a control character) is a malformed delivery, never a build
//! labelled with it.

use serde::Deserialize;

use super::{
    Forge, PullRequestAction, PullRequestEvent, PushEvent, WebhookError, WebhookEvent, BRANCH_PREFIX, TAG_PREFIX,
};

/// What forges send as the new head of a deleted ref.
pub(crate) const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// The fields of a push payload Gantry reads; the forges send many more, all ignored.
#[derive(Debug, Deserialize)]
struct RawPush {
    #[serde(rename = "ref")]
    git_ref: String,
    /// GitLab sends `null` here for some deletions.
    after: Option<String>,
    /// GitHub only (Gitea has no such field): the ref was deleted.
    #[serde(default)]
    deleted: bool,
    /// GitLab only: the commit to check out, `null` when the ref was deleted. For an annotated
    /// tag, `after` is the tag object and this is the commit it points at.
    #[serde(default)]
    checkout_sha: Option<String>,
}

/// GitHub's and Gitea's (and Forgejo's) `pull_request` payload, the fields Gantry reads.
#[derive(Debug, Deserialize)]
struct RawPullRequestEvent {
    action: String,
    number: u64,
    pull_request: RawPullRequest,
}

#[derive(Debug, Deserialize)]
struct RawPullRequest {
    head: RawBranchTip,
    base: RawBranchTip,
    #[serde(default)]
    merged: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RawBranchTip {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
}

/// GitLab's `Merge Request Hook` payload, the fields Gantry reads.
#[derive(Debug, Deserialize)]
struct RawMergeRequestEvent {
    object_attributes: RawMergeRequest,
}

#[derive(Debug, Deserialize)]
struct RawMergeRequest {
    iid: u64,
    /// Absent from payloads of GitLab versions before 8.x; such an event is not acted on.
    #[serde(default)]
    action: Option<String>,
    source_branch: String,
    target_branch: String,
    last_commit: RawLastCommit,
    /// Present on an `update` that brought new commits: the previous head.
    #[serde(default)]
    oldrev: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawLastCommit {
    id: String,
}

/// Parse an authenticated delivery of `event` from `forge`.
pub(super) fn parse(
    forge: Forge,
    event: &str,
    delivery: Option<String>,
    body: &[u8],
) -> Result<WebhookEvent, WebhookError> {
    match (forge, event) {
        (Forge::GitHub, "ping") => Ok(WebhookEvent::Ping),
        (Forge::GitHub | Forge::Gitea, "push") | (Forge::GitLab, "Push Hook" | "Tag Push Hook") => {
            parse_push(forge, event, delivery, body)
        }
        (Forge::GitHub | Forge::Gitea, "pull_request") => parse_pull_request(forge, event, delivery, body),
        (Forge::GitLab, "Merge Request Hook") => parse_merge_request(event, delivery, body),
        _ => Ok(WebhookEvent::Other(event.to_string())),
    }
}

fn json<'a, T: Deserialize<'a>>(forge: Forge, event: &str, body: &'a [u8]) -> Result<T, WebhookError> {
    serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("the {forge} {event:?} payload is not what Gantry expects: {e}")))
}

fn parse_push(forge: Forge, event: &str, delivery: Option<String>, body: &[u8]) -> Result<WebhookEvent, WebhookError> {
    let raw: RawPush = json(forge, event, body)?;
    check_ref_name(&raw.git_ref)?;
    let (branch, tag) = if let Some(branch) = raw.git_ref.strip_prefix(BRANCH_PREFIX) {
        (Some(branch.to_string()), None)
    } else if let Some(tag) = raw.git_ref.strip_prefix(TAG_PREFIX) {
        (None, Some(tag.to_string()))
    } else {
        return Ok(WebhookEvent::Other(format!("{event} of {}", raw.git_ref)));
    };

    let head = match forge {
        // GitLab's `after` of an annotated tag is the tag object; the commit is `checkout_sha`.
        Forge::GitLab => raw.checkout_sha.clone().filter(|sha| !is_zero_sha(sha)).or_else(|| raw.after.clone()),
        Forge::GitHub | Forge::Gitea => raw.after.clone(),
    };
    let after = head.unwrap_or_else(|| ZERO_SHA.to_string());
    let deleted = raw.deleted
        || is_zero_sha(&after)
        || (forge == Forge::GitLab && raw.checkout_sha.as_deref().is_none_or(is_zero_sha));
    if !deleted && !is_full_sha(&after) {
        return Err(WebhookError::Malformed(format!("the pushed commit {after:?} is not a full hex sha")));
    }
    Ok(WebhookEvent::Push(PushEvent { forge, delivery, git_ref: raw.git_ref, branch, tag, after, deleted }))
}

/// GitHub and Gitea/Forgejo: `opened`, `reopened` and `synchronize` (Gitea: `synchronized`)
/// build the head; `closed` (merged or not) closes; every other action is not acted on.
fn parse_pull_request(
    forge: Forge,
    event: &str,
    delivery: Option<String>,
    body: &[u8],
) -> Result<WebhookEvent, WebhookError> {
    let raw: RawPullRequestEvent = json(forge, event, body)?;
    let action = match raw.action.as_str() {
        "opened" | "reopened" | "synchronize" | "synchronized" => PullRequestAction::Build,
        "closed" => PullRequestAction::Closed { merged: raw.pull_request.merged.unwrap_or(false) },
        other => return Ok(WebhookEvent::Other(format!("{event} {other}"))),
    };
    let head_ref = format!("refs/pull/{}/head", raw.number);
    request(forge, delivery, action, raw.number, raw.pull_request.head, raw.pull_request.base.git_ref, head_ref)
}

/// GitLab: `open`, `reopen` and an `update` that brought new commits (`oldrev` is present) build
/// the head; `close` and `merge` close; an `update` of the title, labels or the like, and every
/// other action, is not acted on.
fn parse_merge_request(event: &str, delivery: Option<String>, body: &[u8]) -> Result<WebhookEvent, WebhookError> {
    let raw: RawMergeRequestEvent = json(Forge::GitLab, event, body)?;
    let mr = raw.object_attributes;
    let action = match mr.action.as_deref() {
        Some("open" | "reopen") => PullRequestAction::Build,
        Some("update") if mr.oldrev.as_deref().is_some_and(|rev| !rev.is_empty()) => PullRequestAction::Build,
        Some("close") => PullRequestAction::Closed { merged: false },
        Some("merge") => PullRequestAction::Closed { merged: true },
        other => return Ok(WebhookEvent::Other(format!("{event} {}", other.unwrap_or("without an action")))),
    };
    let head = RawBranchTip { git_ref: mr.source_branch, sha: mr.last_commit.id };
    let head_ref = format!("refs/merge-requests/{}/head", mr.iid);
    request(Forge::GitLab, delivery, action, mr.iid, head, mr.target_branch, head_ref)
}

fn request(
    forge: Forge,
    delivery: Option<String>,
    action: PullRequestAction,
    number: u64,
    head: RawBranchTip,
    target: String,
    head_ref: String,
) -> Result<WebhookEvent, WebhookError> {
    // GitHub and Gitea name branches without `refs/heads/`; accept the full form too.
    let source = head.git_ref.strip_prefix(BRANCH_PREFIX).unwrap_or(&head.git_ref).to_string();
    let target = target.strip_prefix(BRANCH_PREFIX).unwrap_or(&target).to_string();
    for branch in [&source, &target] {
        check_ref_name(&format!("{BRANCH_PREFIX}{branch}"))?;
    }
    if !is_full_sha(&head.sha) {
        return Err(WebhookError::Malformed(format!("the request's head commit {:?} is not a full hex sha", head.sha)));
    }
    let number = i64::try_from(number)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| WebhookError::Malformed(format!("{number} is not a request number")))?;
    Ok(WebhookEvent::PullRequest(PullRequestEvent {
        forge,
        delivery,
        action,
        number,
        head_sha: head.sha,
        source,
        target,
        head_ref,
    }))
}

/// Refuse a ref name git would refuse (and one without a name after `refs/heads/` or
/// `refs/tags/`). A NUL is checked first: libgit2 takes the name as a C string.
pub(super) fn check_ref_name(name: &str) -> Result<(), WebhookError> {
    let refused = |why: &str| Err(WebhookError::Malformed(format!("{name:?} is not a ref name git accepts: {why}")));
    if name.bytes().any(|b| b == 0) {
        return refused("it contains a NUL");
    }
    if name == BRANCH_PREFIX.trim_end_matches('/') || name == TAG_PREFIX.trim_end_matches('/') {
        return refused("it names no branch or tag");
    }
    if [BRANCH_PREFIX, TAG_PREFIX].iter().any(|prefix| name.strip_prefix(prefix) == Some("")) {
        return refused("it names no branch or tag");
    }
    if !git2::Reference::is_valid_name(name) {
        return refused("see git check-ref-format");
    }
    Ok(())
}

pub(super) fn is_zero_sha(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

/// A full sha-1 (40) or sha-256 (64) object id in hex.
pub(super) fn is_full_sha(sha: &str) -> bool {
    matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit())
}
