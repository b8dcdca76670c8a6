//! The live dashboard in a real browser (Debian's Chromium through chromedriver): a log line
//! appears on the build page while its step still runs and the stage cell on the repo page turns
//! green, both without a reload; a 200,000-line log opens in under a second and a line's anchor
//! scrolls to it. Helpers are in `browser_driver`; screenshots (the build page, the stage grid, the
//! long log) go to `target/screenshots/`.

use std::time::{Duration, Instant};

use crate::browser_driver::*;
use crate::helpers::*;

/// Opening a long log must take less than this.
const LONG_LOG_OPENS_WITHIN: Duration = Duration::from_secs(1);

/// The build's stage `only` runs (false before the build is planned).
fn only_running(build: &serde_json::Value) -> bool {
    build["stages"].as_array().is_some_and(|s| s.iter().any(|s| s["name"] == "only" && s["status"] == "running"))
}

#[tokio::test]
async fn a_running_build_shows_new_lines_and_turns_green_without_a_reload_and_a_long_log_opens_at_once() {
    let Some(browser) = open_browser().await else { return };
    let gate = Gate::new();
    let script = format!("echo first line; {}; printf '\\033[32msecond line\\033[0m\\n'", gate.wait_command());
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline(&script))]);
    repo.commit("long", &[(".gantry.yml", &one_stage_pipeline("seq 1 200000"))]);
    let app = spawn_app_configured(&[RepoConfig::new("shop", &repo)], 4, "", "\n[auth]\npublic_read = true\n").await;

    let id = app.trigger("shop", "main").await;
    app.wait_build_until(id, BUILD_DEADLINE, "ran its stage", only_running).await;
    browser.goto(&app.url(&format!("/builds/{id}"))).await.unwrap();
    // A mark that a reload would wipe out.
    browser
        .execute("window.gantryTestMark = 1; document.getElementById('step-1').open = true; return true", Vec::new())
        .await
        .unwrap();
    wait_for(&browser, "return document.body.innerText.includes('first line')", "the first line").await;
    gate.open();
    wait_for(
        &browser,
        "return window.gantryTestMark === 1 && !!document.querySelector('.log-view .ansi-fg-2') \
         && document.querySelector('.log-view .ansi-fg-2').textContent === 'second line'",
        "the second line, in green, without a reload",
    )
    .await;
    wait_for(
        &browser,
        "return window.gantryTestMark === 1 && document.querySelector('.build-head').dataset.status === 'passed'",
        "the build passing",
    )
    .await;
    // The moments the page first showed as "–" fill in from the same events, still without a
    // reload: when the build finished and when its host was torn down.
    wait_for(
        &browser,
        "return window.gantryTestMark === 1 \
         && / UTC$/.test(document.querySelector('.build-finished').textContent) \
         && [...document.querySelectorAll('.host-torn-down')].every(td => / UTC$/.test(td.textContent))",
        "the finished and torn-down times",
    )
    .await;
    screenshot(&browser, "build-page").await;

    // The repo page: a new build's stage cell turns green without a reload.
    gate.close();
    browser.goto(&app.url("/repos/shop")).await.unwrap();
    browser.execute("window.gantryTestMark = 1; return true", Vec::new()).await.unwrap();
    let second = app.trigger("shop", "main").await;
    app.wait_build_until(second, BUILD_DEADLINE, "ran its stage", only_running).await;
    let cell = format!("document.querySelector('td.cell[data-build=\"{second}\"][data-step=\"1\"]')");
    wait_for(&browser, &format!("return !!{cell} && {cell}.classList.contains('status-running')"), "the running cell")
        .await;
    gate.open();
    wait_for(
        &browser,
        &format!("return window.gantryTestMark === 1 && {cell}.classList.contains('status-passed')"),
        "the cell turning green",
    )
    .await;
    screenshot(&browser, "stage-grid").await;

    // A 200,000-line log opens at its end at once, and an anchor far up scrolls to its line.
    let long = app.trigger("shop", "long").await;
    assert_eq!(app.wait_for_build(long).await["status"], "passed");
    let started = Instant::now();
    browser.goto(&app.url(&format!("/builds/{long}"))).await.unwrap();
    browser.execute("document.getElementById('step-1').open = true; return true", Vec::new()).await.unwrap();
    // Anything but true is what the page showed instead, for the failure message.
    wait_for(
        &browser,
        "if (document.getElementById('L1-200000')) return true; \
         const d = document.getElementById('step-1'); const v = d && d.querySelector('.log-view'); \
         return JSON.stringify({ url: location.href, open: d && d.open, lines: v && v.dataset.lines, \
           last: v ? [...v.querySelectorAll('.line[id]')].slice(-2).map(l => l.id + ' ' + l.className + ' ' + l.textContent.slice(-12)) : null })",
        "the log's last line",
    )
    .await;
    let took = started.elapsed();
    assert!(took < LONG_LOG_OPENS_WITHIN, "a 200,000-line log took {took:?} to open");
    browser.goto(&app.url(&format!("/builds/{long}#L1-123456"))).await.unwrap();
    wait_for(
        &browser,
        "const l = document.getElementById('L1-123456'); return !!l && l.classList.contains('hl') && l.textContent.endsWith('123456')",
        "line 123456 highlighted",
    )
    .await;
    screenshot(&browser, "long-log").await;
    browser.close().await;
    app.stop().await;
}
