//! Talking with forges: recognising a webhook delivery from GitHub, GitLab or Gitea/Forgejo by
//! its headers, authenticating it with the repo's secret and parsing the few fields a build needs
//! (`payload`); and reporting builds back as commit statuses (`status` is each forge's wire
//! format, `reporter` the background task that sends them).
//!
//! The webhook half owns the forges' payload formats and their authentication schemes, nothing
//! more: it never touches the store, the scheduler or the network, and it never decides whether
//! a push should build. The signature (or GitLab's token) is always checked, in constant time,
//! before a single byte of the body is parsed, so an unauthenticated sender cannot reach the JSON
//! parser. Payloads are large and forge-specific; only the fields listed in `payload` are read,
//! everything else (every URL in particular) is ignored. The caller caps the body at
//! [`MAX_WEBHOOK_BYTES`] before handing it here.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The largest webhook body the server reads. GitHub caps payloads at 25 MB, but a push payload
/// lists at most 2048 commits of roughly 1–2 KB each (message, URLs, author, changed paths) plus
/// the repository object, so even the largest real push stays under 5 MB; usual pushes are under
/// 100 KB. 8 MiB accepts every realistic push while bounding what an unauthenticated sender can
/// make the server buffer before the signature check.
pub const MAX_WEBHOOK_BYTES: usize = 8 * 1024 * 1024;

/// Header names, lower-case as `HeaderMap` stores them (lookups are case-insensitive anyway).
const GITHUB_EVENT: &str = "x-github-event";
const GITHUB_DELIVERY: &str = "x-github-delivery";
const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
const GITLAB_EVENT: &str = "x-gitlab-event";
const GITLAB_TOKEN: &str = "x-gitlab-token";
const GITLAB_EVENT_UUID: &str = "x-gitlab-event-uuid";
const GITLAB_WEBHOOK_UUID: &str = "x-gitlab-webhook-uuid";
const GITEA_EVENT: &str = "x-gitea-event";
const GITEA_DELIVERY: &str = "x-gitea-delivery";
const GITEA_SIGNATURE: &str = "x-gitea-signature";
const FORGEJO_EVENT: &str = "x-forgejo-event";
const FORGEJO_DELIVERY: &str = "x-forgejo-delivery";
const FORGEJO_SIGNATURE: &str = "x-forgejo-signature";

/// GitHub prefixes its hex signature with the algorithm.
const GITHUB_SIGNATURE_PREFIX: &str = "sha256=";

mod payload;
pub mod reporter;
pub mod status;

#[cfg(test)]
pub(crate) use payload::ZERO_SHA;

/// The `ref` prefixes of branches and tags; any other ref (notes, merge requests) is not built.
const BRANCH_PREFIX: &str = "refs/heads/";
const TAG_PREFIX: &str = "refs/tags/";

type HmacSha256 = Hmac<Sha256>;

/// Which forge sent a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forge {
    GitHub,
    GitLab,
    /// Gitea and its fork Forgejo, which share the payload format and the signature scheme.
    Gitea,
}

impl Forge {
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::GitLab => "gitlab",
            Forge::Gitea => "gitea",
        }
    }
}

impl std::fmt::Display for Forge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A push of a branch or a tag, authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    pub forge: Forge,
    /// The forge's id of this delivery; a redelivery repeats it.
    pub delivery: Option<String>,
    /// The full ref, e.g. `refs/heads/main` or `refs/tags/v1.0`.
    pub git_ref: String,
    /// The branch name when `git_ref` is a branch.
    pub branch: Option<String>,
    /// The tag name when `git_ref` is a tag.
    pub tag: Option<String>,
    /// The full sha of the pushed head; all zeros for a deletion.
    pub after: String,
    /// The ref was deleted: there is nothing to build.
    pub deleted: bool,
}

/// What a pull (merge) request event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullRequestAction {
    /// Opened, reopened, or new commits pushed: build the head.
    Build,
    /// Closed, merged or not: its queued builds are of no use any more.
    Closed { merged: bool },
}

/// A pull (merge) request event, authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestEvent {
    pub forge: Forge,
    /// The forge's id of this delivery; a redelivery repeats it.
    pub delivery: Option<String>,
    pub action: PullRequestAction,
    /// The request's number (GitLab's `iid`), as people write it after `#` (`!` on GitLab).
    pub number: i64,
    /// The full sha of the request's head commit.
    pub head_sha: String,
    /// The branch the request merges from (in a fork, the fork's branch).
    pub source: String,
    /// The branch the request merges into.
    pub target: String,
    /// The ref of the *configured* repository the head is fetched through: `refs/pull/N/head`
    /// (GitHub, Gitea, Forgejo) or `refs/merge-requests/N/head` (GitLab). The forge keeps it up
    /// to date for requests from forks too.
    pub head_ref: String,
}

