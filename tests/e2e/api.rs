//! The JSON API and the pages it mirrors, JUnit report summaries included.

use crate::helpers::*;

#[tokio::test]
async fn a_manual_build_shows_up_in_the_api_and_on_the_pages() {
    let repo = TestRepo::new();
    let sha = repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo '<script>alert(1)</script>'"))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;

    let id = app.trigger("shop", "main").await;
    let build = app.wait_for_build(id).await;
    assert_eq!(build["status"], "passed");
    assert_eq!(build["id"], id);
    assert_eq!(build["repo"], "shop");
    assert_eq!(build["number"], 1);
    assert_eq!(build["commit"], sha.as_str());
    assert_eq!(build["trigger"], "manual");

    let repos = app.get_json("/api/repos").await;
    assert_eq!(repos[0]["name"], "shop");
    assert_eq!(repos[0]["last_build"]["id"], id);

    let second = app.trigger("shop", "main").await;
    app.wait_for_build(second).await;
    let builds = app.builds("shop").await;
    assert_eq!(builds.len(), 2);
    assert_eq!(builds[0]["id"], second, "newest first");
    let limited = app.get_json("/api/repos/shop/builds?limit=1").await;
    assert_eq!(limited.as_array().unwrap().len(), 1);

    let log = app.log(id, Some("only")).await;
    assert_eq!(log.trim_end(), "<script>alert(1)</script>");
    let whole = app.log(id, None).await;
    assert!(whole.contains("<script>alert(1)</script>"));

    for page in ["/", "/repos/shop", &format!("/builds/{id}")] {
        let (status, html) = app.get_text(page).await;
        assert_eq!(status, 200, "{page}");
        assert!(!html.contains("<script>alert(1)</script>"), "{page} escapes log text");
    }
    let (_, build_page) = app.get_text(&format!("/builds/{id}")).await;
    assert!(shows_escaped(&build_page, "<script>alert(1)</script>"));
    assert!(build_page.contains(&sha));
    let (_, repo_page) = app.get_text("/repos/shop").await;
    assert!(repo_page.contains("only"), "the stage grid names the stage");

    let commit_build = app
        .client
        .post(app.url("/api/repos/shop/builds"))
        .json(&serde_json::json!({ "commit": sha }))
        .send()
        .await
        .unwrap();
    assert_eq!(commit_build.status(), 202);

    assert_eq!(app.get_text("/api/builds/999999").await.0, 404);
    assert_eq!(app.get_text("/builds/999999").await.0, 404);
    assert_eq!(app.get_text("/repos/nope").await.0, 404);
    let unknown_branch = app
        .client
        .post(app.url("/api/repos/shop/builds"))
        .json(&serde_json::json!({ "branch": "no-such-branch" }))
        .send()
        .await
        .unwrap();
    assert!(unknown_branch.status().is_client_error(), "{}", unknown_branch.status());
    app.stop().await;
}

/// A stage writes a JUnit file with a heredoc and names it in `reports:`; a second, unreadable
/// report sits beside it.
const JUNIT_PIPELINE: &str = r#"version: 1
hosts:
  app: {}
stages:
  - name: unit
    host: app
    run: |
      mkdir -p reports
      cat > reports/unit.xml <<'XML'
      <?xml version="1.0" encoding="utf-8"?>
      <testsuites><testsuite name="pytest" tests="2" failures="1">
      <testcase classname="tests.test_cart" name="test_empty" time="0.001"/>
      <testcase classname="tests.test_cart" name="test_total" time="0.002"><failure message="assert 41 == 42">E   assert total() == 42 &lt;script&gt;</failure></testcase>
      </testsuite></testsuites>
      XML
      printf '<testsuite><testcase' > reports/broken.xml
      echo tests ran
    reports: [reports/unit.xml, reports/broken.xml]
"#;

#[tokio::test]
async fn junit_reports_are_summarised_in_the_api_and_on_the_build_page() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", JUNIT_PIPELINE)]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;

    let id = app.trigger("shop", "main").await;
    let build = app.wait_for_build(id).await;
    assert_eq!(build["status"], "passed", "{build}");

    let reports = app.get_json(&format!("/api/builds/{id}/reports")).await;
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 2, "{reports:?}");
    let broken = reports.iter().find(|r| r["path"] == "reports/broken.xml").unwrap();
    assert!(broken["error"].as_str().unwrap().starts_with("not valid JUnit XML: "), "{broken}");
    let unit = reports.iter().find(|r| r["path"] == "reports/unit.xml").unwrap();
    assert_eq!(unit["stage"], "unit");
    assert_eq!(unit["error"], serde_json::Value::Null);
    assert_eq!(
        (&unit["tests"], &unit["failures"], &unit["errors"], &unit["skipped"]),
        (&2.into(), &1.into(), &0.into(), &0.into())
    );
    let failing = unit["failing"].as_array().unwrap();
    assert_eq!(failing.len(), 1);
    assert_eq!(failing[0]["classname"], "tests.test_cart");
    assert_eq!(failing[0]["name"], "test_total");
    assert_eq!(failing[0]["message"], "assert 41 == 42");
    assert_eq!(failing[0]["text"], "E   assert total() == 42 <script>");

    let (status, html) = app.get_text(&format!("/builds/{id}")).await;
    assert_eq!(status, 200);
    assert!(html.contains("<h2>Test reports</h2>"));
    assert!(html.contains("test_total"), "the failing test is named");
    assert!(html.contains("reports/unit.xml"));
    assert!(!html.contains("<script>"), "the failure text stays text");
    assert!(shows_escaped(&html, "E   assert total() == 42 <script>"));

    assert_eq!(app.get_text("/api/builds/999999/reports").await.0, 404);
    assert_eq!(app.get_text("/api/builds/nope/reports").await.0, 404);
    app.stop().await;
}
