//! The local provider: a host is a fresh, empty directory under the data dir plus an address of
//! its own from 127.0.0.0/8, on the machine the server runs on.
//!
//! Addresses come from a configured pool (default `127.0.10.0/24`; Linux answers on every
//! 127.0.0.0/8 address without configuration), never the network or broadcast address and never
//! `127.0.0.1`; two live hosts never share one. When the server runs as root, host processes run
//! as an unprivileged user so a setup step can start PostgreSQL. Teardown kills every process the
//! host started (found by its marker and its working directory, see [`crate::process`]), removes
//! the directory and frees the address; it needs only the `HostId`, so a restarted server reaps
//! what a crashed one left. This module never runs a step itself: that is the transport's job.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ipnet::Ipv4Net;

use super::{HostId, HostRequest, Provider, ProviderError, ProvisionedHost};
use crate::process::{reap_host, REAP_DEADLINE};
use crate::transport::local::{LocalTransport, RunAs};

/// The address pool when the configuration names none.
pub const DEFAULT_ADDRESSES: &str = "127.0.10.0/24";

/// Mode of a host's home: only its owner enters it.
const HOME_MODE: u32 = 0o700;

/// Mode of the hosts' root when a run-as user must reach its home inside it: traversable, not
/// listable.
const SHARED_ROOT_MODE: u32 = 0o711;

/// The permission bit that lets other users pass through a directory without listing it.
const SEARCH_BY_OTHERS: u32 = 0o001;

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
    /// The user host steps run as; only used when the server runs as root.
    pub run_as: Option<String>,
}

impl LocalConfig {
    /// A configuration with the default address pool and no run-as user.
    pub fn new(root: PathBuf) -> LocalConfig {
        LocalConfig { root, addresses: default_addresses(), run_as: None }
    }
}

/// [`DEFAULT_ADDRESSES`] as a network.
pub fn default_addresses() -> Ipv4Net {
    DEFAULT_ADDRESSES.parse().expect("DEFAULT_ADDRESSES is a valid network")
}

pub struct LocalProvider {
    dirs: Arc<HostDirs>,
    addresses: Ipv4Net,
    /// Which live host holds which address.
    leases: Mutex<BTreeMap<Ipv4Addr, HostId>>,
}

/// Where homes live and who owns them: what the blocking halves of provision and teardown need.
struct HostDirs {
    /// Canonical, so process working directories compare against it.
    root: PathBuf,
    run_as: Option<RunAs>,
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
        let run_as = match (&config.run_as, nix::unistd::geteuid().is_root()) {
            (Some(name), true) => Some(resolve_user(name)?),
            (Some(name), false) => {
                tracing::info!(user = %name, "not running as root: host steps run as this server's user");
                None
            }
            (None, _) => None,
        };
        std::fs::create_dir_all(&config.root)
            .map_err(|e| ProviderError::Config(format!("cannot create {}: {e}", config.root.display())))?;
        let root = std::fs::canonicalize(&config.root)
            .map_err(|e| ProviderError::Config(format!("cannot resolve {}: {e}", config.root.display())))?;
        if let Some(user) = &run_as {
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(SHARED_ROOT_MODE))
                .map_err(|e| ProviderError::Config(format!("cannot set the mode of {}: {e}", root.display())))?;
            if let Some(data_dir) = root.parent() {
                open_for_search(data_dir, user)?;
            }
            check_traversable(&root, user)?;
        }
        Ok(LocalProvider {
            dirs: Arc::new(HostDirs { root, run_as }),
            addresses: config.addresses,
            leases: Mutex::new(BTreeMap::new()),
        })
    }

    /// The canonical directory hosts' homes are created in.
    pub fn root(&self) -> &Path {
        &self.dirs.root
    }

    /// The user host processes run as, when the server runs as root and one is configured.
    pub fn run_as(&self) -> Option<&RunAs> {
        self.dirs.run_as.as_ref()
    }

    /// Addresses currently held by live hosts of this process.
    pub fn leased_addresses(&self) -> Vec<Ipv4Addr> {
        self.leases.lock().expect("lease table poisoned").keys().copied().collect()
    }

    /// The first free address of the pool, recorded as `id`'s. A host asking again (a retried
    /// provision) gets its previous lease back.
    fn lease(&self, id: &HostId) -> Result<Ipv4Addr, ProviderError> {
        let mut leases = self.leases.lock().expect("lease table poisoned");
        if let Some((address, _)) = leases.iter().find(|(_, holder)| *holder == id) {
            return Ok(*address);
        }
        let address = usable_addresses(self.addresses)
            .find(|address| !leases.contains_key(address))
            .ok_or_else(|| ProviderError::Exhausted(format!("every address of {} is in use", self.addresses)))?;
        leases.insert(address, id.clone());
        Ok(address)
    }

    fn release(&self, id: &HostId) {
        self.leases.lock().expect("lease table poisoned").retain(|_, holder| holder != id);
    }
}

impl HostDirs {
    fn home_of(&self, id: &HostId) -> PathBuf {
        self.root.join(&id.0)
    }

    /// Kill `id`'s processes and remove its directories. Blocking.
    fn destroy(&self, id: &HostId, homes: &[PathBuf]) -> Result<(), String> {
        let home_refs: Vec<&Path> = homes.iter().map(PathBuf::as_path).collect();
        reap_host(id, &home_refs, REAP_DEADLINE).map_err(|e| e.to_string())?;
        for home in homes {
            remove_tree(home).map_err(|e| format!("cannot remove {}: {e}", home.display()))?;
        }
        Ok(())
    }