/// What an authenticated delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    /// GitHub's check that the webhook is configured; nothing to do.
    Ping,
    Push(PushEvent),
    PullRequest(PullRequestEvent),
    /// Any other event (or a push of a ref that is neither a branch nor a tag, or a request
    /// event Gantry does not act on), named for logs.
    Other(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "not a webhook from a known forge: no X-GitHub-Event, X-Gitlab-Event, X-Gitea-Event or X-Forgejo-Event header"
    )]
    UnknownForge,
    #[error("the delivery carries no signature (or GitLab token)")]
    MissingSignature,
    #[error("the signature (or GitLab token) does not match the repo's secret")]
    BadSignature,
    #[error("malformed webhook: {0}")]
    Malformed(String),
}

/// Recognise the forge of a delivery, authenticate `body` with `secret`, then parse it.
///
/// The signature is verified over the exact bytes received before the body is parsed; a
/// delivery that fails authentication is never parsed.
pub fn verify_and_parse(headers: &HeaderMap, body: &[u8], secret: &SecretString) -> Result<WebhookEvent, WebhookError> {
    let forge = detect(headers).ok_or(WebhookError::UnknownForge)?;
    verify(forge, headers, body, secret)?;
    let event = event_name(forge, headers)?;
    let delivery = delivery_id(forge, headers);
    payload::parse(forge, &event, delivery, body)
}

/// The forge and the event name of a delivery, by its headers alone (for records and logs; it
/// authenticates nothing).
pub fn describe(headers: &HeaderMap) -> Option<(Forge, String)> {
    let forge = detect(headers)?;
    let event = event_name(forge, headers).ok()?;
    Some((forge, event))
}

/// Gitea and Forgejo also send `X-GitHub-Event` (and Forgejo sends `X-Gitea-Event`) for
/// compatibility, so the most specific header wins.
fn detect(headers: &HeaderMap) -> Option<Forge> {
    if headers.contains_key(FORGEJO_EVENT) || headers.contains_key(GITEA_EVENT) {
        Some(Forge::Gitea)
    } else if headers.contains_key(GITLAB_EVENT) {
        Some(Forge::GitLab)
    } else if headers.contains_key(GITHUB_EVENT) {
        Some(Forge::GitHub)
    } else {
        None
    }
}

/// A header's value as text; a value that is not visible ASCII counts as malformed.
fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, WebhookError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|v| Some(v.trim()))
            .map_err(|_| WebhookError::Malformed(format!("the {name} header is not ASCII text"))),
    }
}

fn event_name(forge: Forge, headers: &HeaderMap) -> Result<String, WebhookError> {
    let names: &[&str] = match forge {
        Forge::GitHub => &[GITHUB_EVENT],
        Forge::GitLab => &[GITLAB_EVENT],
        Forge::Gitea => &[FORGEJO_EVENT, GITEA_EVENT],
    };
    for name in names {
        if let Some(value) = header(headers, name)? {
            return Ok(value.to_string());
        }
    }
    Err(WebhookError::UnknownForge)
}

/// The delivery id, when the forge sent one that is text.
fn delivery_id(forge: Forge, headers: &HeaderMap) -> Option<String> {
    let names: &[&str] = match forge {
        Forge::GitHub => &[GITHUB_DELIVERY],
        Forge::GitLab => &[GITLAB_EVENT_UUID, GITLAB_WEBHOOK_UUID],
        Forge::Gitea => &[FORGEJO_DELIVERY, GITEA_DELIVERY],
    };
    names
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .map(str::trim)
        .find(|value| !value.is_empty())
        .map(str::to_string)
}

fn verify(forge: Forge, headers: &HeaderMap, body: &[u8], secret: &SecretString) -> Result<(), WebhookError> {
    let secret = secret.expose_secret().as_bytes();
    match forge {
        Forge::GitHub => {
            let signature = header(headers, GITHUB_SIGNATURE)?.ok_or(WebhookError::MissingSignature)?;
            let hex = signature.strip_prefix(GITHUB_SIGNATURE_PREFIX).ok_or(WebhookError::BadSignature)?;
            verify_hmac(secret, body, hex)
        }
        Forge::Gitea => {
            // Forgejo sends both signatures (the same value); either authenticates.
            let signature = match header(headers, FORGEJO_SIGNATURE)? {
                Some(signature) => signature,
                None => header(headers, GITEA_SIGNATURE)?.ok_or(WebhookError::MissingSignature)?,
            };
            verify_hmac(secret, body, signature)
        }
        Forge::GitLab => {
            let token = header(headers, GITLAB_TOKEN)?.ok_or(WebhookError::MissingSignature)?;
            // Comparing digests keeps the comparison fixed-length, so its time reveals neither
            // the secret's length nor a matching prefix.
            let expected = Sha256::digest(secret);
            let received = Sha256::digest(token.as_bytes());
            if bool::from(expected.ct_eq(&received)) {
                Ok(())
            } else {
                Err(WebhookError::BadSignature)
            }
        }
    }
}

/// Check a hex HMAC-SHA256 of `body` in constant time.
fn verify_hmac(secret: &[u8], body: &[u8], signature_hex: &str) -> Result<(), WebhookError> {
    let signature = hex::decode(signature_hex).map_err(|_| WebhookError::BadSignature)?;
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts a key of any length");
    mac.update(body);
    mac.verify_slice(&signature).map_err(|_| WebhookError::BadSignature)
}

#[cfg(test)]
mod tests;
