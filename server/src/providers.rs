//! The host providers this server runs, built from `[provider.*]`, and the one each repo uses.
//!
//! The scheduler asks for a repo's provider when it runs a build, and for a host's provider by
//! the name recorded in its row when it reaps hosts a stopped server left behind. This module
//! only builds and hands out providers; it never provisions anything itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use gantry_runner::provider::ec2::Ec2Provider;
use gantry_runner::provider::local::{LocalConfig, LocalProvider};
use gantry_runner::provider::ssh_pool::{SshMachine, SshPoolConfig, SshPoolProvider};
use gantry_runner::provider::Provider;

use crate::config::{Config, ProviderKind};

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
            let ec2 = Ec2Provider::from_env(ec2.to_runner())
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
