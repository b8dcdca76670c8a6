//! The local provider: a host is a fresh, empty directory under the data dir plus an address of
//! its own from 127.0.0.0/8, on the machine the server runs on.
//!
//! Addresses come from a configured pool (default `127.0.10.0/24`; Linux answers on every
//! 127.0.0.0/8 address without configuration), never the network or broadcast address and never
//! `127.0.0.1`; two live hosts never share one. When the server runs as root, the hosts of
//! different builds are kept apart: each live host runs as a user of its own, leased from a pool
//! ([`users`]), in a home only that user may enter (`homes`), and all hosts of one build share a
//! network namespace of their own ([`netns`]) in which their addresses answer and nothing else
//! does but the build's way out, an HTTP proxy ([`egress`]) that reaches the world beyond the
//! machine for downloads. [`ProvisionedHost::isolation`] says which of these a host got. Teardown kills every
//! process the host started (by its marker, its working directory and its user id, see
//! [`crate::process`]), removes the user's scratch files and the home, then gives back the user
//! and the address; it needs only the `HostId` and the home (whose owner names the user), so a
//! restarted server reaps what a crashed one left. This module never runs a step itself: that is
//! the transport's job.

pub mod egress;
mod homes;
pub mod netns;
pub mod users;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ipnet::Ipv4Net;

use self::homes::{owner_of, remove_tree, Homes};
use self::netns::{Namespaces, NetNs};
use self::users::{remove_scratch_files, UserError, UserLease, Users};
use super::{HostId, HostRequest, Provider, ProviderError, ProvisionedHost};
use crate::process::{HostProcesses, REAP_DEADLINE};
use crate::transport::local::{LocalTransport, RunAs};

/// The address pool when the configuration names none.
pub const DEFAULT_ADDRESSES: &str = "127.0.10.0/24";

/// The one loopback address never handed to a host: the server and everything else on the
/// machine listen there.
const RESERVED_ADDRESS: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The loopback network every local address must lie in.
const LOOPBACK_NET: &str = "127.0.0.0/8";

#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Where hosts' homes are created (`data_dir/hosts`).
    pub root: PathBuf,
    pub addresses: Ipv4Net,
    /// When the server runs as root: the prefix of the user pool `<run_as>-1` … hosts run as
    /// (or, without a pool, the one user they share).
    pub run_as: Option<String>,
    /// When the server runs as root: one network namespace per build.
    pub isolate_network: bool,
    /// With `isolate_network`: each build reaches the world beyond the machine through its egress
    /// proxy (`http_proxy`); without, an isolated build has no network but its own hosts.
    pub egress: bool,
}

impl LocalConfig {
    /// A configuration with the default address pool, no run-as user, and network isolation with
    /// egress.
    pub fn new(root: PathBuf) -> LocalConfig {
        LocalConfig { root, addresses: default_addresses(), run_as: None, isolate_network: true, egress: true }
    }
}

/// [`DEFAULT_ADDRESSES`] as a network.
pub fn default_addresses() -> Ipv4Net {
    DEFAULT_ADDRESSES.parse().expect("DEFAULT_ADDRESSES is a valid network")
}

pub struct LocalProvider {
    state: Arc<Shared>,
    addresses: Ipv4Net,
    /// The live hosts of this provider, by id.
    hosts: Mutex<HashMap<HostId, LiveHost>>,
}

/// What the blocking halves of provision and teardown need.
struct Shared {
    homes: Homes,
    users: Users,
    /// `None` when builds share the machine's network (not root, switched off, or unavailable).
    namespaces: Option<Namespaces>,
    /// Why builds share the machine's network while running as root, for the isolation text.
    shared_network_reason: Option<String>,
}

/// A host's home, user and namespace, ready for its transport.
struct PreparedHost {
    home: PathBuf,
    lease: Option<UserLease>,
    netns: Option<Arc<NetNs>>,
}

/// One live host: its address, and the user and namespace it holds.
struct LiveHost {
    address: Ipv4Addr,
    /// `None` while provisioning, or when hosts do not get users of their own.
    user: Option<UserLease>,
    /// Kept open while the host lives; the transport holds it too.
    netns: Option<Arc<NetNs>>,
}

