//! The dashboard's buttons, as a browser without script uses them: build a branch from the repo
//! page, cancel a running build (its hosts torn down at once) and re-run a finished one from the
//! build page; the same through the API; buttons only for members, and never a form without its
//! CSRF token.

use std::time::{Duration, Instant};

use gantry::store::Role;
use reqwest::header::LOCATION;
use reqwest::Method;
use serde_json::Value;

use crate::auth::Browser;
use crate::helpers::*;

/// A cancelled build ends, its hosts torn down, within this long: the running step is killed, not
/// waited for (it would sleep ten minutes).
const CANCEL_DEADLINE: Duration = Duration::from_secs(20);

const SLOW: &str = "sleep 600";

async fn slow_shop() -> (TestRepo, TestApp, String) {
    let repo = TestRepo::new();
    let sha = repo.commit("main", &[(".gantry.yml", &one_stage_pipeline(SLOW))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    (repo, app, sha)
}

/// Signed-in browsers of a member and a reader.
async fn member_and_reader(app: &TestApp) -> (Browser, Browser) {
    add_user_with_token(app.database(), "dev", Role::Member, "pw-dev-0123").await;
    add_user_with_token(app.database(), "reader", Role::ReadOnly, "pw-reader-0123").await;
    (Browser::signed_in(app, "dev", "pw-dev-0123").await, Browser::signed_in(app, "reader", "pw-reader-0123").await)
}

/// Where a 303 answer sends the browser.
fn see_other(response: &reqwest::Response) -> String {
    assert_eq!(response.status(), 303, "{response:?}");
    response.headers()[LOCATION].to_str().unwrap().to_string()
}

fn build_id_of(location: &str) -> i64 {
    location.strip_prefix("/builds/").and_then(|id| id.parse().ok()).unwrap_or_else(|| panic!("{location}"))
}

async fn wait_running(app: &TestApp, id: i64) -> Value {
    app.wait_build_until(id, BUILD_DEADLINE, "started its stage", |b| {
        b["stages"].as_array().is_some_and(|s| s.iter().any(|s| s["name"] == "only" && s["status"] == "running"))
    })
    .await
}

#[tokio::test]
async fn a_member_builds_cancels_and_reruns_from_the_pages_and_a_reader_sees_no_button() {
    let (_repo, app, sha) = slow_shop().await;
    let (mut dev, mut reader) = member_and_reader(&app).await;

    // The repo page: the member has the build form, the reader not.
    let (status, html) = reader.get("/repos/shop").await;
    assert_eq!(status, 200);
    assert!(!html.contains("build-form") && !html.contains(r#"method="post" action="/repos"#), "{html}");
    let (_, html) = dev.get("/repos/shop").await;
    assert!(html.contains(r#"<form class="inline-form build-form" method="post" action="/repos/shop/builds">"#));
    assert!(html.contains(&format!(r#"<input type="hidden" name="csrf" value="{}">"#, dev.csrf)));

    // Building a branch: a plain form post, answered with the new build's page.
    let csrf = dev.csrf.clone();
    let response = dev
        .send(Method::POST, "/repos/shop/builds", Some(&[("csrf", &csrf), ("branch", "main"), ("commit", "")]))
        .await;
    let id = build_id_of(&see_other(&response));
    let build = app.build(id).await;
    assert_eq!(
        (&build["commit"], &build["branch"], &build["trigger"]),
        (&sha.as_str().into(), &"main".into(), &"manual".into())
    );
    let (_, html) = dev.get("/repos/shop").await;
    assert!(html.contains(r#"<option value="main">"#), "the form suggests the fetched mirror's branches");

    // The build page: Cancel for the member while it runs, nothing for the reader.
    wait_running(&app, id).await;
    let (_, html) = reader.get(&format!("/builds/{id}")).await;
    assert!(!html.contains("build-actions"), "a reader sees no button");
    let (_, html) = dev.get(&format!("/builds/{id}")).await;
    assert!(html.contains(&format!(r#"<form class="inline" method="post" action="/builds/{id}/cancel">"#)));
    assert!(!html.contains("/rerun"), "a running build has no re-run button");
    let reader_csrf = reader.csrf.clone();
    let refused = reader.send(Method::POST, &format!("/builds/{id}/cancel"), Some(&[("csrf", &reader_csrf)])).await;
    assert_eq!(refused.status(), 403, "a reader may not cancel");

    let cancelled_at = Instant::now();
    let response = dev.send(Method::POST, &format!("/builds/{id}/cancel"), Some(&[("csrf", &csrf)])).await;
    assert_eq!(see_other(&response), format!("/builds/{id}"));
    let build = app.wait_build_until(id, CANCEL_DEADLINE, "was cancelled", |b| is_final(&b["status"])).await;
    assert!(cancelled_at.elapsed() < CANCEL_DEADLINE);
    assert_eq!(build["status"], "cancelled", "{build:#}");
    assert_eq!(step(&build, "only")["status"], "cancelled");
    assert_eq!(step(&build, "teardown:app")["status"], "passed");
    assert!(build["hosts"].as_array().unwrap().iter().all(|h| h["state"] == "torn_down"), "{build:#}");
    app.assert_hosts_gone().await;

    // Re-run: the finished build's page offers it; the new build is the same commit and ref.
    let (_, html) = dev.get(&format!("/builds/{id}")).await;
    assert!(html.contains(&format!(r#"<form class="inline" method="post" action="/builds/{id}/rerun">"#)));
    let refused = reader.send(Method::POST, &format!("/builds/{id}/rerun"), Some(&[("csrf", &reader_csrf)])).await;
    assert_eq!(refused.status(), 403);
    let response = dev.send(Method::POST, &format!("/builds/{id}/rerun"), Some(&[("csrf", &csrf)])).await;
    let rerun = build_id_of(&see_other(&response));
    assert_ne!(rerun, id);
    let build = app.build(rerun).await;
    assert_eq!(
        (&build["commit"], &build["branch"], &build["rerun_of"]),
        (&sha.as_str().into(), &"main".into(), &id.into())
    );
    let (_, html) = dev.get(&format!("/builds/{rerun}")).await;
    assert!(html.contains(&format!(r#"re-run of <a href="/builds/{id}">#1</a>"#)), "the page names what it re-runs");
    app.api().http.post(app.url(&format!("/api/builds/{rerun}/cancel"))).send().await.unwrap();
    app.wait_for_build(rerun).await;
    app.stop().await;
}

#[tokio::test]
async fn a_form_without_its_csrf_token_changes_nothing() {
    let (_repo, app, _sha) = slow_shop().await;
    let (mut dev, _reader) = member_and_reader(&app).await;
    for form in
        [vec![("branch", "main")], vec![("branch", "main"), ("csrf", "forged")], vec![("csrf", ""), ("branch", "main")]]
    {
        let response = dev.send(Method::POST, "/repos/shop/builds", Some(&form)).await;
        assert_eq!(response.status(), 403, "{form:?}");
        assert!(response.text().await.unwrap().contains("security token"));
    }
    assert!(app.builds("shop").await.is_empty(), "nothing was queued");

    let id = app.trigger("shop", "main").await;
    for action in ["cancel", "rerun"] {
        let response = dev.send(Method::POST, &format!("/builds/{id}/{action}"), Some(&[("csrf", "forged")])).await;
        assert_eq!(response.status(), 403, "{action}");
    }
    assert!(!is_final(&app.build(id).await["status"]), "the build was not cancelled");
    assert_eq!(app.builds("shop").await.len(), 1, "nor re-run");
    // Without a session the forms need credentials first.
    let anonymous = anonymous_client();
    let response =
        anonymous.post(app.url(&format!("/builds/{id}/cancel"))).form(&[("csrf", "x")]).send().await.unwrap();
    assert_eq!(response.status(), 401);
    app.client.post(app.url(&format!("/api/builds/{id}/cancel"))).send().await.unwrap();
    app.wait_for_build(id).await;
    app.stop().await;
}

#[tokio::test]
async fn the_api_reruns_a_finished_build_of_an_older_commit_and_refuses_a_live_one() {
    let repo = TestRepo::new();
    let first = repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo first"))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    let id = app.trigger("shop", "main").await;
    assert_eq!(app.wait_for_build(id).await["status"], "passed");
    // The branch moves on; the re-run still builds the commit of the build it re-runs.
    let second = repo.commit("main", &[(".gantry.yml", &one_stage_pipeline(SLOW))]);
    let newer = app.trigger("shop", "main").await;

    let response = app.client.post(app.url(&format!("/api/builds/{id}/rerun"))).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let rerun = response.json::<Value>().await.unwrap()["build"].as_i64().unwrap();
    let build = app.wait_for_build(rerun).await;
    assert_eq!(build["status"], "passed");
    assert_eq!((&build["commit"], &build["branch"]), (&first.as_str().into(), &"main".into()));
    assert_eq!((&build["trigger"], &build["rerun_of"], &build["number"]), (&"manual".into(), &id.into(), &3.into()));
    assert!(app.log(rerun, Some("only")).await.contains("first"));

    // The re-run of an older commit did not supersede the newer build of the branch.
    let newer_build = wait_running(&app, newer).await;
    assert_eq!(newer_build["commit"], second.as_str());
    let response = app.client.post(app.url(&format!("/api/builds/{newer}/rerun"))).send().await.unwrap();
    assert_eq!(response.status(), 409, "a running build is not re-run");
    let error = response.json::<Value>().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("still queued or running"), "{error}");
    assert_eq!(app.get_text("/api/builds/999999/rerun").await.0, 405);
    let missing = app.client.post(app.url("/api/builds/999999/rerun")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let reader = client_with_token(&add_user_with_token(app.database(), "reader", Role::ReadOnly, "pw-r-0123").await);
    let refused = reader.post(app.url(&format!("/api/builds/{id}/rerun"))).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    app.client.post(app.url(&format!("/api/builds/{newer}/cancel"))).send().await.unwrap();
    app.wait_for_build(newer).await;
    app.assert_hosts_gone().await;
    app.stop().await;
}
