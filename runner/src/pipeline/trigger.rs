//! `on:`: which pushes and which pull (merge) requests start a build. The branch patterns are
//! compiled once, into a [`GlobSet`], when the pipeline is built, and every pushed branch (or
//! request's target branch) is matched against that set; nothing is parsed again per push.
//! Whether a pattern is valid is decided (and reported at its line and column) by validation,
//! which builds the [`Trigger`]; this module knows nothing of forges, webhooks or the poller
//! that ask it.

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
    /// `on.pull_requests`.
    pull_requests: PullRequests,
}

/// `on.pull_requests`: which pull (merge) requests build, by their target branch.
#[derive(Debug, Clone, Default)]
pub enum PullRequests {
    /// `true`, or no `pull_requests` key: every request builds.
    #[default]
    All,
    /// `false`: no request builds.
    None,
    /// `{branches: [...]}`: requests into a matching branch build.
    Into {
        /// Glob patterns as written; empty means every target branch.
        patterns: Vec<String>,
        matcher: GlobSet,
    },
}

impl PullRequests {
    /// Requests whose target branch matches one of `patterns` (every target when there is none).
    /// Refuses an invalid pattern.
    pub fn into_branches(patterns: Vec<String>) -> Result<PullRequests, globset::Error> {
        Ok(PullRequests::Into { matcher: compile(&patterns)?, patterns })
    }
}

impl Trigger {
    /// A trigger for pushes to a branch that matches any of `patterns`, or to every branch when
    /// there is none. Refuses an invalid pattern.
    pub fn new(patterns: Vec<String>) -> Result<Trigger, globset::Error> {
        Ok(Trigger { matcher: compile(&patterns)?, branches: patterns, pull_requests: PullRequests::All })
    }

    /// This trigger, with `on.pull_requests` set to `pull_requests`.
    pub fn with_pull_requests(self, pull_requests: PullRequests) -> Trigger {
        Trigger { pull_requests, ..self }
    }

    /// What `on.pull_requests` says.
    pub fn pull_requests(&self) -> &PullRequests {
        &self.pull_requests
    }

    /// Whether a pull (merge) request into `target` (a branch name, or a full `refs/heads/…`)
    /// should build. `on.branches` does not apply to requests: it names pushed branches.
    pub fn matches_pull_request(&self, target: &str) -> bool {
        let target = target.strip_prefix(BRANCH_REF_PREFIX).unwrap_or(target);
        match &self.pull_requests {
            PullRequests::All => true,
            PullRequests::None => false,
            PullRequests::Into { patterns, matcher } => patterns.is_empty() || matcher.is_match(target),
        }
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

/// Branch patterns compiled into one set.
fn compile(patterns: &[String]) -> Result<GlobSet, globset::Error> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        set.add(branch_glob(pattern)?);
    }
    set.build()
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

    #[test]
    fn pull_requests_build_by_default_and_by_target_branch() {
        assert!(Trigger::default().matches_pull_request("anything"), "no `on:`: every request");
        let only_main = trigger(&["main"]);
        assert!(only_main.matches_pull_request("feature/x"), "on.branches names pushes, not requests");
        let none = trigger(&[]).with_pull_requests(PullRequests::None);
        assert!(!none.matches_pull_request("main"));
        let into = trigger(&[])
            .with_pull_requests(PullRequests::into_branches(vec!["main".into(), "release/*".into()]).unwrap());
        assert!(into.matches_pull_request("main") && into.matches_pull_request("refs/heads/release/2"));
        assert!(!into.matches_pull_request("develop"));
        assert!(trigger(&[])
            .with_pull_requests(PullRequests::into_branches(Vec::new()).unwrap())
            .matches_pull_request("x"));
        assert!(PullRequests::into_branches(vec!["[".into()]).is_err());
    }
}
