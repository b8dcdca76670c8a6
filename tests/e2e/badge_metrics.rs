//! The status badge (`/badge/{repo}.svg`: the newest verdict, per branch, short-lived caching,
//! readable as the pages are) and `/metrics` (the Prometheus text format, read back with a parser
//! of it, whose counters move with builds and webhook deliveries).

use std::collections::BTreeMap;

use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use serde_json::Value;

use crate::helpers::*;

async fn get(client: &reqwest::Client, url: String) -> (u16, BTreeMap<String, String>, String) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), value.to_str().unwrap_or_default().to_string()))
        .collect();
    (status, headers, response.text().await.unwrap())
}

/// The badge's words: `build: passed`.
fn badge_title(svg: &str) -> &str {
    svg.split("<title>").nth(1).and_then(|t| t.split("</title>").next()).unwrap_or_else(|| panic!("{svg}"))
}

#[tokio::test]
async fn the_badge_shows_the_newest_verdict_of_the_repo_or_branch_and_may_be_cached_briefly() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("true"))]);
    repo.commit("bad", &[(".gantry.yml", &one_stage_pipeline("false"))]);
    let app = spawn_app_configured(&[RepoConfig::new("shop", &repo)], 4, "", "\n[auth]\npublic_read = true\n").await;
    let anonymous = anonymous_client();

    let (status, headers, svg) = get(&anonymous, app.url("/badge/shop.svg")).await;
    assert_eq!(status, 200, "{svg}");
    assert_eq!(headers[CONTENT_TYPE.as_str()], "image/svg+xml");
    assert_eq!(headers[CACHE_CONTROL.as_str()], "public, max-age=60", "public reads may be cached by anyone");
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert_eq!(badge_title(&svg), "build: no builds");

    let main = app.trigger("shop", "main").await;
    app.wait_for_build(main).await;
    let bad = app.trigger("shop", "bad").await;
    assert_eq!(app.wait_for_build(bad).await["status"], "failed");
    let badge = |query: &'static str| {
        let (client, url) = (&anonymous, app.url(&format!("/badge/shop.svg{query}")));
        async move {
            let (status, _, svg) = get(client, url).await;
            assert_eq!(status, 200, "{query}: {svg}");
            badge_title(&svg).to_string()
        }
    };
    assert_eq!(badge("").await, "build: failed", "the repo's newest verdict");
    assert_eq!(badge("?branch=main").await, "build: passed");
    assert_eq!(badge("?branch=bad").await, "build: failed");
    assert_eq!(badge("?branch=nope").await, "build: no builds");

    // A build still running or cancelled is no verdict: the badge keeps the last one.
    let running = app.trigger("shop", "main").await;
    app.client.post(app.url(&format!("/api/builds/{running}/cancel"))).send().await.unwrap();
    app.wait_for_build(running).await;
    assert_eq!(badge("?branch=main").await, "build: passed");

    // Reading in public is reading only: no form that acts on builds.
    let (_, _, page) = get(&anonymous, app.url(&format!("/builds/{main}"))).await;
    assert!(!page.contains("build-actions"), "no re-run button for an anonymous reader");
    let (_, _, page) = get(&anonymous, app.url("/repos/shop")).await;
    assert!(!page.contains("build-form"), "no build form either");

    for missing in ["/badge/nope.svg", "/badge/shop.png", "/badge/shop"] {
        assert_eq!(get(&anonymous, app.url(missing)).await.0, 404, "{missing}");
    }
    app.stop().await;
}

#[tokio::test]
async fn without_public_read_the_badge_is_read_like_a_page() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("true"))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    let response = anonymous_client().get(app.url("/badge/shop.svg")).send().await.unwrap();
    assert_eq!(response.status(), 303, "nobody signed in is sent to sign in");
    assert!(response.headers()[LOCATION].to_str().unwrap().starts_with("/login?next="));
    let (status, headers, svg) = get(&app.client, app.url("/badge/shop.svg")).await;
    assert_eq!(status, 200, "{svg}");
    assert_eq!(headers[CACHE_CONTROL.as_str()], "private, max-age=60", "a private badge is cached by its reader only");
    app.stop().await;
}

