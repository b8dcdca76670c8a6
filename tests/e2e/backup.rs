//! `gantry backup` while builds run, and `gantry restore` into a fresh data directory: the
//! restored server shows every finished build with its log, and the build the copy caught
//! running as interrupted.

use crate::helpers::*;

#[tokio::test]
async fn a_backup_taken_while_a_build_runs_restores_every_finished_build() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo finished-build-$GANTRY_BUILD"))]);
    repo.commit("slow", &[(".gantry.yml", &one_stage_pipeline("echo started; sleep 600"))]);
    let app = spawn_app(&[RepoConfig::new("r", &repo)]).await;
    let mut finished = Vec::new();
    for _ in 0..3 {
        let id = app.trigger("r", "main").await;
        assert_eq!(app.wait_for_build(id).await["status"], "passed");
        finished.push(id);
    }
    let running = app.trigger("r", "slow").await;
    app.wait_build_until(running, BUILD_DEADLINE, "ran its stage", |b| {
        b["stages"].as_array().is_some_and(|s| s.iter().any(|s| s["kind"] == "stage" && s["status"] == "running"))
    })
    .await;

    let backups = tempfile::TempDir::new().unwrap();
    let copy = backups.path().join("gantry-backup.db");
    let config = app.data_dir.path().join("gantry.toml");
    std::fs::write(&config, config_toml(app.data_dir.path(), &[RepoConfig::new("r", &repo)], 2)).unwrap();
    gantry_command(&["backup", copy.to_str().unwrap(), "--config", config.to_str().unwrap()], "").unwrap();
    // The server kept running: the build the copy caught is still going.
    assert_eq!(app.build(running).await["status"], "running");

    let restored_dir = tempfile::TempDir::new().unwrap();
    let restored_config = restored_dir.path().join("gantry.toml");
    std::fs::write(&restored_config, config_toml(restored_dir.path(), &[RepoConfig::new("r", &repo)], 2)).unwrap();
    let restore = ["restore", copy.to_str().unwrap(), "--config", restored_config.to_str().unwrap()];
    gantry_command(&restore, "").unwrap();
    // A second restore would overwrite a database: refused, and it says what to do.
    let refused = gantry_command(&restore, "").unwrap_err();
    assert!(refused.contains("exists: stop the server"), "{refused}");
    // Not a database at all: refused before anything is touched.
    let junk = backups.path().join("junk.db");
    std::fs::write(&junk, "not a database").unwrap();
    let junk_config = backups.path().join("junk.toml");
    std::fs::write(&junk_config, config_toml(&backups.path().join("junk"), &[], 1)).unwrap();
    let refused = gantry_command(&["restore", junk.to_str().unwrap(), "--config", junk_config.to_str().unwrap()], "")
        .unwrap_err();
    assert!(refused.contains("is not a usable Gantry backup"), "{refused}");
    assert!(!backups.path().join("junk/gantry.db").exists());

    // The admin and their token came back with the copy.
    std::fs::write(restored_config.with_extension("token"), &app.token).unwrap();
    let server = ServerProcess::start(&restored_config, &free_loopback_port()).await;
    for id in &finished {
        let build = server.build(*id).await;
        assert_eq!(build["status"], "passed", "{build:#}");
        let log = server.client.get(format!("{}/api/builds/{id}/log", server.base)).send().await.unwrap();
        let log = log.text().await.unwrap();
        let number = build["number"].as_i64().unwrap();
        assert!(log.contains(&format!("finished-build-{number}")), "build {id}'s log: {log}");
    }
    let caught = server.build(running).await;
    assert_eq!(caught["status"], "interrupted", "{caught:#}");
}
