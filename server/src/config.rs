//! The server's configuration: `gantry.toml`, then command-line flags and `GANTRY_*` environment
//! variables on top, checked once at start-up.
//!
//! This module owns the typed [`Config`] and its validation. Parsing denies unknown keys, so a
//! typo stops start-up with the key's name instead of being ignored. Webhook secrets are
//! [`SecretString`]s: they are never printed, logged or `Debug`-formatted. Nothing here opens a
//! socket, a database or a repository.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_runner::provider::ec2;
use ipnet::{IpNet, Ipv4Net};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::forge::status::ForgeKind;
use crate::repo_url::{redact_urls, RepoUrl};
use crate::secrets::SecretSource;
use crate::store::Location;

mod auth;
mod forge;
mod http;
mod logs;
mod retention;

pub use auth::{AuthConfig, PublicUrl, DEFAULT_SESSION_TTL, MAX_SESSION_TTL};
pub use forge::ForgeSettings;
pub use http::{HttpConfig, MIN_CONNECTIONS};
pub use logs::LogsConfig;
pub use retention::{RetentionConfig, DEFAULT_RETENTION_INTERVAL};

/// Where the server listens when nothing says otherwise.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// The data directory when nothing says otherwise, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "gantry-data";

/// How many builds run at once when nothing says otherwise.
pub const DEFAULT_MAX_CONCURRENT_BUILDS: usize = 4;

/// The range local hosts take their addresses from when nothing says otherwise.
pub const DEFAULT_LOCAL_ADDRESSES: &str = gantry_runner::provider::local::DEFAULT_ADDRESSES;

/// The unprivileged user host steps run as when the server runs as root.
pub const DEFAULT_LOCAL_RUN_AS: &str = "gantry-host";

/// The configuration file `gantry serve` reads when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "gantry.toml";

/// A repository name may be at most this long (it appears in URLs and file names).
pub const MAX_REPO_NAME_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole server configuration. Constructible in code (tests) with [`Config::from_toml_str`]
/// or field by field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// A `postgres://` URL selects PostgreSQL as the store (contract section 8); none: SQLite in
    /// `data_dir`. It may carry a password, so it is a secret: never shown.
    #[serde(default)]
    pub database_url: Option<SecretString>,
    /// This server's name among the servers sharing a database, unique to each (contract section
    /// 8); none: the machine's host name.
    #[serde(default)]
    pub server_id: Option<String>,
    /// How long a server sharing the database may stay silent (no heartbeat) before a live one
    /// ends its running builds as `interrupted` and tears down the hosts it can reach.
    #[serde(default = "default_server_timeout", with = "humantime_serde")]
    pub server_timeout: Duration,
    /// How many builds of this server hold hosts at once: a build's slot is taken when it is
    /// claimed and freed when its last host is torn down.
    #[serde(default = "default_max_concurrent_builds")]
    pub max_concurrent_builds: usize,
    #[serde(default, rename = "repo")]
    pub repos: Vec<RepoConfig>,
    #[serde(default)]
    pub provider: ProvidersConfig,
    /// Where people and forges reach this server (`https://ci.example.com`): links point here,
    /// the session cookie is `Secure` when it is https, and a form posted from any other origin
    /// is refused.
    #[serde(default)]
    pub public_url: Option<PublicUrl>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub logs: LogsConfig,
    /// Connections, timeouts and the budget of unauthenticated request bodies.
    #[serde(default)]
    pub http: HttpConfig,
    /// How long finished builds keep their logs and reports.
    #[serde(default)]
    pub retention: RetentionConfig,
}

/// One `[[repo]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// URL-safe and unique: it names the repo in URLs, the database and the mirror's directory.
    pub name: String,
    /// Anything git2 can fetch, a local path included. Builds only ever fetch from here. It may
    /// carry credentials, which it never shows.
    pub url: RepoUrl,
    /// The webhook secret (HMAC key for GitHub and Gitea, token for GitLab).
    pub secret: SecretString,
    /// When set, the repo is also polled for new commits this often.
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    #[serde(default)]
    pub provider: ProviderKind,
    /// Whether a new build of a branch cancels the older queued or running builds of that branch.
    #[serde(default = "default_cancel_superseded")]
    pub cancel_superseded: bool,
    /// The secrets this repo's pipelines may name, and where each value comes from (contract §6).
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
    /// Whether builds of pull requests get the secrets too (off: a pull request's code is not
    /// the team's yet).
    #[serde(default)]
    pub secrets_for_pull_requests: bool,
    /// The forge builds report their states to (contract §7); none: nothing is reported.
    #[serde(default)]
    pub forge: Option<ForgeKind>,
    /// The forge's API base; GitHub's and GitLab.com's are the defaults of those forges.
    #[serde(default)]
    pub forge_api: Option<String>,
    /// `owner/name` (GitLab: the project's path or numeric id).
    #[serde(default)]
    pub forge_project: Option<String>,
    /// Where the API token comes from, read each time a status is sent.
    #[serde(default)]
    pub forge_token: Option<SecretSource>,
}

