//! The EC2 provider: one fresh virtual machine per host, reached over SSH, never left running.
//!
//! For each build it creates one security group (`gantry-<server>-<build>`), shared by the
//! build's hosts: TCP `ssh_port` from the server's CIDR only (by default the server's own address
//! as a /32; never 0.0.0.0/0) and any traffic between the build's own hosts. For each host:
//!
//! 1. an ed25519 client key generated in memory and imported as key pair `gantry-<server>-<host>`,
//!    and an ed25519 host key handed to cloud-init in user-data (`ssh_keys`), so the very first
//!    connection verifies a key Gantry knows: no trust on first use;
//! 2. `RunInstances` with instance-initiated shutdown = terminate and a `shutdown` timer in
//!    user-data a little past the pipeline's total timeout: a dead-man switch, so the VM ends
//!    itself even if this server never comes back;
//! 3. wait for `running`, then for SSH, with bounded backoff under the provisioning timeout.
//!
//! Every resource carries the tags `gantry:server`, `gantry:build`, `gantry:role` and
//! `gantry:host`. Teardown terminates the host's instances (found by id and by tag, so a host
//! whose id never reached the caller is found too), waits until they are terminated, then deletes
//! the key pair and, when no other instance of the build remains, the group. [`Provider::reap`]
//! sweeps what crashes and failed teardowns leave: instances, key pairs and groups of this server
//! whose host or build is no longer live.
//!
//! Every API call is retried with jittered exponential backoff on throttling, capacity and other
//! transient errors (the SDK's own retries are off, so there is one policy); any other error ends
//! the operation with AWS's code and message.
//!
//! The parts: `config` (the typed configuration and its aliases), `api` (calls under the retry
//! policy, the classification of AWS's errors, the tag-filtered listings), `launch` (key pair,
//! security group, user-data, `RunInstances`, the wait for `running`) and `reap` (the sweep).
//! This file holds the provider itself: its client, provisioning up to an SSH session, and
//! teardown. No part keeps state about hosts between calls: everything is found again by its
//! tags.

mod api;
mod config;
mod launch;
mod reap;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::types::InstanceStateName;
use aws_sdk_ec2::Client;
use tokio::sync::OnceCell;
use tokio::time::Instant;

pub use self::api::ApiError;
use self::api::{invalid, state, tag_filter, tag_value};
pub use self::config::{
    Connect, Ec2Config, RetryPolicy, DEFAULT_ALIAS, DEFAULT_PROVISION_TIMEOUT, DEFAULT_SHUTDOWN_MARGIN,
    DEFAULT_TERMINATE_TIMEOUT, FALLBACK_INSTANCE_TYPE,
};
use self::launch::Network;
use super::{HostId, HostRequest, LiveHosts, Provider, ProviderError, ProvisionedHost, ReapReport};
use crate::transport::ssh::{SshTarget, SshTransport};

/// Tag keys on everything this provider creates.
pub const TAG_SERVER: &str = "gantry:server";
pub const TAG_BUILD: &str = "gantry:build";
pub const TAG_ROLE: &str = "gantry:role";
pub const TAG_HOST: &str = "gantry:host";

/// Where hosts' files go on the VM, under the login user's home: `~/gantry/<host id>`.
const WORK_ROOT: &str = "gantry";

pub struct Ec2Provider {
    client: Client,
    config: Ec2Config,
    network: OnceCell<Network>,
}

