//! Gantry's dashboard: the view models, the askama templates that render them and the CSS.
//!
//! It never queries the database and never sees a database row: the server fills plain view
//! models and calls [`Page::render`], which returns a whole HTML document. Everything shown is
//! escaped by the templates (they are `.html`, escaped by default, and no user data is marked
//! `|safe`), so commit data, payload data and log lines are always text, never markup.
//!
//! # Public API
//!
//! Pages (each implements [`Page`]: `fn render(&self, viewer: &Viewer) -> Result<String, RenderError>`):
//! - [`RepoListPage`] `{ repos: Vec<RepoSummary>, now_ms }` for `/`.
//! - [`RepoPage`] `{ name, url, last_error, builds: Vec<BuildSummary>, grid: StageGrid,
//!   history: HistoryNav, actions: Option<ActionForms>, branches, now_ms }` for `/repos/{name}`
//!   (one page of the history); build it with [`RepoPage::new`] from the builds (newest first),
//!   each with its [`StepSummary`]s in plan order, and the stage grid is computed; then set the
//!   filter and paging links ([`HistoryNav`]) and, for users who may act, the build form.
//! - [`BuildPage`] `{ build: BuildSummary, commit_message, error, hosts: Vec<HostView>,
//!   steps: Vec<StepView>, reports: Vec<ReportView>, now_ms, actions, rerun_of, compared_with,
//!   new_failures: Vec<TestKeyView> }` for `/builds/{id}`: the cancel or re-run button for users
//!   who may, and failing tests marked new when they passed in `compared_with`.
//! - [`TestsPage`] `{ repo, tests: Vec<TestHistoryView>, flaky_only, builds_looked_at, now_ms }`
//!   for `/repos/{name}/tests`: each test's newest [`TestRunView`]s and whether it is flaky.
//! - [`ErrorPage`] `{ status, title, message }` for anything that went wrong.
//! - [`LoginPage`] `{ next, user, error, csrf }` for `/login`.
//! - [`TokensPage`] `{ user, tokens: Vec<TokenView>, new_token, can_manage, error, csrf, now_ms }`
//!   for `/settings/tokens`.
//!
//! [`Badge`] is not a page: [`Badge::render`] makes the SVG of `/badge/{repo}.svg`.
//!
//! Every page is rendered for a [`Viewer`]: the top bar names the signed-in user with a sign-out
//! form ([`SignedInView`]), offers to sign in ([`Viewer::Anonymous`]), or says nothing
//! ([`Viewer::Unknown`]). Forms carry the CSRF token in the hidden field [`CSRF_FIELD`].
//!
//! Action forms ([`ActionForms`]) carry the CSRF token in the hidden field [`CSRF_FIELD`] and
//! post to the server, which redirects back: no page needs script.
//!
//! Parts: [`BuildSummary`] (id, repo, number, status, [`GitRef`], full commit, trigger, times),
//! [`RepoSummary`], [`StepSummary`] (index, kind, name, host, status, exit code, times),
//! [`StepView`] (a step, the last lines of its log as [`LogLineView`]s, and how many earlier
//! lines were left out), [`HostView`], [`ReportView`] (a stage's JUnit report as a
//! [`JunitSummary`] with its [`FailingCase`]s, which [`parse_junit`] makes from the report's
//! bytes and never fails), [`StageGrid`] / [`GridColumn`] / [`GridRow`]. [`parse_junit_cases`]
//! reads the same report case by case ([`JunitCase`]: outcome, duration, message), for the server
//! to store; it is the workspace's one JUnit reader.
//!
//! Times are unix milliseconds; each page carries the `now_ms` it is rendered at, for ages and
//! the durations of running builds. Formatting helpers: [`format_duration_ms`] (`1.2s`,
//! `3m 04s`), [`format_age`], [`format_timestamp`], [`short_sha`], [`display_log_text`].
//!
//! The stylesheet is [`CSS`]; the pages link it as [`CSS_PATH`], which the server serves. Pages
//! showing a queued or running build reload themselves every [`REFRESH_SECONDS`].

mod account;
pub mod ansi;
mod badge;
mod controls;
mod format;
mod grid;
mod junit;
mod pages;
mod test_history;
mod view;

pub use account::{LoginPage, NewTokenView, SignedInView, TokenView, TokensPage, Viewer, CSRF_FIELD};
pub use badge::Badge;
pub use controls::{ActionForms, BuildLink, HistoryFilterView, HistoryNav, FILTER_STATUSES, FILTER_TRIGGERS};
pub use format::{display_log_text, format_age, format_duration_ms, format_timestamp, short_sha, SHORT_SHA_LEN};
pub use grid::{GridColumn, GridRow, StageGrid};
pub use junit::{
    parse_junit, parse_junit_cases, CaseOutcome, FailingCase, FailureKind, JunitCase, JunitSummary, MAX_FAILING_CASES,
    MAX_FAILURE_TEXT_BYTES,
};
pub use pages::{Page, RenderError, REFRESH_SECONDS};
pub use test_history::{TestHistoryView, TestRunView, TestsPage};
pub use view::{
    step_status_label, BuildPage, BuildSummary, ErrorPage, GitRef, HostView, LogLineView, PullRequestRef, RepoListPage,
    RepoPage, RepoSummary, ReportView, StepSummary, StepView, TestKeyView,
};

/// The dashboard's stylesheet, served at [`CSS_PATH`].
pub const CSS: &str = include_str!("../static/gantry.css");

/// Where every page expects [`CSS`].
pub const CSS_PATH: &str = "/static/gantry.css";

/// The dashboard's one script: live pages (server-sent events) and the windowed log viewer.
/// Pages work without it.
pub const JS: &str = include_str!("../static/gantry.js");

/// Where every page expects [`JS`].
pub const JS_PATH: &str = "/static/gantry.js";

/// Where the stylesheet of log colours ([`ansi::palette_css`]) is served; `gantry.css` imports it.
pub const ANSI_CSS_PATH: &str = "/static/ansi.css";

#[cfg(test)]
mod tests;
