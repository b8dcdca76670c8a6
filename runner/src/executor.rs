//! Drives one build: provision → push → setup → stages → collect reports → teardown, emitting a
//! [`BuildEvent`] for everything that happens.
//!
//! Teardown runs once for every host that was asked for, on every exit path (pass, fail, timeout,
//! cancellation, a provisioning error), under its own timeout and outside the build's
//! cancellation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::{BuildEvent, BuildStatus};
use crate::pipeline::Pipeline;
use crate::provider::{HostId, Provider};
use crate::source::Source;

/// How long tearing one host down may take before it is reported as failed.
pub const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(120);

/// A step's log keeps at most this many lines; then one truncation notice.
pub const MAX_LOG_LINES_PER_STEP: usize = 50_000;

/// A step's log keeps at most this many bytes; then one truncation notice.
pub const MAX_LOG_BYTES_PER_STEP: usize = 8 * 1024 * 1024;

/// A report file larger than this is not collected.
pub const MAX_REPORT_BYTES: usize = 8 * 1024 * 1024;

/// What the build is, as steps see it in `GANTRY_*` variables and templates see it in `build.*`.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    pub number: u64,
    pub commit: String,
    pub branch: String,
    pub repo: String,
}

pub struct BuildPlan {
    pub info: BuildInfo,
    pub pipeline: Arc<Pipeline>,
    pub source: Arc<dyn Source>,
    /// One id per host role, recorded durably by the caller before `execute` runs.
    pub host_ids: BTreeMap<String, HostId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    /// Passed, Failed, Cancelled or Errored.
    pub status: BuildStatus,
    /// Why the build errored (provisioning failed, a template did not render, ...).
    pub error: Option<String>,
}

/// Run a build to the end. Never panics on a host's failure; every host is torn down before this
/// returns.
pub async fn execute(
    plan: BuildPlan,
    provider: Arc<dyn Provider>,
    events: mpsc::Sender<BuildEvent>,
    cancel: CancellationToken,
) -> BuildResult {
    todo!("executor helper: {} {} {:?} {}", plan.info.number, provider.name(), events, cancel.is_cancelled())
}
