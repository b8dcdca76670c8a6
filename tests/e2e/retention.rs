//! Retention (`[retention] builds`): on a real server with a short retention, a build that
//! finished longer ago loses its log and reports — the API, the raw log and the build page say
//! the log was pruned — while its row, steps, status, the history and the badge stay; a recent
//! build and one still running keep everything.

use std::time::Instant;

use crate::helpers::*;

/// How long finished builds keep their logs here: long enough for a build to be checked right
/// after it finished, short enough for a test.
const KEEP: &str = "6s";

const PIPELINE: &str = r#"version: 1
hosts:
  app: {}
stages:
  - name: unit
    host: app
    run: |
      for i in 1 2 3 4 5; do echo "output-$GANTRY_BUILD-line-$i"; done
      mkdir -p reports
      echo '<testsuite name="unit"><testcase classname="c" name="t"/></testsuite>' > reports/unit.xml
    reports: [reports/unit.xml]
"#;

async fn reports(app: &TestApp, id: i64) -> usize {
    app.get_json(&format!("/api/builds/{id}/reports")).await.as_array().unwrap().len()
}

#[tokio::test]
async fn an_old_build_loses_its_log_and_reports_and_keeps_its_row_status_history_and_badge() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", PIPELINE)]);
    repo.commit("slow", &[(".gantry.yml", &one_stage_pipeline("echo started-slow; sleep 600"))]);
    let extra = format!("[retention]\nbuilds = \"{KEEP}\"\ninterval = \"200ms\"\n");
    let app = spawn_app_configured(&[RepoConfig::new("r", &repo)], 2, "", &extra).await;

    let old = app.trigger("r", "main").await;
    let finished = app.wait_for_build(old).await;
    assert_eq!(finished["status"], "passed", "{finished:#}");
    let number = finished["number"].as_i64().unwrap();
    assert!(app.log(old, None).await.contains(&format!("output-{number}-line-5")));
    assert_eq!(reports(&app, old).await, 1);
    // A build that runs all along: old, but never finished, so never pruned.
    let slow = app.trigger("r", "slow").await;
    app.wait_build_until(slow, BUILD_DEADLINE, "ran its stage", |b| {
        b["stages"].as_array().is_some_and(|s| s.iter().any(|s| s["kind"] == "stage" && s["status"] == "running"))
    })
    .await;

    let start = Instant::now();
    let log = loop {
        let log = app.log(old, None).await;
        if log.contains("[gantry] log pruned") {
            break log;
        }
        assert!(start.elapsed() < EVENT_DEADLINE, "build {old} was not pruned: {log}");
        tokio::time::sleep(POLL_EVERY).await;
    };
    assert!(!log.contains("output-"), "the output is gone: {log}");
    assert!(log.contains("for 6 seconds after they finish"), "{log}");

    // A build that finished just now keeps everything.
    let recent = app.trigger("r", "main").await;
    assert_eq!(app.wait_for_build(recent).await["status"], "passed");
    let recent_number = app.build(recent).await["number"].as_i64().unwrap();
    assert!(app.log(recent, None).await.contains(&format!("output-{recent_number}-line-5")));
    assert_eq!(reports(&app, recent).await, 1);

    // The old build: its reports are gone, its row, stages and status are not.
    assert_eq!(reports(&app, old).await, 0);
    let pruned = app.build(old).await;
    assert_eq!(pruned["status"], "passed", "{pruned:#}");
    assert_eq!(pruned["stages"], finished["stages"], "the steps stay as they were");
    let unit = app.log(old, Some("unit")).await;
    assert_eq!(unit.lines().count(), 1, "{unit}");
    let (status, page) = app.get_text(&format!("/builds/{old}")).await;
    assert_eq!(status, 200);
    assert!(page.contains("[gantry] log pruned: builds keep their logs and test reports"), "{page}");
    assert!(!page.contains(&format!("output-{number}-line")), "the page shows no output");
    let history: Vec<i64> = app.builds("r").await.iter().map(|b| b["id"].as_i64().unwrap()).collect();
    assert!(history.contains(&old) && history.contains(&recent), "{history:?}");
    let (status, badge) = app.get_text("/badge/r.svg?branch=main").await;
    assert_eq!(status, 200);
    assert!(badge.contains("passed"), "{badge}");

    // The running build kept its log all along, longer than the retention after it started.
    assert!(app.log(slow, None).await.contains("started-slow"));
    assert_eq!(app.build(slow).await["status"], "running");
    app.stop().await;
}
