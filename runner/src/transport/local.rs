//! The transport of a local host: a directory on this machine and processes started directly,
//! optionally as an unprivileged user and inside the build's network namespace.
//!
//! Every process gets a clean environment (never the server's), its own process group, the host's
//! home as `HOME`, and the host's marker (`GANTRY_HOST_ID=<HostId>`, `GANTRY_HOST_HOME=<home>`)
//! that [`crate::process`] uses to find it again, however it daemonized. With a namespace, the
//! child enters it (`setns`) before it drops root's groups and user ids, in that order: once it
//! is no longer root it could not. Files only ever land inside the host's home: relative paths
//! with `..` or a symlink leading out of the home are refused. This module never kills a host's
//! daemons and never removes its home: that is the provider's teardown.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Gid, Pid, Uid};
use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{relative, Drain, ExecOutcome, ExecRequest, LineSplitter, OutputLine, Transport, TransportError};
use crate::event::Stream;
use crate::process::{HOST_HOME_VAR, HOST_MARKER_VAR};
use crate::provider::local::egress::NO_PROXY;
use crate::provider::local::netns::NetNs;
use crate::provider::HostId;

/// `PATH` of every process on a local host.
pub const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `LANG` of every process on a local host.
const HOST_LANG: &str = "C.UTF-8";

/// The shell that runs scripts, as `sh -e -c SCRIPT`.
const SHELL: &str = "/bin/sh";

/// The per-host temporary directory, relative to the home; `TMPDIR` points at it.
const TMP_DIR: &str = "tmp";

/// Mode of the host's temporary directory and of directories created for pushed files.
const DIR_MODE: u32 = 0o755;

/// Mode of a file written by [`Transport::write_file`].
const FILE_MODE: u32 = 0o644;

/// Lines buffered between a pipe reader and the exec loop; a full buffer pauses the reader, which
/// in turn pauses the writing process (back-pressure instead of unbounded memory).
const OUTPUT_BUFFER_LINES: usize = 1024;

/// Bytes read from a pipe at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// After a script exits, how long its output pipes may stay silent before the step stops
/// reading them. A background process (a service started by a setup step) inherits the pipes and
/// keeps them open until teardown; its later output is read and discarded so it never blocks or
/// gets SIGPIPE.
pub const OUTPUT_IDLE_TIMEOUT: Duration = Duration::from_millis(200);

/// After a script exits, the longest the step keeps forwarding output that is still arriving
/// (what the script wrote just before it ended, or a chatty background process); time spent
/// waiting for the listener to take a line does not count (see `Drain`).
pub const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Exit codes of signalled processes are `128 + signal`, as shells report them.
const SIGNAL_EXIT_BASE: i32 = 128;

/// The unprivileged user a local host's processes run as when the server runs as root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// One local host: its home directory, its address, the user its processes run as and the
/// network namespace they run in.
pub struct LocalTransport {
    host_id: HostId,
    home: PathBuf,
    address: IpAddr,
    run_as: Option<RunAs>,
    /// Held open while the transport lives, so every step can enter it.
    netns: Option<Arc<NetNs>>,
    /// `USER` and `LOGNAME` of the host's processes.
    user_name: String,
}

impl LocalTransport {
    /// `home` must be an existing, canonical directory (the provider creates it).
    pub fn new(host_id: HostId, home: PathBuf, address: IpAddr, run_as: Option<RunAs>) -> LocalTransport {
        let user_name = match &run_as {
            Some(user) => user.name.clone(),
            None => current_user_name(),
        };
        LocalTransport { host_id, home, address, run_as, netns: None, user_name }
    }

    /// Run every process of this host inside `netns` (the build's network namespace).
    pub fn in_network_namespace(mut self, netns: Option<Arc<NetNs>>) -> LocalTransport {
        self.netns = netns;
        self
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn address(&self) -> IpAddr {
        self.address
    }

    pub fn host_id(&self) -> &HostId {
        &self.host_id
    }

    /// The environment every process of this host starts with, before the request's own.
    fn base_env(&self) -> BTreeMap<String, String> {
        let home = self.home.to_string_lossy().into_owned();
        let tmp = self.home.join(TMP_DIR).to_string_lossy().into_owned();
        let mut env = BTreeMap::from([
            ("PATH".to_string(), HOST_PATH.to_string()),
            ("HOME".to_string(), home),
            ("USER".to_string(), self.user_name.clone()),
            ("LOGNAME".to_string(), self.user_name.clone()),
            ("LANG".to_string(), HOST_LANG.to_string()),
            ("TMPDIR".to_string(), tmp),
            ("SHELL".to_string(), SHELL.to_string()),
        ]);
        if let Some(proxy) = self.netns.as_ref().and_then(|ns| ns.egress_proxy()) {
            // Both spellings: curl and wget read the lower-case ones, other tools the upper.
            let url = format!("http://{proxy}");
            for name in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
                env.insert(name.to_string(), url.clone());
            }
            for name in ["no_proxy", "NO_PROXY"] {
                env.insert(name.to_string(), NO_PROXY.to_string());
            }
        }
        env
    }