impl LocalProvider {
    pub fn new(config: LocalConfig) -> Result<LocalProvider, ProviderError> {
        let loopback: Ipv4Net = LOOPBACK_NET.parse().expect("LOOPBACK_NET is a valid network");
        if !loopback.contains(&config.addresses) {
            return Err(ProviderError::Config(format!(
                "local addresses {} must lie inside {LOOPBACK_NET}",
                config.addresses
            )));
        }
        if usable_addresses(config.addresses).next().is_none() {
            return Err(ProviderError::Config(format!("local addresses {} hold no usable address", config.addresses)));
        }
        let users = Users::discover(config.run_as.as_deref()).map_err(|e| ProviderError::Config(e.to_string()))?;
        let visitor = match &users {
            Users::Pool(pool) => pool.users().first(),
            Users::Shared(user) => Some(user),
            Users::Own { .. } => None,
        };
        let homes = Homes::prepare(&config.root, visitor)?;
        let (namespaces, shared_network_reason) = network_isolation(&config);
        Ok(LocalProvider {
            state: Arc::new(Shared { homes, users, namespaces, shared_network_reason }),
            addresses: config.addresses,
            hosts: Mutex::new(HashMap::new()),
        })
    }

    /// The canonical directory hosts' homes are created in.
    pub fn root(&self) -> &Path {
        self.state.homes.root()
    }

    /// Which users hosts run as.
    pub fn users(&self) -> &Users {
        &self.state.users
    }

    /// Whether each build gets a network namespace of its own.
    pub fn isolates_network(&self) -> bool {
        self.state.namespaces.is_some()
    }

    /// How many builds hold a network namespace now.
    pub fn live_namespaces(&self) -> usize {
        self.state.namespaces.as_ref().map_or(0, Namespaces::live)
    }

    /// Addresses currently held by live hosts of this process.
    pub fn leased_addresses(&self) -> Vec<Ipv4Addr> {
        let mut addresses: Vec<Ipv4Addr> = self.live().values().map(|host| host.address).collect();
        addresses.sort();
        addresses
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<HostId, LiveHost>> {
        self.hosts.lock().expect("host table poisoned")
    }

    /// The first free address of the pool, recorded as `id`'s.
    fn reserve(&self, id: &HostId) -> Result<Ipv4Addr, ProviderError> {
        let mut hosts = self.live();
        let taken: std::collections::HashSet<Ipv4Addr> = hosts.values().map(|host| host.address).collect();
        let address = usable_addresses(self.addresses)
            .find(|address| !taken.contains(address))
            .ok_or_else(|| ProviderError::Exhausted(format!("every address of {} is in use", self.addresses)))?;
        hosts.insert(id.clone(), LiveHost { address, user: None, netns: None });
        Ok(address)
    }

    /// What isolates a host that runs as `user` (its own, when leased) in `netns`.
    fn isolation(&self, leased: Option<&RunAs>, netns: Option<&NetNs>) -> String {
        let who = match (&self.state.users, leased) {
            (Users::Pool(_), Some(user)) => format!("user {}", user.name),
            (Users::Shared(user), _) => format!("shared user {} (no pool)", user.name),
            (Users::Own { root: false }, _) => return "server's own user (not root): no isolation".to_string(),
            (Users::Own { root: true }, _) | (Users::Pool(_), None) => "server's own user (root)".to_string(),
        };
        match (netns, &self.state.shared_network_reason) {
            (Some(ns), _) => format!("{who}, network namespace of {}", ns.build()),
            (None, Some(reason)) => format!("{who}, machine's network ({reason})"),
            (None, None) => format!("{who}, machine's network"),
        }
    }
}

impl Shared {
    /// Lease a user (when there is a pool), create the home and join the build's namespace.
    /// Everything done is undone on failure. Blocking.
    fn prepare_host(&self, id: &HostId, build: &str) -> Result<PreparedHost, ProviderError> {
        let failed = |message: String| ProviderError::Provision { host: id.clone(), message };
        let home = self.homes.home_of(id);
        if std::fs::symlink_metadata(&home).is_ok() {
            // Left behind by a crashed server: start from nothing.
            tracing::warn!(host = %id, home = %home.display(), "host directory already exists; reaping it first");
            self.destroy_orphan(id, std::slice::from_ref(&home)).map_err(failed)?;
        }
        let lease = match &self.users {
            Users::Pool(pool) => Some(pool.lease(&home, self.homes.root()).map_err(|e| match e {
                UserError::Exhausted { .. } => ProviderError::Exhausted(e.to_string()),
                other => failed(other.to_string()),
            })?),
            _ => None,
        };
        let owner = lease.as_ref().map(UserLease::user).or(self.users.shared());
        let netns = match self.homes.create(&home, owner) {
            Err(message) => Err(message),
            Ok(()) => match &self.namespaces {
                Some(namespaces) => namespaces.for_build(build).map(Some).map_err(|e| {
                    let _ = remove_tree(&home);
                    format!("cannot create the network namespace of {build}: {e}")
                }),
                None => Ok(None),
            },
        };
        match netns {
            Ok(netns) => Ok(PreparedHost { home, lease, netns }),
            Err(message) => {
                // Nothing ran as the user yet: it goes back as it came.
                if let Some(lease) = lease {
                    lease.release();
                }
                Err(failed(message))
            }
        }
    }

