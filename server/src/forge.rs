//! Forge webhooks: recognises a delivery from GitHub, GitLab or Gitea/Forgejo by its headers,
//! authenticates it with the repo's secret, and parses the few fields a build needs.
//!
//! This module owns the forges' wire formats and their authentication schemes, nothing more: it
//! never touches the store, the scheduler or the network, and it never decides whether a push
//! should build (branch filters and duplicate deliveries belong to `http::hooks`). The signature
//! (or GitLab's token) is always checked, in constant time, before a single byte of the body is
//! parsed, so an unauthenticated sender cannot reach the JSON parser. Payloads are large and
//! forge-specific; only `ref`, `after` (and GitLab's `checkout_sha`) and the deletion flag are
//! read, everything else is ignored. The caller caps the body at [`MAX_WEBHOOK_BYTES`] before
//! handing it here.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
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

/// What an authenticated delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    /// GitHub's check that the webhook is configured; nothing to do.
    Ping,
    Push(PushEvent),
    /// Any other event (or a push of a ref that is neither a branch nor a tag), named for logs.
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
    parse(forge, &event, delivery, body)
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

fn parse(forge: Forge, event: &str, delivery: Option<String>, body: &[u8]) -> Result<WebhookEvent, WebhookError> {
    let is_push = match forge {
        Forge::GitHub if event == "ping" => return Ok(WebhookEvent::Ping),
        Forge::GitHub | Forge::Gitea => event == "push",
        Forge::GitLab => event == "Push Hook" || event == "Tag Push Hook",
    };
    if !is_push {
        return Ok(WebhookEvent::Other(event.to_string()));
    }
    let raw: RawPush = serde_json::from_slice(body).map_err(|e| {
        WebhookError::Malformed(format!("the {forge} {event:?} payload is not what Gantry expects: {e}"))
    })?;

    let (branch, tag) = if let Some(branch) = raw.git_ref.strip_prefix(BRANCH_PREFIX) {
        (Some(branch.to_string()), None)
    } else if let Some(tag) = raw.git_ref.strip_prefix(TAG_PREFIX) {
        (None, Some(tag.to_string()))
    } else {
        return Ok(WebhookEvent::Other(format!("{event} of {}", raw.git_ref)));
    };
    if branch.as_deref() == Some("") || tag.as_deref() == Some("") {
        return Err(WebhookError::Malformed(format!("the ref {:?} names no branch or tag", raw.git_ref)));
    }

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

/// What forges send as the new head of a deleted ref.
const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

fn is_zero_sha(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

/// A full sha-1 (40) or sha-256 (64) object id in hex.
fn is_full_sha(sha: &str) -> bool {
    matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use axum::http::{HeaderName, HeaderValue};

    use super::*;

    const SECRET: &str = "It's a Secret to Everybody";

    fn secret() -> SecretString {
        SecretString::from(SECRET)
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/webhooks").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    fn hmac_hex(key: &str, body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(key.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn github(event: &str, body: &[u8]) -> HeaderMap {
        let signature = format!("sha256={}", hmac_hex(SECRET, body));
        headers(&[
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("X-Hub-Signature-256", &signature),
        ])
    }

    fn push(event: Result<WebhookEvent, WebhookError>) -> PushEvent {
        match event {
            Ok(WebhookEvent::Push(push)) => push,
            other => panic!("expected a push, got {other:?}"),
        }
    }

    /// The head commit a fixture names, read with a generic JSON parser.
    fn fixture_field(name: &str, field: &str) -> String {
        let value: serde_json::Value = serde_json::from_slice(&fixture(name)).unwrap();
        value[field].as_str().unwrap().to_string()
    }

    /// Every forge's published push payload, with the headers it sends, parses to the same event.
    #[test]
    fn each_forge_push_of_a_branch() {
        // Fixture, the field that names the head commit, the forge's headers, the forge Gantry sees
        // (Forgejo speaks Gitea's dialect), the delivery id in those headers.
        let cases: [(&str, &str, fn(&[u8]) -> HeaderMap, Forge, &str); 4] = [
            ("github-push.json", "after", |b| github("push", b), Forge::GitHub, "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            (
                "gitlab-push.json",
                "checkout_sha",
                |_| gitlab("Push Hook", SECRET),
                Forge::GitLab,
                "13792a34-cac6-4fda-95a8-c58e00a3954e",
            ),
            ("gitea-push.json", "after", gitea, Forge::Gitea, "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
            ("forgejo-push.json", "after", forgejo, Forge::Gitea, "0c5a8f3e-5b7d-4d1c-9f7e-3c1c2a9d6e01"),
        ];
        for (fixture_name, head_field, headers, forge, delivery) in cases {
            let body = fixture(fixture_name);
            let event = push(verify_and_parse(&headers(&body), &body, &secret()));
            assert_eq!(
                event,
                PushEvent {
                    forge,
                    delivery: Some(delivery.to_string()),
                    git_ref: "refs/heads/main".to_string(),
                    branch: Some("main".to_string()),
                    tag: None,
                    after: fixture_field(fixture_name, head_field),
                    deleted: false,
                },
                "{fixture_name}"
            );
        }
    }

    #[test]
    fn github_ping() {
        let body = fixture("github-ping.json");
        assert_eq!(verify_and_parse(&github("ping", &body), &body, &secret()).unwrap(), WebhookEvent::Ping);
    }

    #[test]
    fn github_branch_deletion() {
        let body = fixture("github-delete-branch.json");
        let event = push(verify_and_parse(&github("push", &body), &body, &secret()));
        assert!(event.deleted);
        assert_eq!(event.branch.as_deref(), Some("feature/old-checkout"));
        assert_eq!(event.after, ZERO_SHA);
    }

    #[test]
    fn github_tag_push() {
        let mut payload: serde_json::Value = serde_json::from_slice(&fixture("github-push.json")).unwrap();
        payload["ref"] = "refs/tags/v2.0.1".into();
        let body = serde_json::to_vec(&payload).unwrap();
        let event = push(verify_and_parse(&github("push", &body), &body, &secret()));
        assert_eq!((event.branch, event.tag.as_deref()), (None, Some("v2.0.1")));
    }

    #[test]
    fn github_other_events_and_other_refs_are_other() {
        let body = br#"{"action": "opened"}"#;
        assert_eq!(
            verify_and_parse(&github("issues", body), body, &secret()).unwrap(),
            WebhookEvent::Other("issues".to_string())
        );
        let mut payload: serde_json::Value = serde_json::from_slice(&fixture("github-push.json")).unwrap();
        payload["ref"] = "refs/notes/commits".into();
        let body = serde_json::to_vec(&payload).unwrap();
        assert!(matches!(verify_and_parse(&github("push", &body), &body, &secret()), Ok(WebhookEvent::Other(_))));
    }

    #[test]
    fn github_signature_with_another_secret_is_rejected() {
        let body = fixture("github-push.json");
        let signature = format!("sha256={}", hmac_hex("another secret", &body));
        let headers = headers(&[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &signature)]);
        assert!(matches!(verify_and_parse(&headers, &body, &secret()), Err(WebhookError::BadSignature)));
    }

    #[test]
    fn github_signature_in_another_form_is_rejected() {
        let body = fixture("github-push.json");
        let bare = hmac_hex(SECRET, &body);
        for signature in [bare.clone(), format!("sha1={bare}"), "sha256=not-hex".to_string(), "sha256=".to_string()] {
            let headers = headers(&[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &signature)]);
            assert!(
                matches!(verify_and_parse(&headers, &body, &secret()), Err(WebhookError::BadSignature)),
                "{signature}"
            );
        }
    }

    #[test]
    fn missing_signature_is_rejected() {
        let body = fixture("github-push.json");
        let headers = headers(&[("X-GitHub-Event", "push")]);
        assert!(matches!(verify_and_parse(&headers, &body, &secret()), Err(WebhookError::MissingSignature)));
        let body = fixture("gitea-push.json");
        let gitea = self::headers(&[("X-Gitea-Event", "push")]);
        assert!(matches!(verify_and_parse(&gitea, &body, &secret()), Err(WebhookError::MissingSignature)));
        let body = fixture("gitlab-push.json");
        let gitlab = self::headers(&[("X-Gitlab-Event", "Push Hook")]);
        assert!(matches!(verify_and_parse(&gitlab, &body, &secret()), Err(WebhookError::MissingSignature)));
    }

    #[test]
    fn tampered_body_is_rejected() {
        let body = fixture("github-push.json");
        let headers = github("push", &body);
        let tampered = String::from_utf8(body).unwrap().replace("refs/heads/main", "refs/heads/evil").into_bytes();
        assert!(matches!(verify_and_parse(&headers, &tampered, &secret()), Err(WebhookError::BadSignature)));
    }

    #[test]
    fn malformed_json_with_a_valid_signature_says_where() {
        let body = b"{\"ref\": \"refs/heads/main\",\n \"after\": }";
        let Err(WebhookError::Malformed(message)) = verify_and_parse(&github("push", body), body, &secret()) else {
            panic!("a malformed body must be reported as such");
        };
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("column"), "{message}");

        let body = br#"{"after": "6b1f53303a732ccc8c6aae6640399827c15250e3"}"#;
        let Err(WebhookError::Malformed(message)) = verify_and_parse(&github("push", body), body, &secret()) else {
            panic!("a push without a ref must be malformed");
        };
        assert!(message.contains("missing field `ref`"), "{message}");

        let body = br#"{"ref": "refs/heads/main", "after": "HEAD"}"#;
        assert!(matches!(verify_and_parse(&github("push", body), body, &secret()), Err(WebhookError::Malformed(_))));
    }

    #[test]
    fn a_bad_signature_wins_over_a_malformed_body() {
        let body = b"not json at all";
        let headers = headers(&[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", "sha256=00")]);
        assert!(matches!(verify_and_parse(&headers, body, &secret()), Err(WebhookError::BadSignature)));
    }

    #[test]
    fn unknown_forge_headers_are_rejected() {
        let body = fixture("github-push.json");
        let signature = format!("sha256={}", hmac_hex(SECRET, &body));
        let headers = headers(&[("X-Bitbucket-Event", "repo:push"), ("X-Hub-Signature-256", &signature)]);
        assert!(matches!(verify_and_parse(&headers, &body, &secret()), Err(WebhookError::UnknownForge)));
        assert!(matches!(verify_and_parse(&HeaderMap::new(), &body, &secret()), Err(WebhookError::UnknownForge)));
    }

    fn gitlab(event: &str, token: &str) -> HeaderMap {
        headers(&[
            ("X-Gitlab-Event", event),
            ("X-Gitlab-Token", token),
            ("X-Gitlab-Event-UUID", "13792a34-cac6-4fda-95a8-c58e00a3954e"),
            ("X-Gitlab-Webhook-UUID", "c5b5b5d4-7a2d-4f4b-b7b8-1b9d1b2f1a11"),
        ])
    }

    #[test]
    fn gitlab_webhook_uuid_is_the_delivery_without_an_event_uuid() {
        let body = fixture("gitlab-push.json");
        let headers = headers(&[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", SECRET),
            ("X-Gitlab-Webhook-UUID", "c5b5b5d4-7a2d-4f4b-b7b8-1b9d1b2f1a11"),
        ]);
        let event = push(verify_and_parse(&headers, &body, &secret()));
        assert_eq!(event.delivery.as_deref(), Some("c5b5b5d4-7a2d-4f4b-b7b8-1b9d1b2f1a11"));
    }

    #[test]
    fn gitlab_tag_push_builds_the_tagged_commit() {
        let body = fixture("gitlab-tag-push.json");
        let event = push(verify_and_parse(&gitlab("Tag Push Hook", SECRET), &body, &secret()));
        assert_eq!(event.tag.as_deref(), Some("v1.4.0"));
        assert_eq!(event.branch, None);
        assert!(!event.deleted);
        // `after` of an annotated tag is the tag object; the build needs the commit.
        assert_eq!(event.after, fixture_field("gitlab-tag-push.json", "checkout_sha"));
        assert_ne!(event.after, fixture_field("gitlab-tag-push.json", "after"));
    }

    #[test]
    fn gitlab_deletion_has_a_null_checkout_sha() {
        let mut payload: serde_json::Value = serde_json::from_slice(&fixture("gitlab-push.json")).unwrap();
        payload["after"] = ZERO_SHA.into();
        payload["checkout_sha"] = serde_json::Value::Null;
        let body = serde_json::to_vec(&payload).unwrap();
        let event = push(verify_and_parse(&gitlab("Push Hook", SECRET), &body, &secret()));
        assert!(event.deleted);
        assert_eq!(event.after, ZERO_SHA);
    }

    #[test]
    fn gitlab_wrong_token_is_rejected() {
        let body = fixture("gitlab-push.json");
        for token in ["wrong", "", "It's a Secret to Everybody!", "It's a Secret"] {
            assert!(
                matches!(
                    verify_and_parse(&gitlab("Push Hook", token), &body, &secret()),
                    Err(WebhookError::BadSignature)
                ),
                "{token:?}"
            );
        }
    }

    #[test]
    fn gitlab_other_hooks_are_other() {
        let body = br#"{"object_kind": "merge_request"}"#;
        assert_eq!(
            verify_and_parse(&gitlab("Merge Request Hook", SECRET), body, &secret()).unwrap(),
            WebhookEvent::Other("Merge Request Hook".to_string())
        );
    }

    /// Gitea sends its own headers and, for compatibility, GitHub's and Gogs' too.
    fn gitea(body: &[u8]) -> HeaderMap {
        let signature = hmac_hex(SECRET, body);
        let github_style = format!("sha256={signature}");
        headers(&[
            ("X-Gitea-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
            ("X-Gitea-Event", "push"),
            ("X-Gitea-Event-Type", "push"),
            ("X-Gitea-Signature", &signature),
            ("X-Gogs-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
            ("X-Gogs-Event", "push"),
            ("X-Gogs-Signature", &signature),
            ("X-GitHub-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &github_style),
        ])
    }

    #[test]
    fn gitea_wrong_signature_is_rejected_even_with_a_valid_github_one() {
        let body = fixture("gitea-push.json");
        let mut headers = gitea(&body);
        headers.insert(GITEA_SIGNATURE, HeaderValue::from_str(&hmac_hex("another secret", &body)).unwrap());
        assert!(matches!(verify_and_parse(&headers, &body, &secret()), Err(WebhookError::BadSignature)));
    }

    #[test]
    fn gitea_tag_push_arrives_as_push_and_create_is_other() {
        let mut payload: serde_json::Value = serde_json::from_slice(&fixture("gitea-push.json")).unwrap();
        payload["ref"] = "refs/tags/v3.1.0".into();
        let body = serde_json::to_vec(&payload).unwrap();
        let event = push(verify_and_parse(&gitea(&body), &body, &secret()));
        assert_eq!(event.tag.as_deref(), Some("v3.1.0"));

        let body = br#"{"ref": "v3.1.0", "ref_type": "tag", "sha": "6b1f53303a732ccc8c6aae6640399827c15250e3"}"#;
        let mut headers = gitea(body);
        headers.insert(GITEA_EVENT, HeaderValue::from_static("create"));
        assert_eq!(verify_and_parse(&headers, body, &secret()).unwrap(), WebhookEvent::Other("create".to_string()));
    }

    #[test]
    fn gitea_deletion_has_a_zero_after() {
        let mut payload: serde_json::Value = serde_json::from_slice(&fixture("gitea-push.json")).unwrap();
        payload["after"] = ZERO_SHA.into();
        let body = serde_json::to_vec(&payload).unwrap();
        assert!(push(verify_and_parse(&gitea(&body), &body, &secret())).deleted);
    }

    /// Forgejo sends its own headers, and Gitea's, Gogs' and GitHub's for compatibility.
    fn forgejo(body: &[u8]) -> HeaderMap {
        let signature = hmac_hex(SECRET, body);
        let github_style = format!("sha256={signature}");
        headers(&[
            ("X-Forgejo-Delivery", "0c5a8f3e-5b7d-4d1c-9f7e-3c1c2a9d6e01"),
            ("X-Forgejo-Event", "push"),
            ("X-Forgejo-Event-Type", "push"),
            ("X-Forgejo-Signature", &signature),
            ("X-Gitea-Delivery", "0c5a8f3e-5b7d-4d1c-9f7e-3c1c2a9d6e01"),
            ("X-Gitea-Event", "push"),
            ("X-Gitea-Signature", &signature),
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &github_style),
        ])
    }

    #[test]
    fn forgejo_alone_is_enough() {
        let body = fixture("forgejo-push.json");
        let signature = hmac_hex(SECRET, &body);
        let headers = headers(&[("X-Forgejo-Event", "push"), ("X-Forgejo-Signature", &signature)]);
        assert_eq!(push(verify_and_parse(&headers, &body, &secret())).delivery, None);
        let headers = self::headers(&[("X-Forgejo-Event", "push"), ("X-Forgejo-Signature", "00ff")]);
        assert!(matches!(verify_and_parse(&headers, &body, &secret()), Err(WebhookError::BadSignature)));
    }

    #[test]
    fn the_published_fixtures_fit_under_the_body_limit() {
        for name in [
            "github-push.json",
            "github-ping.json",
            "github-delete-branch.json",
            "gitlab-push.json",
            "gitlab-tag-push.json",
            "gitea-push.json",
            "forgejo-push.json",
        ] {
            assert!(fixture(name).len() < MAX_WEBHOOK_BYTES, "{name}");
        }
    }
}
