//! The local hosts' homes: `<root>/<host id>`, a fresh directory only its host's user may enter.
//!
//! The root stays root's (mode 0711 when hosts run as other users: they pass through it to their
//! homes but cannot list it, so a host can neither find nor remove a sibling's home); each home
//! is mode 0700 and owned by its host's user. This module creates and removes directories and
//! checks that host users can reach them; it never touches processes or users' leases.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::super::{HostId, ProviderError};
use crate::transport::local::RunAs;

/// Mode of a host's home: only its owner enters it.
const HOME_MODE: u32 = 0o700;

/// Mode of the hosts' root when hosts run as other users: traversable, not listable.
const SHARED_ROOT_MODE: u32 = 0o711;

/// The permission bit that lets other users pass through a directory without listing it.
const SEARCH_BY_OTHERS: u32 = 0o001;

/// Mode a directory gets before its removal is retried.
const REMOVABLE_DIR_MODE: u32 = 0o700;

/// Where homes live.
#[derive(Debug)]
pub struct Homes {
    /// Canonical, so process working directories compare against it.
    root: PathBuf,
}

impl Homes {
    /// Create `root` if needed. When hosts run as other users (`visitor` is one of them), the root
    /// becomes 0711 and the data dir holding it searchable, and every directory above must let
    /// `visitor` through.
    pub fn prepare(root: &Path, visitor: Option<&RunAs>) -> Result<Homes, ProviderError> {
        std::fs::create_dir_all(root)
            .map_err(|e| ProviderError::Config(format!("cannot create {}: {e}", root.display())))?;
        let root = std::fs::canonicalize(root)
            .map_err(|e| ProviderError::Config(format!("cannot resolve {}: {e}", root.display())))?;
        if let Some(user) = visitor {
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(SHARED_ROOT_MODE))
                .map_err(|e| ProviderError::Config(format!("cannot set the mode of {}: {e}", root.display())))?;
            if let Some(data_dir) = root.parent() {
                open_for_search(data_dir, user)?;
            }
            check_traversable(&root, user)?;
        }
        Ok(Homes { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn home_of(&self, id: &HostId) -> PathBuf {
        self.root.join(&id.0)
    }

    /// Create the empty home `home`, mode 0700, owned by `owner` (root's otherwise).
    pub fn create(&self, home: &Path, owner: Option<&RunAs>) -> Result<(), String> {
        std::fs::create_dir(home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(HOME_MODE))
            .map_err(|e| format!("cannot set the mode of {}: {e}", home.display()))?;
        if let Some(user) = owner {
            std::os::unix::fs::lchown(home, Some(user.uid), Some(user.gid))
                .map_err(|e| format!("cannot give {} to {}: {e}", home.display(), user.name))?;
        }
        Ok(())
    }
}

/// The owner of `home` (not followed if a symlink), if it exists.
pub fn owner_of(home: &Path) -> Option<u32> {
    std::fs::symlink_metadata(home).ok().map(|meta| meta.uid())
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
                "host user {} cannot reach {}: {} (mode {:o}) is not searchable by it; choose a data_dir outside it or `chmod o+x {}`",
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
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
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
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(REMOVABLE_DIR_MODE));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}
