//! The `[retention]` section: how long a finished build keeps its logs and reports, and how often
//! the server looks for builds past that. Parsing and checks only, like the rest of `config`; the
//! `retention` task prunes, in batches the store bounds (`store::retention`).

use std::time::Duration;

use serde::Deserialize;

/// How often the server looks for builds to prune when `[retention] interval` does not say.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// The `[retention]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// A build that finished longer ago than this loses its log lines and JUnit reports (its row,
    /// steps and status stay). `None` (the default): every build keeps everything.
    #[serde(default, with = "humantime_serde")]
    pub builds: Option<Duration>,
    /// How often the server looks for such builds (first right after it starts).
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
}

fn default_interval() -> Duration {
    DEFAULT_RETENTION_INTERVAL
}

impl Default for RetentionConfig {
    fn default() -> RetentionConfig {
        RetentionConfig { builds: None, interval: DEFAULT_RETENTION_INTERVAL }
    }
}

impl RetentionConfig {
    /// Every problem with the section, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.builds.is_some_and(|keep| keep.is_zero()) {
            problems.push(
                "retention.builds must be longer than zero (leave it out to keep every build's logs)".to_string(),
            );
        }
        if self.interval.is_zero() {
            problems.push("retention.interval must be longer than zero".to_string());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn the_retention_section_parses_with_defaults_and_is_checked() {
        let config = Config::from_toml_str("").unwrap();
        assert_eq!(config.retention, RetentionConfig { builds: None, interval: Duration::from_secs(3600) });

        let config = Config::from_toml_str("[retention]\nbuilds = \"90d\"\n").unwrap();
        config.validate().unwrap();
        assert_eq!(config.retention.builds, Some(Duration::from_secs(90 * 24 * 3600)));
        assert_eq!(config.retention.interval, DEFAULT_RETENTION_INTERVAL);
        let config = Config::from_toml_str("[retention]\nbuilds = \"2weeks\"\ninterval = \"10m\"\n").unwrap();
        assert_eq!(config.retention.builds, Some(Duration::from_secs(14 * 24 * 3600)));
        assert_eq!(config.retention.interval, Duration::from_secs(600));
    }

    #[test]
    fn bad_retention_values_are_refused_with_the_key() {
        for (text, expected) in [
            // TOML's error quotes the line, with the key, and says what it expected.
            ("[retention]\nbuilds = \"90 dayz\"\n", "builds = \"90 dayz\""),
            ("[retention]\nbuilds = \"90 dayz\"\n", "expected a duration"),
            ("[retention]\nbuilds = 90\n", "builds = 90"),
            ("[retention]\ninterval = \"soon\"\n", "interval = \"soon\""),
            ("[retention]\nbuild = \"90d\"\n", "unknown field `build`"),
        ] {
            let err = Config::from_toml_str(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        let zero = Config::from_toml_str("[retention]\nbuilds = \"0s\"\ninterval = \"0s\"\n").unwrap();
        let err = zero.validate().unwrap_err().to_string();
        assert!(err.contains("retention.builds must be longer than zero"), "{err}");
        assert!(err.contains("retention.interval must be longer than zero"), "{err}");
    }
}
