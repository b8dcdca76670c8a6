//! Where hosts come from. A provider creates fresh, empty hosts and destroys them.
//!
//! Lifecycle of one host: the caller records the host (its [`HostId`]) durably, then calls
//! [`Provider::provision`]; the executor pushes files and runs steps through the returned
//! transport; finally [`Provider::teardown`] runs exactly once on every exit path.
//! `teardown` must also work from the `HostId` (and provider id, when known) alone, after a crash
//! of the server, so a restarted server can reap what the dead one left.
//!
//! Concurrency: a provider is shared by every build of a server and must be safe to call
//! concurrently; it never hands one address or machine to two live hosts.

pub mod ec2;
pub mod local;
pub mod ssh_pool;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::transport::Transport;

/// A host's durable identity, chosen by the caller before provisioning (e.g. `b42-web`).
/// Providers mark everything they create with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostId(pub String);

impl std::fmt::Display for HostId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct HostRequest {
    pub id: HostId,
    /// The build's key (`b42`), shared by all its hosts: providers group and tag by it.
    pub build: String,
    pub role: String,
    pub image: Option<String>,
    pub size: Option<String>,
    /// Upper bound of the build's run time (for dead-man switches).
    pub build_timeout: Duration,
}

pub struct ProvisionedHost {
    /// Where the host's services listen and where other hosts reach them.
    pub address: IpAddr,
    /// The provider's own name for the host (a directory, an instance id, a machine).
    pub provider_id: String,
    /// What keeps the host apart from other builds' hosts, in words shown on the build page
    /// (`user gantry-host-3, network namespace of b12`, `a virtual machine of its own`).
    pub isolation: String,
    pub transport: Arc<dyn Transport>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("no free host: {0}")]
    Exhausted(String),
    #[error("provisioning {host} failed: {message}")]
    Provision { host: HostId, message: String },
    #[error("teardown of {host} failed: {message}")]
    Teardown { host: HostId, message: String },
    #[error("provider configuration: {0}")]
    Config(String),
    #[error("reaping failed: {0}")]
    Reap(String),
}

/// The hosts and builds a server has recorded and not yet torn down.
#[derive(Debug, Clone, Default)]
pub struct LiveSet {
    pub hosts: HashSet<HostId>,
    pub builds: HashSet<String>,
}

/// Where [`Provider::reap`] learns what is live, at the moment it asks.
#[async_trait]
pub trait LiveHosts: Send + Sync {
    /// Every host recorded and not torn down, read now: a host recorded before this call is in it.
    async fn live(&self) -> Result<LiveSet, String>;
}

#[async_trait]
impl LiveHosts for LiveSet {
    async fn live(&self) -> Result<LiveSet, String> {
        Ok(self.clone())
    }
}

/// What one [`Provider::reap`] destroyed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapReport {
    pub instances: usize,
    pub key_pairs: usize,
    pub security_groups: usize,
}

impl ReapReport {
    pub fn is_empty(&self) -> bool {
        *self == ReapReport::default()
    }
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// `local`, `ssh` or `ec2`: recorded with each host.
    fn name(&self) -> &'static str;

    /// Create one fresh, empty host.
    async fn provision(&self, request: &HostRequest) -> Result<ProvisionedHost, ProviderError>;

    /// Destroy everything created for `id` (processes, files, machines, addresses). Idempotent:
    /// tearing down a host that never finished provisioning, or is already gone, succeeds.
    async fn teardown(&self, id: &HostId, provider_id: Option<&str>) -> Result<(), ProviderError>;

    /// Destroy what this provider made for hosts that are no longer live (a crashed server, a
    /// failed teardown), found by the provider's own marks. Providers whose hosts cannot outlive
    /// their `teardown` keep this default, which finds nothing.
    async fn reap(&self, live: &dyn LiveHosts) -> Result<ReapReport, ProviderError> {
        let _ = live;
        Ok(ReapReport::default())
    }
}
