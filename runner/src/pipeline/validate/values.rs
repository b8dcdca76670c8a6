//! Values that are neither names nor references: durations (`timeout:`, humantime syntax,
//! bounded by [`MAX_STEP_TIMEOUT`]) and relative paths (normalised; absolute, `~` and `..` paths
//! refused). Whether a path exists is the caller's question; this only judges how it is written.

use std::time::Duration;

use super::Report;
use crate::pipeline::yaml::KeyPath;
use crate::pipeline::DEFAULT_STEP_TIMEOUT;

/// The longest `timeout:` a setup step or stage may ask for.
pub const MAX_STEP_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Parse an optional `timeout:`; the default when absent or invalid (invalid is reported).
pub(super) fn check_timeout(written: Option<&str>, path: &KeyPath, report: &mut Report<'_>) -> Duration {
    let Some(written) = written else { return DEFAULT_STEP_TIMEOUT };
    let max = humantime::format_duration(MAX_STEP_TIMEOUT);
    match humantime::parse_duration(written) {
        Ok(duration) if duration.is_zero() => {
            report.value(
                path,
                "a timeout must be longer than zero",
                Some("write a duration such as `90s` or `10m`".to_owned()),
            );
            DEFAULT_STEP_TIMEOUT
        }
        Ok(duration) if duration > MAX_STEP_TIMEOUT => {
            report.value(
                path,
                &format!("timeout `{written}` is longer than the limit of {max}"),
                Some(format!("write at most `{max}`")),
            );
            DEFAULT_STEP_TIMEOUT
        }
        Ok(duration) => duration,
        Err(error) => {
            let hint = if written.trim().chars().all(|c| c.is_ascii_digit()) {
                format!("add a unit: `{}s` for seconds, `{}m` for minutes", written.trim(), written.trim())
            } else {
                "write a duration such as `90s`, `10m` or `1h 30m`".to_owned()
            };
            report.value(path, &format!("invalid timeout `{written}`: {error}"), Some(hint));
            DEFAULT_STEP_TIMEOUT
        }
    }
}

/// Why a relative path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PathProblem {
    Empty,
    Absolute,
    Home,
    Escapes,
}

impl PathProblem {
    pub(super) fn message(self, written: &str) -> String {
        match self {
            PathProblem::Empty => "the path is empty".to_owned(),
            PathProblem::Absolute => format!("`{written}` is an absolute path"),
            PathProblem::Home => format!("`{written}` starts with `~`"),
            PathProblem::Escapes => format!("`{written}` leaves its directory with `..`"),
        }
    }

    /// `base` says what the path is relative to ("repository root", "host's home", …).
    pub(super) fn hint(self, base: &str) -> String {
        match self {
            PathProblem::Empty => format!("write a path relative to the {base}"),
            PathProblem::Absolute | PathProblem::Home => {
                format!("paths here are relative to the {base}: drop the leading `/` or `~/`")
            }
            PathProblem::Escapes => format!("paths must stay inside the {base}: remove the `..`"),
        }
    }
}

/// `./a//b/` → `a/b`; refuses empty, absolute, `~` and `..` paths.
pub(super) fn normalise_relative(written: &str) -> Result<String, PathProblem> {
    if written.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    if written.starts_with('~') {
        return Err(PathProblem::Home);
    }
    let parts: Vec<&str> = written.split('/').filter(|part| !part.is_empty() && *part != ".").collect();
    if parts.contains(&"..") {
        return Err(PathProblem::Escapes);
    }
    if parts.is_empty() {
        return Err(PathProblem::Empty);
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn invalid_timeouts_are_refused() {
        let text = file(&[
            "version: 1",
            "hosts:",
            "  web: {timeout: soon}",
            "stages:",
            "  - {name: a, host: web, run: x, timeout: 0s}",
            "  - {name: b, host: web, run: x, timeout: 2d}",
            "  - {name: c, host: web, run: x, timeout: 1h 30m}",
        ]);
        assert_eq!(
            problems(&text, &no_files()),
            [
                "3:18: invalid timeout `soon`: expected number at 0",
                "5:43: a timeout must be longer than zero",
                "6:43: timeout `2d` is longer than the limit of 1day",
            ]
        );
    }

    #[test]
    fn report_paths_must_stay_relative() {
        let mut text = MINIMAL.to_vec();
        text.push("    reports: [ok.xml, /tmp/x.xml, ../x.xml, '~/x.xml']");
        assert_eq!(
            problems(&file(&text), &no_files()),
            [
                "8:23: `/tmp/x.xml` is an absolute path",
                "8:35: `../x.xml` leaves its directory with `..`",
                "8:45: `~/x.xml` starts with `~`",
            ]
        );
    }
}
