//! Finding and killing every process a local host started, without cgroups.
//!
//! Every process the local transport starts carries the host's marker in its environment:
//! `GANTRY_HOST_ID=<HostId>` and `GANTRY_HOST_HOME=<home>`. A process keeps its environment
//! through `setsid`, a double fork and a daemon's own re-parenting, so scanning `/proc/*/environ`
//! for the exact marker finds a PostgreSQL server started by `pg_ctl` just as it finds a plain
//! `sleep` (Jenkins' ProcessTreeKiller relies on the same fact). The home is part of the marker
//! because host ids are only unique per server: two servers (or two test apps) on one machine
//! both have a `b1-web`, and tearing one down must never touch the other. A process that
//! scrubbed its environment is still found when its working directory lies inside the host's
//! home. When the host ran as a user of its own (the local provider's user pool, server as root),
//! every process of that user id counts too, found by the `Uid:` line of `/proc/PID/status`: a
//! process that cleared its environment and left the home cannot change its user id. Reaping
//! needs nothing but the `HostId`, the home path and that user id (the home's owner), so it works
//! for hosts a crashed server left behind.
//!
//! This module only finds and signals processes; it never touches files or addresses.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::provider::HostId;

/// The environment variable that marks every process of a local host with the host's id.
pub const HOST_MARKER_VAR: &str = "GANTRY_HOST_ID";

/// The environment variable that marks every process of a local host with the host's home, which
/// tells apart hosts of the same id under different data dirs.
pub const HOST_HOME_VAR: &str = "GANTRY_HOST_HOME";

/// How long [`reap_host`] lets a host's processes exit on SIGTERM before it sends SIGKILL. A
/// daemon that gets SIGKILL at once cannot clean up after itself: PostgreSQL, for one, leaves
/// its System V shared memory segment behind, one per build, until the kernel's limit is hit.
pub const REAP_GRACE: Duration = Duration::from_secs(5);

/// How long [`reap_host`] keeps scanning and killing before it reports survivors. Forks race
/// with the scan, so one pass is never enough; a process stuck in the kernel may take a while.
pub const REAP_DEADLINE: Duration = Duration::from_secs(10);

/// The pause between two scans while killed processes are still exiting.
pub const REAP_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Where the kernel lists processes.
const PROC_DIR: &str = "/proc";

/// What readlink of `/proc/PID/cwd` appends when the directory was removed.
const DELETED_SUFFIX: &str = " (deleted)";

#[derive(Debug, thiserror::Error)]
pub enum ReapError {
    #[error("cannot list processes in {PROC_DIR}: {0}")]
    Proc(#[source] std::io::Error),
    /// `owner` says whose processes they are: `host b1-web`, `user id 1003`.
    #[error("processes of {owner} still alive after {deadline:?}: {pids:?}")]
    Survivors { owner: String, deadline: Duration, pids: Vec<i32> },
}

/// Which processes belong to a host: those carrying its marker or working inside its home, and,
/// when it has a user id of its own, every process of that user.
#[derive(Debug, Clone)]
pub struct HostProcesses {
    /// `host b1-web`, `user id 1003`: for logs and errors.
    owner: String,
    /// The marker entries and homes, when the host is known by its id.
    marks: Option<Marks>,
    /// Every process whose real, effective, saved or filesystem user id is one of these.
    uids: Vec<u32>,
}

#[derive(Debug, Clone)]
struct Marks {
    id_marker: Vec<u8>,
    home_markers: Vec<Vec<u8>>,
    homes: Vec<PathBuf>,
}

impl HostProcesses {
    /// The processes carrying `id`'s marker with one of `homes`, or working inside one of `homes`.
    pub fn of_host(id: &HostId, homes: &[&Path]) -> HostProcesses {
        let homes: Vec<PathBuf> = homes.iter().map(|home| canonical_or_same(home)).collect();
        let marks = Marks {
            id_marker: host_marker(id).into_bytes(),
            home_markers: homes.iter().map(|home| home_marker(home)).collect(),
            homes,
        };
        HostProcesses { owner: format!("host {id}"), marks: Some(marks), uids: Vec::new() }
    }

    /// Every process of user `uid`, whatever its environment and working directory.
    ///
    /// # Panics
    /// When `uid` is root's or this server's own: reaping them would kill the machine or the
    /// server.
    pub fn of_user(uid: u32) -> HostProcesses {
        HostProcesses { owner: format!("user id {uid}"), marks: None, uids: vec![checked_uid(uid)] }
    }

    /// These processes and every process of user `uid` (the host's own user).
    ///
    /// # Panics
    /// As [`HostProcesses::of_user`].
    pub fn and_user(mut self, uid: u32) -> HostProcesses {
        self.owner = format!("{} (user id {uid})", self.owner);
        self.uids.push(checked_uid(uid));
        self
    }

