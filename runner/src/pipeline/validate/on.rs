//! The `on:` section: each branch pattern (of `branches`, and of `pull_requests.branches`) must be
//! a valid glob, and each bad one is reported at its place; `pull_requests` is `true`, `false` or
//! a mapping with `branches`. The patterns are then compiled once into the [`Trigger`], which
//! matches pushed branches and requests' target branches at run time; this module only decides
//! what is valid.

use super::Report;
use crate::pipeline::raw;
use crate::pipeline::trigger::{branch_glob, PullRequests, Trigger};
use crate::pipeline::yaml::KeyPath;

pub(super) fn check_on(on: Option<raw::RawOn>, report: &mut Report<'_>) -> Trigger {
    let (branches, pull_requests) = match on {
        Some(on) => (on.branches, on.pull_requests),
        None => (None, None),
    };
    let path = KeyPath::root().key("on").key("branches");
    let patterns = valid_patterns(branches, &path, report);
    // Every pattern is valid on its own; only a limit of the compiled set could still refuse them.
    let trigger = Trigger::new(patterns).unwrap_or_else(|error| {
        report.value(&path, &format!("the branch patterns cannot be compiled: {error}"), None);
        Trigger::default()
    });
    trigger.with_pull_requests(check_pull_requests(pull_requests, report))
}

/// `on.pull_requests`: `true` (the default), `false`, or `{branches: [...]}` (target branches).
fn check_pull_requests(raw: Option<raw::RawPullRequests>, report: &mut Report<'_>) -> PullRequests {
    match raw {
        None | Some(raw::RawPullRequests::Enabled(true)) => PullRequests::All,
        Some(raw::RawPullRequests::Enabled(false)) => PullRequests::None,
        Some(raw::RawPullRequests::Branches(branches)) => {
            let path = KeyPath::root().key("on").key("pull_requests").key("branches");
            let patterns = valid_patterns(branches, &path, report);
            PullRequests::into_branches(patterns).unwrap_or_else(|error| {
                report.value(&path, &format!("the branch patterns cannot be compiled: {error}"), None);
                PullRequests::All
            })
        }
    }
}

/// The patterns of a `branches` list that are valid globs; each invalid one is reported at its
/// place.
fn valid_patterns(names: Option<raw::Names>, path: &KeyPath, report: &mut Report<'_>) -> Vec<String> {
    let mut patterns = Vec::new();
    for (i, pattern) in names.map(|names| names.0).unwrap_or_default().into_iter().enumerate() {
        match branch_glob(&pattern) {
            Ok(_) => patterns.push(pattern),
            Err(error) => report.value(
                &path.index(i),
                &format!("invalid branch pattern `{pattern}`: {}", error.kind()),
                Some(
                    "patterns use `*` and `?` within one segment, `**` across `/`, and `[abc]`; quote patterns that \
                    start with `*`"
                        .to_owned(),
                ),
            ),
        }
    }
    patterns
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn invalid_branch_globs_are_refused() {
        let mut text = MINIMAL.to_vec();
        text.extend(["on:", "  branches: [main, 'release/[1-', '{a,b']"]);
        let found = problems(&file(&text), &no_files());
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("9:20: invalid branch pattern `release/[1-`: "), "{found:?}");
        assert!(found[1].starts_with("9:35: invalid branch pattern `{a,b`: "), "{found:?}");
    }

    #[test]
    fn pull_requests_take_a_bool_or_target_branches() {
        for (on, builds_into_develop) in [
            ("  pull_requests: true", true),
            ("  pull_requests: false", false),
            ("  pull_requests: {branches: [main, 'release/*']}", false),
            ("  pull_requests: {branches: develop}", true),
        ] {
            let mut text = MINIMAL.to_vec();
            text.extend(["on:", on]);
            let pipeline = load(".gantry.yml", &file(&text), &no_files()).unwrap();
            assert_eq!(pipeline.on.matches_pull_request("develop"), builds_into_develop, "{on}");
        }
    }

    #[test]
    fn bad_pull_request_settings_are_refused_where_they_are() {
        let mut text = MINIMAL.to_vec();
        text.extend(["on:", "  pull_requests: {branches: ['[x'], target: main}"]);
        let found = problems(&file(&text), &no_files());
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().any(|p| p.starts_with("9:30: invalid branch pattern `[x`")), "{found:?}");
        assert!(found.iter().any(|p| p.starts_with("9:37: ") && p.contains("target")), "{found:?}");
        let mut text = MINIMAL.to_vec();
        text.extend(["on:", "  pull_requests: sometimes"]);
        let found = problems(&file(&text), &no_files());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("9:18: ") && found[0].contains("`true`, `false`"), "{found:?}");
    }
}
