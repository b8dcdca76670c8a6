//! The git poller: repos without webhooks are fetched every `poll_interval`.

use std::time::Instant;

use crate::helpers::*;

#[tokio::test]
async fn the_poller_builds_moved_heads_but_not_old_ones() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo old"))]);
    let mut config = RepoConfig::new("polled", &repo);
    config.poll_interval = Some("100ms");
    let app = spawn_app(&[config]).await;

    // Wait until the first poll has recorded the heads as they are (the API shows when the repo
    // was last polled), then move main.
    let start = Instant::now();
    while app.get_json("/api/repos").await[0]["last_polled_at"].is_null() {
        assert!(start.elapsed() < EVENT_DEADLINE, "the poller never fetched");
        tokio::time::sleep(POLL_EVERY).await;
    }
    let new = repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo new"))]);

    let start = Instant::now();
    let build = loop {
        let builds = app.builds("polled").await;
        if let Some(build) = builds.first() {
            break build.clone();
        }
        assert!(start.elapsed() < EVENT_DEADLINE, "the poller never queued the new head");
        tokio::time::sleep(POLL_EVERY).await;
    };
    assert_eq!(build["commit"], new.as_str());
    assert_eq!(build["trigger"], "poll");
    let done = app.wait_for_build(build["id"].as_i64().unwrap()).await;
    assert_eq!(done["status"], "passed");
    assert_eq!(app.builds("polled").await.len(), 1, "the old head was not built");
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_repo_shows_its_fetch_error_and_the_server_keeps_serving() {
    let missing = tempfile::TempDir::new().unwrap();
    let config = RepoConfig {
        name: "gone".to_string(),
        url: missing.path().join("no-such-repo"),
        poll_interval: Some("100ms"),
        cancel_superseded: true,
        provider: None,
        secrets: Vec::new(),
    };
    let app = spawn_app(&[config]).await;

    let error = app.wait_repo_error().await;
    assert!(error.starts_with("fetching repo \"gone\" failed: "), "the error names what failed: {error}");
    let (status, page) = app.get_text("/repos/gone").await;
    assert_eq!(status, 200);
    assert!(shows_escaped(&page, &error), "the repo page shows the fetch error");
    assert!(page.contains("no-such-repo"), "the repo page shows the URL");

    // Asked for by hand, the fetch error comes straight back; pushed by a forge, the build is
    // recorded as errored with the reason, not lost.
    let response = app
        .client
        .post(app.url("/api/repos/gone/builds"))
        .json(&serde_json::json!({ "branch": "main" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert!(response.text().await.unwrap().contains("see the repo's page"));
    let (status, body) = app.github_push("gone", "refs/heads/main", &"ab".repeat(20)).await;
    assert_eq!(status, 202, "{body}");
    let build = app.wait_for_build(body["build"].as_i64().unwrap()).await;
    assert_eq!(build["status"], "errored");
    assert!(build["error"].as_str().unwrap().contains("fetching repo \"gone\" failed"), "{build:#}");
    app.stop().await;
}

/// A repository on a host behind ssh, as a team's self-hosted forge serves it: fetched by git
/// over the suite's real sshd. With the server's own ssh settings (batch mode), a host key that
/// is not in `known_hosts` fails the fetch at once, with ssh's reason on the repo; with the
/// operator's `GIT_SSH_COMMAND` naming the key and the known host key, the repo builds.
#[tokio::test]
async fn a_repo_over_ssh_is_fetched_only_from_a_known_host_key() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo over-ssh"))]);
    let sshd = crate::sshd::Sshd::start();
    let url = format!("ssh://{}@{}:{}{}", sshd.user, sshd.address, sshd.port, repo.path().display());
    let config =
        RepoConfig { url: url.clone().into(), poll_interval: Some("100ms"), ..RepoConfig::new("over-ssh", &repo) };

    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("gantry.toml");
    std::fs::write(&file, config_toml(dir.path(), std::slice::from_ref(&config), 2)).unwrap();
    let server = ServerProcess::start(&file, &free_loopback_port()).await;
    let error = server.wait_repo_error().await;
    assert!(error.contains("Host key verification failed"), "{error}");
    drop(server);

    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("[{}]:{} {}\n", sshd.address, sshd.port, sshd.host_key_public)).unwrap();
    let ssh = format!(
        "ssh -o BatchMode=yes -o IdentitiesOnly=yes -i {} -o UserKnownHostsFile={}",
        sshd.client_key.display(),
        known_hosts.display()
    );
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("gantry.toml");
    std::fs::write(&file, config_toml(dir.path(), &[config], 2)).unwrap();
    let server =
        ServerProcess::start_with_env(&file, &free_loopback_port(), &[("GIT_SSH_COMMAND", ssh.as_str())]).await;
    let id = server.api().trigger("over-ssh", "main").await;
    let build = server.wait_for_build(id).await;
    assert_eq!(build["status"], "passed", "{build:#}");
}
