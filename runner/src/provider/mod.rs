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

pub mod local;
pub mod ssh_pool;

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
}
