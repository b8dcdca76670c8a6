//! The host providers this server runs, built from `[provider.*]`, and the one each repo uses.
//!
//! The scheduler asks for a repo's provider when it runs a build, and for a host's provider by
//! the name recorded in its row when it reaps hosts a stopped server left behind. This module
//! only builds and hands out providers; it never provisions anything itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use gantry_runner::provider::ec2::{self, Ec2Provider};
use gantry_runner::provider::local::{LocalConfig, LocalProvider};
use gantry_runner::provider::ssh_pool::{SshMachine, SshPoolConfig, SshPoolProvider};
use gantry_runner::provider::Provider;

use crate::config::{Config, Ec2Connect, Ec2ProviderConfig, ProviderKind};

/// Every provider the configuration asks for, by name (`local`, `ssh`, `ec2`).
#[derive(Clone)]
pub struct Providers {
    by_name: BTreeMap<&'static str, Arc<dyn Provider>>,
}

impl Providers {
    /// Build the local provider (always) and every provider a `[provider.*]` section configures.
    pub async fn from_config(config: &Config) -> anyhow::Result<Providers> {
        let local = LocalProvider::new(LocalConfig {
            root: config.hosts_dir(),
            addresses: config.provider.local.addresses,
            run_as: Some(config.provider.local.run_as.clone()),
            isolate_network: config.provider.local.isolate_network,
            egress: config.provider.local.egress,
        })
        .context("failed to set up the local provider")?;
        let mut providers: Vec<Arc<dyn Provider>> = vec![Arc::new(local)];
        if let Some(ssh) = &config.provider.ssh {
            let machines = ssh
                .machines
                .iter()
                .map(|m| SshMachine {
                    address: m.address,
                    port: m.port,
                    user: m.user.clone(),
                    key_file: m.key_file.clone(),
                    host_key: m.host_key.clone(),
                })
                .collect();
            let pool = SshPoolProvider::new(SshPoolConfig::new(machines))
                .context("failed to set up the SSH pool provider ([[provider.ssh.machine]])")?;
            providers.push(Arc::new(pool));
        }
        if let Some(ec2) = &config.provider.ec2 {
            let ec2 = Ec2Provider::from_env(ec2_config(ec2))
                .await
                .context("failed to set up the EC2 provider ([provider.ec2])")?;
            providers.push(Arc::new(ec2));
        }
        Ok(Providers::from_providers(providers))
    }

    /// A set of ready-made providers, keyed by their own names.
    pub fn from_providers(providers: impl IntoIterator<Item = Arc<dyn Provider>>) -> Providers {
        Providers { by_name: providers.into_iter().map(|p| (p.name(), p)).collect() }
    }

    /// The provider of `kind`, if this server runs it.
    pub fn get(&self, kind: ProviderKind) -> Option<&Arc<dyn Provider>> {
        self.by_name(kind.as_str())
    }

    /// Every provider, for the reaper.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.by_name.values()
    }

    /// The provider recorded by `name` in a host row.
    pub fn by_name(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.by_name.get(name)
    }
}

/// The runner's EC2 configuration from `[provider.ec2]`, with the runner's defaults for what the
/// file does not set.
fn ec2_config(section: &Ec2ProviderConfig) -> ec2::Ec2Config {
    let mut config = ec2::Ec2Config::new(&section.region, &section.server_id, &section.ssh_user);
    config.endpoint_url = section.endpoint_url.clone();
    config.subnet_id = section.subnet_id.clone();
    config.connect = match section.connect {
        Ec2Connect::Private => ec2::Connect::Private,
        Ec2Connect::Public => ec2::Connect::Public,
    };
    config.ssh_port = section.ssh_port;
    config.allow_ssh_from = section.allow_ssh_from;
    config.images = section.images.clone();
    config.sizes = section.sizes.clone();
    config.provision_timeout = section.provision_timeout;
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ec2_section_becomes_the_runner_config_with_its_defaults() {
        let config = Config::from_toml_str(
            "[provider.ec2]\nregion = \"eu-west-1\"\nssh_user = \"admin\"\nserver_id = \"gantry-1\"\n\
             connect = \"public\"\nallow_ssh_from = \"203.0.113.7/32\"\nimages = { debian-12 = \"ami-1\" }\n",
        )
        .unwrap();
        let ec2 = ec2_config(config.provider.ec2.as_ref().unwrap());
        assert_eq!((ec2.ssh_port, ec2.connect), (22, ec2::Connect::Public));
        assert_eq!(ec2.allow_ssh_from, Some("203.0.113.7/32".parse().unwrap()));
        assert_eq!(ec2.provision_timeout, ec2::DEFAULT_PROVISION_TIMEOUT);
        assert_eq!((ec2.region.as_str(), ec2.server_id.as_str()), ("eu-west-1", "gantry-1"));
        assert_eq!(ec2.images["debian-12"], "ami-1");
    }
}
