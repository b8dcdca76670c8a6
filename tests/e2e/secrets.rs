//! Pipeline secrets through the real server: a value read from a file reaches the stage that names
//! it and appears on no page and in no API answer; a pipeline naming a secret the repo does not
//! define errors its build with the diagnostic's file:line:column.

use base64::Engine;

use crate::helpers::*;

const VALUE: &str = "tok-8c1f2e-never-shown";

#[tokio::test]
async fn a_secret_is_used_by_its_stage_and_shown_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("api_token");
    std::fs::write(&secret_file, VALUE).unwrap();
    let repo = TestRepo::new();
    let pipeline = "version: 1\nhosts:\n  app: {}\nstages:\n  - name: use\n    host: app\n    secrets: [API_TOKEN]\n    \
                    run: |\n      test \"$API_TOKEN\" = \"tok-8c1f2e-never-shown\"\n      echo \"token $API_TOKEN\"\n      \
                    printf %s \"$API_TOKEN\" | base64\n";
    repo.commit("main", &[(".gantry.yml", pipeline)]);
    let mut config = RepoConfig::new("shop", &repo);
    config.secrets = vec![("API_TOKEN", secret_file)];
    let app = spawn_app(&[config]).await;

    let id = app.trigger("shop", "main").await;
    let build = app.wait_for_build(id).await;
    assert_eq!(build["status"], "passed", "{build:#}\n{}", app.log(id, None).await);
    let log = app.log(id, Some("use")).await;
    assert!(log.contains("token ••••••"), "{log}");

    let encoded = base64::engine::general_purpose::STANDARD.encode(VALUE);
    let mut surfaces = vec![app.log(id, None).await, build.to_string()];
    for path in ["/", "/repos/shop", &format!("/builds/{id}"), "/api/repos", "/api/repos/shop/builds"] {
        let (status, body) = app.get_text(path).await;
        assert_eq!(status, 200, "{path}");
        surfaces.push(body);
    }
    for surface in surfaces {
        assert!(!surface.contains(VALUE) && !surface.contains(&encoded), "the secret is shown: {surface}");
    }
    app.stop().await;
}

#[tokio::test]
async fn naming_an_undefined_secret_errors_the_build_with_its_position() {
    let repo = TestRepo::new();
    let pipeline =
        "version: 1\nhosts:\n  app: {}\nstages:\n  - name: use\n    host: app\n    secrets: [NOPE]\n    run: true\n";
    repo.commit("main", &[(".gantry.yml", pipeline)]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    let id = app.trigger("shop", "main").await;
    let build = app.wait_for_build(id).await;
    assert_eq!(build["status"], "errored", "{build:#}");
    let error = build["error"].as_str().unwrap();
    assert!(error.contains(".gantry.yml:7:15") && error.contains("secret `NOPE` is not defined"), "{error}");
    let (_, page) = app.get_text(&format!("/builds/{id}")).await;
    assert!(page.contains(".gantry.yml:7:15"), "the build page shows the diagnostic");
    app.stop().await;
}
