//! The view models: plain structs holding exactly what the pages show, filled by the server.
//!
//! They carry raw values (unix milliseconds, full shas, the runner's status enums) and offer the
//! display helpers the templates call; they never hold a database row or a connection, and they
//! never contain markup: every string is text that the templates escape.

use gantry_event::{BuildStatus, StepKind, StepStatus, Stream};

use crate::ansi;
use crate::controls::{ActionForms, BuildLink, HistoryNav};
use crate::format::{display_log_text, format_age, format_duration_ms, format_timestamp, short_sha};
use crate::grid::StageGrid;
use crate::junit::{FailingCase, JunitSummary};

/// What a build built: a branch, a tag, or the head of a pull (merge) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitRef {
    Branch(String),
    Tag(String),
    PullRequest(PullRequestRef),
}

/// A pull (merge) request a build built the head of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestRef {
    pub number: i64,
    /// The branch it merges from.
    pub source: String,
    /// The branch it merges into.
    pub target: String,
    /// `#N source → target`, made once by [`PullRequestRef::new`].
    label: String,
}

impl PullRequestRef {
    pub fn new(number: i64, source: String, target: String) -> PullRequestRef {
        let label = format!("#{number} {source} → {target}");
        PullRequestRef { number, source, target, label }
    }
}

impl GitRef {
    /// The branch or tag name; for a pull request `#N source → target`.
    pub fn name(&self) -> &str {
        match self {
            GitRef::Branch(name) | GitRef::Tag(name) => name,
            GitRef::PullRequest(pr) => &pr.label,
        }
    }

    /// `branch`, `tag` or `pull-request`, for labels and CSS classes.
    pub fn kind(&self) -> &'static str {
        match self {
            GitRef::Branch(_) => "branch",
            GitRef::Tag(_) => "tag",
            GitRef::PullRequest(_) => "pull-request",
        }
    }

    /// The pull request, when the build built one.
    pub fn pull_request(&self) -> Option<&PullRequestRef> {
        match self {
            GitRef::PullRequest(pr) => Some(pr),
            GitRef::Branch(_) | GitRef::Tag(_) => None,
        }
    }
}

/// One build as lists show it (repo list, history table, stage grid rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSummary {
    /// The build's id, unique across repos: `/builds/{id}`.
    pub id: i64,
    pub repo: String,
    /// 1, 2, 3, ... per repo.
    pub number: i64,
    pub status: BuildStatus,
    pub git_ref: GitRef,
    /// The full sha.
    pub commit: String,
    /// How the build was asked for: `push`, `poll` or `manual`.
    pub trigger: String,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

impl BuildSummary {
    pub fn short_commit(&self) -> &str {
        short_sha(&self.commit)
    }

    pub fn is_live(&self) -> bool {
        !self.status.is_final()
    }

    /// How long the build ran, or has been running at `now_ms`; `None` before it started.
    pub fn duration_ms(&self, now_ms: i64) -> Option<i64> {
        let started = self.started_at_ms?;
        Some(self.finished_at_ms.unwrap_or(now_ms).saturating_sub(started))
    }

    /// The duration for display, `–` before the build started.
    pub fn duration(&self, now_ms: i64) -> String {
        self.duration_ms(now_ms).map(format_duration_ms).unwrap_or_else(|| "–".to_string())
    }

    /// How long ago the build was queued.
    pub fn age(&self, now_ms: i64) -> String {
        format_age(self.created_at_ms, now_ms)
    }

    pub fn created_at(&self) -> String {
        format_timestamp(self.created_at_ms)
    }

    pub fn started_at(&self) -> String {
        self.started_at_ms.map(format_timestamp).unwrap_or_else(|| "–".to_string())
    }

    pub fn finished_at(&self) -> String {
        self.finished_at_ms.map(format_timestamp).unwrap_or_else(|| "–".to_string())
    }
}

/// One configured repo on the repo list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSummary {
    pub name: String,
    /// The URL builds fetch from, as the configuration names it (without credentials).
    pub url: String,
    pub last_build: Option<BuildSummary>,
    /// Why the last fetch of the repo failed, if it did.
    pub last_error: Option<String>,
}

/// `/`: every configured repo with its last build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoListPage {
    pub repos: Vec<RepoSummary>,
    /// The time the page is rendered at, for ages and running durations.
    pub now_ms: i64,
}

impl RepoListPage {
    pub fn has_live_builds(&self) -> bool {
        self.repos.iter().filter_map(|r| r.last_build.as_ref()).any(BuildSummary::is_live)
    }
}

