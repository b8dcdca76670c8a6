//! What every WebDriver test needs: Debian's chromedriver on a loopback port driving a headless
//! Chromium with a profile of its own ([`open_browser`]), signing in through the real form, waiting
//! on the page with a deadline (never a sleep), and screenshots into `target/screenshots/`.
//! Tests that only need a page as Chromium renders it use `--dump-dom` (`browser::render`) instead.

use std::ops::Deref;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::helpers::*;

pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

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
        eprintln!("skipping a browser test: {message}");
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

/// A headless Chromium driven over WebDriver, with its own chromedriver and profile. It derefs to
/// fantoccini's [`Client`]; end it with [`DrivenBrowser::close`]. Dropped without that (a failed
/// assertion), it kills its Chromium, which would otherwise outlive the test and its driver.
pub(crate) struct DrivenBrowser {
    client: Client,
    // Dropped in this order, after `drop` has killed Chromium: the driver, then the profile.
    _driver: Chromedriver,
    profile: tempfile::TempDir,
}

impl Drop for DrivenBrowser {
    fn drop(&mut self) {
        // Chromium's browser process is the one started with this profile; its helpers end with it.
        let flag = format!("--user-data-dir={}", self.profile.path().display());
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if cmdline.split(|&b| b == 0).any(|arg| arg == flag.as_bytes()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

impl Deref for DrivenBrowser {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DrivenBrowser {
    /// End the WebDriver session: Chromium quits.
    pub(crate) async fn close(self) {
        self.client.clone().close().await.unwrap();
    }
}

/// A headless Chromium in a 1400×1000 window, or `None` where [`chromedriver`] says so.
pub(crate) async fn open_browser() -> Option<DrivenBrowser> {
    let driver = chromedriver().await?;
    let profile = tempfile::TempDir::new().unwrap();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_string(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--window-size=1400,1000", format!("--user-data-dir={}", profile.path().display())],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector).capabilities(capabilities).connect(&driver.url).await.unwrap();
    Some(DrivenBrowser { client, _driver: driver, profile })
}

/// Evaluate `script` (a function body returning a value) until it returns true, or fail saying
/// the page never showed `what`. A script that throws (an element not there yet) or meets a page
/// being replaced (a form's redirect, a reload) is tried again.
pub(crate) async fn wait_for(browser: &Client, script: &str, what: &str) {
    let start = Instant::now();
    loop {
        let answer = browser.execute(script, Vec::new()).await;
        if matches!(&answer, Ok(value) if *value == json!(true)) {
            return;
        }
        assert!(start.elapsed() < EVENT_DEADLINE, "the page never showed {what}: last {answer:?}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Evaluate `script` once the page lets it run: tried again while the page is being replaced.
pub(crate) async fn execute_settled(browser: &Client, script: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        match browser.execute(script, Vec::new()).await {
            Ok(value) => return value,
            Err(error) => assert!(start.elapsed() < EVENT_DEADLINE, "{script}: {error}"),
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The path and query the browser is at.
pub(crate) async fn current_path(browser: &Client) -> String {
    let url = browser.current_url().await.unwrap();
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    }
}

/// Wait until the browser is at `path` (after a form's redirect), or fail.
pub(crate) async fn wait_for_path(browser: &Client, path: &str) {
    let start = Instant::now();
    loop {
        let here = current_path(browser).await;
        if here == path {
            return;
        }
        assert!(start.elapsed() < EVENT_DEADLINE, "the browser stayed at {here}, not {path}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Wait until the page's source contains `text`, and return it.
pub(crate) async fn wait_for_text(browser: &Client, text: &str) -> String {
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

/// Sign in through the dashboard's form as `user`, and wait until the dashboard says so.
pub(crate) async fn sign_in(browser: &Client, app: &TestApp, user: &str, password: &str) {
    browser.goto(&app.url("/login")).await.unwrap();
    browser.find(Locator::Id("user")).await.unwrap().send_keys(user).await.unwrap();
    browser.find(Locator::Id("password")).await.unwrap().send_keys(password).await.unwrap();
    browser.find(Locator::Css("form.stacked button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_for(
        browser,
        &format!("return location.pathname !== '/login' && document.body.innerText.includes('signed in as') && document.body.innerText.includes({user:?})"),
        &format!("{user} signed in"),
    )
    .await;
}

/// Save what the browser shows as `target/screenshots/{name}.png`.
pub(crate) async fn screenshot(browser: &Client, name: &str) {
    let dir = workspace_path("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = browser.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}