impl RepoConfig {
    /// A repo on the local provider, with the defaults of the file format.
    pub fn new(name: &str, url: &str, secret: &str) -> RepoConfig {
        RepoConfig {
            name: name.to_string(),
            url: RepoUrl::new(url),
            secret: SecretString::from(secret),
            poll_interval: None,
            provider: ProviderKind::Local,
            cancel_superseded: default_cancel_superseded(),
            secrets: BTreeMap::new(),
            secrets_for_pull_requests: false,
            forge: None,
            forge_api: None,
            forge_project: None,
            forge_token: None,
        }
    }

    /// Where this repo's commit statuses go, when all of `forge`, `forge_project` and
    /// `forge_token` are set (validation makes sure they are set together).
    pub fn forge_settings(&self) -> Option<ForgeSettings<'_>> {
        let kind = self.forge?;
        Some(ForgeSettings {
            kind,
            api: self.forge_api.as_deref().or(kind.default_api())?,
            project: self.forge_project.as_deref()?,
            token: self.forge_token.as_ref()?,
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[default]
    Local,
    Ssh,
    Ec2,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Ssh => "ssh",
            ProviderKind::Ec2 => "ec2",
        }
    }
}

/// The `[provider.*]` sections.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersConfig {
    #[serde(default)]
    pub local: LocalProviderConfig,
    pub ssh: Option<SshProviderConfig>,
    pub ec2: Option<Ec2ProviderConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalProviderConfig {
    /// Hosts get their addresses from here; never 127.0.0.1.
    /// Checked by the provider: within 127.0.0.0/8, never handing out 127.0.0.1.
    #[serde(default = "default_local_addresses")]
    pub addresses: Ipv4Net,
    /// When the server runs as root: the prefix of the user pool `<run_as>-1` … host steps run
    /// as, one user per live host (or, when no pool exists, the one user they all share).
    #[serde(default = "default_local_run_as")]
    pub run_as: String,
    /// When the server runs as root: each build's hosts share a network namespace of their own
    /// (they reach each other, not other builds nor the machine's own services). `false` puts
    /// builds on the machine's network.
    #[serde(default = "default_isolate_network")]
    pub isolate_network: bool,
    /// With `isolate_network`: builds download through an egress proxy in their namespace
    /// (`http_proxy`), which reaches anything but this machine and link-local addresses. `false`:
    /// isolated builds have no network beyond their own hosts.
    #[serde(default = "default_egress")]
    pub egress: bool,
}

