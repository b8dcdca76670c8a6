//! History that goes back: paging through every build newest first with `?before=`, filtered by
//! branch, status and trigger, in the API (cursor and `Link` header) and on the repo page (its
//! older and newer links), with no build missed and none shown twice.

use std::collections::BTreeSet;

use reqwest::header::LINK;
use serde_json::Value;

use crate::helpers::*;

/// A walk through the pages gives up after this many: a cursor that does not move on would
/// otherwise walk forever.
const MAX_PAGES: usize = 200;

/// A repo whose `main` passes and whose `bad` fails, built `count` times by hand per branch and
/// `pushes` more times on `main` by webhook; every build runs (nothing is superseded). The builds'
/// JSON, newest first.
async fn history_app(count: usize, pushes: usize) -> (TestRepo, TestApp, Vec<Value>) {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("true"))]);
    repo.commit("bad", &[(".gantry.yml", &one_stage_pipeline("false"))]);
    let mut config = RepoConfig::new("shop", &repo);
    config.cancel_superseded = false;
    let app = spawn_app(&[config]).await;
    let mut ids = Vec::new();
    for i in 0..count {
        ids.push(app.trigger("shop", "main").await);
        ids.push(app.trigger("shop", "bad").await);
        if i < pushes {
            // A new commit per push: the same signed body again would be a replay, refused.
            let main = repo.commit("main", &[("pushed", &i.to_string())]);
            let (status, body) = app.github_push("shop", "refs/heads/main", &main).await;
            assert_eq!(status, 202, "{body}");
            ids.push(body["build"].as_i64().unwrap());
        }
    }
    for id in &ids {
        app.wait_for_build(*id).await;
    }
    let all = app.get_json("/api/repos/shop/builds?limit=1000").await.as_array().unwrap().clone();
    assert_eq!(all.len(), ids.len());
    (repo, app, all)
}

fn id(build: &Value) -> i64 {
    build["id"].as_i64().unwrap()
}

/// Walk the API's pages of `filter` (a query string, maybe empty) `limit` builds at a time, by the
/// last build's id and, checked on the way, by the `Link` header.
async fn walk_api(app: &TestApp, filter: &str, limit: usize) -> Vec<i64> {
    let mut seen = Vec::new();
    let mut path = format!("/api/repos/shop/builds?limit={limit}{filter}");
    for _ in 0..MAX_PAGES {
        let response = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        let link = response.headers().get(LINK).map(|v| v.to_str().unwrap().to_string());
        let page: Vec<Value> = response.json().await.unwrap();
        assert!(page.len() <= limit, "{path}: {} builds", page.len());
        seen.extend(page.iter().map(id));
        match (page.len() == limit, link) {
            (_, Some(link)) => {
                let next = link.strip_prefix('<').and_then(|l| l.strip_suffix(">; rel=\"next\"")).unwrap();
                let before = format!("before={}", id(page.last().unwrap()));
                assert!(next.contains(&before), "the Link header {next} continues {before}");
                path = format!("/api/repos/shop/builds?limit={limit}{filter}&{before}");
            }
            (true, None) => {
                // A full last page: the next one is empty.
                let before = id(page.last().unwrap());
                let rest = app.get_json(&format!("/api/repos/shop/builds?limit={limit}{filter}&before={before}")).await;
                assert_eq!(rest, Value::Array(Vec::new()), "no Link header, yet more builds after {path}");
                return seen;
            }
            (false, None) => return seen,
        }
    }
    panic!("more than {MAX_PAGES} pages: the cursor does not move on ({seen:?})");
}

