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

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use russh::client::{self, Handle};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Sig};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use super::{relative, ExecOutcome, ExecRequest, LineSplitter, OutputLine, Transport, TransportError};
use crate::env::is_env_name;
use crate::event::Stream;
use crate::process::{HOST_HOME_VAR, HOST_MARKER_VAR, REAP_DEADLINE, REAP_GRACE};
use crate::provider::HostId;

/// `PATH` of every process on a remote host.
pub const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `LANG` of every process on a remote host.
const HOST_LANG: &str = "C.UTF-8";

/// The shell that runs scripts, as `sh -e -c SCRIPT`.
const SHELL: &str = "/bin/sh";

/// The per-host temporary directory, relative to the home; `TMPDIR` points at it.
const TMP_DIR: &str = "tmp";

/// How often a keepalive is sent on a connection that is otherwise silent.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// How many unanswered keepalives in a row close a connection as lost.
pub const KEEPALIVE_MAX: usize = 3;

/// The longest one connection attempt (TCP, key exchange, authentication) may take.
pub const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The first pause between two connection attempts; it doubles up to [`CONNECT_BACKOFF_MAX`].
pub const CONNECT_BACKOFF_START: Duration = Duration::from_millis(100);

/// The longest pause between two connection attempts.
pub const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How long a dead connection found before a command may take to come back.
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// After a script exits, how long its channel may stay silent before the step stops reading it
/// (a background process may hold the output open until teardown).
pub const OUTPUT_IDLE_TIMEOUT: Duration = Duration::from_millis(200);

/// After a script exits, the longest the step keeps forwarding output that is still arriving.
pub const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// How long a killed script's channel may take to close after its process group got SIGKILL.
const KILL_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a helper command (kill, mkdir, cat, tar, the reaper) may run, plus the time its
/// input takes at [`MIN_UPLOAD_BYTES_PER_SEC`].
const HELPER_TIMEOUT: Duration = Duration::from_secs(120);

/// The slowest upload rate tolerated before an upload counts as hung.
const MIN_UPLOAD_BYTES_PER_SEC: u64 = 256 * 1024;

/// Exit codes of signalled processes are `128 + signal`, as shells report them.
const SIGNAL_EXIT_BASE: i32 = 128;

/// Most bytes of a helper command's stderr kept for an error message.
const HELPER_STDERR_LIMIT: usize = 4096;

/// Exit code of the path check when a path resolves outside the home.
const ESCAPE_EXIT: u32 = 86;

/// Exit code of `read_file` when the file does not exist.
const MISSING_EXIT: u32 = 87;

/// Exit code of the exec wrapper when the working directory is missing (before the script runs).
const NO_CWD_EXIT: i32 = 88;

/// Where and how to reach one remote host.
#[derive(Clone)]
pub struct SshTarget {
    pub address: IpAddr,
    pub port: u16,
    pub user: String,
    /// The client key (key authentication only).
    pub key: Arc<PrivateKey>,
    /// The ONLY server key accepted for this host.
    pub host_key: PublicKey,
    /// Absolute remote directory that is this host's `~` for Gantry (a fresh work dir).
    pub home: String,
    /// Marker put into every remote process's environment.
    pub host_id: HostId,
}

impl std::fmt::Debug for SshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTarget")
            .field("address", &self.address)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("home", &self.home)
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

impl SshTarget {
    fn socket(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    /// `user@address:port`, for messages.
    fn name(&self) -> String {
        format!("{}@{}", self.user, self.socket())
    }
}

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
    /// SIGKILL after [`REAP_GRACE`], then remove `home` (used by providers' teardown).
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

    /// The live session, reconnecting first when the connection was found dead.
    async fn session(&self) -> Result<Arc<Handle<Client>>, TransportError> {
        let mut session = self.session.lock().await;
        if session.is_closed() {
            tracing::info!(host = %self.target.host_id, machine = %self.target.name(), "connection lost; reconnecting");
            let timeout = self.connect_timeout.max(RECONNECT_TIMEOUT);
            *session = Arc::new(connect_with_retry(&self.target, timeout).await?);
        }
        Ok(session.clone())
    }