impl Default for LocalProviderConfig {
    fn default() -> LocalProviderConfig {
        LocalProviderConfig {
            addresses: default_local_addresses(),
            run_as: default_local_run_as(),
            isolate_network: default_isolate_network(),
            egress: default_egress(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshProviderConfig {
    #[serde(default, rename = "machine")]
    pub machines: Vec<SshMachineConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshMachineConfig {
    pub address: IpAddr,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    pub user: String,
    pub key_file: PathBuf,
    pub host_key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2ProviderConfig {
    pub region: String,
    pub endpoint_url: Option<String>,
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub connect: Ec2Connect,
    pub ssh_user: String,
    #[serde(default = "default_ssh_port")]
    pub ssh_port: u16,
    pub allow_ssh_from: Option<IpNet>,
    pub server_id: String,
    #[serde(default)]
    pub images: BTreeMap<String, String>,
    #[serde(default)]
    pub sizes: BTreeMap<String, String>,
    /// How long one host may take from the first API call to an answering SSH server.
    #[serde(default = "default_ec2_provision_timeout", with = "humantime_serde")]
    pub provision_timeout: Duration,
}

fn default_ec2_provision_timeout() -> Duration {
    ec2::DEFAULT_PROVISION_TIMEOUT
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ec2Connect {
    #[default]
    Private,
    Public,
}

/// Command-line flags (each with its `GANTRY_*` variable) that override the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// The configuration file (default: ./gantry.toml when it exists).
    #[arg(long, env = "GANTRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address and port to listen on.
    #[arg(long, env = "GANTRY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// SQLite database, mirrors and host directories live here.
    #[arg(long, env = "GANTRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How many builds may run at once.
    #[arg(long, env = "GANTRY_MAX_CONCURRENT_BUILDS")]
    pub max_concurrent_builds: Option<usize>,
    /// The range local hosts take their addresses from (within 127.0.0.0/8).
    #[arg(long, env = "GANTRY_LOCAL_ADDRESSES")]
    pub local_addresses: Option<Ipv4Net>,
    /// The prefix of the user pool host steps run as when the server runs as root.
    #[arg(long, env = "GANTRY_LOCAL_RUN_AS")]
    pub local_run_as: Option<String>,
    /// Whether each build's local hosts get a network namespace of their own (true or false).
    #[arg(long, env = "GANTRY_LOCAL_ISOLATE_NETWORK")]
    pub local_isolate_network: Option<bool>,
    /// Where people and forges reach this server, e.g. <https://ci.example.com>.
    #[arg(long, env = "GANTRY_PUBLIC_URL")]
    pub public_url: Option<PublicUrl>,
    /// Whether pages and GET /api/* may be read without signing in (true or false).
    #[arg(long, env = "GANTRY_PUBLIC_READ")]
    pub public_read: Option<bool>,
    /// How long a sign-in lasts, e.g. 12h.
    #[arg(long, env = "GANTRY_SESSION_TTL", value_parser = humantime::parse_duration)]
    pub session_ttl: Option<Duration>,
    /// How many lines of one step's output a build keeps.
    #[arg(long, env = "GANTRY_MAX_LOG_LINES_PER_STEP")]
    pub max_log_lines_per_step: Option<usize>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: default_listen(),
            data_dir: default_data_dir(),
            database_url: None,
            server_id: None,
            server_timeout: default_server_timeout(),
            max_concurrent_builds: default_max_concurrent_builds(),
            repos: Vec::new(),
            provider: ProvidersConfig::default(),
            public_url: None,
            auth: AuthConfig::default(),
            logs: LogsConfig::default(),
            http: HttpConfig::default(),
            retention: RetentionConfig::default(),
        }
    }
}

impl Config {
    /// Parse a configuration file's text. The result is not yet validated; [`Config::validate`]
    /// runs when the application is built.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        parse(text, "configuration")
    }

    /// Read the file named by `overrides` (or `gantry.toml` when present), apply the overrides
    /// and validate the result.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match &overrides.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => read_file(Path::new(DEFAULT_CONFIG_FILE))?,
            None => Config::default(),
        };
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    /// Let flags and environment variables win over the file.
    pub fn apply(&mut self, overrides: &Overrides) {
        if let Some(listen) = overrides.listen {
            self.listen = listen;
        }
        if let Some(data_dir) = &overrides.data_dir {
            self.data_dir = data_dir.clone();
        }
        if let Some(max) = overrides.max_concurrent_builds {
            self.max_concurrent_builds = max;
        }
        if let Some(addresses) = overrides.local_addresses {
            self.provider.local.addresses = addresses;
        }
        if let Some(run_as) = &overrides.local_run_as {
            self.provider.local.run_as = run_as.clone();
        }
        if let Some(isolate) = overrides.local_isolate_network {
            self.provider.local.isolate_network = isolate;
        }
        if let Some(public_url) = &overrides.public_url {
            self.public_url = Some(public_url.clone());
        }
        if let Some(public_read) = overrides.public_read {
            self.auth.public_read = public_read;
        }
        if let Some(ttl) = overrides.session_ttl {
            self.auth.session_ttl = ttl;
        }
        if let Some(lines) = overrides.max_log_lines_per_step {
            self.logs.max_lines_per_step = lines;
        }
    }

    /// Check what the types cannot: names, uniqueness, ranges, and that every repo's provider is
    /// available in this build. Reports every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.max_concurrent_builds == 0 {
            problems.push("max_concurrent_builds must be at least 1".to_string());
        }
        problems.extend(self.logs.problems());
        problems.extend(self.retention.problems());
        let mut names = HashSet::new();
        for repo in &self.repos {
            if let Err(problem) = check_repo_name(&repo.name) {
                problems.push(format!("repo {:?}: {problem}", repo.name));
            }
            if !names.insert(repo.name.as_str()) {
                problems.push(format!("repo {:?} is declared twice; names must be unique", repo.name));
            }
            if repo.url.is_empty() {
                problems.push(format!("repo {:?}: url is empty", repo.name));
            }
            for name in repo.secrets.keys().filter(|name| !gantry_runner::env::is_env_name(name)) {
                problems.push(format!(
                    "repo {:?}: secret {name:?} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                    repo.name
                ));
            }
            let forge = forge::check(
                repo.forge,
                repo.forge_api.as_deref(),
                repo.forge_project.as_deref(),
                repo.forge_token.as_ref(),
            );
            problems.extend(forge.into_iter().map(|problem| format!("repo {:?}: {problem}", repo.name)));
            if repo.poll_interval == Some(Duration::ZERO) {
                problems.push(format!("repo {:?}: poll_interval must be longer than zero", repo.name));
            }
            match repo.provider {
                ProviderKind::Local => {}
                ProviderKind::Ssh => {
                    if self.provider.ssh.as_ref().is_none_or(|ssh| ssh.machines.is_empty()) {
                        problems.push(format!(
                            "repo {:?}: provider \"ssh\" needs at least one [[provider.ssh.machine]]",
                            repo.name
                        ));
                    }
                }
                ProviderKind::Ec2 => {
                    if self.provider.ec2.is_none() {
                        problems.push(format!("repo {:?}: provider \"ec2\" needs a [provider.ec2] section", repo.name));
                    }
                }
            }
        }
        // The local provider checks its address range itself when it is created.
        if self.provider.local.run_as.trim().is_empty() {
            problems.push("provider.local.run_as is empty".to_string());
        }
        if self.auth.session_ttl.is_zero() || self.auth.session_ttl > MAX_SESSION_TTL {
            problems.push("auth.session_ttl must be longer than zero and at most 366 days".to_string());
        }
        problems.extend(self.http.problems(crate::forge::MAX_WEBHOOK_BYTES));
        if let Some(id) = &self.server_id {
            if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_graphic()) {
                problems.push("server_id must be 1 to 64 printable ASCII characters without spaces".to_string());
            }
        }
        if self.server_timeout < MIN_SERVER_TIMEOUT {
            problems.push(format!("server_timeout must be at least {}s", MIN_SERVER_TIMEOUT.as_secs()));
        }
        if let Some(url) = &self.database_url {
            // The URL is not repeated: it may hold a password.
            if let Err(problem) = Location::check_postgres_url(url.expose_secret()) {
                problems.push(format!("database_url: {problem}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.join("; ")))
        }
    }

    pub fn repo(&self, name: &str) -> Option<&RepoConfig> {
        self.repos.iter().find(|r| r.name == name)
    }

    /// The SQLite database file (the store when no `database_url` is set).
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("gantry.db")
    }

    /// This server's `server_id`: the configured one, else the machine's host name.
    pub fn server_id(&self) -> String {
        self.server_id.clone().unwrap_or_else(host_name)
    }

    /// The store's database: `database_url`'s PostgreSQL, else the SQLite file in `data_dir`.
    pub fn database(&self) -> Location {
        match &self.database_url {
            Some(url) => Location::Postgres(url.expose_secret().to_string()),
            None => Location::Sqlite(self.database_path()),
        }
    }

    /// Where the local provider keeps its hosts' directories.
    pub fn hosts_dir(&self) -> PathBuf {
        self.data_dir.join("hosts")
    }
}

/// The machine's host name (`localhost` should the system not say).
pub fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let done = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    match std::str::from_utf8(&buffer[..end]) {
        Ok(name) if done && !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
    }
}