    /// The pids of every live process that matches, this process never among them.
    pub fn find(&self) -> Result<Vec<i32>, ReapError> {
        let own_pid = std::process::id();
        let mut found = Vec::new();
        for entry in std::fs::read_dir(PROC_DIR).map_err(ReapError::Proc)? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
                continue;
            };
            if pid == own_pid {
                continue;
            }
            if self.matches(&entry.path()) {
                found.push(pid as i32);
            }
        }
        Ok(found)
    }

    /// Stop every matching process: SIGTERM first, so daemons can release what outlives them
    /// (shared memory, sockets), then, after [`REAP_GRACE`] (or half the deadline, when that is
    /// shorter), SIGKILL, scanning again until none remains or `deadline` has passed. Processes
    /// forked meanwhile are found by the next scan. Returns how many processes were signalled.
    pub fn reap(&self, deadline: Duration) -> Result<usize, ReapError> {
        let started = Instant::now();
        // Half the deadline at most, so SIGKILL always gets its turn.
        let kill_from = started + REAP_GRACE.min(deadline / 2);
        let give_up = started + deadline;
        let mut signalled = std::collections::HashSet::new();
        loop {
            let pids = self.find()?;
            if pids.is_empty() {
                if !signalled.is_empty() {
                    tracing::debug!(owner = %self.owner, processes = signalled.len(), elapsed = ?started.elapsed(), "reaped processes");
                }
                return Ok(signalled.len());
            }
            let now = Instant::now();
            if now >= give_up {
                return Err(ReapError::Survivors { owner: self.owner.clone(), deadline, pids });
            }
            let signal = if now < kill_from { Signal::SIGTERM } else { Signal::SIGKILL };
            for pid in pids {
                // SIGTERM goes once per process; SIGKILL again on every scan until it is gone.
                if signal == Signal::SIGTERM && signalled.contains(&pid) {
                    continue;
                }
                // ESRCH just means the process exited between the scan and the signal.
                if kill(Pid::from_raw(pid), signal).is_ok() {
                    signalled.insert(pid);
                }
            }
            // Poll with a deadline: signalled processes disappear from /proc asynchronously.
            std::thread::sleep(REAP_POLL_INTERVAL);
        }
    }

    fn matches(&self, proc_dir: &Path) -> bool {
        if !self.uids.is_empty() && runs_as(proc_dir, &self.uids) {
            return true;
        }
        match &self.marks {
            Some(marks) => {
                carries_marker(proc_dir, &marks.id_marker, &marks.home_markers) || cwd_inside(proc_dir, &marks.homes)
            }
            None => false,
        }
    }
}

/// The environment entry that marks the processes of host `id`.
pub fn host_marker(id: &HostId) -> String {
    format!("{HOST_MARKER_VAR}={id}")
}

/// The environment entry that marks the processes of the host living in `home`.
pub fn home_marker(home: &Path) -> Vec<u8> {
    let mut marker = format!("{HOST_HOME_VAR}=").into_bytes();
    marker.extend_from_slice(home.as_os_str().as_bytes());
    marker
}

/// Every live process that carries both `id`'s marker and the marker of one of `homes`, or whose
/// working directory is inside one of `homes`. Zombies have neither an environment nor a working
/// directory, so they never count. This process itself is never listed.
pub fn host_processes(id: &HostId, homes: &[&Path]) -> Result<Vec<i32>, ReapError> {
    HostProcesses::of_host(id, homes).find()
}

/// Stop every process of host `id` (see [`host_processes`] and [`HostProcesses::reap`]).
pub fn reap_host(id: &HostId, homes: &[&Path], deadline: Duration) -> Result<usize, ReapError> {
    HostProcesses::of_host(id, homes).reap(deadline)
}

/// Every live process of user `uid` (zombies excluded), this process never among them.
pub fn user_processes(uid: u32) -> Result<Vec<i32>, ReapError> {
    HostProcesses::of_user(uid).find()
}

/// A user id reaping may target: never root's, never this server's own.
fn checked_uid(uid: u32) -> u32 {
    assert!(
        uid != 0 && uid != nix::unistd::geteuid().as_raw(),
        "refusing to reap every process of user id {uid}: root or this server itself"
    );
    uid
}

/// Whether the process behind `proc_dir` runs as one of `uids` (as its real, effective, saved or
/// filesystem user id) and is not a zombie. A process that ran a set-user-id program still has
/// its real user id.
fn runs_as(proc_dir: &Path, uids: &[u32]) -> bool {
    let Ok(status) = std::fs::read_to_string(proc_dir.join("status")) else { return false };
    let mut ids = None;
    let mut zombie = false;
    for line in status.lines() {
        if let Some(state) = line.strip_prefix("State:") {
            zombie = state.trim_start().starts_with('Z');
        } else if let Some(fields) = line.strip_prefix("Uid:") {
            ids = Some(fields.split_whitespace().any(|id| id.parse::<u32>().is_ok_and(|id| uids.contains(&id))));
            // `Uid:` follows `State:` in every kernel's layout.
            break;
        }
    }
    ids == Some(true) && !zombie
}

fn carries_marker(proc_dir: &Path, id_marker: &[u8], home_markers: &[Vec<u8>]) -> bool {
    let Ok(environ) = std::fs::read(proc_dir.join("environ")) else { return false };
    let (mut has_id, mut has_home) = (false, false);
    for entry in environ.split(|&b| b == 0) {
        has_id |= entry == id_marker;
        has_home |= home_markers.iter().any(|marker| entry == marker.as_slice());
    }
    has_id && has_home
}

fn cwd_inside(proc_dir: &Path, homes: &[PathBuf]) -> bool {
    let Ok(cwd) = std::fs::read_link(proc_dir.join("cwd")) else { return false };
    let bytes = cwd.as_os_str().as_bytes();
    let cwd = match bytes.strip_suffix(DELETED_SUFFIX.as_bytes()) {
        Some(stripped) => Path::new(std::ffi::OsStr::from_bytes(stripped)),
        None => cwd.as_path(),
    };
    homes.iter().any(|home| cwd.starts_with(home))
}

/// The canonical form of `path` when it still exists; the path itself otherwise (a host whose
/// directory is already gone can still have processes whose cwd was inside it).
fn canonical_or_same(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_the_exact_environment_entry() {
        assert_eq!(host_marker(&HostId("b7-web".into())), "GANTRY_HOST_ID=b7-web");
    }

    #[test]
    fn this_process_is_never_listed() {
        let cwd = std::env::current_dir().unwrap();
        let pids = host_processes(&HostId("no-such-host".into()), &[cwd.as_path()]).unwrap();
        assert!(!pids.contains(&(std::process::id() as i32)));
    }
}