/// Every sample of a scrape as `name{label="value",…}` (labels sorted) → value; histograms by
/// their count.
fn samples(text: &str) -> BTreeMap<String, f64> {
    // The exposition's own grammar first: comments, or `name[{labels}] value`.
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line:?}");
        assert!(!series.contains('{') || series.ends_with('}'), "{line:?}");
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line:?}");
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let mut found = BTreeMap::new();
    for sample in scrape.samples {
        let mut labels: Vec<String> = sample.labels.iter().map(|(name, value)| format!("{name}=\"{value}\"")).collect();
        labels.sort();
        let key = if labels.is_empty() {
            sample.metric.clone()
        } else {
            format!("{}{{{}}}", sample.metric, labels.join(","))
        };
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => panic!("no summaries are exposed"),
        };
        found.insert(key, value);
    }
    found
}

async fn scrape(app: &TestApp) -> BTreeMap<String, f64> {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[CONTENT_TYPE], "text/plain; version=0.0.4; charset=utf-8");
    samples(&response.text().await.unwrap())
}

fn value(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_parse_as_the_prometheus_text_format_and_move_with_builds_and_webhooks() {
    let repo = TestRepo::new();
    let sha = repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("true"))]);
    repo.commit("slow", &[(".gantry.yml", &one_stage_pipeline("sleep 600"))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;

    let anonymous = anonymous_client().get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(anonymous.status(), 303, "metrics are a read: they need credentials without public_read");

    let before = scrape(&app).await;
    assert_eq!(value(&before, "gantry_queue_length"), 0.0);
    assert_eq!(value(&before, r#"gantry_hosts_alive{provider="local"}"#), 0.0, "{before:?}");
    assert!(before.contains_key(r#"gantry_builds_live{status="running"}"#), "every live status has a series");

    // A webhook that queues a build, one with a bad signature, and the build passing.
    let (status, body) = app.github_push("shop", "refs/heads/main", &sha).await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = app
        .deliver(
            "shop",
            &[("X-GitHub-Event", "push".into()), ("X-Hub-Signature-256", "sha256=00".into())],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(status, 401);
    app.wait_for_build(body["build"].as_i64().unwrap()).await;

    let after = scrape(&app).await;
    let moved = |key: &str| value(&after, key) - value(&before, key);
    assert_eq!(moved(r#"gantry_webhook_deliveries_total{code="202"}"#), 1.0, "{after:?}");
    assert_eq!(moved(r#"gantry_webhook_deliveries_total{code="401"}"#), 1.0);
    assert_eq!(moved(r#"gantry_builds_finished_total{status="passed"}"#), 1.0);
    assert!(moved(r#"gantry_step_duration_seconds{kind="stage",status="passed"}"#) >= 1.0, "{after:?}");
    assert!(moved(r#"gantry_step_duration_seconds{kind="provision",status="passed"}"#) >= 1.0);

    // While a build runs its host is alive; once cancelled, it is not.
    let slow = app.trigger("shop", "slow").await;
    app.wait_build_until(slow, BUILD_DEADLINE, "started its stage", |b| {
        b["stages"].as_array().is_some_and(|s| s.iter().any(|s| s["name"] == "only" && s["status"] == "running"))
    })
    .await;
    let running = scrape(&app).await;
    assert_eq!(value(&running, r#"gantry_hosts_alive{provider="local"}"#), 1.0, "{running:?}");
    assert_eq!(value(&running, r#"gantry_builds_live{status="running"}"#), 1.0);
    app.client.post(app.url(&format!("/api/builds/{slow}/cancel"))).send().await.unwrap();
    let build: Value = app.wait_for_build(slow).await;
    assert_eq!(build["status"], "cancelled");
    let done = scrape(&app).await;
    assert_eq!(value(&done, r#"gantry_hosts_alive{provider="local"}"#), 0.0);
    assert_eq!(value(&done, r#"gantry_builds_live{status="running"}"#), 0.0);
    assert_eq!(value(&done, r#"gantry_builds_finished_total{status="cancelled"}"#), 1.0);
    app.stop().await;
}
