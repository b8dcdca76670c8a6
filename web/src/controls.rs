//! The controls on pages: the history's filter form and its older / newer links, and the forms
//! that act on builds (build a branch or commit, cancel, re-run).
//!
//! These are plain HTML forms that work without script: a filter is a GET form, an action a POST
//! form carrying the session's CSRF token that the server answers with a redirect. Links are
//! built by the server (it knows the routes and encodes the query); here they are text that the
//! templates escape. A page shows action forms only when it has [`ActionForms`], which the
//! server gives only to users who may use them.

use gantry_event::BuildStatus;

/// Every build status, as the filter offers them.
pub const FILTER_STATUSES: [BuildStatus; 8] = [
    BuildStatus::Queued,
    BuildStatus::Provisioning,
    BuildStatus::Running,
    BuildStatus::Passed,
    BuildStatus::Failed,
    BuildStatus::Cancelled,
    BuildStatus::Errored,
    BuildStatus::Interrupted,
];

/// What asks for builds, as the filter offers them.
pub const FILTER_TRIGGERS: [&str; 3] = ["push", "poll", "manual"];

/// The history's filter as its form shows it; an empty field does not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryFilterView {
    pub branch: String,
    /// A build status word, or empty.
    pub status: String,
    /// `push`, `poll`, `manual`, or empty.
    pub trigger: String,
}

impl HistoryFilterView {
    /// Whether any field filters.
    pub fn is_active(&self) -> bool {
        !(self.branch.is_empty() && self.status.is_empty() && self.trigger.is_empty())
    }

    /// The status words the form offers.
    pub fn statuses(&self) -> Vec<&'static str> {
        FILTER_STATUSES.iter().map(|s| s.as_str()).collect()
    }

    /// The triggers the form offers.
    pub fn triggers(&self) -> &'static [&'static str] {
        &FILTER_TRIGGERS
    }

    /// Whether the form's status choice is `status`.
    pub fn is_status(&self, status: &str) -> bool {
        self.status == status
    }

    /// Whether the form's trigger choice is `trigger`.
    pub fn is_trigger(&self, trigger: &str) -> bool {
        self.trigger == trigger
    }
}

/// The history part of a repo page: its filter and the links to the pages beside this one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryNav {
    pub filter: HistoryFilterView,
    /// The next older page, when there are older builds.
    pub older_href: Option<String>,
    /// The next newer page, when this is not the newest.
    pub newer_href: Option<String>,
    /// The newest page with this filter, when this is not it.
    pub newest_href: Option<String>,
    /// The page without any filter, when one is applied.
    pub clear_href: Option<String>,
}

impl HistoryNav {
    /// Whether the page has links to other pages.
    pub fn has_pages(&self) -> bool {
        self.older_href.is_some() || self.newer_href.is_some()
    }
}

/// The forms a user who may act gets on a page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionForms {
    /// The session's CSRF token for the forms; empty when the page was asked for with an API
    /// token (such a request needs none).
    pub csrf: String,
}

/// Another build, named on a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildLink {
    pub id: i64,
    pub number: i64,
}
