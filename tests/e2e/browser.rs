//! The dashboard in a real headless browser (Debian's Chromium): pages render, and markup in
//! commit data and logs stays text — a script in a log line never runs.

use std::process::Command;

use crate::helpers::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The DOM of `url` after the page has loaded and run its scripts, as Chromium serialises it.
fn dump_dom(url: &str) -> String {
    let profile = tempfile::TempDir::new().unwrap();
    let output = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium is installed by scripts/install-deps --tests");
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn pages_render_in_a_browser_and_log_markup_never_runs() {
    let repo = TestRepo::new();
    let hostile = r#"<img src=x onerror="document.title='pwned'">"#;
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline(&format!("echo '{hostile}'")))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    let id = app.trigger("shop", "main").await;
    assert_eq!(app.wait_for_build(id).await["status"], "passed");

    let url = app.url(&format!("/builds/{id}"));
    let dom = tokio::task::spawn_blocking(move || dump_dom(&url)).await.unwrap();
    let title = dom.split("<title>").nth(1).and_then(|t| t.split("</title>").next()).unwrap_or_default();
    assert!(!title.contains("pwned"), "the log line's onerror ran: title {title:?}");
    assert!(!dom.contains("<img src=\"x\""), "the log line was parsed as markup");
    assert!(dom.contains("&lt;img src=x"), "the log line is shown as text");
    assert!(dom.contains("provision:app") && dom.contains("teardown:app"), "the steps are listed");

    let url = app.url("/repos/shop");
    let dom = tokio::task::spawn_blocking(move || dump_dom(&url)).await.unwrap();
    assert!(dom.contains("only"), "the stage grid shows the stage");
    assert!(dom.contains("passed"));
    app.stop().await;
}
