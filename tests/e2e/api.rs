//! The JSON API and the pages it mirrors.

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