    /// Kill the processes of a host, remove its users' scratch files and its homes. `uids` are
    /// the host's own users (held by this server), when it has any. Blocking.
    fn destroy(&self, id: &HostId, homes: &[PathBuf], uids: &[u32]) -> Result<(), String> {
        let home_refs: Vec<&Path> = homes.iter().map(PathBuf::as_path).collect();
        let processes = uids.iter().fold(HostProcesses::of_host(id, &home_refs), |p, uid| p.and_user(*uid));
        processes.reap(REAP_DEADLINE).map_err(|e| e.to_string())?;
        for uid in uids {
            remove_scratch_files(*uid);
        }
        for home in homes {
            remove_tree(home).map_err(|e| format!("cannot remove {}: {e}", home.display()))?;
        }
        Ok(())
    }

    /// Tear down a host this provider does not hold (a crashed server's): its user is the owner
    /// of its home, and is reaped by user id only while this server holds that user's lease, so
    /// a user another server leased meanwhile is never touched. Blocking.
    fn destroy_orphan(&self, id: &HostId, homes: &[PathBuf]) -> Result<(), String> {
        let mut leases = Vec::new();
        if let Users::Pool(pool) = &self.users {
            for uid in homes.iter().filter_map(|home| owner_of(home)) {
                let Some(user) = pool.by_uid(uid) else { continue };
                if leases.iter().any(|lease: &UserLease| lease.user().uid == uid) {
                    continue;
                }
                match pool.try_lock(user).map_err(|e| e.to_string())? {
                    Some(lease) => leases.push(lease),
                    None => {
                        tracing::warn!(host = %id, user = %user.name, "the user of an orphan host is leased elsewhere; reaping by marker only")
                    }
                }
            }
        }
        let uids: Vec<u32> = leases.iter().map(|lease| lease.user().uid).collect();
        self.destroy(id, homes, &uids)?;
        for lease in leases {
            lease.release();
        }
        Ok(())
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn provision(&self, request: &HostRequest) -> Result<ProvisionedHost, ProviderError> {
        let id = &request.id;
        check_host_id(id)?;
        if self.live().contains_key(id) {
            // A retried provision: the host starts again from nothing.
            self.teardown(id, None).await?;
        }
        let address = self.reserve(id)?;
        let prepared = {
            let state = Arc::clone(&self.state);
            let (host, build) = (id.clone(), request.build.clone());
            tokio::task::spawn_blocking(move || state.prepare_host(&host, &build)).await.unwrap_or_else(|e| {
                Err(ProviderError::Provision { host: id.clone(), message: format!("provisioning panicked: {e}") })
            })
        };
        let PreparedHost { home, lease, netns } = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                self.live().remove(id);
                return Err(error);
            }
        };
        let user = lease.as_ref().map(|lease| lease.user().clone()).or_else(|| self.state.users.shared().cloned());
        let isolation = self.isolation(lease.as_ref().map(UserLease::user), netns.as_deref());
        let transport = LocalTransport::new(id.clone(), home.clone(), IpAddr::V4(address), user)
            .in_network_namespace(netns.clone());
        if let Some(host) = self.live().get_mut(id) {
            host.user = lease;
            host.netns = netns;
        }
        tracing::debug!(host = %id, %address, home = %home.display(), %isolation, "provisioned local host");
        Ok(ProvisionedHost {
            address: IpAddr::V4(address),
            provider_id: home.to_string_lossy().into_owned(),
            isolation,
            transport: Arc::new(transport),
        })
    }