    /// Run a helper command (plain environment, cwd `/`), feeding it `stdin` when given, and
    /// collect its output.
    async fn run_helper(&self, command: &str, stdin: Option<&[u8]>) -> Result<HelperResult, TransportError> {
        let session = self.session().await?;
        let run = async {
            let mut channel = session.channel_open_session().await.map_err(lost(&self.target))?;
            channel.exec(true, command.as_bytes()).await.map_err(lost(&self.target))?;
            // The input is sent while the output is read: a command that fails early (a refused
            // path) stops reading its input, and its exit status is then the error to report.
            let mut writer = channel.make_writer();
            let send = async move {
                if let Some(bytes) = stdin {
                    writer.write_all(bytes).await?;
                }
                writer.shutdown().await
            };
            tokio::pin!(send);
            let mut sending = true;
            let mut send_error = None;
            let mut result = HelperResult { status: u32::MAX, stdout: Vec::new(), stderr: String::new() };
            let mut stderr = Vec::new();
            let mut exited = false;
            loop {
                let message = tokio::select! {
                    sent = &mut send, if sending => {
                        sending = false;
                        send_error = sent.err();
                        continue;
                    }
                    message = channel.wait() => message,
                };
                let Some(message) = message else { break };
                match message {
                    ChannelMsg::Data { data } => result.stdout.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, .. } if stderr.len() < HELPER_STDERR_LIMIT => {
                        stderr.extend_from_slice(&data);
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        result.status = exit_status;
                        exited = true;
                    }
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        result.status = (SIGNAL_EXIT_BASE + signal_number(&signal_name)) as u32;
                        exited = true;
                    }
                    _ => {}
                }
            }
            if !exited {
                let why = send_error.map_or_else(|| "the connection closed".to_string(), |e| e.to_string());
                return Err(TransportError::ConnectionLost(format!(
                    "{}: the command never ended: {why}",
                    self.target.name()
                )));
            }
            stderr.truncate(HELPER_STDERR_LIMIT);
            result.stderr = String::from_utf8_lossy(&stderr).into_owned();
            Ok(result)
        };
        let input_time = Duration::from_secs(stdin.map_or(0, |bytes| bytes.len() as u64 / MIN_UPLOAD_BYTES_PER_SEC));
        tokio::time::timeout(HELPER_TIMEOUT + input_time, run)
            .await
            .map_err(|_| TransportError::Other(format!("{}: a helper command timed out", self.target.name())))?
    }

    /// The command line that runs `request` as `sh -e -c SCRIPT` in the host's environment,
    /// printing its pid (the process group id) as the first line of stdout.
    fn exec_command(&self, request: &ExecRequest) -> Result<String, TransportError> {
        let home = &self.target.home;
        let cwd = join_home(home, &relative(&request.cwd)?);
        let mut env = BTreeMap::from([
            ("PATH".to_string(), HOST_PATH.to_string()),
            ("HOME".to_string(), home.clone()),
            ("USER".to_string(), self.target.user.clone()),
            ("LOGNAME".to_string(), self.target.user.clone()),
            ("LANG".to_string(), HOST_LANG.to_string()),
            ("TMPDIR".to_string(), join_home(home, Path::new(TMP_DIR))),
            ("SHELL".to_string(), SHELL.to_string()),
        ]);
        for (name, value) in &request.env {
            if !is_env_name(name) {
                return Err(TransportError::Other(format!("invalid environment variable name {name:?}")));
            }
            env.insert(name.clone(), value.clone());
        }
        // The marker goes last so a pipeline's `env` can never hide a process from teardown.
        env.insert(HOST_MARKER_VAR.to_string(), self.target.host_id.to_string());
        env.insert(HOST_HOME_VAR.to_string(), home.clone());
        let assignments: Vec<String> = env.iter().map(|(name, value)| quote(&format!("{name}={value}"))).collect();
        // sshd makes the session's first process a session and process group leader; the `exec`s
        // keep its pid, so the printed `$$` is the group every process of the script shares.
        Ok(format!(
            "mkdir -p {tmp} && {{ cd {cwd} 2>/dev/null || exit {NO_CWD_EXIT}; }} && echo $$ && exec env -i {assignments} {SHELL} -e -c {script}",
            tmp = quote(&join_home(home, Path::new(TMP_DIR))),
            cwd = quote(&cwd),
            assignments = assignments.join(" "),
            script = quote(&request.script),
        ))
    }

    /// Kill the process group `pgid` through a fresh channel.
    async fn kill_group(&self, pgid: i32) {
        let command = format!("kill -KILL -- -{pgid} 2>/dev/null; kill -KILL {pgid} 2>/dev/null; true");
        if let Err(error) = self.run_helper(&command, None).await {
            tracing::warn!(host = %self.target.host_id, pgid, %error, "could not kill the remote process group");
        }
    }

    /// A shell fragment that fails with [`ESCAPE_EXIT`] unless `path` (quoted) resolves inside
    /// the home.
    fn inside_check(&self, path: &str) -> String {
        format!(
            "real=$(realpath -m -- {path}) && home=$(realpath -m -- {home}) && case \"$real\" in \"$home\"|\"$home\"/*) ;; *) exit {ESCAPE_EXIT};; esac",
            path = quote(path),
            home = quote(&self.target.home),
        )
    }

    fn check_helper(&self, what: &str, rel: &str, result: &HelperResult) -> Result<(), TransportError> {
        match result.status {
            0 => Ok(()),
            ESCAPE_EXIT => Err(TransportError::PathEscapes(rel.to_string())),
            status => Err(TransportError::Other(format!(
                "{what} ~/{rel} on {} failed (exit {status}): {}",
                self.target.name(),
                result.stderr.trim()
            ))),
        }
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
        channel.exec(true, command.as_bytes()).await.map_err(lost(&self.target))?;
        channel.eof().await.map_err(lost(&self.target))?;

        let mut stdout = LineSplitter::new(Stream::Stdout);
        let mut stderr = LineSplitter::new(Stream::Stderr);
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
        let drain_limit = tokio::time::Instant::now() + OUTPUT_DRAIN_LIMIT;
        loop {
            let idle_until = (tokio::time::Instant::now() + OUTPUT_IDLE_TIMEOUT).min(drain_limit);
            tokio::select! {
                message = channel.wait() => match message {
                    None | Some(ChannelMsg::Close) => break,
                    Some(ChannelMsg::Data { data }) => {
                        for line in stdout.push(&data) {
                            let _ = output.send(line).await;
                        }
                    }
                    Some(ChannelMsg::ExtendedData { data, .. }) => {
                        for line in stderr.push(&data) {
                            let _ = output.send(line).await;
                        }
                    }
                    Some(_) => {}
                },
                _ = tokio::time::sleep_until(idle_until) => break,
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
        let command = format!(
            "mkdir -p -- {dir} && {check} && tar -x -f - --no-same-owner -C {dir}",
            dir = quote(&dir),
            check = self.inside_check(&dir),
        );
        let result = self.run_helper(&command, Some(&archive)).await?;
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
        let temp = format!("{parent}/.gantry-write-{file_name}");
        let target = format!("{parent}/{file_name}");
        // Write beside the target and rename over it: a symlink at the target is replaced, never
        // followed.
        let command = format!(
            "mkdir -p -- {parent} && {check} && cat > {temp} && mv -f -- {temp} {target}",
            parent = quote(&parent),
            check = self.inside_check(&parent),
            temp = quote(&temp),
            target = quote(&target),
        );
        let result = self.run_helper(&command, Some(&contents)).await?;
        self.check_helper("writing", path, &result)
    }

    async fn read_file(&self, path: &str, max_bytes: usize) -> Result<Option<Vec<u8>>, TransportError> {
        let full = join_home(&self.target.home, &relative(path)?);
        let command = format!(
            "[ -e {full} ] || exit {MISSING_EXIT}; {check} && [ -f \"$real\" ] || exit {MISSING_EXIT}; head -c {max_bytes} -- \"$real\"",
            full = quote(&full),
            check = self.inside_check(&full),
        );
        let mut result = self.run_helper(&command, None).await?;
        if result.status == MISSING_EXIT {
            return Ok(None);
        }
        self.check_helper("reading", path, &result)?;
        result.stdout.truncate(max_bytes);
        Ok(Some(result.stdout))
    }
}

/// What a helper command left.
struct HelperResult {
    status: u32,
    stdout: Vec<u8>,
    stderr: String,
}

/// The russh client handler: accepts exactly one host key.
struct Client {
    host_key: PublicKey,
    /// What the server presented when it was refused, for the error message.
    refused: Arc<std::sync::Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let presented = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(certificate) => {
                *self.refused.lock().unwrap() = Some(format!(
                    "a certificate signed by {}",
                    certificate.signature_key().fingerprint(russh::keys::HashAlg::Sha256)
                ));
                return Ok(false);
            }
        };
        // Compare the key material only: the comment is not part of the key.
        if presented.key_data() == self.host_key.key_data() {
            return Ok(true);
        }
        let fingerprint = presented.fingerprint(russh::keys::HashAlg::Sha256);
        *self.refused.lock().unwrap() = Some(format!("{} {fingerprint}", presented.algorithm()));
        Ok(false)
    }
}