    fn spawn(&self, request: &ExecRequest) -> Result<tokio::process::Child, TransportError> {
        let cwd = self.home.join(relative(&request.cwd)?);
        if !cwd.is_dir() {
            return Err(TransportError::Other(format!("working directory ~/{} does not exist", request.cwd)));
        }
        self.ensure_tmp_dir()?;

        let mut command = tokio::process::Command::new(SHELL);
        command
            .arg("-e")
            .arg("-c")
            .arg(&request.script)
            .env_clear()
            .envs(self.base_env())
            .envs(&request.env)
            .envs(request.secrets.iter().map(|(name, value)| (name, value.expose_secret())))
            // The marker goes last so a pipeline's `env` can never hide a process from teardown.
            .env(HOST_MARKER_VAR, self.host_id.to_string())
            .env(HOST_HOME_VAR, &self.home)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let identity = ChildIdentity {
            netns: self.netns.as_ref().map(|ns| ns.raw_fd()),
            user: self.run_as.as_ref().map(|user| (Uid::from_raw(user.uid), Gid::from_raw(user.gid))),
        };
        if identity.netns.is_some() || identity.user.is_some() {
            // SAFETY: `enter` makes only async-signal-safe system calls and allocates nothing; the
            // namespace's descriptor stays open (`self.netns`) until `spawn` returns.
            unsafe {
                command.pre_exec(move || identity.enter());
            }
        }
        command.spawn().map_err(|source| TransportError::Io { op: "starting sh".to_string(), source })
    }

    fn ensure_tmp_dir(&self) -> Result<(), TransportError> {
        let tmp = self.home.join(TMP_DIR);
        match std::fs::create_dir(&tmp) {
            Ok(()) => {
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(DIR_MODE))
                    .map_err(io("creating ~/tmp"))?;
                self.chown(&tmp)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io("creating ~/tmp")(e)),
        }
    }

    /// Hand `path` to the run-as user, if there is one. Never follows a symlink.
    fn chown(&self, path: &Path) -> Result<(), TransportError> {
        match &self.run_as {
            Some(user) => std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
                .map_err(io(&format!("changing the owner of {}", path.display()))),
            None => Ok(()),
        }
    }

    /// The directory `rel` inside the home, created (and handed to the run-as user) when missing.
    /// Symlinks on the way are followed only while they stay inside the home.
    fn ensure_dir(&self, rel: &str) -> Result<PathBuf, TransportError> {
        let mut dir = self.home.clone();
        for part in relative(rel)?.components() {
            let next = dir.join(part);
            match std::fs::symlink_metadata(&next) {
                Ok(meta) if meta.is_dir() => dir = next,
                Ok(meta) if meta.file_type().is_symlink() => {
                    let real = std::fs::canonicalize(&next).map_err(io(&format!("resolving ~/{rel}")))?;
                    if !real.starts_with(&self.home) {
                        return Err(TransportError::PathEscapes(rel.to_string()));
                    }
                    if !real.is_dir() {
                        return Err(TransportError::Other(format!("~/{rel}: {} is not a directory", next.display())));
                    }
                    dir = real;
                }
                Ok(_) => {
                    return Err(TransportError::Other(format!("~/{rel}: {} is not a directory", next.display())));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(&next).map_err(io(&format!("creating {}", next.display())))?;
                    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(DIR_MODE))
                        .map_err(io(&format!("creating {}", next.display())))?;
                    self.chown(&next)?;
                    dir = next;
                }
                Err(e) => return Err(io(&format!("inspecting {}", next.display()))(e)),
            }
        }
        Ok(dir)
    }

    fn unpack(&self, dest: &str, archive: &[u8]) -> Result<(), TransportError> {
        let dest_dir = self.ensure_dir(dest)?;
        let mut archive = tar::Archive::new(archive);
        archive.set_preserve_permissions(true);
        archive.set_preserve_mtime(true);
        archive.set_overwrite(true);
        let mut unpacked = Vec::new();
        for entry in archive.entries().map_err(io("reading the archive"))? {
            let mut entry = entry.map_err(io("reading the archive"))?;
            let name = entry.path().map_err(io("reading the archive"))?.into_owned();
            // `unpack_in` refuses `..` and any entry whose parent resolves outside `dest_dir`.
            if !entry.unpack_in(&dest_dir).map_err(io(&format!("unpacking {}", name.display())))? {
                return Err(TransportError::PathEscapes(name.to_string_lossy().into_owned()));
            }
            unpacked.push(name);
        }
        if self.run_as.is_some() {
            // Unpacked entries and the parents tar created for them belong to the run-as user.
            let mut owned = std::collections::HashSet::new();
            for name in &unpacked {
                let mut path = PathBuf::new();
                for part in name.components() {
                    if let Component::Normal(part) = part {
                        path.push(part);
                        if owned.insert(path.clone()) {
                            self.chown(&dest_dir.join(&path))?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn write(&self, path: &str, contents: &[u8]) -> Result<(), TransportError> {
        let rel = relative(path)?;
        let file_name = rel.file_name().ok_or_else(|| TransportError::Other(format!("{path:?} names no file")))?;
        let parent = rel.parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let dir = self.ensure_dir(&parent)?;
        // Write beside the target and rename over it: a symlink at the target is replaced, never
        // followed.
        let mut temp_name = OsStr::new(".gantry-write-").to_os_string();
        temp_name.push(file_name);
        let temp = dir.join(temp_name);
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(&temp)?;
            file.write_all(contents)?;
            file.sync_data()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(io(&format!("writing ~/{path}"))(e));
        }
        self.chown(&temp)?;
        std::fs::rename(&temp, dir.join(file_name)).map_err(io(&format!("writing ~/{path}")))
    }

    fn read(&self, path: &str, max_bytes: usize) -> Result<Option<Vec<u8>>, TransportError> {
        let full = self.home.join(relative(path)?);
        let real = match std::fs::canonicalize(&full) {
            Ok(real) => real,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&format!("reading ~/{path}"))(e)),
        };
        if !real.starts_with(&self.home) {
            return Err(TransportError::PathEscapes(path.to_string()));
        }
        let file =
            match std::fs::OpenOptions::new().read(true).custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits()).open(&real)
            {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io(&format!("reading ~/{path}"))(e)),
            };
        // Check what was actually opened, not what the path said a moment ago: a process of the
        // host could have swapped a directory for a symlink in between.
        let opened = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file)))
            .map_err(io(&format!("reading ~/{path}")))?;
        if !opened.starts_with(&self.home) {
            return Err(TransportError::PathEscapes(path.to_string()));
        }
        let meta = file.metadata().map_err(io(&format!("reading ~/{path}")))?;
        if !meta.is_file() {
            return Ok(None);
        }
        let mut contents = Vec::new();
        file.take(max_bytes as u64).read_to_end(&mut contents).map_err(io(&format!("reading ~/{path}")))?;
        Ok(Some(contents))
    }
}

