//! The `[http]` section: how many connections the server holds, how long it waits for a request's
//! head, its body and a kept-alive connection's next request, and how many bytes of request
//! bodies nobody has authenticated yet it holds at once. Parsing and checks only, like the rest
//! of `config`; `http::serve` applies them.

use std::time::Duration;

use serde::Deserialize;

/// Connections held at once when `[http] max_connections` does not say (the file-descriptor
/// limit may lower it at start).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// How long a request's head may take when `[http] header_timeout` does not say (Apache's
/// `RequestReadTimeout header=20`).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a kept-alive connection waits for its next request when `[http] idle_timeout` does
/// not say (Apache's `KeepAliveTimeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request's whole body may take when `[http] body_timeout` does not say.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of unauthenticated request bodies held at once when `[http] body_budget_bytes` does not
/// say: four webhooks of the largest size accepted.
pub const DEFAULT_BODY_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// How long a request waits for room in the body budget when `[http] body_budget_wait` does not
/// say, before it is answered 503.
pub const DEFAULT_BODY_BUDGET_WAIT: Duration = Duration::from_secs(1);

/// The fewest connections a configuration may allow: below this the dashboard itself would be
/// starved by a handful of browsers.
pub const MIN_CONNECTIONS: usize = 16;

/// The `[http]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Connections held at once; lowered at start to what the file-descriptor limit leaves after
    /// a reserve for the database, git and builds. At the cap, the longest-idle connection is
    /// closed to make room for a new one.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// From the moment a connection is ready for a request (accepted, or done with the previous
    /// one) until the request's whole head has arrived.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long a kept-alive connection (one that has served a request) with no request in flight
    /// stays open. On HTTP/1.1 that wait is also a wait for a request head, so this is at most
    /// `header_timeout`.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// From a request's head to the end of its body, however steadily the bytes come.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Bytes of request bodies not yet authenticated (webhooks before their signature is checked,
    /// the sign-in form, forms riding on a session cookie) held at once, all requests together.
    #[serde(default = "default_body_budget_bytes")]
    pub body_budget_bytes: usize,
    /// How long a request waits for room in that budget before it is answered 503 with
    /// `Retry-After`.
    #[serde(default = "default_body_budget_wait", with = "humantime_serde")]
    pub body_budget_wait: Duration,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            body_budget_bytes: DEFAULT_BODY_BUDGET_BYTES,
            body_budget_wait: DEFAULT_BODY_BUDGET_WAIT,
        }
    }
}

impl HttpConfig {
    /// Every problem with the section, each naming its key. `largest_body` is the largest body a
    /// webhook may have: the budget must hold one.
    pub fn problems(&self, largest_body: usize) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_connections < MIN_CONNECTIONS {
            problems.push(format!("http.max_connections must be at least {MIN_CONNECTIONS}"));
        }
        for (key, value) in [
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
            ("body_timeout", self.body_timeout),
        ] {
            if value.is_zero() {
                problems.push(format!("http.{key} must be longer than zero"));
            }
        }
        if self.idle_timeout > self.header_timeout {
            problems.push(
                "http.idle_timeout may not be longer than http.header_timeout: an HTTP/1.1 connection waiting for \
                 its next request is waiting for a request head"
                    .to_string(),
            );
        }
        if self.body_budget_bytes < largest_body {
            problems.push(format!(
                "http.body_budget_bytes must hold at least one webhook of the largest size accepted ({largest_body} \
                 bytes)"
            ));
        }
        problems
    }
}

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

fn default_header_timeout() -> Duration {
    DEFAULT_HEADER_TIMEOUT
}

fn default_idle_timeout() -> Duration {
    DEFAULT_IDLE_TIMEOUT
}

fn default_body_timeout() -> Duration {
    DEFAULT_BODY_TIMEOUT
}

fn default_body_budget_bytes() -> usize {
    DEFAULT_BODY_BUDGET_BYTES
}

fn default_body_budget_wait() -> Duration {
    DEFAULT_BODY_BUDGET_WAIT
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn the_http_section_parses_with_defaults_and_is_checked() {
        let config = Config::from_toml_str("").unwrap();
        assert_eq!(config.http.max_connections, 1024);
        assert_eq!(config.http.header_timeout, Duration::from_secs(20));
        assert_eq!(config.http.idle_timeout, Duration::from_secs(5));
        assert_eq!(config.http.body_timeout, Duration::from_secs(30));
        assert_eq!(config.http.body_budget_bytes, 32 * 1024 * 1024);
        assert_eq!(config.http.body_budget_wait, Duration::from_secs(1));

        let config = Config::from_toml_str(
            "[http]\nmax_connections = 64\nheader_timeout = \"2s\"\nidle_timeout = \"500ms\"\nbody_timeout = \"3s\"\n\
             body_budget_bytes = 8_388_608\nbody_budget_wait = \"250ms\"\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.http.max_connections, 64);
        assert_eq!(config.http.idle_timeout, Duration::from_millis(500));
        assert_eq!(config.http.body_budget_bytes, 8 * 1024 * 1024);

        let err = Config::from_toml_str("[http]\nmax_conections = 5\n").unwrap_err().to_string();
        assert!(err.contains("max_conections"), "{err}");
        let bad = Config::from_toml_str(
            "[http]\nmax_connections = 3\nheader_timeout = \"1s\"\nidle_timeout = \"2s\"\nbody_timeout = \"0s\"\n\
             body_budget_bytes = 1000\n",
        )
        .unwrap();
        let err = bad.validate().unwrap_err().to_string();
        for key in ["max_connections", "idle_timeout", "body_timeout", "body_budget_bytes"] {
            assert!(err.contains(&format!("http.{key}")), "{key}: {err}");
        }
    }
}
