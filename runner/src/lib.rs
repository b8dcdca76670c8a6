//! Gantry's build engine.
//!
//! This crate owns everything needed to run one build: the pipeline model (`pipeline`: parse →
//! validate → plan), where code comes from (`source`), the machines a build runs on (`provider`),
//! how commands and files reach them (`transport`), and the executor that drives
//! provision → push → setup → stages → teardown while emitting [`event::BuildEvent`]s.
//!
//! It must not know about HTTP, SQL or the dashboard: the server persists and shows the events,
//! `gantry run` prints them.

pub mod env;
pub mod executor;
pub mod mask;
pub mod pipeline;
pub mod process;
pub mod provider;
pub mod source;
pub mod transport;

pub use event::{BuildEvent, BuildStatus, StepId, StepKind, StepStatus};
pub use executor::{execute, BuildInfo, BuildPlan, BuildResult};
/// The event vocabulary lives in its own std-only crate so the dashboard can use it without
/// linking the runner; `gantry_runner::event` stays its path inside the runner.
pub use gantry_event as event;
