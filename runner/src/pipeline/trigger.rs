//! `on:`: which pushes start a build. The branch patterns are compiled once, into a [`GlobSet`],
//! when the pipeline is built, and every pushed branch is matched against that set; nothing is
//! parsed again per push. Whether a pattern is valid is decided (and reported at its line and
//! column) by validation, which builds the [`Trigger`]; this module knows nothing of forges,
//! webhooks or the poller that ask it.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// The prefix of a full branch ref; [`Trigger::matches_branch`] accepts either form.
const BRANCH_REF_PREFIX: &str = "refs/heads/";

/// The `on:` section of a validated pipeline.
#[derive(Debug, Clone, Default)]
pub struct Trigger {
    /// Glob patterns as written, in file order; empty means every branch.
    branches: Vec<String>,
    /// `branches`, compiled.
    matcher: GlobSet,
}

impl Trigger {
    /// A trigger for pushes to a branch that matches any of `patterns`, or to every branch when
    /// there is none. Refuses an invalid pattern.
    pub fn new(patterns: Vec<String>) -> Result<Trigger, globset::Error> {
        let mut set = GlobSetBuilder::new();
        for pattern in &patterns {
            set.add(branch_glob(pattern)?);
        }
        Ok(Trigger { matcher: set.build()?, branches: patterns })
    }

    /// The branch patterns as written; empty means every branch.
    pub fn branches(&self) -> &[String] {
        &self.branches
    }

    /// Whether a push to `branch` should build. `branch` is a short name (`main`, `release/1.0`);
    /// a full `refs/heads/…` ref is accepted too.
    ///
    /// Patterns are globs where `*` and `?` stay within one `/`-separated segment and `**` crosses
    /// segments: `release/*` matches `release/1.0` but not `release/1.0/fix`, `feature/**` matches
    /// both `feature/a` and `feature/a/b`, and `*` alone matches `main` but not `user/x`.
    pub fn matches_branch(&self, branch: &str) -> bool {
        let branch = branch.strip_prefix(BRANCH_REF_PREFIX).unwrap_or(branch);
        self.branches.is_empty() || self.matcher.is_match(branch)
    }
}

/// One branch pattern as a glob whose `*` and `?` never match a `/`. Validation calls it to report
/// each invalid pattern at its place.
pub(super) fn branch_glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(patterns: &[&str]) -> Trigger {
        Trigger::new(patterns.iter().map(|p| (*p).to_owned()).collect()).unwrap()
    }

    #[test]
    fn branch_patterns_match_what_users_expect() {
        assert!(trigger(&[]).matches_branch("anything/at/all"), "no patterns: every branch");
        assert!(Trigger::default().matches_branch("anything/at/all"), "no `on:`: every branch");
        let release = trigger(&["main", "release/*"]);
        assert!(release.matches_branch("main"));
        assert!(release.matches_branch("refs/heads/main"));
        assert!(release.matches_branch("release/1.0"));
        assert!(!release.matches_branch("release/1.0/hotfix"), "`*` stays within one segment");
        assert!(!release.matches_branch("mainline"));
        let deep = trigger(&["feature/**"]);
        assert!(deep.matches_branch("feature/a") && deep.matches_branch("feature/a/b"));
        assert!(!trigger(&["*"]).matches_branch("user/x"));
        assert!(Trigger::new(vec!["release/[1-".to_owned()]).is_err(), "an invalid pattern makes no trigger");
        assert_eq!(release.branches(), ["main", "release/*"]);
    }
}