/// A repo name is URL-safe: ASCII letters, digits, `-`, `_` and `.`, not starting with `.`.
pub fn check_repo_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".to_string());
    }
    if name.len() > MAX_REPO_NAME_LEN {
        return Err(format!("the name is longer than {MAX_REPO_NAME_LEN} characters"));
    }
    if name.starts_with('.') {
        return Err("the name may not start with '.'".to_string());
    }
    match name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        Some(c) => Err(format!("{c:?} is not allowed; use letters, digits, '-', '_' and '.'")),
        None => Ok(()),
    }
}

fn read_file(path: &Path) -> Result<Config, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse(&text, &path.display().to_string())
}

/// A parse error quotes the line it is about, which may be a repo URL's: its credentials are
/// taken out.
fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    toml::from_str(text)
        .map_err(|e| ConfigError::Parse { path: origin.to_string(), message: redact_urls(&e.to_string()) })
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

fn default_server_timeout() -> Duration {
    Duration::from_secs(60)
}

/// The shortest `server_timeout`: a server heartbeats six times per timeout, and a heartbeat is
/// a write that may wait behind others.
pub const MIN_SERVER_TIMEOUT: Duration = Duration::from_secs(3);

fn default_max_concurrent_builds() -> usize {
    DEFAULT_MAX_CONCURRENT_BUILDS
}