/// Why one connection attempt failed, and whether trying again can help.
enum AttemptError {
    /// The machine may still be booting: refused, reset, timed out.
    Retry(String),
    /// Trying again cannot help: a wrong host key, a refused key.
    Fatal(TransportError),
}

async fn connect_with_retry(target: &SshTarget, timeout: Duration) -> Result<Handle<Client>, TransportError> {
    let give_up = tokio::time::Instant::now() + timeout;
    let mut backoff = CONNECT_BACKOFF_START;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let remaining = give_up.saturating_duration_since(tokio::time::Instant::now());
        let attempt_timeout = CONNECT_ATTEMPT_TIMEOUT.min(remaining.max(Duration::from_millis(1)));
        let last_error = match tokio::time::timeout(attempt_timeout, connect_once(target)).await {
            Ok(Ok(handle)) => return Ok(handle),
            Ok(Err(AttemptError::Fatal(error))) => return Err(error),
            Ok(Err(AttemptError::Retry(message))) => message,
            Err(_) => format!("no answer within {attempt_timeout:?}"),
        };
        let now = tokio::time::Instant::now();
        if now + backoff >= give_up {
            return Err(TransportError::Connect(format!(
                "{}: gave up after {attempts} attempts in {timeout:?}: {last_error}",
                target.name()
            )));
        }
        tracing::debug!(machine = %target.name(), attempts, error = %last_error, "ssh connection attempt failed; retrying");
        // Poll with a deadline: a booting machine gives no event to wait on.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(CONNECT_BACKOFF_MAX);
    }
}

