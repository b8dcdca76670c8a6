//! Pull and merge requests through the real server, with the forges' published payloads signed as
//! they sign them: each forge's request builds its head, fetched through the request's ref of the
//! configured repository (the head is on no branch there, as a fork's is); a newer push
//! supersedes the request's build; closing cancels what is queued; `on.pull_requests` skips what
//! it does not build; a head the ref does not reach errors; builds of requests get no secrets.

use serde_json::{json, Value};

use crate::forge_standin::repo_table;
use crate::helpers::*;

/// The request's commits live here as a fork's would: only under the forge's request ref (the
/// branch they were made on is deleted again), on top of `main`.
fn request_head(repo: &TestRepo, head_ref: &str, files: &[(&str, &str)]) -> String {
    let sha = repo.commit("fork-work", files);
    let git = git2::Repository::open(repo.path()).unwrap();
    git.reference(head_ref, sha.parse().unwrap(), true, "the forge updates the request's ref").unwrap();
    git.find_branch("fork-work", git2::BranchType::Local).unwrap().delete().unwrap();
    sha
}

/// A published request payload of `fixture` pointed at request `number`, head `sha` from
/// `source` into `target`, with `action` (GitLab: `object_attributes.action`).
fn request_payload(fixture: &str, number: i64, sha: &str, source: &str, target: &str, action: &str) -> Vec<u8> {
    let path = workspace_path(&format!("tests/fixtures/webhooks/{fixture}"));
    let mut payload: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    if payload.get("object_attributes").is_some() {
        let mr = &mut payload["object_attributes"];
        mr["iid"] = json!(number);
        mr["action"] = json!(action);
        mr["last_commit"]["id"] = json!(sha);
        mr["source_branch"] = json!(source);
        mr["target_branch"] = json!(target);
        if action == "update" {
            mr["oldrev"] = json!("0".repeat(39) + "1");
        }
    } else {
        payload["action"] = json!(action);
        payload["number"] = json!(number);
        payload["pull_request"]["number"] = json!(number);
        payload["pull_request"]["head"]["sha"] = json!(sha);
        payload["pull_request"]["head"]["ref"] = json!(source);
        payload["pull_request"]["base"]["ref"] = json!(target);
        payload["pull_request"]["merged"] = json!(action == "merged");
        if action == "merged" {
            payload["action"] = json!("closed");
        }
    }
    serde_json::to_vec(&payload).unwrap()
}

/// The headers `forge` sends with a request event of `body`.
fn request_headers(forge: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let delivery = unique_delivery();
    match forge {
        "github" => github_headers("pull_request", body, &delivery),
        "gitlab" => vec![
            ("X-Gitlab-Event", "Merge Request Hook".into()),
            ("X-Gitlab-Token", SECRET.into()),
            ("X-Gitlab-Event-UUID", delivery),
        ],
        "gitea" => vec![
            ("X-Gitea-Event", "pull_request".into()),
            ("X-Gitea-Delivery", delivery),
            ("X-Gitea-Signature", hmac_hex(body)),
        ],
        _ => vec![
            ("X-Forgejo-Event", "pull_request".into()),
            ("X-Forgejo-Delivery", delivery),
            ("X-Forgejo-Signature", hmac_hex(body)),
        ],
    }
}

async fn send(app: &TestApp, forge: &str, body: Vec<u8>) -> (u16, Value) {
    let headers = request_headers(forge, &body);
    app.deliver("shop", &headers, body).await
}

fn id_of(answer: &Value) -> i64 {
    answer["build"].as_i64().unwrap_or_else(|| panic!("no build in {answer}"))
}

/// Every forge's request event builds the head, which is on no branch of the repo: only the
/// forge's request ref reaches it. The build records the request and the API and page show it.
#[tokio::test]
async fn each_forge_request_builds_its_head_through_the_request_ref() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo on main"))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    let cases = [
        ("github", "github-pull-request-opened.json", "opened", 7, "refs/pull/7/head"),
        ("gitea", "gitea-pull-request-synchronized.json", "synchronized", 8, "refs/pull/8/head"),
        ("forgejo", "forgejo-pull-request-opened.json", "opened", 9, "refs/pull/9/head"),
        ("gitlab", "gitlab-merge-request-update.json", "update", 10, "refs/merge-requests/10/head"),
    ];
    for (forge, fixture, action, number, head_ref) in cases {
        let script = format!("echo request {number} of $GANTRY_BRANCH");
        let sha = request_head(&repo, head_ref, &[(".gantry.yml", &one_stage_pipeline(&script))]);
        let body = request_payload(fixture, number, &sha, "feature/x", "main", action);
        let (status, answer) = send(&app, forge, body).await;
        assert_eq!(status, 202, "{forge}: {answer}");
        let id = id_of(&answer);
        let build = app.wait_for_build(id).await;
        assert_eq!(build["status"], "passed", "{forge}: {build:#}\n{}", app.log(id, None).await);
        assert_eq!(build["commit"], sha.as_str());
        assert_eq!((build["ref_kind"].as_str(), build["branch"].as_str()), (Some("pull_request"), Some("feature/x")));
        assert_eq!(
            build["pull_request"],
            json!({ "number": number, "source": "feature/x", "target": "main" }),
            "{forge}"
        );
        let log = app.log(id, Some("only")).await;
        assert!(log.contains(&format!("request {number} of feature/x")), "{log}");
        let (_, page) = app.get_text(&format!("/builds/{id}")).await;
        assert!(shows_escaped(&page, &format!("#{number} feature/x → main")), "the page shows the request");
    }
    app.stop().await;
}

