//! Whole builds through the server: two hosts talking to each other, failures, broken pipeline
//! files, timeouts, superseded builds, and nothing left behind afterwards.

use crate::fixture::fixture_tree;
use crate::helpers::*;

/// A repo whose `main` holds the two-host pipeline of `tests/fixtures/pipelines/two-hosts` (shared
/// with the runner's tests): `db` serves a file, `web` gets the code and a rendered config naming
/// `db`'s address and fetches from `db`.
pub fn two_host_repo() -> (TestRepo, String) {
    let repo = TestRepo::new();
    let files = fixture_tree("two-hosts");
    // The repo marks `.sh` files executable: that must be what the fixture's modes say.
    for file in &files {
        assert_eq!(file.executable, file.path.ends_with(".sh"), "{}: mode differs from its name", file.path);
    }
    let files: Vec<(&str, &str)> = files.iter().map(|file| (file.path.as_str(), file.text.as_str())).collect();
    let sha = repo.commit("main", &files);
    (repo, sha)
}

#[tokio::test]
async fn a_pushed_two_host_pipeline_passes_and_leaves_nothing_behind() {
    let (repo, sha) = two_host_repo();
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;

    let (status, body) = app.github_push("shop", "refs/heads/main", &sha).await;
    assert_eq!(status, 202, "{body}");
    let id = body["build"].as_i64().unwrap();
    let build = app.wait_for_build(id).await;

    assert_eq!(build["status"], "passed", "{build:#}\n{}", app.log(id, None).await);
    assert_eq!(build["commit"], sha.as_str());
    assert_eq!(build["branch"], "main");
    assert_eq!(build["trigger"], "push");
    for field in ["created_at", "started_at", "finished_at"] {
        assert!(!build[field].is_null(), "{field} missing: {build:#}");
    }

    let kinds: Vec<(String, String)> = build["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["kind"].as_str().unwrap().to_string(), s["name"].as_str().unwrap().to_string()))
        .collect();
    for (kind, name) in [
        ("provision", "provision:db"),
        ("provision", "provision:web"),
        ("push", "push:db"),
        ("push", "push:web"),
        ("setup", "setup:db"),
        ("setup", "setup:web"),
        ("stage", "check-env"),
        ("stage", "fetch-from-db"),
        ("stage", "web-listens-too"),
        ("teardown", "teardown:db"),
        ("teardown", "teardown:web"),
    ] {
        assert!(kinds.contains(&(kind.to_string(), name.to_string())), "{name} missing from {kinds:?}");
    }
    for (name, status) in step_statuses(&build) {
        assert_eq!(status, "passed", "step {name}");
    }
    let fetch = step(&build, "fetch-from-db");
    assert_eq!(fetch["exit_code"], 0);
    assert_eq!(fetch["host"], "web");
    assert!(fetch["duration_ms"].as_i64().is_some());

    let hosts = build["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2);
    let addresses: Vec<&str> = hosts.iter().map(|h| h["address"].as_str().unwrap()).collect();
    assert_ne!(addresses[0], addresses[1]);
    for host in hosts {
        assert_eq!(host["provider"], "local");
        assert_ne!(host["address"], "127.0.0.1");
        assert!(host["address"].as_str().unwrap().starts_with("127."));
        assert!(host["isolation"].as_str().is_some_and(|i| !i.is_empty()), "says what isolated it: {host:#}");
    }
    let db_address = hosts.iter().find(|h| h["role"] == "db").unwrap()["address"].as_str().unwrap();

    let env_log = app.log(id, Some("check-env")).await;
    assert!(env_log.contains(&format!("DB={db_address}")), "{env_log}");
    assert!(env_log.contains(&format!("COMMIT={sha}")), "{env_log}");
    assert!(app.log(id, Some("fetch-from-db")).await.contains("hello from the db host"));
    assert!(app.log(id, Some("setup:web")).await.contains(&format!("web setup sees {db_address}")));

    // The http.server the db setup left running is gone, and so are the directories.
    app.assert_hosts_gone().await;
    app.stop().await;
}

#[tokio::test]
async fn a_failing_stage_skips_its_dependents_and_fails_the_build() {
    let repo = TestRepo::new();
    repo.commit(
        "main",
        &[(
            ".gantry.yml",
            "version: 1\nhosts:\n  app: {}\nstages:\n  - name: lint\n    host: app\n    run: echo linting\n  \
             - name: unit\n    host: app\n    run: |\n      echo about to fail >&2\n      exit 3\n  \
             - name: deploy\n    host: app\n    needs: [unit]\n    run: echo never\n",
        )],
    );
    let app = spawn_app(&[RepoConfig::new("r", &repo)]).await;
    let id = app.trigger("r", "main").await;
    let build = app.wait_for_build(id).await;

    assert_eq!(build["status"], "failed");
    assert_eq!(step(&build, "lint")["status"], "passed");
    assert_eq!(step(&build, "unit")["status"], "failed");
    assert_eq!(step(&build, "unit")["exit_code"], 3);
    assert_eq!(step(&build, "deploy")["status"], "skipped");
    assert_eq!(step(&build, "teardown:app")["status"], "passed");
    assert!(app.log(id, Some("unit")).await.contains("about to fail"));
    assert!(!app.log(id, None).await.contains("never"));
    app.assert_hosts_gone().await;
    app.stop().await;
}

#[tokio::test]
async fn a_broken_pipeline_file_errors_the_build_with_every_location_and_provisions_nothing() {
    let repo = TestRepo::new();
    repo.commit(
        "main",
        &[(
            ".gantry.yml",
            "version: 1\nhosts:\n  web: {}\nstages:\n  - name: unit\n    host: dbb\n    run: true\n    colour: red\n",
        )],
    );
    let app = spawn_app(&[RepoConfig::new("r", &repo)]).await;
    let id = app.trigger("r", "main").await;
    let build = app.wait_for_build(id).await;

    assert_eq!(build["status"], "errored");
    let error = build["error"].as_str().unwrap();
    assert!(error.contains(".gantry.yml:6:11"), "undeclared host not located: {error}");
    assert!(error.contains(".gantry.yml:8:5"), "unknown key not located: {error}");
    assert!(build["hosts"].as_array().unwrap().is_empty(), "{build:#}");
    assert!(app.host_dirs().is_empty());

    let (status, page) = app.get_text(&format!("/builds/{id}")).await;
    assert_eq!(status, 200);
    assert!(page.contains(".gantry.yml:6:11"), "the build page shows the diagnostics");
    app.stop().await;
}

#[tokio::test]
async fn a_stage_over_its_timeout_is_stopped_and_its_processes_killed() {
    let repo = TestRepo::new();
    repo.commit(
        "main",
        &[(
            ".gantry.yml",
            "version: 1\nhosts:\n  app: {}\nstages:\n  - name: slow\n    host: app\n    timeout: 1s\n    \
             run: |\n      echo started\n      sleep 600\n",
        )],
    );
    let app = spawn_app(&[RepoConfig::new("r", &repo)]).await;
    let id = app.trigger("r", "main").await;
    let build = app.wait_for_build(id).await;

    assert_eq!(build["status"], "failed");
    assert_eq!(step(&build, "slow")["status"], "timed_out");
    assert!(app.log(id, Some("slow")).await.contains("started"));
    app.assert_hosts_gone().await;
    app.stop().await;
}

#[tokio::test]
async fn a_newer_push_cancels_the_running_build_of_the_same_branch() {
    let repo = TestRepo::new();
    let slow = "version: 1\nhosts:\n  app: {}\nstages:\n  - name: wait\n    host: app\n    run: sleep 600\n";
    let first = repo.commit("main", &[(".gantry.yml", slow)]);
    let app = spawn_app(&[RepoConfig::new("r", &repo)]).await;

    let (_, body) = app.github_push("r", "refs/heads/main", &first).await;
    let old = body["build"].as_i64().unwrap();
    app.wait_build_until(old, BUILD_DEADLINE, "started its stage", |b| {
        b["stages"].as_array().is_some_and(|s| s.iter().any(|s| s["name"] == "wait" && s["status"] == "running"))
    })
    .await;

    let second = repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo second"))]);
    let (status, body) = app.github_push("r", "refs/heads/main", &second).await;
    assert_eq!(status, 202);
    let new = body["build"].as_i64().unwrap();

    let old_build = app.wait_for_build(old).await;
    assert_eq!(old_build["status"], "cancelled");
    assert_eq!(step(&old_build, "wait")["status"], "cancelled");
    assert_eq!(step(&old_build, "teardown:app")["status"], "passed");
    let new_build = app.wait_for_build(new).await;
    assert_eq!(new_build["status"], "passed");
    app.assert_hosts_gone().await;
    app.stop().await;
}

#[tokio::test]
async fn without_supersede_both_builds_of_a_branch_run() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo hi"))]);
    let mut config = RepoConfig::new("r", &repo);
    config.cancel_superseded = false;
    let app = spawn_app_with(&[config], 1).await;
    let first = app.trigger("r", "main").await;
    let second = app.trigger("r", "main").await;
    assert_eq!(app.wait_for_build(first).await["status"], "passed");
    assert_eq!(app.wait_for_build(second).await["status"], "passed");
    app.stop().await;
}

#[tokio::test]
async fn flooding_and_binary_output_are_stored_safely_and_capped() {
    let repo = TestRepo::new();
    repo.commit(
        "main",
        &[(
            ".gantry.yml",
            &format!(
                "{}  - name: markup\n    host: app\n    run: \"printf '<b>x</b>\\\\n'\"\n",
                one_stage_pipeline("printf 'bin\\000\\377\\033[31m<b>x</b>\\n'; yes flood | head -n 200000")
            ),
        )],
    );
    // A cap below the flood (the default keeps a million lines).
    let app = spawn_app_with_toml(&[RepoConfig::new("r", &repo)], 4, "\n[logs]\nmax_lines_per_step = 50000\n").await;
    let id = app.trigger("r", "main").await;
    let build = app.wait_for_build(id).await;
    assert_eq!(build["status"], "passed");

    let log = app.log(id, Some("only")).await;
    assert!(log.lines().count() < 200_000, "the log is capped");
    assert!(log.contains("truncated"), "a visible truncation notice");
    assert!(log.lines().next().unwrap().starts_with("bin"), "{}", log.lines().next().unwrap());
    assert!(!log.contains('\0'));

    // The page shows the end of a long log; the short `markup` log is shown whole.
    assert_eq!(app.log(id, Some("markup")).await, "<b>x</b>\n");
    let (status, page) = app.get_text(&format!("/builds/{id}")).await;
    assert_eq!(status, 200);
    assert!(!page.contains("<b>x</b>"), "log text is escaped on the page");
    assert!(shows_escaped(&page, "<b>x</b>"));
    app.stop().await;
}