async fn connect_once(target: &SshTarget) -> Result<Handle<Client>, AttemptError> {
    let config = Arc::new(client::Config {
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
        ..Default::default()
    });
    let refused = Arc::new(std::sync::Mutex::new(None));
    let handler = Client { host_key: target.host_key.clone(), refused: refused.clone() };
    let mut handle = match client::connect(config, target.socket(), handler).await {
        Ok(handle) => handle,
        Err(error) => {
            if let Some(presented) = refused.lock().unwrap().take() {
                return Err(AttemptError::Fatal(TransportError::HostKeyMismatch(format!(
                    "{} presented host key {presented}, not the configured {} {}",
                    target.name(),
                    target.host_key.algorithm(),
                    target.host_key.fingerprint(russh::keys::HashAlg::Sha256)
                ))));
            }
            return Err(AttemptError::Retry(error.to_string()));
        }
    };
    let hash = if target.key.algorithm().is_rsa() {
        handle.best_supported_rsa_hash().await.ok().flatten().flatten()
    } else {
        None
    };
    let auth = handle
        .authenticate_publickey(target.user.clone(), PrivateKeyWithHashAlg::new(target.key.clone(), hash))
        .await
        .map_err(|error| AttemptError::Retry(format!("authentication interrupted: {error}")))?;
    if !auth.success() {
        return Err(AttemptError::Fatal(TransportError::Auth(format!(
            "{} refused key {} for user {}",
            target.name(),
            target.key.public_key().fingerprint(russh::keys::HashAlg::Sha256),
            target.user
        ))));
    }
    Ok(handle)
}