#[async_trait]
impl Transport for LocalTransport {
    async fn exec(
        &self,
        request: &ExecRequest,
        output: &mpsc::Sender<OutputLine>,
        cancel: &CancellationToken,
    ) -> Result<ExecOutcome, TransportError> {
        let mut child = self.spawn(request)?;
        let pgid = child.id().map(|pid| Pid::from_raw(pid as i32));
        // If this future is dropped mid-run, the script's process group dies with it.
        let mut guard = GroupGuard { pgid };
        let (line_tx, mut lines) = mpsc::channel(OUTPUT_BUFFER_LINES);
        let holding = Arc::new(AtomicUsize::new(0));
        if let Some(stdout) = child.stdout.take() {
            let splitter = LineSplitter::new(Stream::Stdout, request.mask.clone());
            tokio::spawn(read_lines(stdout, splitter, line_tx.clone(), Arc::clone(&holding)));
        }
        if let Some(stderr) = child.stderr.take() {
            let splitter = LineSplitter::new(Stream::Stderr, request.mask.clone());
            tokio::spawn(read_lines(stderr, splitter, line_tx, Arc::clone(&holding)));
        }

        let deadline = tokio::time::Instant::now() + request.timeout;
        let outcome = loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break ExecOutcome::Cancelled,
                _ = tokio::time::sleep_until(deadline) => break ExecOutcome::TimedOut,
                status = child.wait() => {
                    let status = status.map_err(|source| TransportError::Io { op: "waiting for sh".to_string(), source })?;
                    let code = status.code().or_else(|| status.signal().map(|s| SIGNAL_EXIT_BASE + s)).unwrap_or(-1);
                    break ExecOutcome::Exited(code);
                }
                Some(line) = lines.recv() => {
                    // A closed output only means nobody listens; the script still runs to its end.
                    let _ = output.send(line).await;
                }
            }
        };
        if matches!(outcome, ExecOutcome::TimedOut | ExecOutcome::Cancelled) {
            guard.kill();
            let _ = child.wait().await;
            tracing::debug!(host = %self.host_id, ?outcome, "killed the script's process group");
        }
        guard.disarm();

        // The script is gone; what it wrote may still be in the pipes. Forward it until they
        // close, fall silent (a background process holds them) or the drain limit passes.
        let mut drain = Drain::new(OUTPUT_DRAIN_LIMIT, OUTPUT_IDLE_TIMEOUT);
        loop {
            tokio::select! {
                // Output already waiting goes first, however late this loop got to run again.
                biased;
                line = lines.recv() => match line {
                    Some(line) => drain.forward(output, line).await,
                    None => break,
                },
                // Silent pipes end the drain; a reader still holding output it read does not.
                _ = tokio::time::sleep_until(drain.idle_until()) => {
                    if holding.load(Ordering::SeqCst) == 0 || drain.past_limit() {
                        break;
                    }
                }
            }
        }
        Ok(outcome)
    }

    async fn upload_tar(&self, dest: &str, archive: Vec<u8>) -> Result<(), TransportError> {
        let this = self.detached();
        let dest = dest.to_string();
        blocking(move || this.unpack(&dest, &archive)).await
    }

    async fn write_file(&self, path: &str, contents: Vec<u8>) -> Result<(), TransportError> {
        let this = self.detached();
        let path = path.to_string();
        blocking(move || this.write(&path, &contents)).await
    }

    async fn read_file(&self, path: &str, max_bytes: usize) -> Result<Option<Vec<u8>>, TransportError> {
        let this = self.detached();
        let path = path.to_string();
        blocking(move || this.read(&path, max_bytes)).await
    }
}

