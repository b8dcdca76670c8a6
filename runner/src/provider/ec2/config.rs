//! The EC2 provider's configuration: the typed `[provider.ec2]` section (region, network, SSH,
//! image and size aliases, timeouts, retry policy), its checks, and how a pipeline's `image:` and
//! `size:` aliases resolve through it. It makes no API call; the server builds an [`Ec2Config`]
//! and the provider refuses one that fails its checks.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::IpNet;

use crate::provider::{HostRequest, ProviderError};

/// How long one host may take from the first API call to an SSH session.
pub const DEFAULT_PROVISION_TIMEOUT: Duration = Duration::from_secs(600);

/// How long teardown waits for its instances to reach `terminated`.
pub const DEFAULT_TERMINATE_TIMEOUT: Duration = Duration::from_secs(240);

/// How far past the pipeline's total timeout (plus provisioning) a VM shuts itself down.
pub const DEFAULT_SHUTDOWN_MARGIN: Duration = Duration::from_secs(900);

/// The instance type of a host that names no `size:` when the config has no `default` size.
pub const FALLBACK_INSTANCE_TYPE: &str = "t3.small";

/// The alias a host without `image:` or `size:` gets, when the config defines it.
pub const DEFAULT_ALIAS: &str = "default";

/// Which of an instance's addresses Gantry connects to and hands to the other hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Connect {
    #[default]
    Private,
    Public,
}

/// How API calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Attempts after the first.
    pub max_retries: usize,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy { min_delay: Duration::from_millis(500), max_delay: Duration::from_secs(20), max_retries: 8 }
    }
}

#[derive(Debug, Clone)]
pub struct Ec2Config {
    pub region: String,
    /// Another EC2 API endpoint (a test double, a VPC endpoint).
    pub endpoint_url: Option<String>,
    /// The subnet instances are launched in; the default VPC's default subnet otherwise.
    pub subnet_id: Option<String>,
    pub connect: Connect,
    pub ssh_user: String,
    pub ssh_port: u16,
    /// Who may connect to `ssh_port`; this server's own address as a /32 when `None`.
    pub allow_ssh_from: Option<IpNet>,
    /// Marks this server's resources: two servers sharing an account never reap each other's.
    pub server_id: String,
    /// `image:` alias → AMI id.
    pub images: BTreeMap<String, String>,
    /// `size:` alias → instance type.
    pub sizes: BTreeMap<String, String>,
    pub provision_timeout: Duration,
    pub terminate_timeout: Duration,
    pub shutdown_margin: Duration,
    pub retry: RetryPolicy,
    /// Between two `DescribeInstances` while waiting for a state.
    pub poll_interval: Duration,
}

impl Ec2Config {
    /// A configuration with the default timeouts, retries and addresses.
    pub fn new(region: &str, server_id: &str, ssh_user: &str) -> Ec2Config {
        Ec2Config {
            region: region.to_string(),
            endpoint_url: None,
            subnet_id: None,
            connect: Connect::Private,
            ssh_user: ssh_user.to_string(),
            ssh_port: 22,
            allow_ssh_from: None,
            server_id: server_id.to_string(),
            images: BTreeMap::new(),
            sizes: BTreeMap::new(),
            provision_timeout: DEFAULT_PROVISION_TIMEOUT,
            terminate_timeout: DEFAULT_TERMINATE_TIMEOUT,
            shutdown_margin: DEFAULT_SHUTDOWN_MARGIN,
            retry: RetryPolicy::default(),
            poll_interval: Duration::from_secs(2),
        }
    }

    pub(super) fn check(&self) -> Result<(), ProviderError> {
        let id = &self.server_id;
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ProviderError::Config(format!("server_id {id:?} must be 1 to 64 letters, digits, '-' or '_'")));
        }
        if self.ssh_user.is_empty() {
            return Err(ProviderError::Config("ssh_user is empty".to_string()));
        }
        if self.images.is_empty() {
            return Err(ProviderError::Config("images maps no alias to an AMI".to_string()));
        }
        if let Some(cidr) = self.allow_ssh_from {
            if cidr.prefix_len() == 0 {
                return Err(ProviderError::Config(format!(
                    "allow_ssh_from = {cidr} would open SSH to the whole internet"
                )));
            }
        }
        if self.connect == Connect::Public && self.allow_ssh_from.is_none() {
            return Err(ProviderError::Config(
                "connect = \"public\" needs allow_ssh_from: the server's own address is not what AWS sees".to_string(),
            ));
        }
        Ok(())
    }

    /// The AMI of a host: its `image:` alias, or the `default` one.
    pub(super) fn image_of(&self, request: &HostRequest) -> Result<String, String> {
        resolve(&self.images, request.image.as_deref(), "image", "images")?.ok_or_else(|| {
            format!("host {} names no image and [provider.ec2.images] has no {DEFAULT_ALIAS:?} alias", request.role)
        })
    }

    /// The instance type of a host: its `size:` alias, the `default` one, or
    /// [`FALLBACK_INSTANCE_TYPE`].
    pub(super) fn instance_type_of(&self, request: &HostRequest) -> Result<String, String> {
        Ok(resolve(&self.sizes, request.size.as_deref(), "size", "sizes")?
            .unwrap_or_else(|| FALLBACK_INSTANCE_TYPE.to_string()))
    }
}

/// An alias from the pipeline resolved through the config map; the `default` alias (or nothing)
/// when the pipeline names none.
fn resolve(
    map: &BTreeMap<String, String>,
    alias: Option<&str>,
    what: &str,
    section: &str,
) -> Result<Option<String>, String> {
    match alias {
        Some(alias) => map.get(alias).cloned().map(Some).ok_or_else(|| {
            let known: Vec<&str> = map.keys().map(String::as_str).collect();
            format!("{what} {alias:?} is not in [provider.ec2.{section}] (known: {})", known.join(", "))
        }),
        None => Ok(map.get(DEFAULT_ALIAS).cloned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Ec2Config {
        let mut config = Ec2Config::new("eu-west-1", "gantry-1", "admin");
        config.images = BTreeMap::from([("debian-12".into(), "ami-1".into()), ("default".into(), "ami-0".into())]);
        config.sizes = BTreeMap::from([("small".into(), "t3.small".into())]);
        config
    }

    #[test]
    fn aliases_resolve_through_the_config_and_unknown_ones_name_the_known() {
        let map = config().images;
        assert_eq!(resolve(&map, Some("debian-12"), "image", "images").unwrap().as_deref(), Some("ami-1"));
        assert_eq!(resolve(&map, None, "image", "images").unwrap().as_deref(), Some("ami-0"));
        let error = resolve(&map, Some("ubuntu"), "image", "images").unwrap_err();
        assert!(error.contains("\"ubuntu\"") && error.contains("debian-12"), "{error}");
    }

    #[test]
    fn config_refuses_an_open_ssh_rule_and_public_without_a_source() {
        let mut open = config();
        open.allow_ssh_from = Some("0.0.0.0/0".parse().unwrap());
        assert!(open.check().unwrap_err().to_string().contains("whole internet"));
        let mut public = config();
        public.connect = Connect::Public;
        assert!(public.check().unwrap_err().to_string().contains("allow_ssh_from"));
        let mut bad = config();
        bad.server_id = "a b".into();
        assert!(bad.check().is_err());
        assert!(config().check().is_ok());
    }
}