/// A newer push to a request stops its running build; closing the request cancels its queued
/// one; other requests and branches are left alone.
#[tokio::test]
async fn a_newer_push_supersedes_the_requests_build_and_closing_cancels_the_queued_one() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("sleep 600"))]);
    let app = spawn_app_with(&[RepoConfig::new("shop", &repo)], 1).await;
    let slow = request_head(&repo, "refs/pull/7/head", &[(".gantry.yml", &one_stage_pipeline("sleep 600"))]);
    let (_, first) =
        send(&app, "github", request_payload("github-pull-request-opened.json", 7, &slow, "f", "main", "opened")).await;
    let first = id_of(&first);
    app.wait_build_until(first, BUILD_DEADLINE, "ran", |b| b["status"] == "running").await;

    let newer = request_head(&repo, "refs/pull/7/head", &[(".gantry.yml", &one_stage_pipeline("sleep 600"))]);
    let body = request_payload("github-pull-request-synchronize.json", 7, &newer, "f", "main", "synchronize");
    let (status, second) = send(&app, "github", body).await;
    assert_eq!(status, 202, "{second}");
    let second = id_of(&second);
    let stopped = app.wait_for_build(first).await;
    assert_eq!(stopped["status"], "cancelled", "{stopped:#}");
    assert!(stopped["error"].as_str().unwrap().contains("superseded"), "{stopped:#}");
    // Only one slot: the second build runs now; a third request's build waits behind it.
    app.wait_build_until(second, BUILD_DEADLINE, "ran", |b| b["status"] == "running").await;
    let other = request_head(&repo, "refs/pull/8/head", &[("x", "1")]);
    let (_, third) =
        send(&app, "gitea", request_payload("gitea-pull-request-opened.json", 8, &other, "g", "main", "opened")).await;
    let third = id_of(&third);

    // Closing request 8 cancels its queued build; merging request 7 leaves its running one.
    let body = request_payload("gitea-pull-request-closed.json", 8, &other, "g", "main", "closed");
    let (status, answer) = send(&app, "gitea", body).await;
    assert_eq!((status, &answer["cancelled"]), (202, &json!([third])), "{answer}");
    let closed = app.build(third).await;
    assert_eq!(
        (closed["status"].as_str(), closed["error"].as_str()),
        (Some("cancelled"), Some("pull request #8 was closed"))
    );
    let body = request_payload("github-pull-request-closed.json", 7, &newer, "f", "main", "merged");
    let (status, answer) = send(&app, "github", body).await;
    assert_eq!((status, &answer["cancelled"]), (202, &json!([])), "{answer}");
    assert_eq!(app.build(second).await["status"], "running");
    app.client.post(app.url(&format!("/api/builds/{second}/cancel"))).send().await.unwrap();
    app.wait_for_build(second).await;
    app.stop().await;
}

