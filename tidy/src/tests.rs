use std::path::{Path, PathBuf};

/// The workspace's root directory.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every `.rs` file under `dir` (relative to the workspace root), as (path from the root, text).
fn rust_files(dir: &str) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(root).unwrap().display().to_string();
                files.push((relative, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let root = root();
    let mut files = Vec::new();
    walk(&root, &root.join(dir), &mut files);
    assert!(!files.is_empty(), "tidy: no Rust files under {dir}: has the layout changed?");
    files
}

/// The part of a source file that is compiled outside tests: everything before its first
/// `#[cfg(test)]` (test modules come last, by the house style). A file that is itself a test
/// module (`tests.rs`, or a `tests/` directory) has none.
fn non_test_code(path: &str, text: &str) -> Vec<(usize, String)> {
    if path.ends_with("/tests.rs") || path.contains("/tests/") {
        return Vec::new();
    }
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .map(|(n, line)| (n + 1, line.to_string()))
        .collect()
}

/// Whether `code` names `word` as the start of a path (`word::…`, not `other_word::…`).
fn names_path(code: &str, word: &str) -> bool {
    code.match_indices(&format!("{word}::"))
        .any(|(at, _)| !code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
}

/// Lines of non-test code under `dir` that name `word` as a path (`word::…`), outside comments,
/// except in files under one of `allowed`.
fn uses_of(dir: &str, word: &str, allowed: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in rust_files(dir) {
        if allowed.iter().any(|a| path.starts_with(a)) {
            continue;
        }
        for (n, line) in non_test_code(&path, &text) {
            let code = line.split("//").next().unwrap_or_default();
            if names_path(code, word) {
                found.push(format!("{path}:{n}: {}", line.trim()));
            }
        }
    }
    found
}

/// The names of a crate's `[dependencies]` (not dev-dependencies: tests may use what they like).
fn dependencies(krate: &str) -> Vec<String> {
    let manifest = std::fs::read_to_string(root().join(krate).join("Cargo.toml")).unwrap();
    let manifest: toml::Table = manifest.parse().unwrap();
    manifest.get("dependencies").and_then(|d| d.as_table()).map(|d| d.keys().cloned().collect()).unwrap_or_default()
}

#[track_caller]
fn assert_rule(rule: &str, broken: &[String]) {
    assert!(broken.is_empty(), "tidy rule broken: {rule}\n  {}", broken.join("\n  "));
}

#[test]
fn sql_lives_only_in_the_store() {
    for dir in ["event", "runner/src", "web/src", "server/src"] {
        assert_rule(
            "no sqlx outside server/src/store/ (every SQL statement lives in the store)",
            &uses_of(dir, "sqlx", &["server/src/store/"]),
        );
    }
}

#[test]
fn the_runner_knows_nothing_of_http_sql_or_html() {
    let banned = ["axum", "sqlx", "askama", "tower-http", "reqwest", "gantry-web", "gantry"];
    let broken: Vec<String> = dependencies("runner")
        .into_iter()
        .filter(|d| banned.contains(&d.as_str()))
        .map(|d| format!("runner/Cargo.toml: [dependencies] has {d}"))
        .collect();
    assert_rule("runner depends on no HTTP, SQL or HTML crate", &broken);
    for word in ["axum", "sqlx", "askama", "tower_http"] {
        assert_rule("runner's code names no HTTP, SQL or HTML crate", &uses_of("runner/src", word, &[]));
    }
}

#[test]
fn the_dashboard_sees_no_database_and_no_runner() {
    let banned = ["sqlx", "gantry", "gantry-runner"];
    let broken: Vec<String> = dependencies("web")
        .into_iter()
        .filter(|d| banned.contains(&d.as_str()))
        .map(|d| format!("web/Cargo.toml: [dependencies] has {d}"))
        .collect();
    assert_rule("web depends on neither the database, the server nor the runner", &broken);
    for word in ["sqlx", "gantry_runner", "gantry"] {
        assert_rule("web's code names no database, server or runner type", &uses_of("web/src", word, &[]));
    }
    let mut rows = Vec::new();
    for (path, text) in rust_files("web/src") {
        for (n, line) in non_test_code(&path, &text) {
            if ["BuildRow", "StepRow", "HostRow", "ReportRow", "RepoRow"].iter().any(|row| line.contains(row)) {
                rows.push(format!("{path}:{n}: {}", line.trim()));
            }
        }
    }
    assert_rule("web renders view models, never database rows", &rows);
}

#[test]
fn the_event_vocabulary_is_std_only() {
    let deps = dependencies("event");
    assert_rule(
        "gantry-event has no dependencies (the dashboard links it)",
        &deps.iter().map(|d| format!("event/Cargo.toml: [dependencies] has {d}")).collect::<Vec<_>>(),
    );
}

#[test]
fn no_stubs_in_code_that_ships() {
    let mut stubs = Vec::new();
    for dir in ["event", "runner/src", "server/src", "web/src"] {
        for (path, text) in rust_files(dir) {
            for (n, line) in non_test_code(&path, &text) {
                let code = line.split("//").next().unwrap_or_default();
                if code.contains("todo!(") || code.contains("unimplemented!(") {
                    stubs.push(format!("{path}:{n}: {}", line.trim()));
                }
            }
        }
    }
    assert_rule("no todo!() or unimplemented!() outside tests", &stubs);
}

#[test]
fn repo_url_credentials_reach_only_git() {
    let mut exposed = Vec::new();
    for (path, text) in rust_files("server/src") {
        if path.starts_with("server/src/git/") {
            continue;
        }
        for (n, line) in non_test_code(&path, &text) {
            let code = line.split("//").next().unwrap_or_default();
            if code.contains(".expose()") || code.contains(".for_git_command()") {
                exposed.push(format!("{path}:{n}: {}", line.trim()));
            }
        }
    }
    assert_rule(
        "RepoUrl::expose and for_git_command (the URL's credentials) are called only in server/src/git/",
        &exposed,
    );
}

/// The rules must be able to fail: each detector finds what it looks for in a sample.
#[test]
fn the_detectors_find_what_they_look_for() {
    let sample =
        "use sqlx::Row;\nfn f() { todo!() }\n// sqlx:: in a comment\n#[cfg(test)]\nmod tests { use sqlx::X; }\n";
    let lines = non_test_code("server/src/x.rs", sample);
    assert_eq!(lines.len(), 3, "the test module is cut off: {lines:?}");
    let code: Vec<&str> = lines.iter().map(|(_, l)| l.split("//").next().unwrap()).collect();
    assert!(code[0].contains("sqlx::") && code[1].contains("todo!(") && !code[2].contains("sqlx::"));
    assert!(non_test_code("server/src/scheduler/tests.rs", sample).is_empty());
    assert!(names_path("use gantry::config;", "gantry") && names_path("x: sqlx::Pool", "sqlx"));
    assert!(!names_path("use gantry_event::BuildStatus;", "gantry") && !names_path("my_sqlx::X", "sqlx"));
}
