//! Commit statuses through the real server to a forge stand-in on loopback: every forge gets every
//! state of a build the way its published API description says (`forge_api`), a forge that fails
//! for a while is retried until the last state is in, and a forge that refuses is reported once
//! on the repo page in its own words, and not asked again.

use std::path::Path;
use std::time::Duration;

use crate::forge_api::{check_gitea, check_github, check_gitlab};
use crate::forge_standin::{repo_table, Answer, ForgeStandIn, Recorded};
use crate::helpers::*;

const TOKEN: &str = "forge-tok-5f0c2a-never-shown";

/// Statuses are retried after 1, 2, 4 ... seconds: a few retries fit well in this.
const STATUS_DEADLINE: Duration = Duration::from_secs(90);

const PUBLIC_URL: &str = "https://ci.example.com";

/// The `[[repo]]` table of a repo reporting to `forge` at `api`, its token read from `token_file`.
fn forge_repo(name: &str, repo: &TestRepo, forge: &str, api: &str, token_file: &Path) -> String {
    let keys = format!(
        "forge = \"{forge}\"\nforge_api = \"{api}\"\nforge_project = \"acme/shop\"\nforge_token = {{ file = {:?} }}\n",
        token_file.to_str().unwrap()
    );
    repo_table(name, repo, &keys)
}

fn token_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("forge_token");
    std::fs::write(&path, TOKEN).unwrap();
    path
}

/// Where a state comes in a build's life: the states a forge gets never go back.
fn rank(state: &str) -> u8 {
    match state {
        "pending" => 0,
        "running" => 1,
        _ => 2,
    }
}

/// Each forge's requests end with the build's final state, accepted, and each one is what the
/// forge's description asks for.
#[tokio::test]
async fn each_forge_gets_every_state_as_its_api_description_says() {
    let forge = ForgeStandIn::start().await;
    let repo = TestRepo::new();
    let sha = repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo reported"))]);
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let forges = [
        ("gh", "github", "/github"),
        ("gl", "gitlab", "/gitlab/api/v4"),
        ("gt", "gitea", "/gitea/api/v1"),
        ("fj", "forgejo", "/forgejo/api/v1"),
    ];
    let tables: String =
        forges.iter().map(|(name, kind, prefix)| forge_repo(name, &repo, kind, &forge.api(prefix), &token)).collect();
    let app = spawn_app_configured(&[], 4, &format!("public_url = \"{PUBLIC_URL}\""), &tables).await;

    let mut ids = Vec::new();
    for (name, _, _) in &forges {
        let id = app.trigger(name, "main").await;
        ids.push(id);
    }
    for id in &ids {
        assert_eq!(app.wait_for_build(*id).await["status"], "passed");
    }
    for ((_, kind, prefix), id) in forges.iter().zip(&ids) {
        forge
            .wait_for(prefix, STATUS_DEADLINE, "got the final state", |r| {
                r.last().is_some_and(|last| last.state() == "success" && last.answered == 201)
            })
            .await;
        let requests = forge.requests(prefix);
        for request in &requests {
            match *kind {
                "github" => check_github(request, prefix, TOKEN),
                "gitlab" => check_gitlab(request, prefix, TOKEN),
                // Gitea's description places the API under `/api/v1` of the server.
                _ => check_gitea(request, prefix.trim_end_matches("/api/v1"), TOKEN),
            }
            assert!(request.path.ends_with(&format!("/statuses/{sha}")), "{}", request.path);
            let context = if *kind == "gitlab" { &request.body["name"] } else { &request.body["context"] };
            assert_eq!(context, "gantry", "{kind}");
            assert_eq!(request.body["target_url"], format!("{PUBLIC_URL}/builds/{id}"), "{kind}");
        }
        let ranks: Vec<u8> = requests.iter().map(|r| rank(r.state())).collect();
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{kind}: states went back: {ranks:?}");
        let last = requests.last().unwrap();
        assert!(last.body["description"].as_str().unwrap().starts_with("Build #1 passed"), "{kind}: {}", last.body);
        if *kind == "gitlab" {
            assert!(last.path.contains("/projects/acme%2Fshop/"), "{}", last.path);
            assert_eq!(last.body["ref"], "main");
        }
    }
    let (_, page) = app.get_text("/repos/gh").await;
    assert!(!page.contains("forge-notice"), "no failure to show");
    app.stop().await;
}

