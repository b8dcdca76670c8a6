//! The demo of `scripts/demo`, built by the server: a web app on `web` and PostgreSQL, started by
//! the pipeline's own setup as an unprivileged user, on `db`.

use crate::helpers::*;

#[tokio::test]
async fn the_demo_app_passes_against_postgresql_on_its_own_host() {
    let repo = TestRepo::new();
    let sha = repo.commit_dir("main", &workspace_path("pipelines/demo"));
    let app = spawn_app(&[RepoConfig::new("demo", &repo)]).await;

    let (status, body) = app.github_push("demo", "refs/heads/main", &sha).await;
    assert_eq!(status, 202, "{body}");
    let id = body["build"].as_i64().unwrap();
    let build = app.wait_for_build(id).await;
    assert_eq!(build["status"], "passed", "{build:#}\n{}", app.log(id, None).await);

    let db = build["hosts"].as_array().unwrap().iter().find(|h| h["role"] == "db").unwrap().clone();
    let setup = app.log(id, Some("setup:db")).await;
    assert!(setup.contains(&format!("PostgreSQL is up on {}:5432", db["address"].as_str().unwrap())), "{setup}");
    assert!(app.log(id, Some("test")).await.contains("3 passed"));
    assert!(app.log(id, Some("smoke")).await.contains("served 3 items from the db host"));

    // PostgreSQL and the app the smoke test started are gone with their hosts.
    app.assert_hosts_gone().await;
    app.stop().await;
}
