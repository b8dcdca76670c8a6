//! The webhook half of `forge` against the forges' published payloads.

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
    type Case = (&'static str, &'static str, fn(&[u8]) -> HeaderMap, Forge, &'static str);
    let cases: [Case; 4] = [
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
        assert!(matches!(verify_and_parse(&headers, &body, &secret()), Err(WebhookError::BadSignature)), "{signature}");
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
            matches!(verify_and_parse(&gitlab("Push Hook", token), &body, &secret()), Err(WebhookError::BadSignature)),
            "{token:?}"
        );
    }
}

#[test]
fn gitlab_other_hooks_are_other() {
    let body = br#"{"object_kind": "issue"}"#;
    assert_eq!(
        verify_and_parse(&gitlab("Issue Hook", SECRET), body, &secret()).unwrap(),
        WebhookEvent::Other("Issue Hook".to_string())
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

fn request(event: Result<WebhookEvent, WebhookError>) -> PullRequestEvent {
    match event {
        Ok(WebhookEvent::PullRequest(request)) => request,
        other => panic!("expected a pull request event, got {other:?}"),
    }
}

fn headers_of(forge: &str, event: &str, body: &[u8]) -> HeaderMap {
    match forge {
        "github" => github(event, body),
        "gitlab" => gitlab(event, SECRET),
        "gitea" => {
            let mut h = gitea(body);
            h.insert(GITEA_EVENT, HeaderValue::from_str(event).unwrap());
            h
        }
        _ => {
            let mut h = forgejo(body);
            h.insert(FORGEJO_EVENT, HeaderValue::from_str(event).unwrap());
            h
        }
    }
}

/// Every published request payload, signed as its forge signs it: what it asks for, the head,
/// the branches and the ref the head is fetched through.
#[test]
fn each_forge_request_event_parses_to_its_action() {
    let build = PullRequestAction::Build;
    let closed = PullRequestAction::Closed { merged: false };
    let merged = PullRequestAction::Closed { merged: true };
    /// Fixture, forge, event header, then the expected action, number, source, target, head ref.
    type Case =
        (&'static str, &'static str, &'static str, PullRequestAction, i64, &'static str, &'static str, &'static str);
    #[rustfmt::skip]
    let cases: [Case; 13] = [
        ("github-pull-request-opened.json", "github", "pull_request", build, 1, "master", "bradrydzewski-patch-1", "refs/pull/1/head"),
        ("github-pull-request-synchronize.json", "github", "pull_request", build, 1, "master", "bradrydzewski-patch-1", "refs/pull/1/head"),
        ("github-pull-request-reopened.json", "github", "pull_request", build, 1, "master", "bradrydzewski-patch-1", "refs/pull/1/head"),
        ("github-pull-request-closed.json", "github", "pull_request", closed, 1, "master", "bradrydzewski-patch-1", "refs/pull/1/head"),
        ("gitea-pull-request-opened.json", "gitea", "pull_request", build, 1, "feature", "master", "refs/pull/1/head"),
        ("gitea-pull-request-synchronized.json", "gitea", "pull_request", build, 1, "feature", "master", "refs/pull/1/head"),
        ("gitea-pull-request-merged.json", "gitea", "pull_request", merged, 1, "feature", "master", "refs/pull/1/head"),
        ("forgejo-pull-request-synchronized.json", "forgejo", "pull_request", build, 2, "test-patch-1", "main", "refs/pull/2/head"),
        ("forgejo-pull-request-merged.json", "forgejo", "pull_request", merged, 1, "anbraten-patch-1", "main", "refs/pull/1/head"),
        ("gitlab-merge-request-open.json", "gitlab", "Merge Request Hook", build, 1, "feature", "master", "refs/merge-requests/1/head"),
        ("gitlab-merge-request-reopen.json", "gitlab", "Merge Request Hook", build, 1, "feature", "master", "refs/merge-requests/1/head"),
        ("gitlab-merge-request-update.json", "gitlab", "Merge Request Hook", build, 3, "anbraten-main-patch-05373", "main", "refs/merge-requests/3/head"),
        ("gitlab-merge-request-merge.json", "gitlab", "Merge Request Hook", merged, 1, "feature", "master", "refs/merge-requests/1/head"),
    ];
    for (name, forge, event, action, number, source, target, head_ref) in cases {
        let body = fixture(name);
        let parsed = request(verify_and_parse(&headers_of(forge, event, &body), &body, &secret()));
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let head =
            json["pull_request"]["head"]["sha"].as_str().or(json["object_attributes"]["last_commit"]["id"].as_str());
        assert_eq!(
            (parsed.action, parsed.number, parsed.source.as_str(), parsed.target.as_str(), parsed.head_ref.as_str()),
            (action, number, source, target, head_ref),
            "{name}"
        );
        assert_eq!(Some(parsed.head_sha.as_str()), head, "{name}");
    }
    let body = fixture("gitlab-merge-request-close.json");
    assert_eq!(request(verify_and_parse(&gitlab("Merge Request Hook", SECRET), &body, &secret())).action, closed);
}

#[test]
fn request_events_that_bring_no_new_commit_are_other() {
    for (name, forge, event) in [
        ("github-pull-request-labeled.json", "github", "pull_request"),
        ("gitea-pull-request-edited.json", "gitea", "pull_request"),
        ("gitlab-merge-request-update-without-changes.json", "gitlab", "Merge Request Hook"),
    ] {
        let body = fixture(name);
        assert!(
            matches!(verify_and_parse(&headers_of(forge, event, &body), &body, &secret()), Ok(WebhookEvent::Other(_))),
            "{name}"
        );
    }
}

/// A ref or branch name git refuses is a malformed delivery, never a build labelled with it.
#[test]
fn ref_names_git_would_refuse_are_malformed() {
    for bad in [
        "refs/heads/../../x",
        "refs/heads/a b",
        "refs/heads/a\u{0}b",
        "refs/heads/",
        "refs/heads/x.lock",
        "refs/heads/a~1",
    ] {
        let mut payload: serde_json::Value = serde_json::from_slice(&fixture("github-push.json")).unwrap();
        payload["ref"] = bad.into();
        let body = serde_json::to_vec(&payload).unwrap();
        assert!(
            matches!(verify_and_parse(&github("push", &body), &body, &secret()), Err(WebhookError::Malformed(_))),
            "{bad:?}"
        );
    }
    for field in ["head", "base"] {
        let mut payload: serde_json::Value =
            serde_json::from_slice(&fixture("github-pull-request-opened.json")).unwrap();
        payload["pull_request"][field]["ref"] = "feature/../../etc".into();
        let body = serde_json::to_vec(&payload).unwrap();
        let result = verify_and_parse(&github("pull_request", &body), &body, &secret());
        assert!(matches!(result, Err(WebhookError::Malformed(_))), "{field}: {result:?}");
    }
    let mut payload: serde_json::Value = serde_json::from_slice(&fixture("gitlab-merge-request-open.json")).unwrap();
    payload["object_attributes"]["last_commit"]["id"] = "HEAD".into();
    let body = serde_json::to_vec(&payload).unwrap();
    assert!(matches!(
        verify_and_parse(&gitlab("Merge Request Hook", SECRET), &body, &secret()),
        Err(WebhookError::Malformed(_))
    ));
}

/// The fixtures README names each request payload's source and git blob id: the copies here are
/// those bytes exactly.
#[test]
fn request_fixtures_are_the_published_bytes() {
    let readme = String::from_utf8(fixture("README.md")).unwrap();
    let mut checked = 0;
    for line in readme.lines().filter(|l| l.starts_with("| `") && l.contains("request")) {
        let cells: Vec<&str> = line.split('|').map(|c| c.trim().trim_matches('`')).collect();
        let (name, blob) = (cells[1], cells[5]);
        let oid = git2::Oid::hash_object(git2::ObjectType::Blob, &fixture(name)).unwrap();
        assert_eq!(oid.to_string(), blob, "{name} is not the published file");
        checked += 1;
    }
    assert_eq!(checked, 19, "every request fixture is listed");
}
