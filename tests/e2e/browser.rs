//! The dashboard in a real headless browser (Debian's Chromium): pages render, markup in commit
//! data and logs stays text — a script in a log line never runs — and the browser refuses nothing
//! under the server's Content-Security-Policy and `nosniff` (the stylesheet loads).

use std::process::Command;

use crate::helpers::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// What Chromium made of a page.
struct Rendered {
    /// The DOM after the page has loaded and run its scripts, as Chromium serialises it.
    dom: String,
    /// The page's console messages (Chromium logs a refused resource or inline style there).
    console: Vec<String>,
}

impl Rendered {
    /// Console messages saying the browser refused something: a resource, a style, a script
    /// blocked by the Content-Security-Policy or by `nosniff`.
    fn refusals(&self) -> Vec<&String> {
        self.console.iter().filter(|m| m.contains("Content Security Policy") || m.contains("Refused")).collect()
    }
}

/// Load `url` in headless Chromium.
fn render(url: &str) -> Rendered {
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
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium is installed by scripts/install-deps --tests");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chromium failed: {stderr}");
    let console = stderr.lines().filter(|l| l.contains(":CONSOLE")).map(str::to_string).collect();
    Rendered { dom: String::from_utf8(output.stdout).unwrap(), console }
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
    let page = tokio::task::spawn_blocking(move || render(&url)).await.unwrap();
    assert!(page.refusals().is_empty(), "the browser refused parts of the build page: {:?}", page.refusals());
    let dom = page.dom;
    let title = dom.split("<title>").nth(1).and_then(|t| t.split("</title>").next()).unwrap_or_default();
    assert!(!title.contains("pwned"), "the log line's onerror ran: title {title:?}");
    assert!(!dom.contains("<img src=\"x\""), "the log line was parsed as markup");
    assert!(dom.contains("&lt;img src=x"), "the log line is shown as text");
    assert!(dom.contains("provision:app") && dom.contains("teardown:app"), "the steps are listed");

    let url = app.url("/repos/shop");
    let page = tokio::task::spawn_blocking(move || render(&url)).await.unwrap();
    assert!(page.refusals().is_empty(), "the browser refused parts of the repo page: {:?}", page.refusals());
    let dom = page.dom;
    assert!(dom.contains("only"), "the stage grid shows the stage");
    assert!(dom.contains("passed"));
    app.stop().await;
}

/// The check above can fail: a page whose policy forbids its own inline style is reported.
#[tokio::test]
async fn a_refused_inline_style_shows_in_the_console() {
    let url = r#"data:text/html,<meta http-equiv="Content-Security-Policy" content="style-src 'self'"><p style="color:red">x</p>"#;
    let page = tokio::task::spawn_blocking(move || render(url)).await.unwrap();
    assert_eq!(page.refusals().len(), 1, "{:?}", page.console);
}
