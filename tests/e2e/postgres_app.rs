//! The server on PostgreSQL (`database_url`, contract section 8): builds run and show as on
//! SQLite, the state outlives the server, and a database it cannot reach stops it at once with
//! one clear error that never shows the URL's password.

use std::time::Duration;

use crate::helpers::*;
use crate::postgres;
use crate::postgres_server::installed;

#[tokio::test]
async fn a_server_on_postgresql_runs_builds_shows_them_and_keeps_them_across_a_restart() {
    if !installed() {
        return;
    }
    let url = postgres::server().database();
    let top = format!("database_url = \"{url}\"");
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo hello from postgres"))]);
    let repos = [RepoConfig::new("shop", &repo)];
    let app = spawn_app_configured(&repos, 2, &top, "").await;
    // One after the other: a second build of the branch queued at once would supersede the first.
    let first = app.trigger("shop", "main").await;
    assert_eq!(app.wait_for_build(first).await["status"], "passed");
    let second = app.trigger("shop", "main").await;
    assert_eq!(app.wait_for_build(second).await["status"], "passed");
    let (status, page) = app.get_text(&format!("/builds/{second}")).await;
    assert_eq!(status, 200);
    assert!(page.contains("hello from postgres"), "the build page shows the log line");
    let builds = app.get_json("/api/repos/shop/builds").await;
    let numbers: Vec<i64> = builds.as_array().unwrap().iter().map(|b| b["number"].as_i64().unwrap()).collect();
    assert_eq!(numbers, [2, 1]);
    assert!(!app.data_dir.path().join("gantry.db").exists(), "no SQLite database beside a PostgreSQL one");
    let token = app.token.clone();
    app.stop().await;

    // Another server on the same database sees what the first one recorded and numbers on.
    let again = spawn_app_signed_in(&repos, 2, &top, "", Some(&token)).await;
    assert_eq!(again.get_json(&format!("/api/builds/{first}")).await["status"], "passed");
    let third = again.trigger("shop", "main").await;
    let build = again.wait_for_build(third).await;
    assert_eq!((build["status"].as_str(), build["number"].as_i64()), (Some("passed"), Some(3)));
    again.stop().await;
}

#[test]
fn an_unreachable_database_stops_the_server_with_one_clear_error_and_no_password() {
    // A port of 127.0.0.1 with nobody listening: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("gantry.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\ndatabase_url = \"postgres://gantry:hunter2@127.0.0.1:{port}/ci\"\n",
            dir.path().join("data").to_str().unwrap()
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let error = gantry_command(&["serve", "--config", config.to_str().unwrap()], "").unwrap_err();
    assert!(error.contains(&format!("failed to open the database postgres://127.0.0.1:{port}/ci")), "{error}");
    assert_eq!(error.matches("Connection refused").count(), 1, "the cause is said once: {error}");
    assert!(!error.contains("hunter2"), "the password is shown: {error}");
    // Not a hang until some pool's timeout: the refusal is the answer.
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}: {error}", started.elapsed());

    // A URL that is not PostgreSQL's is a configuration error, also without the URL.
    std::fs::write(&config, "database_url = \"mysql://root:hunter2@127.0.0.1/ci\"\n").unwrap();
    let error = gantry_command(&["serve", "--config", config.to_str().unwrap()], "").unwrap_err();
    assert!(error.contains("database_url: must be a postgres:// URL"), "{error}");
    assert!(!error.contains("hunter2"), "the password is shown: {error}");
}
