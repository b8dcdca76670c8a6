//! The SSH pool provider: machines the user already has, listed in the config (address, port,
//! user, key file, known host key), each leased to one host at a time.
//!
//! A host is a fresh, empty work directory `<work_root>/<HostId>` on a leased machine (a relative
//! work root lies in the login user's home), reached through [`SshTransport`]. Provisioning waits,
//! up to a bounded time, for a free machine, then reports [`ProviderError::Exhausted`]; a machine
//! is never leased to two live hosts. Teardown kills every process the host started (found by the
//! host's marker, see [`crate::process`]), removes the directory and releases the lease. It needs
//! only the `HostId` and the provider id `user@address:port`, so a restarted server reaps what a
//! crashed one left. This module never runs a step itself and never touches anything on a machine
//! outside the work directories of its hosts.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use russh::keys::{PrivateKey, PublicKey};
use tokio::sync::Notify;

use super::{HostId, HostRequest, Provider, ProviderError, ProvisionedHost};
use crate::transport::ssh::{parse_public_key, SshTarget, SshTransport};
use crate::transport::TransportError;

/// Where host work directories go when the configuration names no work root: `~/gantry`.
pub const DEFAULT_WORK_ROOT: &str = "gantry";

/// How long provisioning waits for a machine to become free before reporting the pool exhausted.
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long connecting to a pool machine may take, retries included.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// One machine of the pool, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshMachine {
    pub address: IpAddr,
    pub port: u16,
    pub user: String,
    /// The private key Gantry logs in with (OpenSSH format, unencrypted).
    pub key_file: PathBuf,
    /// The machine's host key, `ssh-ed25519 AAAA… [comment]`: the only key accepted.
    pub host_key: String,
}

impl SshMachine {
    /// `user@address:port`: the provider id of the hosts on this machine.
    pub fn provider_id(&self) -> String {
        format!("{}@{}", self.user, SocketAddr::new(self.address, self.port))
    }
}

#[derive(Debug, Clone)]
pub struct SshPoolConfig {
    pub machines: Vec<SshMachine>,
    /// Parent of the hosts' work directories; relative to the login home unless absolute.
    pub work_root: String,
    /// How long provisioning waits for a free machine.
    pub lease_timeout: Duration,
    /// How long connecting to a machine may take, retries included.
    pub connect_timeout: Duration,
}

