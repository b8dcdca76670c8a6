//! The tests of a repo across its recent builds (`/repos/{repo}/tests`): each test's newest
//! outcomes and durations, and which tests are flaky (passed and failed on one commit).
//!
//! The server finds the runs and decides flakiness; this module only arranges them for the page.

use crate::format::{format_duration_ms, short_sha};
use crate::view::TestKeyView;

/// `/repos/{repo}/tests[?flaky=true]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestsPage {
    pub repo: String,
    /// Sorted by stage, classname and name.
    pub tests: Vec<TestHistoryView>,
    /// Only flaky tests are listed.
    pub flaky_only: bool,
    /// How many of the repo's newest builds were looked at.
    pub builds_looked_at: u32,
    pub now_ms: i64,
}

impl TestsPage {
    /// How many listed tests failed (or errored) in their newest run.
    pub fn failing_now(&self) -> usize {
        self.tests.iter().filter(|t| t.last().is_some_and(TestRunView::went_wrong)).count()
    }

    /// How many listed tests are flaky.
    pub fn flaky(&self) -> usize {
        self.tests.iter().filter(|t| t.flaky).count()
    }
}

/// One test and its newest runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestHistoryView {
    pub key: TestKeyView,
    pub flaky: bool,
    /// Newest first.
    pub runs: Vec<TestRunView>,
}

impl TestHistoryView {
    /// The newest run.
    pub fn last(&self) -> Option<&TestRunView> {
        self.runs.first()
    }

    /// The newest run's outcome (`passed`, `failed`, `errored`, `skipped`).
    pub fn last_outcome(&self) -> &str {
        self.last().map_or("", |r| r.outcome.as_str())
    }

    /// The newest run's duration for display, empty when it has none.
    pub fn last_duration(&self) -> String {
        self.last().and_then(|r| r.duration_ms).map(format_duration_ms).unwrap_or_default()
    }

    /// The mean duration of the runs that have one, for display.
    pub fn mean_duration(&self) -> String {
        let times: Vec<i64> = self.runs.iter().filter_map(|r| r.duration_ms).collect();
        if times.is_empty() {
            return String::new();
        }
        format_duration_ms(times.iter().sum::<i64>() / times.len() as i64)
    }

    /// The newest failure's message, when the test failed with one.
    pub fn last_failure_message(&self) -> Option<&str> {
        self.runs.iter().find(|r| r.went_wrong()).and_then(|r| r.message.as_deref())
    }
}

/// A test's outcome in one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunView {
    pub build_id: i64,
    pub number: i64,
    pub commit: String,
    pub branch: String,
    /// `passed`, `failed`, `errored` or `skipped`.
    pub outcome: String,
    pub duration_ms: Option<i64>,
    pub message: Option<String>,
}

impl TestRunView {
    pub fn went_wrong(&self) -> bool {
        matches!(self.outcome.as_str(), "failed" | "errored")
    }

    /// The CSS status class of the outcome.
    pub fn tone(&self) -> &str {
        &self.outcome
    }

    /// A run's cell tooltip: `#12 on main at 6b1f533: failed in 1.2s`.
    pub fn describe(&self) -> String {
        let took = self.duration_ms.map(|ms| format!(" in {}", format_duration_ms(ms))).unwrap_or_default();
        format!("#{} on {} at {}: {}{took}", self.number, self.branch, short_sha(&self.commit), self.outcome)
    }
}
