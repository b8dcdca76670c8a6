//! The closed set of things a running build reports, and the status vocabulary shared by the
//! executor, the server's store and the dashboard.
//!
//! The executor sends [`BuildEvent`]s into a channel in the order they happen; it never calls back
//! into its caller. Status names are part of the user-facing contract (JSON API), so `as_str`
//! and `parse` are the only place they are spelled.

use std::net::IpAddr;
use std::time::SystemTime;

/// What kind of entry a step is. Every build shows provision, push, setup and teardown entries
/// beside the pipeline's own stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepKind {
    Provision,
    Push,
    Setup,
    Stage,
    Teardown,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Provision => "provision",
            StepKind::Push => "push",
            StepKind::Setup => "setup",
            StepKind::Stage => "stage",
            StepKind::Teardown => "teardown",
        }
    }

    pub fn parse(s: &str) -> Option<StepKind> {
        Some(match s {
            "provision" => StepKind::Provision,
            "push" => StepKind::Push,
            "setup" => StepKind::Setup,
            "stage" => StepKind::Stage,
            "teardown" => StepKind::Teardown,
            _ => return None,
        })
    }
}

/// One entry of a build's plan. `name` is unique within a build: stages keep their own name,
/// the other kinds are named `KIND:ROLE` (for example `provision:web`). Stage names cannot
/// contain `:`, so the two never collide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepId {
    pub kind: StepKind,
    pub name: String,
    /// The host role this step runs on.
    pub host: String,
}

impl StepId {
    pub fn host_step(kind: StepKind, role: &str) -> StepId {
        StepId { kind, name: format!("{}:{role}", kind.as_str()), host: role.to_string() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepStatus {
    Pending,
    Running,
    Passed,
    Failed,
    Skipped,
    Cancelled,
    TimedOut,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Passed => "passed",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
            StepStatus::TimedOut => "timed_out",
        }
    }

    pub fn parse(s: &str) -> Option<StepStatus> {
        Some(match s {
            "pending" => StepStatus::Pending,
            "running" => StepStatus::Running,
            "passed" => StepStatus::Passed,
            "failed" => StepStatus::Failed,
            "skipped" => StepStatus::Skipped,
            "cancelled" => StepStatus::Cancelled,
            "timed_out" => StepStatus::TimedOut,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        !matches!(self, StepStatus::Pending | StepStatus::Running)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildStatus {
    Queued,
    Provisioning,
    Running,
    Passed,
    Failed,
    Cancelled,
    Errored,
    Interrupted,
    /// The pipeline's `on` does not build this ref; the build's error says why. Nothing ran.
    Skipped,
}

impl BuildStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Queued => "queued",
            BuildStatus::Provisioning => "provisioning",
            BuildStatus::Running => "running",
            BuildStatus::Passed => "passed",
            BuildStatus::Failed => "failed",
            BuildStatus::Cancelled => "cancelled",
            BuildStatus::Errored => "errored",
            BuildStatus::Interrupted => "interrupted",
            BuildStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<BuildStatus> {
        Some(match s {
            "queued" => BuildStatus::Queued,
            "provisioning" => BuildStatus::Provisioning,
            "running" => BuildStatus::Running,
            "passed" => BuildStatus::Passed,
            "failed" => BuildStatus::Failed,
            "cancelled" => BuildStatus::Cancelled,
            "errored" => BuildStatus::Errored,
            "interrupted" => BuildStatus::Interrupted,
            "skipped" => BuildStatus::Skipped,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        !matches!(self, BuildStatus::Queued | BuildStatus::Provisioning | BuildStatus::Running)
    }
}

/// Which stream an output line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// Lines Gantry itself writes into a step's log (truncation notices, transport errors).
    System,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
        }
    }
}

/// Index of a step in the plan announced by [`BuildEvent::Planned`].
pub type StepIndex = usize;

/// Everything a running build reports, in the order it happens.
#[derive(Debug, Clone)]
pub enum BuildEvent {
    /// Always the first event: every entry the build will show, all pending.
    Planned {
        steps: Vec<StepId>,
    },
    /// The build moved from provisioning to running its setup and stages.
    Running {
        at: SystemTime,
    },
    StepStarted {
        step: StepIndex,
        at: SystemTime,
    },
    /// One line of output (without its newline), already capped and made valid UTF-8.
    Log {
        step: StepIndex,
        at: SystemTime,
        stream: Stream,
        text: String,
    },
    StepFinished {
        step: StepIndex,
        at: SystemTime,
        status: StepStatus,
        exit_code: Option<i32>,
    },
    HostProvisioned {
        role: String,
        address: IpAddr,
        provider_id: String,
        /// What keeps the host apart from other builds' hosts, in words for people
        /// (`user gantry-host-3, network namespace of b12`).
        isolation: String,
    },
    HostTornDown {
        role: String,
        error: Option<String>,
    },
    /// A JUnit XML file named in a stage's `reports`, fetched from the host before teardown.
    Report {
        step: StepIndex,
        path: String,
        content: Vec<u8>,
    },
}
