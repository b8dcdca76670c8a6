//! The `[auth]` section and `public_url`: who may read without signing in, how long a sign-in
//! lasts, and where people reach the server (which decides the session cookie's `Secure` flag and
//! which origin may post forms). Parsing and checks only, like the rest of `config`.

use std::time::Duration;

use serde::Deserialize;

/// How long a sign-in lasts when `[auth] session_ttl` does not say.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// The longest `session_ttl` accepted: a year and a day.
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// The `[auth]` section (contract §5).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether pages and `GET /api/*` may be read without signing in.
    #[serde(default)]
    pub public_read: bool,
    /// How long a sign-in lasts.
    #[serde(default = "default_session_ttl", with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Reverse proxies whose `client_ip_header` names the client: a request from any other
    /// address is attributed to that address, whatever its headers say.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header a trusted proxy puts the client's address in (its last entry is used).
    #[serde(default = "default_client_ip_header")]
    pub client_ip_header: String,
}

/// The header reverse proxies name the client in, unless `client_ip_header` says otherwise.
pub const DEFAULT_CLIENT_IP_HEADER: &str = "X-Forwarded-For";

fn default_client_ip_header() -> String {
    DEFAULT_CLIENT_IP_HEADER.to_string()
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            public_read: false,
            session_ttl: DEFAULT_SESSION_TTL,
            trusted_proxies: Vec::new(),
            client_ip_header: default_client_ip_header(),
        }
    }
}

/// The server's public base URL: `http` or `https`, a host (and port), optionally a path; no
/// user name or password.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PublicUrl {
    /// Without a trailing `/`.
    url: String,
    /// `scheme://host[:port]`, as browsers send it in `Origin`.
    origin: String,
}

impl PublicUrl {
    /// The URL without a trailing `/`.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// `scheme://host[:port]`, the form of a browser's `Origin` header.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn is_https(&self) -> bool {
        self.url.starts_with("https://")
    }
}

impl std::str::FromStr for PublicUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<PublicUrl, String> {
        let url = text.trim_end_matches('/');
        let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{text:?} is not a URL"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("public_url {text:?} must start with https:// or http://"));
        }
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
            return Err(format!("public_url {text:?} needs a host and no user name or password"));
        }
        if rest.contains(['?', '#']) {
            return Err(format!("public_url {text:?} may not have a query or fragment"));
        }
        let origin = format!("{scheme}://{}", authority.to_ascii_lowercase());
        Ok(PublicUrl { url: format!("{scheme}://{rest}"), origin })
    }
}

impl TryFrom<String> for PublicUrl {
    type Error = String;

    fn try_from(text: String) -> Result<PublicUrl, String> {
        text.parse()
    }
}

fn default_session_ttl() -> Duration {
    DEFAULT_SESSION_TTL
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn the_auth_section_and_public_url_parse_and_are_checked() {
        let config = Config::from_toml_str(
            "public_url = \"https://CI.example.com:8443/\"\n[auth]\npublic_read = true\nsession_ttl = \"30m\"\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert!(config.auth.public_read);
        assert_eq!(config.auth.session_ttl, Duration::from_secs(1800));
        let url = config.public_url.unwrap();
        assert_eq!(
            (url.as_str(), url.origin(), url.is_https()),
            ("https://CI.example.com:8443", "https://ci.example.com:8443", true)
        );
        let behind_a_prefix: PublicUrl = "http://ci.internal/gantry/".parse().unwrap();
        assert_eq!(
            (behind_a_prefix.as_str(), behind_a_prefix.origin()),
            ("http://ci.internal/gantry", "http://ci.internal")
        );
        assert!(!behind_a_prefix.is_https());

        for bad in
            ["ci.example.com", "ftp://ci.example.com", "https://", "https://user:pw@ci.example.com", "https://ci/?x=1"]
        {
            let err = Config::from_toml_str(&format!("public_url = {bad:?}\n")).unwrap_err().to_string();
            assert!(err.contains("public_url") || err.contains("not a URL"), "{bad}: {err}");
        }
        let err = Config::from_toml_str("[auth]\npublic_reads = true\n").unwrap_err().to_string();
        assert!(err.contains("public_reads"), "{err}");
        let zero = Config::from_toml_str("[auth]\nsession_ttl = \"0s\"\n").unwrap();
        assert!(zero.validate().unwrap_err().to_string().contains("session_ttl"));
    }
}