#[tokio::test]
async fn the_api_pages_through_every_build_with_filters_and_no_gap_or_duplicate() {
    let (_repo, app, all) = history_app(6, 4).await;
    assert!(all.windows(2).all(|w| id(&w[0]) > id(&w[1])), "newest first");
    type Keep = fn(&Value) -> bool;
    let filters: [(&str, Keep); 6] = [
        ("", |_| true),
        ("&branch=main", |b| b["branch"] == "main"),
        ("&status=failed", |b| b["status"] == "failed"),
        ("&trigger=push", |b| b["trigger"] == "push"),
        ("&branch=main&trigger=manual&status=passed", |b| {
            b["branch"] == "main" && b["trigger"] == "manual" && b["status"] == "passed"
        }),
        ("&branch=nope", |_| false),
    ];
    for (filter, keep) in filters {
        let expected: Vec<i64> = all.iter().filter(|b| keep(b)).map(id).collect();
        for limit in [1, 3, 5] {
            let walked = walk_api(&app, filter, limit).await;
            assert_eq!(walked, expected, "filter {filter:?}, {limit} a page");
        }
    }
    assert_eq!(all.iter().filter(|b| b["trigger"] == "push").count(), 4);
    assert_eq!(all.iter().filter(|b| b["status"] == "failed").count(), 6);

    for bad in ["status=green", "trigger=cron", "before=x", "limit=0", "page=2"] {
        let (status, body) = app.get_text(&format!("/api/repos/shop/builds?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    app.stop().await;
}

/// The build ids of a repo page's history table, in order.
fn history_ids(html: &str) -> Vec<i64> {
    html.split(r#"<a class="build-number" href="/builds/"#)
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().parse().unwrap())
        .collect()
}

/// The target of the link with `class` on a page, as the browser reads it (`&#38;` is `&`).
fn link(html: &str, class: &str) -> Option<String> {
    let marker = format!(r#"<a class="{class}""#);
    let at = html.find(&marker)?;
    let href = html[at..].split(r#"href=""#).nth(1)?.split('"').next()?;
    Some(href.replace("&#38;", "&").replace("&amp;", "&"))
}

#[tokio::test]
async fn the_repo_page_links_older_and_newer_pages_keeping_its_filter() {
    let (_repo, app, all) = history_app(5, 0).await;
    let main: Vec<i64> = all.iter().filter(|b| b["branch"] == "main").map(id).collect();
    assert_eq!(main.len(), 5);

    // Older, older, older: every build of main once, two a page.
    let mut path = "/repos/shop?branch=main&limit=2".to_string();
    let mut pages = Vec::new();
    loop {
        assert!(pages.len() < MAX_PAGES, "the older links never end");
        let (status, html) = app.get_text(&path).await;
        assert_eq!(status, 200, "{path}: {html}");
        assert!(html.contains(r#"placeholder="any branch" value="main""#), "the filter form keeps its value");
        pages.push((path.clone(), history_ids(&html), html.clone()));
        match link(&html, "older") {
            Some(older) => {
                assert!(older.contains("branch=main") && older.contains("limit=2"), "{older}");
                path = older;
            }
            None => break,
        }
    }
    let walked: Vec<i64> = pages.iter().flat_map(|(_, ids, _)| ids.clone()).collect();
    assert_eq!(walked, main);
    assert_eq!(pages.len(), 3);
    let unique: BTreeSet<i64> = walked.iter().copied().collect();
    assert_eq!(unique.len(), walked.len());

    // Newer from the last page leads back through the same pages.
    let (_, ids, html) = &pages[2];
    assert_eq!(ids.len(), 1);
    let newer = link(html, "newer").expect("the oldest page links to newer builds");
    let (_, back) = app.get_text(&newer).await;
    assert_eq!(history_ids(&back), pages[1].1);
    let newer = link(&back, "newer").unwrap();
    let (_, first) = app.get_text(&newer).await;
    assert_eq!(history_ids(&first), pages[0].1);
    assert!(link(&first, "newer").is_none(), "the newest page has nothing newer");
    assert!(link(&pages[0].2, "clear-filter").is_some());

    // The stage grid shows the builds of the page it is on.
    let (_, failed) = app.get_text("/repos/shop?status=failed&limit=50").await;
    let bad: Vec<i64> = all.iter().filter(|b| b["status"] == "failed").map(id).collect();
    assert_eq!(history_ids(&failed), bad);
    for build in &bad {
        assert!(failed.contains(&format!(r#"<a href="/builds/{build}">#"#)), "build {build} is a grid row");
    }
    assert!(!failed.contains(&format!(r#"<a href="/builds/{}">#"#, main[0])), "a passed build is not");
    let (status, _) = app.get_text("/repos/shop?status=nope").await;
    assert_eq!(status, 400);
    app.stop().await;
}
