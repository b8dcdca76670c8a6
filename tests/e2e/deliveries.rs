//! A webhook is answered as soon as its delivery is stored, and never lost: the answer does not
//! wait for a slow remote, a server killed before it resolved a delivery resolves it after its
//! restart, and neither a replayed body nor a forged one, nor a ref git would refuse, builds.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;
use crate::slow_remote::SlowRemote;

/// The remote's delay in these tests: far above a webhook's answer, well under a deadline.
const SLOW: Duration = Duration::from_secs(3);

/// How long a webhook may take to be answered here even on a loaded machine (the remote takes
/// [`SLOW`] and more to answer a fetch).
const ANSWER_WITHIN: Duration = Duration::from_millis(1500);

/// The repo's directory and name, for `git daemon` to serve.
fn served(repo: &TestRepo) -> (&std::path::Path, String) {
    (repo.path().parent().unwrap(), repo.path().file_name().unwrap().to_str().unwrap().to_string())
}

#[tokio::test]
async fn a_webhook_is_answered_at_once_while_the_remote_takes_seconds() {
    let repo = TestRepo::new();
    let sha = repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo fetched slowly"))]);
    let (base, name) = served(&repo);
    let remote = SlowRemote::start(base, SLOW).await;
    let mut config = RepoConfig::new("shop", &repo);
    config.url = remote.url(&name).into();
    let app = spawn_app(&[config]).await;

    let body = push_payload("github-push.json", "refs/heads/main", &sha);
    let headers = github_headers("push", &body, &unique_delivery());
    let sent = Instant::now();
    let (status, answer) = app.deliver("shop", &headers, body).await;
    let answered = sent.elapsed();
    assert_eq!(status, 202, "{answer}");
    assert!(answered < ANSWER_WITHIN, "answered after {answered:?}");
    let build = app.wait_for_build(answer["build"].as_i64().unwrap()).await;
    assert_eq!(build["status"], "passed", "{build:#}");
    assert!(sent.elapsed() >= SLOW, "the build needed the slow fetch");
    app.stop().await;
}

#[tokio::test]
async fn a_replayed_or_forged_delivery_and_a_ref_git_refuses_build_nothing() {
    let repo = TestRepo::new();
    let sha = repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo once"))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    let body = push_payload("github-push.json", "refs/heads/main", &sha);
    let (status, first) = app.deliver("shop", &github_headers("push", &body, "captured-1"), body.clone()).await;
    assert_eq!(status, 202, "{first}");

    // The captured signed body, sent again under a new delivery id: the signature does not cover
    // the id, so only the body tells it is a replay.
    let (status, replay) = app.deliver("shop", &github_headers("push", &body, "replayed-2"), body.clone()).await;
    assert_eq!((status, replay["reason"].as_str()), (200, Some("this delivery was handled before")));
    // The same delivery id with another body is a redelivery of the first: nothing either.
    let other = push_payload("github-push.json", "refs/heads/main", &"1".repeat(40));
    assert_eq!(app.deliver("shop", &github_headers("push", &other, "captured-1"), other).await.0, 200);

    // Forged: signed with another secret, or not signed.
    let forged = push_payload("github-push.json", "refs/heads/evil", &sha);
    let signature = format!("sha256={}", crate::client::hmac_hex("not the secret", &forged));
    let headers = vec![("X-GitHub-Event", "push".to_string()), ("X-Hub-Signature-256", signature)];
    assert_eq!(app.deliver("shop", &headers, forged.clone()).await.0, 401);
    assert_eq!(app.deliver("shop", &[("X-GitHub-Event", "push".to_string())], forged).await.0, 401);

    // Refs git refuses: a 400, not a build labelled with them.
    for bad in ["refs/heads/../../x", "refs/heads/a b", "refs/heads/a\u{0}b", "refs/heads/x..y"] {
        let body = push_payload("github-push.json", bad, &sha);
        let (status, answer) = app.deliver("shop", &github_headers("push", &body, &unique_delivery()), body).await;
        assert_eq!(status, 400, "{bad:?}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains("not a ref name git accepts"), "{answer}");
    }
    app.wait_for_build(first["build"].as_i64().unwrap()).await;
    let builds = app.builds("shop").await;
    assert_eq!(builds.len(), 1, "{builds:#?}");
    app.stop().await;
}

/// A server killed while it fetched for a delivery resolves that delivery when it starts again:
/// the push is built once, under the build id the webhook was answered with.
#[tokio::test]
async fn a_stored_delivery_is_resolved_after_a_restart() {
    let repo = TestRepo::new();
    let sha = repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo after the restart"))]);
    let (base, name) = served(&repo);
    // Long enough that the server is killed mid-fetch.
    let remote = SlowRemote::start(base, Duration::from_secs(600)).await;
    let data_dir = tempfile::TempDir::new().unwrap();
    let config = data_dir.path().join("gantry.toml");
    let mut repo_config = RepoConfig::new("shop", &repo);
    repo_config.url = remote.url(&name).into();
    std::fs::write(&config, config_toml(data_dir.path(), &[repo_config], 2)).unwrap();
    let listen = free_loopback_port();

    let mut server = ServerProcess::start(&config, &listen).await;
    let api = crate::client::Client { http: server.client.clone(), base: server.base.clone() };
    let body = push_payload("github-push.json", "refs/heads/main", &sha);
    let (status, answer) = api.deliver("shop", &github_headers("push", &body, &unique_delivery()), body).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["build"].as_i64().unwrap();
    assert_eq!(server.build(id).await["status"], "queued", "its delivery is being resolved");
    server.kill9();

    remote.set_delay(Duration::ZERO);
    let server = ServerProcess::start(&config, &listen).await;
    let start = Instant::now();
    let build: Value = loop {
        let build = server.build(id).await;
        if is_final(&build["status"]) {
            break build;
        }
        assert!(start.elapsed() < BUILD_DEADLINE, "never resolved after the restart: {build:#}");
        tokio::time::sleep(POLL_EVERY).await;
    };
    assert_eq!(build["status"], "passed", "{build:#}");
    let builds: Value =
        server.client.get(format!("{}/api/repos/shop/builds", server.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(builds.as_array().unwrap().len(), 1, "{builds:#}");
}
