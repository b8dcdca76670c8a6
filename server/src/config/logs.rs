//! The `[logs]` section: how much of one step's output a build keeps. Parsing and checks only,
//! like the rest of `config`; the runner enforces the limits (`gantry_runner::executor::LogLimits`).

use gantry_runner::executor::{LogLimits, DEFAULT_MAX_LOG_BYTES_PER_STEP, DEFAULT_MAX_LOG_LINES_PER_STEP};
use serde::Deserialize;

/// The `[logs]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsConfig {
    /// A step's log keeps at most this many lines; a notice marks where it was cut.
    #[serde(default = "default_max_lines")]
    pub max_lines_per_step: usize,
    /// A step's log keeps at most this many bytes of text; the same notice marks the cut.
    #[serde(default = "default_max_bytes")]
    pub max_bytes_per_step: usize,
}

fn default_max_lines() -> usize {
    DEFAULT_MAX_LOG_LINES_PER_STEP
}

fn default_max_bytes() -> usize {
    DEFAULT_MAX_LOG_BYTES_PER_STEP
}

impl Default for LogsConfig {
    fn default() -> LogsConfig {
        LogsConfig { max_lines_per_step: default_max_lines(), max_bytes_per_step: default_max_bytes() }
    }
}

impl LogsConfig {
    /// The limits the runner applies to every step of a build.
    pub fn limits(&self) -> LogLimits {
        LogLimits { max_lines: self.max_lines_per_step, max_bytes: self.max_bytes_per_step }
    }

    /// What is wrong with the section, if anything.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_lines_per_step == 0 {
            problems.push("[logs] max_lines_per_step must be at least 1".to_string());
        }
        if self.max_bytes_per_step == 0 {
            problems.push("[logs] max_bytes_per_step must be at least 1".to_string());
        }
        problems
    }
}
