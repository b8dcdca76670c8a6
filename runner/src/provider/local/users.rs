//! Who a local host's processes run as: a user of its own from a pool, leased exclusively across
//! every process on the machine.
//!
//! When the server runs as root, `scripts/install-deps` creates the pool `<run_as>-1` …
//! `<run_as>-N` (real, named system users: tools such as PostgreSQL's `initdb` refuse a user id
//! without a name). [`Users::discover`] finds it at start (consecutive names until one is
//! missing). A lease is an exclusive `flock` on `/run/gantry/users/<uid>.lock`, a root-only
//! directory, so two servers on one machine (or the many an end-to-end suite starts) never hand
//! out the same user, and the kernel releases the lock when its holder dies. The lock file holds
//! the home of the lease's host while it lives: a server that died leaves its record behind, and
//! a user whose recorded home still exists (an orphan its server reaps when it starts again) is
//! not leased by anyone. Teardown kills every process of the user and removes its files from the
//! machine's shared scratch directories and cron spools, then records the user as `released`.
//! A user not released that way (first use since boot, a holder that died) gets the same purge
//! before it is handed out. When no pool exists but `<run_as>` does, every host shares that one
//! user (the isolation of before pools existed), with a warning.
//!
//! This module owns users and their leases; homes and addresses are the provider's, processes
//! are found by [`crate::process`].

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::process::{HostProcesses, REAP_DEADLINE};
use crate::transport::local::RunAs;

/// Where the leases' lock files live: root-only, on a tmpfs (a reboot, which ends every host,
/// also clears every record).
pub const LOCK_DIR: &str = "/run/gantry/users";

/// Mode of [`LOCK_DIR`] and of its parent when this server creates them.
const LOCK_DIR_MODE: u32 = 0o700;

/// Mode of a lock file.
const LOCK_FILE_MODE: u32 = 0o600;

/// Group and other write bits: a lock directory with either could be tampered with.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Discovery stops here even if more users follow: a bound on the lookups at start.
pub const MAX_POOL_USERS: usize = 4096;

/// The machine's shared, world-writable directories a host user can leave files in, and the
/// spools where a user's crontab and `at` jobs (Debian's paths), which would run as the user
/// after its host is gone, are kept. Their top level is cleaned of a user's files before the
/// user serves another host.
pub const SCRATCH_DIRS: &[&str] =
    &["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/spool/cron/crontabs", "/var/spool/cron/atjobs"];

/// The record of a user given back by a teardown that left nothing of it behind.
pub const RELEASED_RECORD: &str = "released\n";

/// Which users the local provider's hosts run as.
#[derive(Debug)]
pub enum Users {
    /// A user of its own for each live host.
    Pool(UserPool),
    /// Every host runs as this one user: no pool exists.
    Shared(RunAs),
    /// Every host runs as the server's own user: it is not root, or no `run_as` is configured.
    Own { root: bool },
}

#[derive(Debug)]
pub struct UserPool {
    prefix: String,
    users: Vec<RunAs>,
    lock_dir: PathBuf,
}

/// One user, held exclusively until dropped (or until the process dies).
#[derive(Debug)]
pub struct UserLease {
    user: RunAs,
    lock: Flock<File>,
}

/// What a user's lock file says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Nothing since the machine started: it may have leftovers from before.
    Unknown,
    /// Given back by a teardown that saw none of its processes left and removed its files.
    Released,
    /// Serving the host in this home, or left there by a server that died.
    Home(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Config(String),
    #[error("every user of the pool {prefix}-1 … {prefix}-{size} is in use; create more users (`scripts/install-deps` creates {prefix}-1 … {prefix}-64) or lower max_concurrent_builds")]
    Exhausted { prefix: String, size: usize },
    #[error("{0}")]
    Io(String),
}

