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