/// One entry of a build (provision, push, setup, stage or teardown) without its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSummary {
    /// The step's position in the build's plan.
    pub index: i64,
    pub kind: StepKind,
    /// A stage's own name, or `KIND:ROLE` for the other kinds (`provision:web`).
    pub name: String,
    /// The host role the step runs on.
    pub host: String,
    pub status: StepStatus,
    pub exit_code: Option<i64>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

impl StepSummary {
    /// How long the step ran, or has been running at `now_ms`; `None` before it started.
    pub fn duration_ms(&self, now_ms: i64) -> Option<i64> {
        let started = self.started_at_ms?;
        let end = match self.finished_at_ms {
            Some(finished) => finished,
            None if self.status == StepStatus::Running => now_ms,
            // A step that started but never finished (an interrupted build) has no duration.
            None => return None,
        };
        Some(end.saturating_sub(started))
    }

    /// The duration for display; empty when there is none.
    pub fn duration(&self, now_ms: i64) -> String {
        self.duration_ms(now_ms).map(format_duration_ms).unwrap_or_default()
    }

    /// The exit code for display; empty when the step did not exit (yet).
    pub fn exit_code_text(&self) -> String {
        self.exit_code.map(|code| code.to_string()).unwrap_or_default()
    }

    /// The step went wrong: its log is worth opening first.
    pub fn went_wrong(&self) -> bool {
        matches!(self.status, StepStatus::Failed | StepStatus::TimedOut)
    }

    /// The status word for people (`timed out` rather than `timed_out`).
    pub fn status_label(&self) -> &'static str {
        step_status_label(self.status)
    }
}

/// The status word for people.
pub fn step_status_label(status: StepStatus) -> &'static str {
    match status {
        StepStatus::TimedOut => "timed out",
        other => other.as_str(),
    }
}

/// One output line of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLineView {
    /// The line's number within its step, from 1: its anchor is `#L<step>-<number>`.
    pub number: i64,
    /// When the line was produced, unix milliseconds.
    pub at_ms: i64,
    pub stream: Stream,
    /// The text as the step printed it, escape sequences included.
    pub text: String,
}

impl LogLineView {
    /// The text without escape sequences, control characters shown (see [`display_log_text`]).
    pub fn display_text(&self) -> String {
        display_log_text(&self.text)
    }

    /// The text as styled runs: colours as classes, every other escape dropped (see [`ansi`]).
    pub fn spans(&self) -> Vec<ansi::Span> {
        ansi::render(&self.text)
    }
}

/// One step with (the end of) its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepView {
    pub step: StepSummary,
    /// The last lines of the step's log, oldest first: the window the page shows first (its
    /// script loads the others as the reader scrolls).
    pub log: Vec<LogLineView>,
    /// How many earlier lines the server left out of `log` (the raw log has them all).
    pub omitted_lines: u64,
}

impl StepView {
    /// How many lines the step's log has.
    pub fn total_lines(&self) -> u64 {
        self.omitted_lines + self.log.len() as u64
    }

    /// A line's time relative to the step's start (`+1.2s`), or its UTC time when the step has
    /// no start time.
    pub fn line_offset(&self, line: &LogLineView) -> String {
        match self.step.started_at_ms {
            Some(started) => format!("+{}", format_duration_ms(line.at_ms - started)),
            None => format_timestamp(line.at_ms),
        }
    }
}

/// A host of a build, as the hosts table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    pub role: String,
    /// The provider's name (`local`, `ssh`, `ec2`).
    pub provider: String,
    /// The provider's own id of the host (a directory, an instance id), once provisioned.
    pub provider_id: Option<String>,
    pub address: Option<String>,
    /// `requested`, `provisioned`, `torn_down` or `teardown_failed`.
    pub state: String,
    pub provisioned_at_ms: Option<i64>,
    pub torn_down_at_ms: Option<i64>,
    /// How long provisioning took.
    pub provision_ms: Option<i64>,
    /// How long teardown took.
    pub teardown_ms: Option<i64>,
    /// Why provisioning or teardown failed.
    pub error: Option<String>,
    /// What kept the host apart from other builds' hosts (`user gantry-host-3, network namespace
    /// of b12`), once provisioned.
    pub isolation: Option<String>,
}

impl HostView {
    /// The CSS tone of the state: torn down is the good end state.
    pub fn state_tone(&self) -> &'static str {
        match self.state.as_str() {
            "torn_down" => "passed",
            "teardown_failed" => "failed",
            "provisioned" => "running",
            _ => "pending",
        }
    }

    /// The state word for people.
    pub fn state_label(&self) -> String {
        self.state.replace('_', " ")
    }

    pub fn provisioned(&self) -> String {
        describe_moment(self.provisioned_at_ms, self.provision_ms)
    }

    pub fn torn_down(&self) -> String {
        describe_moment(self.torn_down_at_ms, self.teardown_ms)
    }
}

