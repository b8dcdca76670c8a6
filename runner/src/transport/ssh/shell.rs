//! The shell commands the SSH transport runs on a host: the wrapper that starts a script in a
//! clean environment as the leader of its process group, the kill of that group, the path check
//! that keeps every file operation inside the host's home, tar upload, file write and read, and
//! the reaper that finds every process by the host's marker. Helper commands run on their own
//! channel with a bounded time and report their exit status and stderr.
//!
//! Nothing here decides when a command runs or a host is torn down.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use russh::{ChannelMsg, Sig};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncWriteExt;

use super::connect::lost;
use super::SshTransport;
use crate::env::is_env_name;
use crate::process::{HOST_HOME_VAR, HOST_MARKER_VAR, REAP_DEADLINE, REAP_GRACE};
use crate::provider::HostId;
use crate::transport::{relative, ExecRequest, TransportError};

/// `PATH` of every process on a remote host.
pub const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `LANG` of every process on a remote host.
const HOST_LANG: &str = "C.UTF-8";

/// The shell that runs scripts, as `sh -e -c SCRIPT`.
const SHELL: &str = "/bin/sh";

/// The per-host temporary directory, relative to the home; `TMPDIR` points at it.
pub(super) const TMP_DIR: &str = "tmp";

/// The longest a helper command (kill, mkdir, cat, tar, the reaper) may run, plus the time its
/// input takes at [`MIN_UPLOAD_BYTES_PER_SEC`].
const HELPER_TIMEOUT: Duration = Duration::from_secs(120);

/// The slowest upload rate tolerated before an upload counts as hung.
const MIN_UPLOAD_BYTES_PER_SEC: u64 = 256 * 1024;

/// Mode of a file written by `write_file`, as the local transport writes it.
const FILE_MODE: u32 = 0o644;

/// `mktemp`'s template for the file `write_file` fills before renaming it over the target.
const WRITE_TEMP_TEMPLATE: &str = ".gantry-write-XXXXXXXXXX";

/// Exit codes of signalled processes are `128 + signal`, as shells report them.
pub(super) const SIGNAL_EXIT_BASE: i32 = 128;

/// Most bytes of a helper command's stderr kept for an error message.
const HELPER_STDERR_LIMIT: usize = 4096;

/// Exit code of the path check when a path resolves outside the home.
const ESCAPE_EXIT: u32 = 86;

/// Exit code of `read_file` when the file does not exist.
pub(super) const MISSING_EXIT: u32 = 87;

/// Exit code of the exec wrapper when the working directory is missing (before the script runs).
pub(super) const NO_CWD_EXIT: i32 = 88;