impl SshPoolConfig {
    /// A configuration with the default work root and timeouts.
    pub fn new(machines: Vec<SshMachine>) -> SshPoolConfig {
        SshPoolConfig {
            machines,
            work_root: DEFAULT_WORK_ROOT.to_string(),
            lease_timeout: DEFAULT_LEASE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// A configured machine with its keys loaded.
struct Machine {
    config: SshMachine,
    key: Arc<PrivateKey>,
    host_key: PublicKey,
}

pub struct SshPoolProvider {
    machines: Vec<Machine>,
    work_root: String,
    lease_timeout: Duration,
    connect_timeout: Duration,
    /// Which host holds which machine (by index into `machines`).
    leases: Mutex<Vec<Option<HostId>>>,
    /// Woken whenever a lease is released.
    released: Notify,
}

impl SshPoolProvider {
    /// Load every machine's key and parse its host key; an error names the machine.
    pub fn new(config: SshPoolConfig) -> Result<SshPoolProvider, ProviderError> {
        if config.machines.is_empty() {
            return Err(ProviderError::Config("the ssh pool lists no machines".to_string()));
        }
        if config.work_root.split('/').any(|part| part == "..") || config.work_root.trim_matches('/').is_empty() {
            return Err(ProviderError::Config(format!("invalid ssh pool work root {:?}", config.work_root)));
        }
        let mut machines = Vec::new();
        for machine in &config.machines {
            let name = machine.provider_id();
            if machines.iter().any(|m: &Machine| m.config.provider_id() == name) {
                return Err(ProviderError::Config(format!("machine {name} is listed twice")));
            }
            let key = russh::keys::load_secret_key(&machine.key_file, None).map_err(|error| {
                ProviderError::Config(format!(
                    "machine {name}: cannot load key {}: {error}",
                    machine.key_file.display()
                ))
            })?;
            let host_key = parse_public_key(&machine.host_key)
                .map_err(|error| ProviderError::Config(format!("machine {name}: host_key: {error}")))?;
            machines.push(Machine { config: machine.clone(), key: Arc::new(key), host_key });
        }
        Ok(SshPoolProvider {
            leases: Mutex::new(vec![None; machines.len()]),
            machines,
            work_root: config.work_root.trim_end_matches('/').to_string(),
            lease_timeout: config.lease_timeout,
            connect_timeout: config.connect_timeout,
            released: Notify::new(),
        })
    }

    /// Lease a free machine to `id`, waiting up to the lease timeout for one.
    async fn lease(&self, id: &HostId) -> Result<usize, ProviderError> {
        let deadline = tokio::time::Instant::now() + self.lease_timeout;
        loop {
            // Register for the wake-up before looking, so a release in between is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut leases = self.leases.lock().unwrap();
                if let Some(index) = leases.iter().position(|lease| lease.as_ref() == Some(id)) {
                    return Ok(index);
                }
                if let Some(index) = leases.iter().position(Option::is_none) {
                    leases[index] = Some(id.clone());
                    return Ok(index);
                }
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(ProviderError::Exhausted(format!(
                    "all {} ssh machines stayed leased for {:?}",
                    self.machines.len(),
                    self.lease_timeout
                )));
            }
        }
    }

    fn release(&self, index: usize, id: &HostId) {
        let mut leases = self.leases.lock().unwrap();
        if leases[index].as_ref() == Some(id) {
            leases[index] = None;
            drop(leases);
            self.released.notify_waiters();
        }
    }

    /// Connect to machine `index` as host `id`, with the host's home set to its work directory.
    async fn connect(&self, index: usize, id: &HostId) -> Result<SshTransport, TransportError> {
        let machine = &self.machines[index];
        let mut target = SshTarget {
            address: machine.config.address,
            port: machine.config.port,
            user: machine.config.user.clone(),
            key: machine.key.clone(),
            host_key: machine.host_key.clone(),
            home: "/".to_string(),
            host_id: id.clone(),
        };
        if self.work_root.starts_with('/') {
            target.home = format!("{}/{id}", self.work_root);
            return SshTransport::connect(target, self.connect_timeout).await;
        }
        let transport = SshTransport::connect(target, self.connect_timeout).await?;
        let login_home = transport.login_home().await?;
        let home = format!("{}/{}/{id}", login_home.trim_end_matches('/'), self.work_root);
        Ok(transport.with_home(home))
    }

    fn machine_of(&self, provider_id: &str) -> Option<usize> {
        self.machines.iter().position(|m| m.config.provider_id() == provider_id)
    }
}

#[async_trait]
impl Provider for SshPoolProvider {
    fn name(&self) -> &'static str {
        "ssh"
    }

    async fn provision(&self, request: &HostRequest) -> Result<ProvisionedHost, ProviderError> {
        let id = &request.id;
        let index = self.lease(id).await?;
        let machine = &self.machines[index].config;
        let prepared = async {
            let transport = self.connect(index, id).await?;
            // Leftovers of an earlier host of the same id (a crash before its teardown) go first.
            transport.reap_and_remove().await?;
            transport.create_home().await?;
            Ok::<_, TransportError>(transport)
        };
        match prepared.await {
            Ok(transport) => {
                tracing::info!(host = %id, machine = %machine.provider_id(), home = %transport.target().home, "leased ssh machine");
                Ok(ProvisionedHost {
                    address: machine.address,
                    provider_id: machine.provider_id(),
                    isolation: format!("machine {} of its own while it lives", machine.provider_id()),
                    transport: Arc::new(transport),
                })
            }
            Err(error) => {
                self.release(index, id);
                Err(ProviderError::Provision {
                    host: id.clone(),
                    message: format!("machine {}: {error}", machine.provider_id()),
                })
            }
        }
    }

    async fn teardown(&self, id: &HostId, provider_id: Option<&str>) -> Result<(), ProviderError> {
        let leased = self.leases.lock().unwrap().iter().position(|lease| lease.as_ref() == Some(id));
        let index = match provider_id {
            Some(provider_id) => self.machine_of(provider_id).ok_or_else(|| ProviderError::Teardown {
                host: id.clone(),
                message: format!("machine {provider_id} is not in the ssh pool"),
            })?,
            // Never provisioned: either it holds a lease it never used, or there is nothing.
            None => match leased {
                Some(index) => index,
                None => return Ok(()),
            },
        };
        let cleaned = async {
            let transport = self.connect(index, id).await?;
            transport.reap_and_remove().await
        };
        match cleaned.await {
            Ok(()) => {
                self.release(index, id);
                tracing::info!(host = %id, machine = %self.machines[index].config.provider_id(), "tore down ssh host");
                Ok(())
            }
            // The lease stays: the machine may still run this host's processes, and no other
            // build may land beside them. A later teardown of the host releases it.
            Err(error) => Err(ProviderError::Teardown {
                host: id.clone(),
                message: format!("machine {}: {error}", self.machines[index].config.provider_id()),
            }),
        }
    }
}
