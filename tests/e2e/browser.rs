//! The dashboard in a real headless browser (Debian's Chromium). Rendered with `--dump-dom`:
//! pages render, a script in a log line never runs, and the browser refuses nothing under the
//! server's Content-Security-Policy and `nosniff` (the stylesheet loads). Driven through Debian's
//! chromedriver (WebDriver, fantoccini; helpers in `browser_driver`): signing in through the real
//! form works while a form posted without its CSRF token is refused; and markup in a commit
//! message, a branch name, a log line (arriving live over the event stream, and as stored) and a
//! test's name and message stays text on the build page, the repo page and the tests page: it is
//! shown literally, sets no global and becomes no element.

use std::process::Command;

use fantoccini::{Client, Locator};
use serde_json::json;

use crate::browser_driver::*;
use crate::helpers::*;

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

#[tokio::test]
async fn signing_in_through_the_form_works_and_a_form_without_its_csrf_token_is_refused() {
    let Some(browser) = open_browser().await else { return };
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("true"))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;

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
    browser.close().await;
    app.stop().await;
}

/// Markup that sets `window.__pwned` if a page ever parses it instead of showing it.
const SCRIPT_MARKUP: &str = "<script>window.__pwned=1</script>";
const IMG_MARKUP: &str = r#"<img src=x onerror="window.__pwned=1">"#;

/// A pipeline whose stage prints markup between `before` and `after` opening, then writes a JUnit
/// report whose failing test's name and message are markup, and fails.
fn markup_pipeline(before: &Gate, after: &Gate) -> String {
    let script = format!(
        "echo 'first line'\n{}\necho '{SCRIPT_MARKUP} and {IMG_MARKUP}'\n{}",
        before.wait_command(),
        after.wait_command()
    );
    let junit = format!(
        r#"<testsuite name="unit"><testcase classname="cart" name="{}" time="0.1"><failure message="{}">x</failure></testcase></testsuite>"#,
        xml_escape(SCRIPT_MARKUP),
        xml_escape(IMG_MARKUP),
    );
    junit_pipeline("only", &script, &junit, 1)
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// What the markup would leave if a page parsed it: `window.__pwned` set (were it not for the
/// Content-Security-Policy, which refuses inline scripts and handlers, so this alone proves
/// little), and the elements themselves.
const MARKUP_LEFT: &str = "[typeof window.__pwned, document.querySelectorAll('img[onerror], img[src=x]').length, \
                           [...document.scripts].filter(s => s.textContent.includes('__pwned')).length]";

/// Wait until the visible text (`innerText`) of `selector` has every one of `texts` (or markup
/// became elements), then check no markup ran or became elements.
async fn shows_as_text(browser: &Client, selector: &str, texts: &[&str], what: &str) {
    let texts = serde_json::to_string(texts).unwrap();
    wait_for(
        browser,
        &format!(
            "const e = document.querySelector('{selector}'); \
             return {MARKUP_LEFT}.join() !== 'undefined,0,0' || !!e && {texts}.every(t => e.innerText.includes(t))"
        ),
        what,
    )
    .await;
    let left = execute_settled(browser, &format!("return {MARKUP_LEFT}")).await;
    assert_eq!(left, json!(["undefined", 0, 0]), "markup ran or became elements in {what}");
}

#[tokio::test]
async fn script_in_a_commit_message_branch_log_line_and_test_name_stays_text_in_the_browser() {
    let Some(browser) = open_browser().await else { return };
    let (printed, reported) = (Gate::new(), Gate::new());
    let repo = TestRepo::new();
    let branch = SCRIPT_MARKUP;
    let message = format!("fix {SCRIPT_MARKUP} {IMG_MARKUP}\n\nbody");
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("true"))]);
    repo.commit_with_message(branch, &[(".gantry.yml", &markup_pipeline(&printed, &reported))], &message);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    sign_in(&browser, &app, ADMIN, ADMIN_PASSWORD).await;
    let id = app.trigger("shop", branch).await;
    app.wait_build_until(id, BUILD_DEADLINE, "ran its stage", |b| {
        b["stages"].as_array().is_some_and(|s| s.iter().any(|s| s["name"] == "only" && s["status"] == "running"))
    })
    .await;
    assert_eq!(app.build(id).await["branch"], branch);

    // The build page while the step runs: the log line arrives over the event stream, and is
    // drawn by the page's script (the mark shows the page was not reloaded meanwhile).
    browser.goto(&app.url(&format!("/builds/{id}"))).await.unwrap();
    execute_settled(&browser, "window.gantryTestMark = 1; document.getElementById('step-1').open = true; return true")
        .await;
    let log_line = format!("{SCRIPT_MARKUP} and {IMG_MARKUP}");
    shows_as_text(&browser, "#step-1 .log-view", &["first line"], "the first log line").await;
    printed.open();
    shows_as_text(&browser, "#step-1 .log-view", &[&log_line], "the live log line").await;
    shows_as_text(&browser, ".commit-title", &[&format!("fix {SCRIPT_MARKUP} {IMG_MARKUP}")], "the commit title").await;
    shows_as_text(&browser, ".facts .ref", &[branch], "the branch").await;
    assert_eq!(execute_settled(&browser, "return window.gantryTestMark").await, json!(1), "the page was reloaded");
    reported.open();

    // Once the build ends the page reloads with its report: the failing test, and the log as the
    // server renders it.
    wait_for(&browser, "return document.querySelector('.build-head').dataset.status === 'failed'", "the build failing")
        .await;
    shows_as_text(&browser, ".test-failures", &[SCRIPT_MARKUP, IMG_MARKUP], "the failing test").await;
    execute_settled(&browser, "document.getElementById('step-1').open = true; return true").await;
    shows_as_text(&browser, "#step-1 .log-view", &[&log_line], "the stored log line").await;
    shows_as_text(&browser, ".commit-title", &[SCRIPT_MARKUP], "the commit title after the reload").await;

    // The repo page (stage grid, history, the build form's branch list) and the tests page.
    browser.goto(&app.url("/repos/shop")).await.unwrap();
    shows_as_text(&browser, ".grid", &[branch], "the stage grid").await;
    shows_as_text(&browser, ".history", &[branch], "the history").await;
    let suggested =
        execute_settled(&browser, "return [...document.querySelectorAll('#branches option')].map(o => o.value)").await;
    assert!(suggested.as_array().unwrap().contains(&json!(branch)), "{suggested}");
    browser.goto(&app.url("/repos/shop/tests")).await.unwrap();
    shows_as_text(&browser, ".tests", &[SCRIPT_MARKUP, IMG_MARKUP], "the tests page").await;
    browser.close().await;
    app.stop().await;
}
