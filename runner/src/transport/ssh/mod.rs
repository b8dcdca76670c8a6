//! The transport of a remote Linux host reached over SSH (russh client): commands with streamed
//! output, one tar stream per tree upload, files through `cat`, and the reaping of everything a
//! host started.
//!
//! A connection is authenticated with one private key only (no password, no keyboard-interactive)
//! and accepted only when the server presents exactly the host key Gantry was told in advance: an
//! unknown or changed key refuses the connection. Every remote process starts with a clean
//! environment (`env -i`), the host's `home` as `HOME`, and the host's marker
//! (`GANTRY_HOST_ID=<HostId>`, `GANTRY_HOST_HOME=<home>`, as in [`crate::process`]) so
//! [`SshTransport::reap_and_remove`] finds it again however it daemonized. A script runs as the
//! leader of the process group sshd gives the session; its pid is the first line of stdout (never
//! forwarded), and a timeout or cancel kills that whole group through a second channel. A
//! connection found dead before a command starts is re-established transparently; one lost during
//! a command fails it with [`TransportError::ConnectionLost`]. This module never decides when a
//! host is torn down: providers call [`SshTransport::reap_and_remove`].
//!
//! This module holds the [`Transport`] impl and the host-level operations providers call; how a
//! connection is made and kept lives in `connect`, and the shell commands run on the host live in
//! `shell`.

mod connect;
mod shell;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use russh::client::Handle;
use russh::ChannelMsg;
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use self::connect::{connect_with_retry, lost, Client};
use self::shell::{
    join_home, quote, reaper_script, signal_number, MISSING_EXIT, NO_CWD_EXIT, SIGNAL_EXIT_BASE, TMP_DIR,
};
use super::{relative, Drain, ExecOutcome, ExecRequest, LineSplitter, OutputLine, Transport, TransportError};
use crate::event::Stream;

pub use self::connect::{
    parse_public_key, SshTarget, CONNECT_ATTEMPT_TIMEOUT, CONNECT_BACKOFF_MAX, CONNECT_BACKOFF_START,
    KEEPALIVE_INTERVAL, KEEPALIVE_MAX, RECONNECT_TIMEOUT,
};
pub use self::shell::HOST_PATH;

/// After a script exits, how long its channel may stay silent before the step stops reading it
/// (a background process may hold the output open until teardown).
pub const OUTPUT_IDLE_TIMEOUT: Duration = Duration::from_millis(200);

/// After a script exits, the longest the step keeps forwarding output that is still arriving.
pub const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// How long a killed script's channel may take to close after its process group got SIGKILL.
const KILL_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// One remote host: a connection (re-established when found dead) and the host's identity.
pub struct SshTransport {
    target: SshTarget,
    connect_timeout: Duration,
    session: Mutex<Arc<Handle<Client>>>,
}