/// `2024-05-02 09:43:20 UTC (1.2s)`, or what is known of it.
fn describe_moment(at_ms: Option<i64>, took_ms: Option<i64>) -> String {
    match (at_ms, took_ms) {
        (Some(at), Some(took)) => format!("{} ({})", format_timestamp(at), format_duration_ms(took)),
        (Some(at), None) => format_timestamp(at),
        (None, Some(took)) => format_duration_ms(took),
        (None, None) => "–".to_string(),
    }
}

/// `/repos/{name}`: one page of a repo's history and its stage grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPage {
    pub name: String,
    pub url: String,
    /// Why the last fetch of the repo failed, if it did.
    pub last_error: Option<String>,
    /// The builds of this page, newest first.
    pub builds: Vec<BuildSummary>,
    pub grid: StageGrid,
    /// The filter and the links to older and newer pages (none by default).
    pub history: HistoryNav,
    /// The form that builds a branch or a commit, for users who may.
    pub actions: Option<ActionForms>,
    /// Branch names the build form suggests.
    pub branches: Vec<String>,
    pub now_ms: i64,
    /// Why reporting a build's state to the repo's forge failed last, in the forge's words;
    /// `None` once a report succeeded again. Set after [`RepoPage::new`].
    pub forge_notice: Option<String>,
}

impl RepoPage {
    /// The page from the repo's builds, newest first, each with its steps in plan order; no
    /// filter, no other pages, no forms until the caller sets them.
    pub fn new(
        name: String,
        url: String,
        last_error: Option<String>,
        builds: Vec<(BuildSummary, Vec<StepSummary>)>,
        now_ms: i64,
    ) -> RepoPage {
        let summaries = builds.iter().map(|(build, _)| build.clone()).collect();
        RepoPage {
            name,
            url,
            last_error,
            builds: summaries,
            grid: StageGrid::new(builds),
            history: HistoryNav::default(),
            actions: None,
            branches: Vec::new(),
            now_ms,
            forge_notice: None,
        }
    }

    pub fn has_live_builds(&self) -> bool {
        self.builds.iter().any(BuildSummary::is_live)
    }
}

/// `/builds/{id}`: everything about one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPage {
    pub build: BuildSummary,
    /// The commit's message, when the server could read it from its mirror.
    pub commit_message: Option<String>,
    /// Why the build errored; a pipeline file's diagnostics keep their lines.
    pub error: Option<String>,
    pub hosts: Vec<HostView>,
    /// In plan order.
    pub steps: Vec<StepView>,
    /// The stages' JUnit reports, in plan order.
    pub reports: Vec<ReportView>,
    pub now_ms: i64,
    /// Cancel (while the build is live) or re-run (once it is final), for users who may.
    pub actions: Option<ActionForms>,
    /// The build this one re-runs.
    pub rerun_of: Option<BuildLink>,
    /// The previous build of the branch with test results, which failures are compared with.
    pub compared_with: Option<BuildLink>,
    /// Failing tests that passed in `compared_with`.
    pub new_failures: Vec<TestKeyView>,
}

/// What a test is known by across builds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TestKeyView {
    /// The stage whose report has it.
    pub stage: String,
    pub classname: String,
    pub name: String,
}

impl BuildPage {
    /// Whether `case` of `stage`'s report failed here and passed in the previous build of the
    /// branch.
    pub fn is_new_failure(&self, stage: &str, case: &FailingCase) -> bool {
        self.new_failures.iter().any(|k| k.stage == stage && k.classname == case.classname && k.name == case.name)
    }

    /// The commit message's first line.
    pub fn commit_title(&self) -> Option<&str> {
        self.commit_message.as_deref().and_then(|m| m.lines().next()).map(str::trim).filter(|t| !t.is_empty())
    }
}

/// One JUnit report of a stage, summarised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportView {
    /// The stage that wrote it.
    pub stage: String,
    /// The path the pipeline names, relative to the stage's working directory.
    pub path: String,
    pub summary: JunitSummary,
}

impl ReportView {
    /// The CSS tone of the report: failed when a case failed, errored when the file could not
    /// be read.
    pub fn tone(&self) -> &'static str {
        if self.summary.error.is_some() {
            "errored"
        } else if self.summary.went_wrong() {
            "failed"
        } else {
            "passed"
        }
    }

    /// The report's verdict for people.
    pub fn status_label(&self) -> &'static str {
        match self.tone() {
            "errored" => "unreadable",
            other => other,
        }
    }
}

/// Any page that went wrong: an unknown build, a store failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPage {
    /// The HTTP status the server answers with, shown on the page.
    pub status: u16,
    /// A short heading: `Not found`.
    pub title: String,
    /// What went wrong, for people; never internal details of a 5xx.
    pub message: String,
}
