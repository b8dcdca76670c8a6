//! The dashboard's buttons and failing tests in a real browser (Debian's Chromium through
//! chromedriver): a signed-in member builds a branch by clicking the repo page's Build button and
//! lands on that build's page; a failing test's failure text opens on the build page when its
//! summary is clicked; a running build's Cancel button cancels it within seconds, the page the form
//! leads back to shows it cancelled and its host torn down (by itself as the events arrive), and
//! the host's processes and directory are gone. `actions.rs` checks the same forms as plain HTTP;
//! here the browser clicks them. Helpers are in `browser_driver`; screenshots (a failing and a
//! cancelled build) go to `target/screenshots/`.

use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use gantry::store::Role;

use crate::browser_driver::*;
use crate::helpers::*;

/// A cancelled build ends, its hosts torn down, within this long: the running step is killed, not
/// waited for (it would sleep ten minutes).
const CANCEL_DEADLINE: Duration = Duration::from_secs(20);

const MEMBER: &str = "dev";
const MEMBER_PASSWORD: &str = "pw-dev-0123";

/// A server with the repository `shop` and the member [`MEMBER`], signed in in `browser`.
async fn shop_signed_in(browser: &Client, repo: &TestRepo) -> TestApp {
    let app = spawn_app(&[RepoConfig::new("shop", repo)]).await;
    add_user_with_token(app.database(), MEMBER, Role::Member, MEMBER_PASSWORD).await;
    sign_in(browser, &app, MEMBER, MEMBER_PASSWORD).await;
    app
}