impl Users {
    /// The users for `run_as` on this machine: the pool `<run_as>-1` … when it exists, otherwise
    /// `<run_as>` alone. Only root can run a host as another user; otherwise (or without
    /// `run_as`) hosts run as the server's own user.
    pub fn discover(run_as: Option<&str>) -> Result<Users, UserError> {
        let root = nix::unistd::geteuid().is_root();
        let Some(prefix) = run_as else { return Ok(Users::Own { root }) };
        if !root {
            tracing::info!(user = %prefix, "not running as root: host steps run as this server's user");
            return Ok(Users::Own { root });
        }
        let mut users = Vec::new();
        while users.len() < MAX_POOL_USERS {
            match lookup(&format!("{prefix}-{}", users.len() + 1))? {
                Some(user) => users.push(user),
                None => break,
            }
        }
        if !users.is_empty() {
            let lock_dir = prepare_lock_dir(Path::new(LOCK_DIR))?;
            tracing::info!(pool = %prefix, users = users.len(), "each local host runs as a user of its own");
            return Ok(Users::Pool(UserPool { prefix: prefix.to_string(), users, lock_dir }));
        }
        match lookup(prefix)? {
            Some(user) => {
                tracing::warn!(
                    user = %prefix,
                    "no user pool {prefix}-1 …: every local host shares the user {prefix}, so builds can read and signal each other's processes; scripts/install-deps creates the pool"
                );
                Ok(Users::Shared(user))
            }
            None => Err(UserError::Config(format!(
                "user {prefix} does not exist, nor its pool {prefix}-1 …; scripts/install-deps creates them (`useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {prefix}-N`)"
            ))),
        }
    }

    /// The user every host runs as, when they all share one.
    pub fn shared(&self) -> Option<&RunAs> {
        match self {
            Users::Shared(user) => Some(user),
            _ => None,
        }
    }

    pub fn pool(&self) -> Option<&UserPool> {
        match self {
            Users::Pool(pool) => Some(pool),
            _ => None,
        }
    }

    /// Whether steps may run as another user at all (the server is root and has one).
    pub fn switches_user(&self) -> bool {
        matches!(self, Users::Pool(_) | Users::Shared(_))
    }
}

impl UserPool {
    /// The pool's users, in order.
    pub fn users(&self) -> &[RunAs] {
        &self.users
    }

    /// The pool's user with id `uid`, if any.
    pub fn by_uid(&self, uid: u32) -> Option<&RunAs> {
        self.users.iter().find(|user| user.uid == uid)
    }

    /// Lease a free user for the host that will live in `home`. Skipped: users another lease
    /// holds (in any process), users whose recorded home still exists, and users owning an entry
    /// of `hosts_root` (orphans a crashed server left, which its reaping cleans). Unless the last
    /// teardown released it clean, the leased user's leftover processes are killed and its
    /// scratch files removed before it is returned (a scan of every process: milliseconds, so
    /// not paid again for a user whose teardown just did it). Blocking.
    pub fn lease(&self, home: &Path, hosts_root: &Path) -> Result<UserLease, UserError> {
        let orphan_owners = owners_of_entries(hosts_root);
        for user in &self.users {
            if orphan_owners.contains(&user.uid) {
                continue;
            }
            let Some(mut lease) = self.try_lock(user)? else { continue };
            match lease.record() {
                Record::Home(recorded) if owned_by(&recorded, user.uid) => {
                    tracing::debug!(user = %user.name, home = %recorded.display(), "skipping a user whose last host was never torn down");
                    continue;
                }
                Record::Released => {}
                Record::Unknown | Record::Home(_) => {
                    if let Err(message) = lease.purge() {
                        tracing::warn!(user = %user.name, %message, "cannot clean up after this user; leaving it out");
                        continue;
                    }
                }
            }
            lease.write_record(Some(home))?;
            return Ok(lease);
        }
        Err(UserError::Exhausted { prefix: self.prefix.clone(), size: self.users.len() })
    }

    /// The lease of `user` if no one else holds it. Blocking, never waits for a holder.
    pub fn try_lock(&self, user: &RunAs) -> Result<Option<UserLease>, UserError> {
        let path = self.lock_dir.join(format!("{}.lock", user.uid));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(LOCK_FILE_MODE)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(|e| UserError::Io(format!("cannot open {}: {e}", path.display())))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(UserLease { user: user.clone(), lock })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(UserError::Io(format!("cannot lock {}: {errno}", path.display()))),
        }
    }
}

impl UserLease {
    pub fn user(&self) -> &RunAs {
        &self.user
    }

    /// Kill every process of the user and remove its files from the [`SCRATCH_DIRS`], so the
    /// next host to get it starts from nothing. Blocking.
    pub fn purge(&self) -> Result<(), String> {
        HostProcesses::of_user(self.user.uid).reap(REAP_DEADLINE).map_err(|e| e.to_string())?;
        remove_scratch_files(self.user.uid);
        Ok(())
    }