    fn create_home(&self, id: &HostId) -> Result<PathBuf, String> {
        let home = self.home_of(id);
        if std::fs::symlink_metadata(&home).is_ok() {
            // Left behind by a crashed server (or a retried provision): start from nothing.
            tracing::warn!(host = %id, home = %home.display(), "host directory already exists; reaping it first");
            self.destroy(id, std::slice::from_ref(&home))?;
        }
        std::fs::create_dir(&home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(HOME_MODE))
            .map_err(|e| format!("cannot set the mode of {}: {e}", home.display()))?;
        if let Some(user) = &self.run_as {
            std::os::unix::fs::lchown(&home, Some(user.uid), Some(user.gid))
                .map_err(|e| format!("cannot give {} to {}: {e}", home.display(), user.name))?;
        }
        Ok(home)
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
        let address = self.lease(id)?;
        let home = {
            let dirs = Arc::clone(&self.dirs);
            let id = id.clone();
            tokio::task::spawn_blocking(move || dirs.create_home(&id))
                .await
                .unwrap_or_else(|e| Err(format!("provisioning panicked: {e}")))
        };
        let home = match home {
            Ok(home) => home,
            Err(message) => {
                self.release(id);
                return Err(ProviderError::Provision { host: id.clone(), message });
            }
        };
        tracing::debug!(host = %id, %address, home = %home.display(), "provisioned local host");
        let transport = LocalTransport::new(id.clone(), home.clone(), IpAddr::V4(address), self.dirs.run_as.clone());
        Ok(ProvisionedHost {
            address: IpAddr::V4(address),
            provider_id: home.to_string_lossy().into_owned(),
            transport: Arc::new(transport),
        })
    }

    async fn teardown(&self, id: &HostId, provider_id: Option<&str>) -> Result<(), ProviderError> {
        check_host_id(id)
            .map_err(|_| ProviderError::Teardown { host: id.clone(), message: "not a local host id".to_string() })?;
        let mut homes = vec![self.dirs.home_of(id)];
        if let Some(recorded) = provider_id.map(PathBuf::from) {
            // A directory recorded by an earlier server (perhaps with another data dir) is removed
            // too, but only when its name proves it is this host's.
            if recorded != homes[0] && recorded.is_absolute() && recorded.file_name() == Some(id.0.as_ref()) {
                homes.push(recorded);
            }
        }
        let dirs = Arc::clone(&self.dirs);
        let host = id.clone();
        let result = tokio::task::spawn_blocking(move || dirs.destroy(&host, &homes))
            .await
            .unwrap_or_else(|e| Err(format!("teardown panicked: {e}")));
        match result {
            Ok(()) => {
                self.release(id);
                tracing::debug!(host = %id, "tore down local host");
                Ok(())
            }
            // The address stays leased: a process that survived may still listen on it.
            Err(message) => Err(ProviderError::Teardown { host: id.clone(), message }),
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

fn resolve_user(name: &str) -> Result<RunAs, ProviderError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) if user.uid.is_root() => {
            Err(ProviderError::Config(format!("run_as user {name} is root; host steps need an unprivileged user")))
        }
        Ok(Some(user)) => Ok(RunAs { name: user.name, uid: user.uid.as_raw(), gid: user.gid.as_raw() }),
        Ok(None) => Err(ProviderError::Config(format!(
            "run_as user {name} does not exist; create it with `useradd --system --no-create-home --shell /usr/sbin/nologin {name}` (scripts/install-deps does)"
        ))),
        Err(e) => Err(ProviderError::Config(format!("cannot look up run_as user {name}: {e}"))),
    }
}

/// Let `user` pass through `dir` (the data dir holding the hosts' root) when this server owns
/// it: search permission only (`o+x`), never listing. Directories above it are not this server's
/// to change; [`check_traversable`] reports them.
fn open_for_search(dir: &Path, user: &RunAs) -> Result<(), ProviderError> {
    let meta =
        std::fs::metadata(dir).map_err(|e| ProviderError::Config(format!("cannot inspect {}: {e}", dir.display())))?;
    if searchable_by(&meta, user) || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    let mode = meta.permissions().mode() | SEARCH_BY_OTHERS;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ProviderError::Config(format!("cannot let {} through {}: {e}", user.name, dir.display())))?;
    tracing::info!(dir = %dir.display(), user = %user.name, "made the data dir searchable (o+x) so host steps reach their homes");
    Ok(())
}

/// Whether `user` may search (pass through) the directory `meta` describes.
fn searchable_by(meta: &std::fs::Metadata, user: &RunAs) -> bool {
    let mode = meta.permissions().mode();
    if meta.uid() == user.uid {
        mode & 0o100 != 0
    } else if meta.gid() == user.gid {
        mode & 0o010 != 0
    } else {
        mode & SEARCH_BY_OTHERS != 0
    }
}

/// Whether `user` can walk down to `root`: every ancestor must grant it search permission,
/// otherwise every step would fail with a puzzling "permission denied".
fn check_traversable(root: &Path, user: &RunAs) -> Result<(), ProviderError> {
    for dir in root.ancestors() {
        let meta = std::fs::metadata(dir)
            .map_err(|e| ProviderError::Config(format!("cannot inspect {}: {e}", dir.display())))?;
        let mode = meta.permissions().mode();
        if !searchable_by(&meta, user) {
            return Err(ProviderError::Config(format!(
                "run_as user {} cannot reach {}: {} (mode {:o}) is not searchable by it; choose a data_dir outside it or `chmod o+x {}`",
                user.name,
                root.display(),
                dir.display(),
                mode & 0o7777,
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Remove a directory tree; a missing one is fine. Directories a step made unwritable are made
/// writable first, so a host's files never outlive it.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            make_writable(path);
            std::fs::remove_dir_all(path).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
        }
        Err(e) => Err(e),
    }
}

fn make_writable(dir: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else { return };
    if !meta.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
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
