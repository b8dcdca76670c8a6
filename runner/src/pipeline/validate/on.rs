//! The `on:` section: each branch pattern must be a valid glob, and each bad one is reported at
//! its place. The patterns are then compiled once into the [`Trigger`], which matches pushed
//! branches at run time; this module only decides what is valid.

use super::Report;
use crate::pipeline::raw;
use crate::pipeline::trigger::{branch_glob, Trigger};
use crate::pipeline::yaml::KeyPath;

pub(super) fn check_on(on: Option<raw::RawOn>, report: &mut Report<'_>) -> Trigger {
    let path = KeyPath::root().key("on").key("branches");
    let mut patterns = Vec::new();
    for (i, pattern) in on.and_then(|on| on.branches).map(|names| names.0).unwrap_or_default().into_iter().enumerate() {
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
    // Every pattern is valid on its own; only a limit of the compiled set could still refuse them.
    Trigger::new(patterns).unwrap_or_else(|error| {
        report.value(&path, &format!("the branch patterns cannot be compiled: {error}"), None);
        Trigger::default()
    })
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
}