    async fn teardown(&self, id: &HostId, provider_id: Option<&str>) -> Result<(), ProviderError> {
        check_host_id(id)
            .map_err(|_| ProviderError::Teardown { host: id.clone(), message: "not a local host id".to_string() })?;
        let mut homes = vec![self.state.homes.home_of(id)];
        if let Some(recorded) = provider_id.map(PathBuf::from) {
            // A directory recorded by an earlier server (perhaps with another data dir) is removed
            // too, but only when its name proves it is this host's.
            if recorded != homes[0] && recorded.is_absolute() && recorded.file_name() == Some(id.0.as_ref()) {
                homes.push(recorded);
            }
        }
        // The lease leaves the table while teardown runs; the address stays reserved.
        let (held, lease) = match self.live().get_mut(id) {
            Some(host) => (true, host.user.take()),
            None => (false, None),
        };
        let state = Arc::clone(&self.state);
        let host = id.clone();
        let result = tokio::task::spawn_blocking(move || {
            let outcome = if held {
                let uids: Vec<u32> = lease.iter().map(|lease| lease.user().uid).collect();
                state.destroy(&host, &homes, &uids)
            } else {
                state.destroy_orphan(&host, &homes)
            };
            match outcome {
                Ok(()) => {
                    if let Some(lease) = lease {
                        lease.release();
                    }
                    (Ok(()), None)
                }
                // The user stays leased: a process that survived still runs as it.
                Err(message) => (Err(message), lease),
            }
        })
        .await
        .unwrap_or_else(|e| (Err(format!("teardown panicked: {e}")), None));
        match result {
            (Ok(()), _) => {
                // Dropping the record frees the address and this host's hold on the namespace.
                self.live().remove(id);
                tracing::debug!(host = %id, "tore down local host");
                Ok(())
            }
            (Err(message), lease) => {
                // The address stays leased too: a process that survived may still listen on it.
                if let (Some(host), Some(lease)) = (self.live().get_mut(id), lease) {
                    host.user = Some(lease);
                }
                Err(ProviderError::Teardown { host: id.clone(), message })
            }
        }
    }
}

/// Whether builds get network namespaces: only as root, when configured, and when the kernel
/// lets this process make one (a container may not). The reason when they do not.
fn network_isolation(config: &LocalConfig) -> (Option<Namespaces>, Option<String>) {
    if !nix::unistd::geteuid().is_root() {
        return (None, None);
    }
    if !config.isolate_network {
        return (None, Some("isolate_network = false".to_string()));
    }
    match Namespaces::new(config.egress) {
        Ok(namespaces) => (Some(namespaces), None),
        Err(error) => {
            tracing::warn!(%error, "cannot create network namespaces: every build shares the machine's network");
            (None, Some(format!("network namespaces unavailable: {error}")))
        }
    }
}

/// The pool's addresses a host may get: not the network or broadcast address, not 127.0.0.1.
fn usable_addresses(net: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    net.hosts().filter(|address| *address != RESERVED_ADDRESS)
}

/// A host id names a directory, so it must be one plain path component.
fn check_host_id(id: &HostId) -> Result<(), ProviderError> {
    let name = id.0.as_str();
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']);
    if plain {
        Ok(())
    } else {
        Err(ProviderError::Provision {
            host: id.clone(),
            message: "a host id must be one plain path component".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_skips_network_broadcast_and_localhost() {
        let addresses: Vec<Ipv4Addr> = usable_addresses("127.0.0.0/30".parse().unwrap()).collect();
        assert_eq!(addresses, [Ipv4Addr::new(127, 0, 0, 2)]);
    }

    #[test]
    fn host_ids_are_plain_path_components() {
        assert!(check_host_id(&HostId("b1-web".into())).is_ok());
        for bad in ["", ".", "..", "a/b"] {
            assert!(check_host_id(&HostId(bad.into())).is_err(), "{bad:?} accepted");
        }
    }
}