fn default_cancel_superseded() -> bool {
    true
}

fn default_local_addresses() -> Ipv4Net {
    DEFAULT_LOCAL_ADDRESSES.parse().expect("the default address range parses")
}

fn default_local_run_as() -> String {
    DEFAULT_LOCAL_RUN_AS.to_string()
}

fn default_egress() -> bool {
    true
}

fn default_isolate_network() -> bool {
    true
}

fn default_ssh_port() -> u16 {
    22
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use secrecy::ExposeSecret;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        overrides: Overrides,
    }

    #[test]
    fn an_empty_file_means_every_default() {
        let config = Config::from_toml_str("").unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("gantry-data"));
        assert_eq!(config.max_concurrent_builds, 4);
        assert!(config.repos.is_empty());
        assert_eq!(config.provider.local.addresses, "127.0.10.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(config.provider.local.run_as, "gantry-host");
        assert!(config.provider.local.isolate_network);
        assert!(!config.auth.public_read);
        assert_eq!(config.auth.session_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(config.public_url, None);
        config.validate().unwrap();
    }

    #[test]
    fn the_contract_example_parses_with_repo_defaults() {
        let config = Config::from_toml_str(
            r#"
            listen = "127.0.0.1:9000"
            data_dir = "/var/lib/gantry"
            max_concurrent_builds = 2

            [[repo]]
            name = "acme"
            url = "https://git.example.com/acme/shop.git"
            secret = "s3cret"
            poll_interval = "60s"

            [[repo]]
            name = "other.repo_2"
            url = "/srv/git/other"
            secret = "x"
            cancel_superseded = false

            [provider.local]
            addresses = "127.0.20.0/24"
            run_as = "ci"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.repos.len(), 2);
        let acme = config.repo("acme").unwrap();
        assert_eq!(acme.poll_interval, Some(Duration::from_secs(60)));
        assert_eq!(acme.provider, ProviderKind::Local);
        assert!(acme.cancel_superseded);
        assert_eq!(acme.secret.expose_secret(), "s3cret");
        let other = config.repo("other.repo_2").unwrap();
        assert_eq!(other.poll_interval, None);
        assert!(!other.cancel_superseded);
        assert_eq!(config.provider.local.run_as, "ci");
    }

    #[test]
    fn an_unknown_key_is_named_in_the_error() {
        let err = Config::from_toml_str("listen = \"127.0.0.1:1\"\nmax_builds = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_builds"), "{err}");
        let err = Config::from_toml_str("[[repo]]\nname = \"a\"\nurl = \"/x\"\nsecret = \"s\"\nbranch = \"main\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("branch"), "{err}");
        let err = Config::from_toml_str("[provider.local]\nrun_as = \"x\"\nsubnet = \"10.0.0.0/8\"\n").unwrap_err();
        assert!(err.to_string().contains("subnet"), "{err}");
    }

    #[test]
    fn network_isolation_of_local_builds_can_be_switched_off() {
        let mut config = Config::from_toml_str("[provider.local]\nisolate_network = false\n").unwrap();
        assert!(!config.provider.local.isolate_network);
        config.apply(&Overrides { local_isolate_network: Some(true), ..Overrides::default() });
        assert!(config.provider.local.isolate_network);
        assert!(config.provider.local.egress, "isolated builds download through the egress proxy by default");
        let config = Config::from_toml_str("[provider.local]\negress = false\n").unwrap();
        assert!(config.provider.local.isolate_network && !config.provider.local.egress);
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let config = Config::from_toml_str(
            "[[repo]]\nname = \"a\"\nurl = \"https://bot:t0ken@host/a.git\"\nsecret = \"hunter2\"\n",
        )
        .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2") && !printed.contains("t0ken"), "{printed}");
        assert_eq!(config.repos[0].url.expose(), "https://bot:t0ken@host/a.git");
    }

    #[test]
    fn a_parse_error_quoting_a_repo_url_hides_its_credentials() {
        // The closing quote is missing: the error quotes the line.
        let err =
            Config::from_toml_str("[[repo]]\nname = \"a\"\nurl = \"https://bot:t0ken@host/a.git\nsecret = \"s\"\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("https://***@host/a.git"), "the error still quotes the line: {err}");
        assert!(!err.contains("t0ken"), "{err}");
    }

    #[test]
    fn ssh_needs_machines_and_ec2_needs_its_section() {
        let config = Config::from_toml_str(
            r#"
            [[repo]]
            name = "a"
            url = "/x"
            secret = "s"
            provider = "ec2"

            [[provider.ssh.machine]]
            address = "192.0.2.10"
            user = "ci"
            key_file = "/etc/gantry/ci_ed25519"
            host_key = "ssh-ed25519 AAAA"

            [provider.ec2]
            region = "eu-west-1"
            ssh_user = "admin"
            server_id = "gantry-1"
            images = { debian-12 = "ami-1" }
            "#,
        )
        .unwrap();
        assert_eq!(config.provider.ssh.as_ref().unwrap().machines[0].port, 22);
        config.validate().unwrap();
        let ec2 = config.provider.ec2.as_ref().unwrap();
        assert_eq!((ec2.ssh_port, ec2.connect, ec2.allow_ssh_from), (22, Ec2Connect::Private, None));
        assert_eq!(ec2.provision_timeout, ec2::DEFAULT_PROVISION_TIMEOUT);
        assert_eq!(ec2.images["debian-12"], "ami-1");

        let sectionless =
            Config::from_toml_str("[[repo]]\nname = \"a\"\nurl = \"/x\"\nsecret = \"s\"\nprovider = \"ec2\"\n")
                .unwrap();
        let err = sectionless.validate().unwrap_err().to_string();
        assert!(err.contains("needs a [provider.ec2] section"), "{err}");

        let machineless =
            Config::from_toml_str("[[repo]]\nname = \"a\"\nurl = \"/x\"\nsecret = \"s\"\nprovider = \"ssh\"\n")
                .unwrap();
        let err = machineless.validate().unwrap_err().to_string();
        assert!(err.contains("needs at least one [[provider.ssh.machine]]"), "{err}");
    }

    #[test]
    fn bad_names_duplicates_and_ranges_are_all_reported() {
        let config = Config::from_toml_str(
            r#"
            max_concurrent_builds = 0
            [[repo]]
            name = "a/b"
            url = "/x"
            secret = "s"
            [[repo]]
            name = "dup"
            url = "/x"
            secret = "s"
            [[repo]]
            name = "dup"
            url = "/y"
            secret = "s"
            "#,
        )
        .unwrap();
        let err = config.validate().unwrap_err().to_string();
        for expected in ["max_concurrent_builds", "\"a/b\"", "declared twice"] {
            assert!(err.contains(expected), "{expected} missing from {err}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let mut config = Config::from_toml_str("listen = \"127.0.0.1:1\"\nmax_concurrent_builds = 9\n").unwrap();
        let cli = Cli::try_parse_from([
            "gantry",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/tmp/elsewhere",
            "--max-concurrent-builds",
            "2",
            "--local-addresses",
            "127.0.42.0/28",
            "--public-url",
            "https://ci.example.com",
            "--public-read",
            "true",
            "--session-ttl",
            "2h",
        ])
        .unwrap();
        config.apply(&cli.overrides);
        assert_eq!(config.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/tmp/elsewhere"));
        assert_eq!(config.max_concurrent_builds, 2);
        assert_eq!(config.provider.local.addresses, "127.0.42.0/28".parse::<Ipv4Net>().unwrap());
        assert_eq!(config.public_url.as_ref().map(PublicUrl::origin), Some("https://ci.example.com"));
        assert!(config.auth.public_read);
        assert_eq!(config.auth.session_ttl, Duration::from_secs(7200));
        config.validate().unwrap();
    }

    #[test]
    fn load_reads_the_named_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gantry.toml");
        std::fs::write(&path, "max_concurrent_builds = 7\n").unwrap();
        let overrides = Overrides { config: Some(path), ..Overrides::default() };
        assert_eq!(Config::load(&overrides).unwrap().max_concurrent_builds, 7);
        let missing = Overrides { config: Some(dir.path().join("nope.toml")), ..Overrides::default() };
        assert!(matches!(Config::load(&missing), Err(ConfigError::Read { .. })));
    }
}