impl SshTransport {
    /// Run a helper command (plain environment, cwd `/`), feeding it `stdin` when given, and
    /// collect its output.
    pub(super) async fn run_helper(&self, command: &str, stdin: Option<&[u8]>) -> Result<HelperResult, TransportError> {
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
    /// printing its pid (the process group id) as the first line of stdout, and the bytes to send
    /// on its standard input.
    ///
    /// Secrets never appear on the command line, where every user of the host could read them in
    /// `/proc/*/cmdline` while the step runs: they travel on standard input as `export` lines
    /// that a first shell evaluates before it becomes the step's shell, whose standard input is
    /// then `/dev/null`, as it would be without them.
    pub(super) fn exec_command(&self, request: &ExecRequest) -> Result<ExecCommand, TransportError> {
        step_command(&self.target.home, &self.target.user, &self.target.host_id, request)
    }

    /// Kill the process group `pgid` through a fresh channel.
    pub(super) async fn kill_group(&self, pgid: i32) {
        let command = format!("kill -KILL -- -{pgid} 2>/dev/null; kill -KILL {pgid} 2>/dev/null; true");
        if let Err(error) = self.run_helper(&command, None).await {
            tracing::warn!(host = %self.target.host_id, pgid, %error, "could not kill the remote process group");
        }
    }

    /// The command that unpacks a tar stream from stdin into `dir` (absolute, inside the home).
    pub(super) fn untar_command(&self, dir: &str) -> String {
        format!(
            "mkdir -p -- {dir} && {check} && tar -x -f - --no-same-owner -C {dir}",
            dir = quote(dir),
            check = self.inside_check(dir),
        )
    }

    /// The command that writes stdin to `file_name` in `parent` (absolute, inside the home).
    ///
    /// Nothing a commit (or a step) left on the way is followed out of the home: `parent` is
    /// checked before anything is created and only its resolved path is used; the data goes to a
    /// fresh file `mktemp` creates with `O_EXCL` (so a symlink planted at a predictable temporary
    /// name is never written through); and `mv -T` renames it over the target itself, so a symlink
    /// at the target, even one to a directory, is replaced, never followed.
    pub(super) fn write_command(&self, parent: &str, file_name: &str) -> String {
        format!(
            "{check} && mkdir -p -- \"$real\" && tmp=$(mktemp -p \"$real\" {temp}) && \
             {{ chmod {FILE_MODE:o} -- \"$tmp\" && cat > \"$tmp\" && mv -f -T -- \"$tmp\" \"$real\"/{name} || {{ rm -f -- \"$tmp\"; exit 1; }}; }}",
            check = self.inside_check(parent),
            temp = quote(WRITE_TEMP_TEMPLATE),
            name = quote(file_name),
        )
    }

    /// The command that prints at most `max_bytes` of the regular file `full` (absolute), or exits
    /// with [`MISSING_EXIT`] when there is none.
    pub(super) fn read_command(&self, full: &str, max_bytes: usize) -> String {
        format!(
            "[ -e {full} ] || exit {MISSING_EXIT}; {check} && [ -f \"$real\" ] || exit {MISSING_EXIT}; head -c {max_bytes} -- \"$real\"",
            full = quote(full),
            check = self.inside_check(full),
        )
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

    pub(super) fn check_helper(&self, what: &str, rel: &str, result: &HelperResult) -> Result<(), TransportError> {
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

/// [`SshTransport::exec_command`] for the host living in `home`, logged in as `user`.
fn step_command(
    home: &str,
    user: &str,
    host_id: &HostId,
    request: &ExecRequest,
) -> Result<ExecCommand, TransportError> {
    let cwd = join_home(home, &relative(&request.cwd)?);
    let mut env = BTreeMap::from([
        ("PATH".to_string(), HOST_PATH.to_string()),
        ("HOME".to_string(), home.to_string()),
        ("USER".to_string(), user.to_string()),
        ("LOGNAME".to_string(), user.to_string()),
        ("LANG".to_string(), HOST_LANG.to_string()),
        ("TMPDIR".to_string(), join_home(home, Path::new(TMP_DIR))),
        ("SHELL".to_string(), SHELL.to_string()),
    ]);
    for (name, value) in &request.env {
        check_env_name(name)?;
        env.insert(name.clone(), value.clone());
    }
    let mut stdin = String::new();
    for (name, value) in &request.secrets {
        check_env_name(name)?;
        // A pipeline's `env` of the same name is overridden, as it is on a local host.
        env.remove(name);
        stdin.push_str(&format!("export {name}={}\n", quote(value.expose_secret())));
    }
    // The marker goes last so a pipeline's `env` can never hide a process from teardown.
    env.insert(HOST_MARKER_VAR.to_string(), host_id.to_string());
    env.insert(HOST_HOME_VAR.to_string(), home.to_string());
    let assignments: Vec<String> = env.iter().map(|(name, value)| quote(&format!("{name}={value}"))).collect();
    // sshd makes the session's first process a session and process group leader; the `exec`s
    // keep its pid, so the printed `$$` is the group every process of the script shares.
    let command = format!(
        "mkdir -p {tmp} && {{ cd {cwd} 2>/dev/null || exit {NO_CWD_EXIT}; }} && echo $$ && exec env -i {assignments} {SHELL} -c {load} gantry-step {script}",
        tmp = quote(&join_home(home, Path::new(TMP_DIR))),
        cwd = quote(&cwd),
        assignments = assignments.join(" "),
        load = quote(&format!("eval \"$(cat)\" && exec {SHELL} -e -c \"$1\" </dev/null")),
        script = quote(&request.script),
    );
    Ok(ExecCommand { command, stdin: SecretString::from(stdin) })
}

/// A step's command line and what goes to its standard input (the secrets it names).
pub(super) struct ExecCommand {
    pub(super) command: String,
    pub(super) stdin: SecretString,
}

fn check_env_name(name: &str) -> Result<(), TransportError> {
    if is_env_name(name) {
        Ok(())
    } else {
        Err(TransportError::Other(format!("invalid environment variable name {name:?}")))
    }
}

/// What a helper command left.
pub(super) struct HelperResult {
    pub(super) status: u32,
    pub(super) stdout: Vec<u8>,
    pub(super) stderr: String,
}

/// The remote script that reaps a host: every process whose environment carries both markers, or
/// whose working directory is inside the home, gets SIGTERM, then SIGKILL after the grace period,
/// until none is left or the deadline passes; then the home is removed.
pub(super) fn reaper_script(id: &HostId, home: &str) -> String {
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
pub(super) fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The remote path of `rel` inside `home`.
pub(super) fn join_home(home: &str, rel: &Path) -> String {
    let rel = rel.to_string_lossy();
    let home = home.trim_end_matches('/');
    if rel.is_empty() {
        home.to_string()
    } else {
        format!("{home}/{rel}")
    }
}

/// The number of a signal sshd reported by name (Linux numbering).
pub(super) fn signal_number(signal: &Sig) -> i32 {
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
    fn secrets_go_to_standard_input_never_to_the_command_line() {
        let mut request = ExecRequest {
            script: "make test".into(),
            cwd: String::new(),
            env: BTreeMap::from([("MODE".to_string(), "ci".to_string())]),
            secrets: BTreeMap::from([("API_KEY".to_string(), SecretString::from("it's s3cr3t".to_string()))]),
            mask: Default::default(),
            timeout: Duration::from_secs(1),
        };
        let step = step_command("/home/ci/gantry/b1-web", "ci", &HostId("b1-web".into()), &request).unwrap();
        assert!(!step.command.contains("s3cr3t"), "{}", step.command);
        assert!(step.command.contains("MODE=ci"), "{}", step.command);
        assert_eq!(step.stdin.expose_secret(), "export API_KEY='it'\\''s s3cr3t'\n");
        request.secrets.insert("BAD NAME".into(), SecretString::from("x".to_string()));
        assert!(step_command("/h", "ci", &HostId("b1-web".into()), &request).is_err());
    }

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