/// `on.pull_requests` decides by target branch; what it leaves out ends `skipped`, saying why,
/// and nothing is provisioned for it.
#[tokio::test]
async fn on_pull_requests_skips_the_requests_it_does_not_build() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("true"))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    let into_main = format!("{}on:\n  pull_requests:\n    branches: [main]\n", one_stage_pipeline("echo built"));
    let sha = request_head(&repo, "refs/merge-requests/3/head", &[(".gantry.yml", &into_main)]);
    let (_, answer) =
        send(&app, "gitlab", request_payload("gitlab-merge-request-open.json", 3, &sha, "f", "develop", "open")).await;
    let skipped = app.wait_for_build(id_of(&answer)).await;
    assert_eq!(skipped["status"], "skipped", "{skipped:#}");
    assert_eq!(skipped["error"], "the pipeline's on.pull_requests does not build requests into develop");
    assert!(skipped["stages"].as_array().unwrap().is_empty());
    let (_, answer) =
        send(&app, "gitlab", request_payload("gitlab-merge-request-reopen.json", 3, &sha, "f", "main", "reopen")).await;
    assert_eq!(app.wait_for_build(id_of(&answer)).await["status"], "passed");

    let off = format!("{}on:\n  pull_requests: false\n", one_stage_pipeline("echo built"));
    let sha = request_head(&repo, "refs/merge-requests/4/head", &[(".gantry.yml", &off)]);
    let (_, answer) =
        send(&app, "gitlab", request_payload("gitlab-merge-request-open.json", 4, &sha, "f", "main", "open")).await;
    let skipped = app.wait_for_build(id_of(&answer)).await;
    assert_eq!(
        (skipped["status"].as_str(), skipped["error"].as_str()),
        (Some("skipped"), Some("the pipeline's on.pull_requests is false"))
    );
    // A GitLab update that only edits the title builds nothing.
    let body =
        std::fs::read(workspace_path("tests/fixtures/webhooks/gitlab-merge-request-update-without-changes.json"))
            .unwrap();
    assert_eq!(send(&app, "gitlab", body).await.0, 202);
    assert_eq!(app.builds("shop").await.len(), 3);
    app.stop().await;
}

/// A head the request's ref does not reach (a payload naming a commit of another branch) ends as
/// an errored build that says so, and runs nothing.
#[tokio::test]
async fn a_head_the_request_ref_does_not_reach_errors_the_build() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("true"))]);
    let elsewhere = repo.commit("other", &[("x", "1")]);
    request_head(&repo, "refs/pull/5/head", &[("y", "2")]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    let (status, answer) =
        send(&app, "github", request_payload("github-pull-request-opened.json", 5, &elsewhere, "f", "main", "opened"))
            .await;
    assert_eq!(status, 202, "{answer}");
    let build = app.wait_for_build(id_of(&answer)).await;
    assert_eq!(build["status"], "errored", "{build:#}");
    let error = build["error"].as_str().unwrap();
    assert!(error.contains(&format!("commit {elsewhere} is not reachable through refs/pull/5/head")), "{error}");
    assert!(build["stages"].as_array().unwrap().is_empty());
    // A request whose ref does not exist at all errors the same way.
    let (_, answer) =
        send(&app, "github", request_payload("github-pull-request-opened.json", 6, &elsewhere, "f", "main", "opened"))
            .await;
    let build = app.wait_for_build(id_of(&answer)).await;
    assert!(build["error"].as_str().unwrap().contains("refs/pull/6/head"), "{build:#}");
    app.stop().await;
}

/// A request's build gets no secrets: the step that names one fails saying why. The repo's
/// `secrets_for_pull_requests = true` lets them through.
#[tokio::test]
async fn a_request_build_gets_secrets_only_when_the_repo_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("token");
    std::fs::write(&secret_file, "s3cr3t-for-prs").unwrap();
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("true"))]);
    let pipeline =
        "version: 1\nhosts:\n  app: {}\nstages:\n  - name: use\n    host: app\n    secrets: [API_TOKEN]\n    \
                    run: test \"$API_TOKEN\" = s3cr3t-for-prs\n";
    let sha = request_head(&repo, "refs/pull/3/head", &[(".gantry.yml", pipeline)]);
    let mut closed = RepoConfig::new("shop", &repo);
    closed.secrets = vec![("API_TOKEN", secret_file.clone())];
    let keys = format!(
        "secrets = {{ API_TOKEN = {{ file = {:?} }} }}\nsecrets_for_pull_requests = true\n",
        secret_file.to_str().unwrap()
    );
    let app = spawn_app_configured(&[closed], 4, "", &repo_table("open", &repo, &keys)).await;

    let (_, answer) =
        send(&app, "github", request_payload("github-pull-request-opened.json", 3, &sha, "f", "main", "opened")).await;
    let id = id_of(&answer);
    let build = app.wait_for_build(id).await;
    assert_ne!(build["status"], "passed", "{build:#}");
    let said = format!("{} {}", build["error"], app.log(id, None).await);
    assert!(said.contains("secret API_TOKEN is not available to this build"), "{said}");
    assert!(said.contains("secrets_for_pull_requests"), "{said}");

    let body = request_payload("github-pull-request-opened.json", 3, &sha, "f", "main", "opened");
    let headers = request_headers("github", &body);
    let (_, answer) = app.deliver("open", &headers, body).await;
    let build = app.wait_for_build(id_of(&answer)).await;
    assert_eq!(build["status"], "passed", "{build:#}");
    app.stop().await;
}