/// Wait until the browser is on a build's page (after a form's redirect); the build's id.
async fn wait_for_build_page(browser: &Client) -> i64 {
    let start = Instant::now();
    loop {
        let here = current_path(browser).await;
        if let Some(id) = here.strip_prefix("/builds/").and_then(|id| id.parse().ok()) {
            return id;
        }
        assert!(start.elapsed() < EVENT_DEADLINE, "the browser stayed at {here}, not a build's page");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A script (for [`wait_for`]) that is true once the build page shows `status`.
fn page_status_is(status: &str) -> String {
    format!("const h = document.querySelector('.build-head'); return !!h && h.dataset.status === '{status}' && h.querySelector('.badge').textContent === '{status}'")
}

#[tokio::test]
async fn a_member_builds_a_branch_by_clicking_build_on_the_repo_page_and_lands_on_that_build() {
    let Some(browser) = open_browser().await else { return };
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo built main"))]);
    let feature = repo.commit("feature", &[(".gantry.yml", &one_stage_pipeline("echo built feature"))]);
    let app = shop_signed_in(&browser, &repo).await;

    browser.goto(&app.url("/repos/shop")).await.unwrap();
    browser.find(Locator::Id("build-branch")).await.unwrap().send_keys("feature").await.unwrap();
    browser.find(Locator::Css("form.build-form button[type=submit]")).await.unwrap().click().await.unwrap();
    let id = wait_for_build_page(&browser).await;
    wait_for(
        &browser,
        &format!("return document.querySelector('.build-head').dataset.build === '{id}' && document.querySelector('.facts .ref').textContent === 'feature'"),
        "the new build of feature",
    )
    .await;
    wait_for(&browser, &page_status_is("passed"), "the build passing").await;

    let build = app.build(id).await;
    assert_eq!(
        (&build["branch"], &build["commit"], &build["trigger"], &build["status"]),
        (&"feature".into(), &feature.as_str().into(), &"manual".into(), &"passed".into()),
        "{build:#}"
    );
    assert!(app.log(id, Some("only")).await.contains("built feature"));
    assert_eq!(app.builds("shop").await.len(), 1, "one click, one build");
    browser.close().await;
    app.stop().await;
}

/// A JUnit report with one passing and one failing test.
const FAILING_TEST_REPORT: &str = r#"<testsuite name="unit" tests="2" failures="1">
<testcase classname="cart" name="adds an item" time="0.010"/>
<testcase classname="cart" name="totals the basket" time="0.020"><failure message="expected 30, got 20">AssertionError: expected 30, got 20
  at cart_test.py:42</failure></testcase>
</testsuite>"#;

#[tokio::test]
async fn a_failing_tests_message_opens_on_the_build_page() {
    let Some(browser) = open_browser().await else { return };
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &junit_pipeline("unit", "true", FAILING_TEST_REPORT, 1))]);
    let app = shop_signed_in(&browser, &repo).await;
    let id = app.trigger("shop", "main").await;
    assert_eq!(app.wait_for_build(id).await["status"], "failed");

    browser.goto(&app.url(&format!("/builds/{id}"))).await.unwrap();
    let case = browser.find(Locator::Css(".test-failures details.test-case")).await.unwrap();
    let summary = case.find(Locator::Css("summary")).await.unwrap();
    let name = summary.find(Locator::Css(".test-name")).await.unwrap().text().await.unwrap();
    assert_eq!(name, "cart totals the basket");
    let message = summary.find(Locator::Css(".test-message")).await.unwrap();
    assert!(message.is_displayed().await.unwrap(), "the message shows in the closed test's summary");
    assert_eq!(message.text().await.unwrap(), "expected 30, got 20");
    let failure = case.find(Locator::Css("pre.test-text")).await.unwrap();
    assert!(!failure.is_displayed().await.unwrap(), "the failure text is folded until the test is opened");

    summary.click().await.unwrap();
    wait_for(
        &browser,
        "const t = document.querySelector('.test-failures details.test-case pre.test-text'); \
         return t.closest('details').open && t.checkVisibility() && t.getBoundingClientRect().height > 0",
        "the opened test's failure text",
    )
    .await;
    let text = failure.text().await.unwrap();
    assert!(text.contains("AssertionError: expected 30, got 20") && text.contains("at cart_test.py:42"), "{text}");
    let page = browser.find(Locator::Css("main")).await.unwrap().text().await.unwrap();
    assert!(!page.contains("adds an item"), "a passing test is not listed among the failures");
    // The whole build from its top: the failing report and the opened test fit in the window.
    execute_settled(&browser, "window.scrollTo(0, 0); return true").await;
    screenshot(&browser, "failing-build").await;
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn clicking_cancel_cancels_a_running_build_and_the_page_shows_its_hosts_torn_down() {
    let Some(browser) = open_browser().await else { return };
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("sleep 600"))]);
    let app = shop_signed_in(&browser, &repo).await;
    let id = app.trigger("shop", "main").await;
    app.wait_build_until(id, BUILD_DEADLINE, "started its stage", |b| {
        b["stages"].as_array().is_some_and(|s| s.iter().any(|s| s["name"] == "only" && s["status"] == "running"))
    })
    .await;
    assert!(!app.host_processes().is_empty() && !app.host_dirs().is_empty(), "the running build has a host");

    browser.goto(&app.url(&format!("/builds/{id}"))).await.unwrap();
    wait_for(&browser, &page_status_is("running"), "the build running").await;
    let host_state = "document.querySelector('tr[data-host=\"app\"] .badge').textContent";
    wait_for(&browser, &format!("return {host_state} === 'provisioned'"), "the host provisioned").await;
    let cancelled_at = Instant::now();
    browser.find(Locator::Css("form[action$='/cancel'] button.cancel-build")).await.unwrap().click().await.unwrap();
    wait_for_path(&browser, &format!("/builds/{id}")).await;
    wait_for(&browser, &page_status_is("cancelled"), "the build cancelled").await;
    wait_for(&browser, &format!("return {host_state} === 'torn down'"), "the host torn down").await;
    wait_for(
        &browser,
        "const s = [...document.querySelectorAll('details.step')].find(d => d.querySelector('.step-name').textContent === 'only'); \
         return !!s && s.classList.contains('status-cancelled')",
        "the stage cancelled",
    )
    .await;
    let took = cancelled_at.elapsed();
    assert!(took < CANCEL_DEADLINE, "cancelling took {took:?}");
    screenshot(&browser, "cancelled-build").await;

    let build = app.build(id).await;
    assert_eq!((&build["status"], &step(&build, "only")["status"]), (&"cancelled".into(), &"cancelled".into()));
    assert!(build["hosts"].as_array().unwrap().iter().all(|h| h["state"] == "torn_down"), "{build:#}");
    app.assert_hosts_gone().await;
    browser.close().await;
    app.stop().await;
}
