//! The dashboard in a real headless browser (Debian's Chromium): pages render, markup in commit
//! data and logs stays text — a script in a log line never runs — the browser refuses nothing
//! under the server's Content-Security-Policy and `nosniff` (the stylesheet loads), and signing in
//! through the real form works while a form posted without its CSRF token is refused. The sign-in
//! test drives Chromium through Debian's chromedriver (WebDriver) with fantoccini.

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::helpers::*;

pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

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
    // Chromium's --dump-dom cannot sign in: the pages are public to read here.
    let app = spawn_app_configured(&[RepoConfig::new("shop", &repo)], 4, "", "\n[auth]\npublic_read = true\n").await;
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

/// chromedriver on a free loopback port, stopped when dropped.
pub(crate) struct Chromedriver {
    child: Child,
    pub(crate) url: String,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver and Chromium, or `None` (saying why) when they are not installed and this is not
/// CI; on CI their absence fails the test.
pub(crate) async fn chromedriver() -> Option<Chromedriver> {
    let missing: Vec<&str> =
        [CHROMIUM, CHROMEDRIVER].into_iter().filter(|p| !std::path::Path::new(p).exists()).collect();
    if !missing.is_empty() {
        let message =
            format!("{missing:?} missing: run scripts/install-deps --tests (Debian's chromium, chromium-driver)");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("skipping the sign-in browser test: {message}");
        return None;
    }
    let port = free_loopback_port().rsplit_once(':').unwrap().1.to_string();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Chromedriver { child, url: format!("http://127.0.0.1:{port}") };
    let start = Instant::now();
    while reqwest::get(format!("{}/status", driver.url)).await.is_err() {
        assert!(start.elapsed() < EVENT_DEADLINE, "chromedriver never answered");
        tokio::time::sleep(POLL_EVERY).await;
    }
    Some(driver)
}

/// Wait until the browser is at `path` (after a form's redirect), or fail.
async fn wait_for_path(browser: &Client, path: &str) {
    let start = Instant::now();
    loop {
        let url = browser.current_url().await.unwrap();
        let here = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        if here == path {
            return;
        }
        assert!(start.elapsed() < EVENT_DEADLINE, "the browser stayed at {url}, not {path}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Wait until the page's source contains `text`, and return it.
async fn wait_for_text(browser: &Client, text: &str) -> String {
    let start = Instant::now();
    loop {
        let source = browser.source().await.unwrap();
        if source.contains(text) {
            return source;
        }
        assert!(start.elapsed() < EVENT_DEADLINE, "the page never showed {text:?}: {source}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[tokio::test]
async fn signing_in_through_the_form_works_and_a_form_without_its_csrf_token_is_refused() {
    let Some(driver) = chromedriver().await else { return };
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("true"))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    let profile = tempfile::TempDir::new().unwrap();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_string(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     format!("--user-data-dir={}", profile.path().display())],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let browser = ClientBuilder::new(connector).capabilities(capabilities).connect(&driver.url).await.unwrap();

    // A page asked for without signing in leads to the form, which leads back.
    browser.goto(&app.url("/repos/shop")).await.unwrap();
    wait_for_path(&browser, "/login?next=%2Frepos%2Fshop").await;
    browser.find(Locator::Id("user")).await.unwrap().send_keys(ADMIN).await.unwrap();
    browser.find(Locator::Id("password")).await.unwrap().send_keys("not the password").await.unwrap();
    browser.find(Locator::Css("form.stacked button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_for_text(&browser, "wrong user name or password").await;
    browser.find(Locator::Id("password")).await.unwrap().send_keys(ADMIN_PASSWORD).await.unwrap();
    browser.find(Locator::Css("form.stacked button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_for_path(&browser, "/repos/shop").await;
    let page = wait_for_text(&browser, "signed in as").await;
    assert!(page.contains(">admin</a>"), "{page}");
    let cookie = browser.get_named_cookie("gantry_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));

    // The token form with its hidden csrf field taken out is refused, and nothing is created.
    browser.goto(&app.url("/settings/tokens")).await.unwrap();
    wait_for_text(&browser, "New token").await;
    browser.execute("document.querySelector('form.inline-form input[name=csrf]').remove()", Vec::new()).await.unwrap();
    browser.find(Locator::Id("label")).await.unwrap().send_keys("no csrf").await.unwrap();
    browser.find(Locator::Css("form.inline-form button[type=submit]")).await.unwrap().click().await.unwrap();
    let refused = wait_for_text(&browser, "security token is missing").await;
    assert!(refused.contains("403"), "{refused}");

    // The untouched form works, and shows the new token once.
    browser.goto(&app.url("/settings/tokens")).await.unwrap();
    let before = wait_for_text(&browser, "New token").await;
    assert!(!before.contains("no csrf"), "the refused form created nothing");
    browser.find(Locator::Id("label")).await.unwrap().send_keys("from the browser").await.unwrap();
    browser.find(Locator::Css("form.inline-form button[type=submit]")).await.unwrap().click().await.unwrap();
    let created = wait_for_text(&browser, "not shown again").await;
    assert!(created.contains("gantry_") && created.contains("from the browser"));

    // Signing out ends the session: the dashboard sends the browser back to the form.
    browser.find(Locator::Css("form[action='/logout'] button")).await.unwrap().click().await.unwrap();
    wait_for_path(&browser, "/login").await;
    browser.goto(&app.url("/")).await.unwrap();
    wait_for_path(&browser, "/login?next=%2F").await;
    browser.close().await.unwrap();
    app.stop().await;
}