/// Parse `ssh-ed25519 AAAA… [comment]` as in the config's `host_key`.
pub fn parse_public_key(openssh: &str) -> Result<PublicKey, TransportError> {
    PublicKey::from_openssh(openssh.trim()).map_err(|error| {
        TransportError::Other(format!("not an OpenSSH public key ({error}): {:?}", abbreviate(openssh)))
    })
}

fn abbreviate(text: &str) -> String {
    const SHOWN: usize = 40;
    let text = text.trim();
    match text.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

fn lost(target: &SshTarget) -> impl Fn(russh::Error) -> TransportError + '_ {
    move |error| TransportError::ConnectionLost(format!("{}: {error}", target.name()))
}

/// The remote script that reaps a host: every process whose environment carries both markers, or
/// whose working directory is inside the home, gets SIGTERM, then SIGKILL after the grace period,
/// until none is left or the deadline passes; then the home is removed.
fn reaper_script(id: &HostId, home: &str) -> String {
    format!(
        r#"cd / || exit 1
id_marker={id_marker}
home_marker={home_marker}
home={home}
if [ -e "$home" ]; then home=$(realpath -- "$home"); fi
self=$$
now() {{ date +%s; }}
start=$(now)
scan() {{
  for d in /proc/[0-9]*; do
    p=${{d#/proc/}}
    [ "$p" = "$self" ] && continue
    env=$(tr '\0' '\n' < "$d/environ" 2>/dev/null) || env=
    if printf '%s\n' "$env" | grep -qxF -e "$id_marker" && printf '%s\n' "$env" | grep -qxF -e "$home_marker"; then
      echo "$p"; continue
    fi
    cwd=$(readlink "$d/cwd" 2>/dev/null) || continue
    cwd=${{cwd% (deleted)}}
    case "$cwd" in "$home"|"$home"/*) echo "$p";; esac
  done
}}
termed=
while :; do
  pids=$(scan | grep -vxF -e "$self" || true)
  [ -z "$pids" ] && break
  elapsed=$(( $(now) - start ))
  if [ "$elapsed" -ge {deadline} ]; then echo "processes still alive: $pids" >&2; exit 2; fi
  if [ -z "$termed" ] && [ "$elapsed" -lt {grace} ]; then
    kill -TERM $pids 2>/dev/null || true; termed=1
  elif [ "$elapsed" -ge {grace} ]; then
    kill -KILL $pids 2>/dev/null || true
  fi
  sleep 0.05
done
rm -rf -- "$home"
"#,
        id_marker = quote(&format!("{HOST_MARKER_VAR}={id}")),
        home_marker = quote(&format!("{HOST_HOME_VAR}={home}")),
        home = quote(home),
        deadline = REAP_DEADLINE.as_secs(),
        grace = REAP_GRACE.min(REAP_DEADLINE / 2).as_secs(),
    )
}

/// `text` as one single-quoted shell word.
pub(crate) fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The remote path of `rel` inside `home`.
fn join_home(home: &str, rel: &Path) -> String {
    let rel = rel.to_string_lossy();
    let home = home.trim_end_matches('/');
    if rel.is_empty() {
        home.to_string()
    } else {
        format!("{home}/{rel}")
    }
}

/// The number of a signal sshd reported by name (Linux numbering).
fn signal_number(signal: &Sig) -> i32 {
    match signal {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(name) => match name.as_str() {
            "BUS" => 7,
            "USR2" => 12,
            "STKFLT" => 16,
            "CHLD" => 17,
            "CONT" => 18,
            "STOP" => 19,
            "TSTP" => 20,
            "XCPU" => 24,
            "XFSZ" => 25,
            "SYS" => 31,
            _ => 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn relative_paths_refuse_root_and_parent() {
        assert_eq!(join_home("/h/", &relative("a/./b").unwrap()), "/h/a/b");
        assert_eq!(join_home("/h", &relative("").unwrap()), "/h");
        assert!(matches!(relative("/etc"), Err(TransportError::PathEscapes(_))));
        assert!(matches!(relative("a/../../b"), Err(TransportError::PathEscapes(_))));
    }
}