impl LocalTransport {
    /// A copy for a blocking thread (the transport itself is borrowed by the caller).
    fn detached(&self) -> LocalTransport {
        LocalTransport {
            host_id: self.host_id.clone(),
            home: self.home.clone(),
            address: self.address,
            run_as: self.run_as.clone(),
            netns: self.netns.clone(),
            user_name: self.user_name.clone(),
        }
    }
}

/// Who a host's child becomes between `fork` and `exec`.
#[derive(Debug, Clone, Copy)]
struct ChildIdentity {
    /// The build's network namespace (a descriptor the parent holds open).
    netns: Option<i32>,
    /// The host's user and group.
    user: Option<(Uid, Gid)>,
}

impl ChildIdentity {
    /// Enter the namespace while still root, then drop every supplementary group, the group and
    /// the user (std's own `uid`/`gid` would run before `pre_exec`, too early for `setns`).
    fn enter(self) -> std::io::Result<()> {
        if let Some(fd) = self.netns {
            // SAFETY: the parent keeps this descriptor open until the child has been spawned.
            NetNs::enter(unsafe { BorrowedFd::borrow_raw(fd) })?;
        }
        if let Some((uid, gid)) = self.user {
            nix::unistd::setgroups(&[])?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
        }
        Ok(())
    }
}

/// Kills a script's whole process group when dropped while armed.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid {
            // ESRCH: every process of the group has already exited.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Read a pipe to its end, cutting it into lines. Once the exec loop stops listening the rest is
/// read and dropped, so a background process holding the pipe never blocks on a full one.
///
/// `holding` counts the readers that have read output they have not handed on yet: while it is
/// above zero the output is not idle, however long handing it on takes (a busy machine can leave
/// the reader unscheduled for longer than `OUTPUT_IDLE_TIMEOUT`).
async fn read_lines(
    mut pipe: impl AsyncRead + Unpin,
    mut splitter: LineSplitter,
    lines: mpsc::Sender<OutputLine>,
    holding: Arc<AtomicUsize>,
) {
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut listening = true;
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        holding.fetch_add(1, Ordering::SeqCst);
        for line in splitter.push(&buf[..n]) {
            if listening && lines.send(line).await.is_err() {
                listening = false;
            }
        }
        holding.fetch_sub(1, Ordering::SeqCst);
    }
    if let Some(line) = splitter.finish() {
        if listening {
            let _ = lines.send(line).await;
        }
    }
}

fn io(op: &str) -> impl FnOnce(std::io::Error) -> TransportError + '_ {
    move |source| TransportError::Io { op: op.to_string(), source }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TransportError> + Send + 'static,
) -> Result<T, TransportError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| TransportError::Other(format!("file operation panicked: {e}")))?
}

/// The name of the user this server runs as, for `USER` when there is no run-as user.
fn current_user_name() -> String {
    match nix::unistd::User::from_uid(nix::unistd::geteuid()) {
        Ok(Some(user)) => user.name,
        _ => nix::unistd::geteuid().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_refuse_root_and_parent() {
        assert_eq!(relative("src/./.env").unwrap(), PathBuf::from("src/.env"));
        assert_eq!(relative("").unwrap(), PathBuf::new());
        assert!(matches!(relative("/etc/passwd"), Err(TransportError::PathEscapes(_))));
        assert!(matches!(relative("src/../../x"), Err(TransportError::PathEscapes(_))));
    }
}