    /// What the last holder left in the lock file.
    pub fn record(&mut self) -> Record {
        let mut text = Vec::new();
        if self.lock.rewind().and_then(|_| self.lock.read_to_end(&mut text)).is_err() {
            return Record::Unknown;
        }
        if text == RELEASED_RECORD.as_bytes() {
            Record::Released
        } else if text.starts_with(b"/") {
            Record::Home(PathBuf::from(<std::ffi::OsString as OsStringExt>::from_vec(text)))
        } else {
            Record::Unknown
        }
    }

    /// Record `home` as the lease's host, or (`None`) that the user was released clean. The new
    /// record is written over the old one and the file cut to its length, never emptied first:
    /// on ext4 a file truncated to zero and written again is flushed to disk on close, which
    /// costs milliseconds on every lease.
    fn write_record(&mut self, home: Option<&Path>) -> Result<(), UserError> {
        let record = match home {
            Some(home) => home.as_os_str().as_bytes(),
            None => RELEASED_RECORD.as_bytes(),
        };
        let write = |file: &File| -> std::io::Result<()> {
            file.write_all_at(record, 0)?;
            file.set_len(record.len() as u64)
        };
        write(&self.lock).map_err(|e| UserError::Io(format!("cannot record the lease of {}: {e}", self.user.name)))
    }

    /// Give the user back, recorded as released clean. Only when none of its processes is left
    /// and its scratch files are removed (or it never ran anything since its purge).
    pub fn release(mut self) {
        if let Err(error) = self.write_record(None) {
            tracing::warn!(user = %self.user.name, %error, "cannot record a lease's release");
        }
    }
}

/// Look `name` up; a root user is refused.
fn lookup(name: &str) -> Result<Option<RunAs>, UserError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) if user.uid.is_root() => {
            Err(UserError::Config(format!("user {name} is root; host steps need an unprivileged user")))
        }
        Ok(Some(user)) => Ok(Some(RunAs { name: user.name, uid: user.uid.as_raw(), gid: user.gid.as_raw() })),
        Ok(None) => Ok(None),
        Err(e) => Err(UserError::Config(format!("cannot look up user {name}: {e}"))),
    }
}

/// Create the lock directory (root-only) and check nobody else could have planted files in it.
fn prepare_lock_dir(dir: &Path) -> Result<PathBuf, UserError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(LOCK_DIR_MODE)
        .create(dir)
        .map_err(|e| UserError::Config(format!("cannot create {}: {e}", dir.display())))?;
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| UserError::Config(format!("cannot inspect {}: {e}", dir.display())))?;
    let mode = meta.permissions().mode();
    if !meta.is_dir() || meta.uid() != 0 || mode & WRITABLE_BY_OTHERS != 0 {
        return Err(UserError::Config(format!(
            "{} must be a directory owned by root and writable by root alone (mode {:o}, owner {})",
            dir.display(),
            mode & 0o7777,
            meta.uid()
        )));
    }
    Ok(dir.to_path_buf())
}

/// The owners of the entries of `dir` (a missing directory has none).
fn owners_of_entries(dir: &Path) -> HashSet<u32> {
    let Ok(entries) = std::fs::read_dir(dir) else { return HashSet::new() };
    entries.flatten().filter_map(|entry| entry.metadata().ok()).map(|meta| meta.uid()).collect()
}

/// Whether `path` exists (not followed if a symlink) and belongs to `uid`.
fn owned_by(path: &Path, uid: u32) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.uid() == uid)
}

/// Remove every top-level entry of the [`SCRATCH_DIRS`] that `uid` owns, whole directories
/// included. Symlinks are removed, never followed. Failures are logged: a leftover file must not
/// fail a build, and the next purge tries again.
pub fn remove_scratch_files(uid: u32) {
    for dir in SCRATCH_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            // `DirEntry::metadata` does not follow a symlink.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.uid() != uid {
                continue;
            }
            let path = entry.path();
            let removed = if meta.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            match removed {
                Ok(()) => tracing::debug!(path = %path.display(), uid, "removed a host user's scratch file"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(path = %path.display(), uid, %error, "cannot remove a host user's scratch file")
                }
            }
        }
    }
}
