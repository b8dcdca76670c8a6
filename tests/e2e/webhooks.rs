//! `POST /hooks/{repo}` with the payloads the forges publish, signed as they sign them, and every
//! kind of bad delivery: each gets its 4xx and the server keeps serving.

use serde_json::Value;

use crate::helpers::*;

/// The headers and the body of one webhook delivery.
type Delivery = (Vec<(&'static str, String)>, Vec<u8>);

async fn app_with_repo() -> (TestApp, TestRepo, String) {
    let repo = TestRepo::new();
    let sha = repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo built"))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    (app, repo, sha)
}

async fn assert_still_serving(app: &TestApp) {
    let repos = app.get_json("/api/repos").await;
    assert_eq!(repos[0]["name"], "shop");
}

#[tokio::test]
async fn each_forge_push_queues_a_build_of_the_pushed_commit() {
    let (app, _repo, sha) = app_with_repo().await;
    // Each forge's published push payload, signed as that forge signs it.
    let github = push_payload("github-push.json", "refs/heads/main", &sha);
    let gitlab = push_payload("gitlab-push.json", "refs/heads/main", &sha);
    let gitea = push_payload("gitea-push.json", "refs/heads/main", &sha);
    let forgejo = push_payload("forgejo-push.json", "refs/heads/main", &sha);
    let deliveries: Vec<Delivery> = vec![
        (github_headers("push", &github, &unique_delivery()), github),
        (
            vec![
                ("X-Gitlab-Event", "Push Hook".into()),
                ("X-Gitlab-Token", SECRET.into()),
                ("X-Gitlab-Event-UUID", unique_delivery()),
            ],
            gitlab,
        ),
        (
            vec![
                ("X-Gitea-Event", "push".into()),
                ("X-Gitea-Delivery", unique_delivery()),
                ("X-Gitea-Signature", hmac_hex(&gitea)),
            ],
            gitea,
        ),
        (
            vec![
                ("X-Forgejo-Event", "push".into()),
                ("X-Forgejo-Delivery", unique_delivery()),
                ("X-Forgejo-Signature", hmac_hex(&forgejo)),
            ],
            forgejo,
        ),
    ];
    let mut ids = Vec::new();
    for (headers, body) in deliveries {
        let forge = headers[0].0;
        let (status, answer) = app.deliver("shop", &headers, body).await;
        assert_eq!(status, 202, "{forge}: {answer}");
        ids.push(answer["build"].as_i64().unwrap());
    }
    // The last delivery supersedes the earlier ones of the same branch; it must pass.
    let last = app.wait_for_build(*ids.last().unwrap()).await;
    assert_eq!(last["status"], "passed");
    assert_eq!(last["commit"], sha.as_str());
    for id in ids {
        let build = app.wait_for_build(id).await;
        assert!(matches!(build["status"].as_str(), Some("passed" | "cancelled")), "{build:#}");
        assert_eq!(build["trigger"], "push");
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_deliveries_get_their_4xx_and_the_server_keeps_serving() {
    let (app, _repo, sha) = app_with_repo().await;
    let body = push_payload("github-push.json", "refs/heads/main", &sha);

    // A signature made with another secret.
    let mut headers = github_headers("push", &body, &unique_delivery());
    headers[2].1 = format!("sha256={}", "0".repeat(64));
    assert_eq!(app.deliver("shop", &headers, body.clone()).await.0, 401);

    // No signature at all.
    let headers = vec![("X-GitHub-Event", "push".to_string())];
    assert_eq!(app.deliver("shop", &headers, body.clone()).await.0, 401);

    // The body changed after signing.
    let headers = github_headers("push", &body, &unique_delivery());
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    assert_eq!(app.deliver("shop", &headers, tampered).await.0, 401);

    // GitLab with the wrong token.
    let gitlab = push_payload("gitlab-push.json", "refs/heads/main", &sha);
    let headers = vec![("X-Gitlab-Event", "Push Hook".to_string()), ("X-Gitlab-Token", "wrong".to_string())];
    assert_eq!(app.deliver("shop", &headers, gitlab).await.0, 401);

    // Correctly signed, but not JSON.
    let garbage = b"{\"ref\": ".to_vec();
    let headers = github_headers("push", &garbage, &unique_delivery());
    assert_eq!(app.deliver("shop", &headers, garbage).await.0, 400);

    // No forge headers.
    assert_eq!(app.deliver("shop", &[], body.clone()).await.0, 400);

    // An unknown repo.
    let headers = github_headers("push", &body, &unique_delivery());
    assert_eq!(app.deliver("nope", &headers, body.clone()).await.0, 404);

    // Too large.
    let huge = vec![b' '; 30 * 1024 * 1024];
    let headers = github_headers("push", &huge, &unique_delivery());
    assert_eq!(app.deliver("shop", &headers, huge).await.0, 413);

    assert_still_serving(&app).await;
    assert!(app.builds("shop").await.is_empty(), "no bad delivery queued a build");
    app.stop().await;
}

#[tokio::test]
async fn ping_deletion_and_duplicates_build_nothing_and_a_filtered_branch_is_skipped() {
    let repo = TestRepo::new();
    let sha = repo.commit(
        "main",
        &[(".gantry.yml", &format!("{}on:\n  branches: [main, \"release/*\"]\n", one_stage_pipeline("echo hi")))],
    );
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;

    let ping = std::fs::read(workspace_path("tests/fixtures/webhooks/github-ping.json")).unwrap();
    let headers = github_headers("ping", &ping, &unique_delivery());
    assert_eq!(app.deliver("shop", &headers, ping).await.0, 200);

    let deletion = std::fs::read(workspace_path("tests/fixtures/webhooks/github-delete-branch.json")).unwrap();
    let headers = github_headers("push", &deletion, &unique_delivery());
    assert_eq!(app.deliver("shop", &headers, deletion).await.0, 200);

    let other_event = br#"{"action": "opened"}"#.to_vec();
    let headers = github_headers("issues", &other_event, &unique_delivery());
    assert_eq!(app.deliver("shop", &headers, other_event).await.0, 202);

    assert!(app.builds("shop").await.is_empty());

    // A branch the pipeline's `on.branches` leaves out: answered at once, then skipped, saying why.
    repo.commit("feature/x", &[("README", "x")]);
    let feature = repo.commit("feature/x", &[("README", "y")]);
    let body = push_payload("github-push.json", "refs/heads/feature/x", &feature);
    let headers = github_headers("push", &body, &unique_delivery());
    let (status, answer) = app.deliver("shop", &headers, body).await;
    assert_eq!(status, 202, "{answer}");
    let skipped = app.wait_for_build(answer["build"].as_i64().unwrap()).await;
    assert_eq!(skipped["status"], "skipped", "{skipped:#}");
    assert_eq!(skipped["error"], "the pipeline's on.branches does not build branch feature/x");
    assert!(skipped["stages"].as_array().unwrap().is_empty() && skipped["started_at"].is_null(), "nothing ran");
    assert!(app.host_dirs().is_empty());

    // One delivery, sent twice (forges redeliver): one build.
    let body = push_payload("github-push.json", "refs/heads/main", &sha);
    let headers = github_headers("push", &body, "the-same-delivery");
    let (status, first) = app.deliver("shop", &headers, body.clone()).await;
    assert_eq!(status, 202);
    let (status, _) = app.deliver("shop", &headers, body).await;
    assert_eq!(status, 200);
    assert_eq!(app.builds("shop").await.len(), 2);
    app.wait_for_build(first["build"].as_i64().unwrap()).await;

    // A matching release branch builds.
    let release = repo.commit("release/1.0", &[("README", "r")]);
    let body = push_payload("github-push.json", "refs/heads/release/1.0", &release);
    let headers = github_headers("push", &body, &unique_delivery());
    let (status, answer) = app.deliver("shop", &headers, body).await;
    assert_eq!(status, 202);
    let build = app.wait_for_build(answer["build"].as_i64().unwrap()).await;
    assert_eq!(build["branch"], "release/1.0");
    assert_eq!(build["status"], "passed");
    app.stop().await;
}

#[tokio::test]
async fn a_tag_push_builds_the_tag() {
    let (app, repo, sha) = app_with_repo().await;
    repo.tag("v1.0.0", &sha);
    let body = push_payload("github-push.json", "refs/tags/v1.0.0", &sha);
    let headers = github_headers("push", &body, &unique_delivery());
    let (status, answer) = app.deliver("shop", &headers, body).await;
    assert_eq!(status, 202, "{answer}");
    let build: Value = app.wait_for_build(answer["build"].as_i64().unwrap()).await;
    assert_eq!(build["status"], "passed");
    assert_eq!(build["commit"], sha.as_str());
    assert_eq!(build["branch"], "v1.0.0");
    app.stop().await;
}
