//! A build's log through the server: windows of a step's lines as JSON
//! (`GET /api/builds/{id}/lines`), the raw log of a step and of the whole build as files, the
//! notice where a step's output was cut by `[logs] max_lines_per_step`, and colours on the build
//! page as classes with markup in a log line kept as text.

use serde_json::Value;

use crate::helpers::*;

async fn window(app: &TestApp, id: i64, query: &str) -> (u16, Value) {
    let response = app.client.get(app.url(&format!("/api/builds/{id}/lines?{query}"))).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn texts(window: &Value) -> Vec<String> {
    window["lines"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn the_log_comes_in_windows_and_downloads_whole_for_a_step_and_the_build() {
    let repo = TestRepo::new();
    let pipeline = "version: 1\nhosts:\n  app: {}\nstages:\n  - name: count\n    host: app\n    run: seq 1 1234\n  - name: after\n    host: app\n    needs: [count]\n    run: echo done\n";
    repo.commit("main", &[(".gantry.yml", pipeline)]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    let id = app.trigger("shop", "main").await;
    assert_eq!(app.wait_for_build(id).await["status"], "passed");

    // Without `from`: the tail.
    let (status, tail) = window(&app, id, "stage=count").await;
    assert_eq!(status, 200, "{tail}");
    assert_eq!(tail["total"], 1234);
    assert_eq!(tail["from"], 735);
    assert_eq!(tail["name"], "count");
    let lines = tail["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 500);
    assert_eq!(lines[0]["line"], 735);
    assert_eq!(lines[0]["text"], "735");
    assert_eq!(lines[499]["text"], "1234");
    assert_eq!(lines[0]["stream"], "stdout");
    assert!(lines[0].get("spans").is_none(), "plain lines carry no spans");
    // A window by the step's index, from a line, and one past the end.
    let step = tail["step"].as_i64().unwrap();
    let (_, head) = window(&app, id, &format!("step={step}&from=1&limit=10")).await;
    assert_eq!(texts(&head), (1..=10).map(|n| n.to_string()).collect::<Vec<_>>());
    let (_, middle) = window(&app, id, &format!("step={step}&from=600&limit=3")).await;
    assert_eq!(texts(&middle), ["600", "601", "602"]);
    let (_, past) = window(&app, id, &format!("step={step}&from=2000")).await;
    assert!(texts(&past).is_empty());
    // Mistakes are the client's.
    assert_eq!(window(&app, id, "from=1").await.0, 400);
    assert_eq!(window(&app, id, "stage=count&from=0").await.0, 400);
    assert_eq!(window(&app, id, "stage=nope").await.0, 404);
    assert_eq!(window(&app, 999_999, "stage=count").await.0, 404);

    // The raw log of one step, to show or to save.
    let response = app.client.get(app.url(&format!("/api/builds/{id}/log?stage=count"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let header = |r: &reqwest::Response, name: &str| r.headers()[name].to_str().unwrap().to_string();
    assert_eq!(header(&response, "content-type"), "text/plain; charset=utf-8");
    assert_eq!(header(&response, "content-disposition"), "inline; filename=\"shop-1-count.log\"");
    let expected: String = (1..=1234).map(|n| format!("{n}\n")).collect();
    assert_eq!(response.text().await.unwrap(), expected);
    let download =
        app.client.get(app.url(&format!("/api/builds/{id}/log?stage=count&download=true"))).send().await.unwrap();
    assert_eq!(header(&download, "content-disposition"), "attachment; filename=\"shop-1-count.log\"");

    // The whole build's, every step in the order its lines came.
    let whole = app.client.get(app.url(&format!("/api/builds/{id}/log?download=true"))).send().await.unwrap();
    assert_eq!(header(&whole, "content-disposition"), "attachment; filename=\"shop-1.log\"");
    let whole = whole.text().await.unwrap();
    let count_at = whole.find("1\n2\n3\n").unwrap();
    assert!(whole[count_at..].contains(&expected), "the step's lines are whole in the build's log");
    assert!(whole.find("done\n").unwrap() > count_at + expected.len() - 1, "the later stage's line comes after");
    assert!(whole.lines().any(|l| l.starts_with("[gantry] host app is")), "Gantry's own lines are there too");
    assert_eq!(app.get_text("/api/builds/1/log?stage=nope").await.0, 404);
    app.stop().await;
}

#[tokio::test]
async fn a_step_over_the_line_cap_keeps_its_first_lines_and_says_where_it_was_cut() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("seq 1 1500"))]);
    let app = spawn_app_with_toml(&[RepoConfig::new("shop", &repo)], 4, "\n[logs]\nmax_lines_per_step = 1000\n").await;
    let id = app.trigger("shop", "main").await;
    assert_eq!(app.wait_for_build(id).await["status"], "passed");

    let log: Vec<String> = app.log(id, Some("only")).await.lines().map(str::to_string).collect();
    assert_eq!(log.len(), 1002, "the first 1000 lines, the cut, the count");
    assert_eq!(log[999], "1000");
    assert!(log[1000].starts_with("[gantry] output cut here: a step keeps at most 1000 lines"), "{}", log[1000]);
    assert_eq!(log[1001], "[gantry] output truncated: 500 more lines not stored");
    let (_, cut) = window(&app, id, "stage=only&from=1001&limit=2").await;
    assert_eq!(cut["lines"][0]["stream"], "system");
    assert_eq!(cut["lines"][0]["line"], 1001);
    app.stop().await;
}

#[tokio::test]
async fn colours_show_as_classes_and_markup_in_a_log_line_stays_text() {
    let repo = TestRepo::new();
    let script = r"printf '\033[1;31mbold red\033[0m <script>alert(1)</script> \033]8;;https://evil.example/\033\\link\033]8;;\033\\\n'";
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline(script))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    let id = app.trigger("shop", "main").await;
    assert_eq!(app.wait_for_build(id).await["status"], "passed");

    let (_, lines) = window(&app, id, "stage=only").await;
    let line = &lines["lines"][0];
    assert!(line["text"].as_str().unwrap().starts_with("\u{1b}[1;31mbold red"), "the stored line keeps its escapes");
    assert_eq!(line["spans"][0], serde_json::json!({"text": "bold red", "class": "ansi-fg-1 ansi-b"}));
    assert_eq!(line["spans"][1], serde_json::json!({"text": " <script>alert(1)</script> link"}));

    let (status, html) = app.get_text(&format!("/builds/{id}")).await;
    assert_eq!(status, 200);
    assert!(html.contains(r#"<span class="ansi-fg-1 ansi-b">bold red</span>"#), "{html}");
    assert!(!html.contains("<script>alert(1)</script>"), "the log line's markup reached the page");
    assert!(shows_escaped(&html, " <script>alert(1)</script> link"), "it is shown as text, the link as plain text");
    assert!(!html.contains("evil.example"), "an OSC 8 link's target is dropped");
    let step = lines["step"].as_i64().unwrap();
    assert!(
        html.contains(&format!(r##"id="L{step}-1"><a class="ln" href="#L{step}-1">1</a>"##)),
        "each line has its anchor"
    );

    // The page's script and the colours' stylesheet are served as files.
    let (status, css) = app.get_text("/static/ansi.css").await;
    assert_eq!(status, 200);
    assert!(css.contains(".ansi-fg-1 {"));
    let (status, js) = app.get_text("/static/gantry.js").await;
    assert_eq!(status, 200);
    assert!(js.contains("EventSource"));
    app.stop().await;
}

/// A build whose output is stored more slowly than it was produced (readers come and go while
/// it runs: pages, log windows, event streams dropped half-way) keeps every line: the runner
/// forwards what the script wrote however long storing it takes. Storing lagged by seconds here on
/// a slow store, and the last 10 to 20 % of the log was dropped when the step's drain limit
/// counted that wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_stored_more_slowly_than_it_was_written_is_kept_whole() {
    const LINES: i64 = 100_000;
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline(&format!("seq 1 {LINES}")))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    let id = app.trigger("shop", "main").await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..6u64 {
        let (client, base, done) = (app.client.clone(), app.url(""), done.clone());
        readers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let path = match (i + r) % 3 {
                    0 => format!("/builds/{id}"),
                    1 => format!("/api/builds/{id}/lines?step=1&from={}&limit=256", 1 + (i * 977) % 90_000),
                    _ => format!("/api/builds/{id}/events"),
                };
                // Some requests are dropped before their answer is read through.
                let wait = std::time::Duration::from_millis((i * 7 + r) % 40);
                if let Ok(Ok(response)) = tokio::time::timeout(wait, client.get(format!("{base}{path}")).send()).await {
                    let _ = tokio::time::timeout(wait, response.bytes()).await;
                }
            }
        }));
    }
    assert_eq!(app.wait_for_build(id).await["status"], "passed");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    let (status, page) = app.get_text(&format!("/builds/{id}")).await;
    assert_eq!(status, 200);
    let at = page.find("data-step=\"1\"").expect("the stage's log");
    assert!(
        page[at..].starts_with(&format!("data-step=\"1\" data-lines=\"{LINES}\"")),
        "the page shows {}",
        &page[at..(at + 40).min(page.len())]
    );
    let log = app.log(id, Some("only")).await;
    assert_eq!(log.lines().last(), Some(LINES.to_string().as_str()), "the log ends with the script's last line");
    app.stop().await;
}
