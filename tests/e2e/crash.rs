//! A server killed with SIGKILL in the middle of a build: after a restart the build is
//! `interrupted` and every process its hosts started is gone.

use std::time::Instant;

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn a_build_interrupted_by_a_crash_is_marked_and_its_host_processes_killed() {
    let repo = TestRepo::new();
    repo.commit(
        "main",
        &[(
            ".gantry.yml",
            "version: 1\nhosts:\n  app:\n    setup: (setsid sleep 900 >/dev/null 2>&1 &)\n\
             stages:\n  - name: hang\n    host: app\n    run: sleep 900\n",
        )],
    );
    let data_dir = tempfile::TempDir::new().unwrap();
    let config = data_dir.path().join("gantry.toml");
    std::fs::write(&config, config_toml(data_dir.path(), &[RepoConfig::new("r", &repo)], 2)).unwrap();
    let listen = free_loopback_port();
    let hosts_dir = data_dir.path().join("hosts");

    let mut server = ServerProcess::start(&config, &listen).await;
    let response = server
        .client
        .post(format!("{}/api/repos/r/builds", server.base))
        .json(&serde_json::json!({ "branch": "main" }))
        .send()
        .await
        .unwrap();
    let id = response.json::<Value>().await.unwrap()["build"].as_i64().unwrap();
    let start = Instant::now();
    loop {
        let build = server.build(id).await;
        let hanging = build["stages"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == "hang" && s["status"] == "running"));
        if hanging {
            break;
        }
        assert!(start.elapsed() < BUILD_DEADLINE, "the stage never started: {build:#}");
        tokio::time::sleep(POLL_EVERY).await;
    }

    server.kill9();
    let orphans = host_processes_under(&hosts_dir);
    assert!(orphans.len() >= 2, "the daemon and the stage outlive the server: {orphans:?}");

    let server = ServerProcess::start(&config, &listen).await;
    let start = Instant::now();
    loop {
        let build = server.build(id).await;
        let left = host_processes_under(&hosts_dir);
        if build["status"] == "interrupted" && left.is_empty() {
            assert_ne!(step(&build, "hang")["status"], "running");
            break;
        }
        assert!(start.elapsed() < EVENT_DEADLINE, "not cleaned up after restart: {build:#} {left:?}");
        tokio::time::sleep(POLL_EVERY).await;
    }
    let dirs: Vec<_> = std::fs::read_dir(&hosts_dir).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(dirs.is_empty(), "host directories left: {:?}", dirs.iter().map(|d| d.path()).collect::<Vec<_>>());
}