/// 502s and GitHub's secondary rate limit are retried until the last state is in; no older
/// state is accepted after it.
#[tokio::test]
async fn a_failing_forge_is_retried_and_the_last_state_wins() {
    let forge = ForgeStandIn::start().await;
    forge.answer_always("/github", Answer::new(502, "<html>502 Bad Gateway</html>"));
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo retried"))]);
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let table = forge_repo("shop", &repo, "github", &forge.api("/github"), &token);
    let app = spawn_app_configured(&[], 4, &format!("public_url = \"{PUBLIC_URL}\""), &table).await;
    let id = app.trigger("shop", "main").await;
    assert_eq!(app.wait_for_build(id).await["status"], "passed", "a failing forge fails no build");

    // The final state is tried again after each 502.
    let successes = |r: &[Recorded]| r.iter().filter(|r| r.state() == "success").count();
    forge.wait_for("/github", STATUS_DEADLINE, "retried the final state", |r| successes(r) >= 2).await;
    let page = wait_until_page(&app, "/repos/shop", |page| page.contains("forge-notice")).await;
    assert!(page.contains("GitHub answered 502 Bad Gateway"), "the failure is shown while it lasts");
    // Then GitHub's secondary rate limit, and the primary one spent: both waited out.
    forge.answer_next(
        "/github",
        vec![
            Answer::new(403, r#"{"message": "You have exceeded a secondary rate limit."}"#)
                .with_header("retry-after", "1"),
            Answer::new(429, r#"{"message": "API rate limit exceeded"}"#)
                .with_header("x-ratelimit-remaining", "0")
                .with_header("x-ratelimit-reset", "0"),
        ],
    );
    forge.answer_always("/github", Answer::new(201, r#"{"id": 2}"#));
    forge
        .wait_for("/github", STATUS_DEADLINE, "accepted the final state", |r| {
            r.last().is_some_and(|last| last.state() == "success" && last.answered == 201)
        })
        .await;
    let requests = forge.requests("/github");
    let tail: Vec<u16> = requests.iter().rev().take(3).map(|r| r.answered).collect();
    assert_eq!(tail, [201, 429, 403], "the rate limits were waited out");
    let accepted: Vec<&str> = requests.iter().filter(|r| r.answered == 201).map(Recorded::state).collect();
    assert_eq!(accepted, ["success"], "only the last state is accepted; older ones are superseded");
    for request in &requests {
        check_github(request, "/github", TOKEN);
    }
    // The success took the notice away.
    wait_until_page(&app, "/repos/shop", |page| !page.contains("forge-notice")).await;
    app.stop().await;
}

/// A 401 is the forge's final word: each state is tried once, the repo page shows why, and the
/// token appears nowhere.
#[tokio::test]
async fn a_refusing_forge_is_reported_once_on_the_repo_page() {
    let forge = ForgeStandIn::start().await;
    forge.answer_always(
        "/gitea",
        Answer::new(401, r#"{"message": "user does not exist [uid: 0, name: ]", "url": "http://x/api/swagger"}"#),
    );
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo refused"))]);
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let table = forge_repo("shop", &repo, "gitea", &forge.api("/gitea/api/v1"), &token);
    let app = spawn_app_configured(&[], 4, "", &table).await;
    let id = app.trigger("shop", "main").await;
    assert_eq!(app.wait_for_build(id).await["status"], "passed", "a refusing forge fails no build");

    let page = wait_until_page(&app, "/repos/shop", |page| page.contains("user does not exist")).await;
    assert!(page.contains("Gitea answered 401 Unauthorized"), "{page}");
    // Every state was sent once and given up: none is waiting for another attempt.
    let store = app.open_store().await;
    let deadline = std::time::Instant::now() + STATUS_DEADLINE;
    let outcomes = loop {
        let outcomes = store.statuses_of_build(gantry::store::BuildId(id)).await.unwrap();
        if outcomes.iter().all(|(_, outcome)| outcome != "queued")
            && outcomes.iter().any(|(s, _)| s.as_str() == "success")
        {
            break outcomes;
        }
        assert!(std::time::Instant::now() < deadline, "states still queued: {outcomes:?}");
        tokio::time::sleep(POLL_EVERY).await;
    };
    store.close().await;
    let failed = outcomes.iter().filter(|(_, outcome)| outcome == "failed").count();
    assert_eq!(forge.requests("/gitea").len(), failed, "one request per given-up state: {outcomes:?}");
    for request in forge.requests("/gitea") {
        check_gitea(&request, "/gitea", TOKEN);
    }
    for path in ["/repos/shop", &format!("/builds/{id}"), "/api/repos/shop/builds", &format!("/api/builds/{id}")] {
        let (_, body) = app.get_text(path).await;
        assert!(!body.contains(TOKEN), "{path} shows the token");
    }
    app.stop().await;
}

/// Read `path` until `done` accepts the page.
async fn wait_until_page(app: &TestApp, path: &str, done: impl Fn(&str) -> bool) -> String {
    let start = std::time::Instant::now();
    loop {
        let (status, page) = app.get_text(path).await;
        assert_eq!(status, 200);
        if done(&page) {
            return page;
        }
        assert!(start.elapsed() < STATUS_DEADLINE, "{path} never got there:\n{page}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}
