//! Tests across builds, from the JUnit reports stages really write: a test that passes and fails
//! on one commit is flaky (`GET /api/repos/{repo}/tests?flaky=true`, the tests page), and the
//! build page marks the failures that passed in the previous build of the branch.

use serde_json::Value;

use crate::helpers::*;

/// A pipeline whose stage writes a JUnit report: `flips` fails in odd-numbered builds, `broken`
/// always fails, `steady` fails when `steady_fails`, and one test's name is markup.
fn junit_pipeline(steady_fails: bool) -> String {
    let steady = if steady_fails { r#"<failure message="steady broke">no</failure>"# } else { "" };
    format!(
        r#"version: 1
hosts:
  app: {{}}
stages:
  - name: unit
    host: app
    run: |
      mkdir -p reports
      if [ $((GANTRY_BUILD % 2)) -eq 1 ]; then flips='<failure message="odd build">boom</failure>'; else flips=''; fi
      cat > reports/unit.xml <<XML
      <testsuite name="unit">
      <testcase classname="cart" name="steady" time="0.010">{steady}</testcase>
      <testcase classname="cart" name="flips" time="0.250">$flips</testcase>
      <testcase classname="cart" name="broken" time="0.001"><error message="always">x</error></testcase>
      <testcase classname="cart" name="&lt;script&gt;alert(1)&lt;/script&gt;" time="1.5"/>
      </testsuite>
      XML
    reports: [reports/unit.xml]
"#
    )
}

fn names(tests: &Value) -> Vec<&str> {
    tests.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_test_that_passes_and_fails_on_one_commit_is_flaky_and_new_failures_are_marked() {
    let repo = TestRepo::new();
    let sha = repo.commit("main", &[(".gantry.yml", &junit_pipeline(false))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;

    // Build 1 (odd): flips fails. Its re-run, build 2 (even), of the same commit: flips passes.
    let first = app.trigger("shop", "main").await;
    assert_eq!(app.wait_for_build(first).await["status"], "passed");
    assert_eq!(
        app.get_json("/api/repos/shop/tests?flaky=true").await,
        Value::Array(Vec::new()),
        "one build: not flaky"
    );
    let response = app.client.post(app.url(&format!("/api/builds/{first}/rerun"))).send().await.unwrap();
    let second = response.json::<Value>().await.unwrap()["build"].as_i64().unwrap();
    let build = app.wait_for_build(second).await;
    assert_eq!((&build["commit"], &build["number"]), (&sha.as_str().into(), &2.into()));

    let flaky = app.get_json("/api/repos/shop/tests?flaky=true").await;
    assert_eq!(names(&flaky), ["flips"], "{flaky:#}");
    let flips = &flaky[0];
    assert_eq!((&flips["stage"], &flips["classname"], &flips["flaky"]), (&"unit".into(), &"cart".into(), &true.into()));
    let runs: Vec<(i64, &str, i64)> = flips["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["number"].as_i64().unwrap(), r["outcome"].as_str().unwrap(), r["duration_ms"].as_i64().unwrap()))
        .collect();
    assert_eq!(runs, [(2, "passed", 250), (1, "failed", 250)]);
    assert_eq!(flips["runs"][1]["message"], "odd build");
    assert_eq!(flips["last_outcome"], "passed");

    let all = app.get_json("/api/repos/shop/tests").await;
    assert_eq!(names(&all), ["<script>alert(1)</script>", "broken", "flips", "steady"]);
    let broken = all.as_array().unwrap().iter().find(|t| t["name"] == "broken").unwrap();
    assert_eq!(
        (&broken["flaky"], &broken["last_outcome"]),
        (&false.into(), &"errored".into()),
        "always failing is not flaky"
    );

    let (status, html) = app.get_text("/repos/shop/tests?flaky=true").await;
    assert_eq!(status, 200);
    assert_eq!(html.matches(r#"<tr class="test-row flaky">"#).count(), 1, "{html}");
    let (_, html) = app.get_text("/repos/shop/tests").await;
    assert!(!html.contains("<script>alert(1)</script>"), "a test's name stays text");
    assert!(shows_escaped(&html, "<script>alert(1)</script>"));
    let (_, repo_page) = app.get_text("/repos/shop").await;
    assert!(repo_page.contains(r#"href="/repos/shop/tests""#), "the repo page links to its tests");

    // Build 3 (odd), a new commit that breaks `steady`: steady and flips passed in build 2, so
    // they are new failures; broken failed there too, so it is not.
    repo.commit("main", &[(".gantry.yml", &junit_pipeline(true))]);
    let third = app.trigger("shop", "main").await;
    app.wait_for_build(third).await;
    let reports = app.get_json(&format!("/api/builds/{third}/reports")).await;
    let mut failing: Vec<(String, bool)> = reports[0]["failing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["new_failure"].as_bool().unwrap()))
        .collect();
    failing.sort();
    assert_eq!(failing, [("broken".into(), false), ("flips".into(), true), ("steady".into(), true)]);
    let (_, page) = app.get_text(&format!("/builds/{third}")).await;
    assert_eq!(page.matches(r#"<span class="badge new-failure""#).count(), 2, "{page}");
    assert!(page.contains("passed in the previous build of this branch (#2)"));
    // Build 1 had no earlier build: nothing is new there.
    let (_, page) = app.get_text(&format!("/builds/{first}")).await;
    assert!(!page.contains("new-failure"));
    app.stop().await;
}