impl Ec2Provider {
    /// A provider whose client comes from aws-config's standard chain (environment, profiles,
    /// web identity, container and instance credentials) with the configured region and endpoint.
    pub async fn from_env(config: Ec2Config) -> Result<Ec2Provider, ProviderError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()));
        if let Some(endpoint) = &config.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk = loader.load().await;
        Ec2Provider::new(config, &sdk)
    }

    /// A provider on an explicit SDK configuration (credentials, region, endpoint).
    pub fn new(config: Ec2Config, sdk: &aws_config::SdkConfig) -> Result<Ec2Provider, ProviderError> {
        config.check()?;
        let mut builder = aws_sdk_ec2::config::Builder::from(sdk)
            .region(aws_sdk_ec2::config::Region::new(config.region.clone()))
            // One retry policy, ours: it knows capacity errors and the provisioning deadline.
            .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_ec2::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            );
        if let Some(endpoint) = &config.endpoint_url {
            builder = builder.endpoint_url(endpoint);
        }
        Ok(Ec2Provider { client: Client::from_conf(builder.build()), config, network: OnceCell::new() })
    }

    pub fn config(&self) -> &Ec2Config {
        &self.config
    }

    /// `gantry-<server>-<host>`: the key pair of a host.
    pub fn key_name(&self, host: &HostId) -> String {
        format!("gantry-{}-{host}", self.config.server_id)
    }

    /// `gantry-<server>-<build>`: the security group of a build.
    pub fn group_name(&self, build: &str) -> String {
        format!("gantry-{}-{build}", self.config.server_id)
    }

    /// Delete a key pair; one already gone is no error.
    async fn delete_key(&self, name: &str, deadline: Instant) -> Result<(), ApiError> {
        match self.call("DeleteKeyPair", deadline, || self.client.delete_key_pair().key_name(name).send()).await {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }

    /// Terminate `ids` and wait until every one is terminated (or gone).
    async fn terminate(&self, ids: &[String], deadline: Instant) -> Result<(), ApiError> {
        if ids.is_empty() {
            return Ok(());
        }
        match self
            .call("TerminateInstances", deadline, || {
                self.client.terminate_instances().set_instance_ids(Some(ids.to_vec())).send()
            })
            .await
        {
            Err(e) if !e.is_not_found() => return Err(e),
            _ => {}
        }
        loop {
            let described = self
                .call("DescribeInstances", deadline, || {
                    self.client.describe_instances().set_instance_ids(Some(ids.to_vec())).send()
                })
                .await;
            let remaining: Vec<String> = match described {
                Ok(out) => out
                    .reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .filter(|i| state(i) != Some(InstanceStateName::Terminated))
                    .filter_map(|i| i.instance_id().map(str::to_string))
                    .collect(),
                Err(e) if e.is_not_found() => Vec::new(),
                Err(e) => return Err(e),
            };
            if remaining.is_empty() {
                return Ok(());
            }
            if Instant::now() + self.config.poll_interval > deadline {
                return Err(invalid("TerminateInstances", format!("{} still not terminated", remaining.join(", "))));
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// Delete the build's group unless an instance of the build still runs somewhere; how many
    /// groups went.
    async fn delete_group_if_unused(&self, build: &str, deadline: Instant) -> Result<usize, ApiError> {
        let users = self.instances(vec![tag_filter(TAG_BUILD, build)], deadline).await?;
        if !users.is_empty() {
            return Ok(0);
        }
        let mut deleted = 0;
        let groups = self.groups(vec![tag_filter(TAG_BUILD, build)], deadline).await?;
        for (group_id, _) in groups {
            match self
                .call("DeleteSecurityGroup", deadline, || {
                    self.client.delete_security_group().group_id(&group_id).send()
                })
                .await
            {
                Ok(_) => {
                    tracing::info!(group = %group_id, build, "deleted security group");
                    deleted += 1;
                }
                Err(e) if e.is_not_found() => {}
                // A network interface may detach a little after its instance terminates.
                Err(e) if e.is("DependencyViolation") => {
                    tracing::warn!(group = %group_id, build, "security group still in use; the reaper deletes it later");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }
}

#[async_trait]
impl Provider for Ec2Provider {
    fn name(&self) -> &'static str {
        "ec2"
    }

    async fn provision(&self, request: &HostRequest) -> Result<ProvisionedHost, ProviderError> {
        let deadline = Instant::now() + self.config.provision_timeout;
        let failed = |message: String| ProviderError::Provision { host: request.id.clone(), message };
        let (instance_id, address, client_key, host_key) = self.launch(request, deadline).await.map_err(failed)?;
        let target = SshTarget {
            address,
            port: self.config.ssh_port,
            user: self.config.ssh_user.clone(),
            key: client_key,
            host_key,
            home: "/".to_string(),
            host_id: request.id.clone(),
        };
        let connected = async {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let transport = SshTransport::connect(target, remaining).await?;
            let home = format!("{}/{WORK_ROOT}/{}", transport.login_home().await?.trim_end_matches('/'), request.id);
            let transport = transport.with_home(home);
            transport.create_home().await?;
            Ok::<_, crate::transport::TransportError>(transport)
        };
        let transport = connected.await.map_err(|e| {
            failed(format!("instance {instance_id} at {}: {e}", SocketAddr::new(address, self.config.ssh_port)))
        })?;
        tracing::info!(host = %request.id, instance = %instance_id, %address, "EC2 host ready");
        Ok(ProvisionedHost {
            address,
            isolation: format!("virtual machine {instance_id} of its own"),
            provider_id: instance_id,
            transport: Arc::new(transport),
        })
    }

    async fn teardown(&self, id: &HostId, provider_id: Option<&str>) -> Result<(), ProviderError> {
        let deadline = Instant::now() + self.config.terminate_timeout;
        let failed = |e: ApiError| ProviderError::Teardown { host: id.clone(), message: e.to_string() };
        let mut found = self.instances(vec![tag_filter(TAG_HOST, &id.0)], deadline).await.map_err(failed)?;
        let mut ids: BTreeSet<String> = found.iter().filter_map(|i| i.instance_id().map(str::to_string)).collect();
        if let Some(instance) = provider_id.filter(|p| p.starts_with("i-")) {
            if ids.insert(instance.to_string()) {
                // Not tagged as expected (or not yet visible by tag): look it up by id.
                let described = self
                    .call("DescribeInstances", deadline, || {
                        self.client.describe_instances().instance_ids(instance).send()
                    })
                    .await;
                match described {
                    Ok(out) => found.extend(out.reservations().iter().flat_map(|r| r.instances()).cloned()),
                    Err(e) if e.is_not_found() => {
                        ids.remove(instance);
                    }
                    Err(e) => return Err(failed(e)),
                }
            }
        }
        // The build's group goes with its last host; the build is known from the instance's
        // tags, or from the key pair's when no instance was launched.
        let mut builds: BTreeSet<String> =
            found.iter().filter_map(|i| tag_value(i.tags(), TAG_BUILD).map(str::to_string)).collect();
        let key = self.key_name(id);
        let keys =
            self.call("DescribeKeyPairs", deadline, || self.client.describe_key_pairs().key_names(&key).send()).await;
        match keys {
            Ok(out) => {
                builds.extend(out.key_pairs().iter().filter_map(|k| tag_value(k.tags(), TAG_BUILD).map(str::to_string)))
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(failed(e)),
        }
        let ids: Vec<String> = ids.into_iter().collect();
        self.terminate(&ids, deadline).await.map_err(failed)?;
        self.delete_key(&key, deadline).await.map_err(failed)?;
        for build in builds {
            self.delete_group_if_unused(&build, deadline).await.map_err(failed)?;
        }
        tracing::info!(host = %id, instances = ?ids, "tore down EC2 host");
        Ok(())
    }

    async fn reap(&self, live: &dyn LiveHosts) -> Result<ReapReport, ProviderError> {
        reap::reap(self, live).await
    }
}