impl SshTransport {
    /// Connect (with bounded retries and backoff for a machine still booting, up to
    /// `connect_timeout`), verify the host key, authenticate with the key.
    pub async fn connect(target: SshTarget, connect_timeout: Duration) -> Result<SshTransport, TransportError> {
        if !target.home.starts_with('/') {
            return Err(TransportError::Other(format!(
                "the home of {} must be absolute: {:?}",
                target.name(),
                target.home
            )));
        }
        let handle = connect_with_retry(&target, connect_timeout).await?;
        Ok(SshTransport { target, connect_timeout, session: Mutex::new(Arc::new(handle)) })
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// Kill every process carrying the host's marker (or working inside `home`), SIGTERM first and
    /// SIGKILL after [`REAP_GRACE`](crate::process::REAP_GRACE), then remove `home` (used by
    /// providers' teardown).
    pub async fn reap_and_remove(&self) -> Result<(), TransportError> {
        let script = reaper_script(&self.target.host_id, &self.target.home);
        let result = self.run_helper(&script, None).await?;
        if result.status != 0 {
            return Err(TransportError::Other(format!(
                "tearing down {} on {} failed (exit {}): {}",
                self.target.home,
                self.target.name(),
                result.status,
                result.stderr.trim()
            )));
        }
        tracing::debug!(host = %self.target.host_id, machine = %self.target.name(), "reaped and removed the remote home");
        Ok(())
    }

    /// Create `home` (and its `tmp`) if missing: a provider calls this once per fresh host.
    pub async fn create_home(&self) -> Result<(), TransportError> {
        let command = format!("mkdir -p -- {}", quote(&join_home(&self.target.home, Path::new(TMP_DIR))));
        let result = self.run_helper(&command, None).await?;
        self.check_helper("creating", "", &result)
    }

    /// The login user's own home directory on the machine.
    pub async fn login_home(&self) -> Result<String, TransportError> {
        let result = self.run_helper("printf '%s' \"$HOME\"", None).await?;
        self.check_helper("finding the login home for", "", &result)?;
        let home = String::from_utf8_lossy(&result.stdout).into_owned();
        if !home.starts_with('/') {
            return Err(TransportError::Other(format!(
                "{}: the login home {home:?} is not absolute",
                self.target.name()
            )));
        }
        Ok(home)
    }

    /// The same connection, for a host whose home is `home` (absolute).
    pub fn with_home(self, home: String) -> SshTransport {
        let SshTransport { mut target, connect_timeout, session } = self;
        target.home = home;
        SshTransport { target, connect_timeout, session }
    }
}

#[async_trait]
impl Transport for SshTransport {
    async fn exec(
        &self,
        request: &ExecRequest,
        output: &mpsc::Sender<OutputLine>,
        cancel: &CancellationToken,
    ) -> Result<ExecOutcome, TransportError> {
        let command = self.exec_command(request)?;
        let session = self.session().await?;
        let mut channel = session.channel_open_session().await.map_err(lost(&self.target))?;
        channel.exec(true, command.command.as_bytes()).await.map_err(lost(&self.target))?;
        channel.data(command.stdin.expose_secret().as_bytes()).await.map_err(lost(&self.target))?;
        channel.eof().await.map_err(lost(&self.target))?;

        let mut stdout = LineSplitter::new(Stream::Stdout, request.mask.clone());
        let mut stderr = LineSplitter::new(Stream::Stderr, request.mask.clone());
        // The first stdout line is the script's pid, printed by the wrapper before the script.
        let mut pid_line: Option<Vec<u8>> = Some(Vec::new());
        let mut pgid: Option<i32> = None;
        let deadline = tokio::time::Instant::now() + request.timeout;
        let lost_message = || {
            TransportError::ConnectionLost(format!("{}: the connection closed while the step ran", self.target.name()))
        };

        let outcome = loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break ExecOutcome::Cancelled,
                _ = tokio::time::sleep_until(deadline) => break ExecOutcome::TimedOut,
                message = channel.wait() => match message {
                    None => return Err(lost_message()),
                    Some(ChannelMsg::Data { data }) => {
                        let mut bytes: &[u8] = &data;
                        if let Some(pending) = pid_line.as_mut() {
                            match bytes.iter().position(|&b| b == b'\n') {
                                Some(end) => {
                                    pending.extend_from_slice(&bytes[..end]);
                                    pgid = std::str::from_utf8(pending).ok().and_then(|s| s.trim().parse().ok());
                                    pid_line = None;
                                    bytes = &bytes[end + 1..];
                                }
                                None => {
                                    pending.extend_from_slice(bytes);
                                    bytes = &[];
                                }
                            }
                        }
                        for line in stdout.push(bytes) {
                            let _ = output.send(line).await;
                        }
                    }
                    Some(ChannelMsg::ExtendedData { data, .. }) => {
                        for line in stderr.push(&data) {
                            let _ = output.send(line).await;
                        }
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        // Before the pid line, only the wrapper can have exited: the script never ran.
                        if pid_line.is_some() && exit_status as i32 == NO_CWD_EXIT {
                            return Err(TransportError::Other(format!("working directory ~/{} does not exist", request.cwd)));
                        }
                        break ExecOutcome::Exited(exit_status as i32);
                    }
                    Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                        break ExecOutcome::Exited(SIGNAL_EXIT_BASE + signal_number(&signal_name));
                    }
                    Some(_) => {}
                },
            }
        };

        if matches!(outcome, ExecOutcome::TimedOut | ExecOutcome::Cancelled) {
            match pgid {
                Some(pgid) => self.kill_group(pgid).await,
                None => {
                    tracing::warn!(host = %self.target.host_id, "the script's pid never arrived; teardown will reap it")
                }
            }
            let _ = channel.close().await;
            // Let the channel settle so its last messages do not outlive the step.
            let _ = tokio::time::timeout(KILL_SETTLE_TIMEOUT, async { while channel.wait().await.is_some() {} }).await;
            tracing::debug!(host = %self.target.host_id, ?outcome, ?pgid, "killed the remote process group");
            return Ok(outcome);
        }

        // The script is gone; forward what is still arriving until the channel closes, falls
        // silent (a background process holds it) or the drain limit passes.
        let mut drain = Drain::new(OUTPUT_DRAIN_LIMIT, OUTPUT_IDLE_TIMEOUT);
        loop {
            tokio::select! {
                // Output already waiting goes first, however late this loop got to run again.
                biased;
                message = channel.wait() => match message {
                    None | Some(ChannelMsg::Close) => break,
                    Some(ChannelMsg::Data { data }) => {
                        for line in stdout.push(&data) {
                            drain.forward(output, line).await;
                        }
                    }
                    Some(ChannelMsg::ExtendedData { data, .. }) => {
                        for line in stderr.push(&data) {
                            drain.forward(output, line).await;
                        }
                    }
                    Some(_) => {}
                },
                _ = tokio::time::sleep_until(drain.idle_until()) => break,
            }
        }
        for line in [stdout.finish(), stderr.finish()].into_iter().flatten() {
            let _ = output.send(line).await;
        }
        let _ = channel.close().await;
        Ok(outcome)
    }

    async fn upload_tar(&self, dest: &str, archive: Vec<u8>) -> Result<(), TransportError> {
        let dir = join_home(&self.target.home, &relative(dest)?);
        let result = self.run_helper(&self.untar_command(&dir), Some(&archive)).await?;
        self.check_helper("unpacking into", dest, &result)
    }

    async fn write_file(&self, path: &str, contents: Vec<u8>) -> Result<(), TransportError> {
        let rel = relative(path)?;
        let file_name = rel
            .file_name()
            .ok_or_else(|| TransportError::Other(format!("{path:?} names no file")))?
            .to_string_lossy()
            .into_owned();
        let parent = join_home(&self.target.home, rel.parent().unwrap_or(Path::new("")));
        let result = self.run_helper(&self.write_command(&parent, &file_name), Some(&contents)).await?;
        self.check_helper("writing", path, &result)
    }

    async fn read_file(&self, path: &str, max_bytes: usize) -> Result<Option<Vec<u8>>, TransportError> {
        let full = join_home(&self.target.home, &relative(path)?);
        let mut result = self.run_helper(&self.read_command(&full, max_bytes), None).await?;
        if result.status == MISSING_EXIT {
            return Ok(None);
        }
        self.check_helper("reading", path, &result)?;
        result.stdout.truncate(max_bytes);
        Ok(Some(result.stdout))
    }
}
