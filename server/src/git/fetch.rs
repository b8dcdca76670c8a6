//! Fetching into a mirror, by one of two means chosen by the URL.
//!
//! - **A repository on this machine** (a path, or a `file://` URL) is fetched inside the server by
//!   libgit2, on a blocking thread: no process to start, so the hundreds of fetches a burst of
//!   manual builds makes (each build of a branch fetches it first) cost a fraction of a
//!   millisecond each instead of a `git` process's 15 ms or so.
//! - **A repository on a host** (`https://`, `ssh://`, `git://`, scp-like `user@host:path`) is
//!   fetched by the `git` command, as Jenkins, GitLab's runner and Buildkite fetch: git's own
//!   transports, proxy settings and ssh configuration, and no TLS or SSH library linked into the
//!   server for it (OpenSSL, which libgit2's https and ssh transports linked, was loaded at every
//!   start and held 1.7 MiB of an idle server's 11).
//!
//! The `git` command never has the URL's secret in its arguments, which any user of the machine can
//! read: the URL goes without it ([`RepoUrl::for_git_command`]), and a credential helper, scoped
//! to the URL's scheme and host and replacing any the server's user configured, hands git the
//! login from its environment, which only this server's user (and root) can read. git runs
//! non-interactively: no prompt for a password, ssh in batch mode (keys only, from the agent or
//! the server user's `~/.ssh`; a host key must already be in `known_hosts`), stalled http
//! transfers aborted after [`HTTP_STALL`]. It runs in a process group of its own, and a fetch
//! still running after its timeout ([`super::FETCH_TIMEOUT`]) is killed with everything it
//! started (its ssh, its `git-remote-https`). What it printed becomes the error, credentials
//! scrubbed out.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use git2::{AutotagOption, FetchOptions, FetchPrune, RemoteCallbacks, Repository};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt as _;

use crate::repo_url::RepoUrl;

/// ssh as git runs it, unless the server's environment sets `GIT_SSH_COMMAND` or `GIT_SSH`:
/// never a prompt (an unknown host key or a missing key fails the fetch), a connect timeout, and
/// keepalives that end a dead connection within a minute.
const SSH_COMMAND: &str =
    "ssh -o BatchMode=yes -o ConnectTimeout=15 -o ServerAliveInterval=15 -o ServerAliveCountMax=4";

/// An http transfer slower than one byte a second for this long is aborted (git's
/// `http.lowSpeedTime`).
pub const HTTP_STALL: Duration = Duration::from_secs(60);

/// How much of what git prints is kept for the error.
const STDERR_KEPT: u64 = 8 * 1024;

/// How long git's output may stay open after git exited (a process it left behind holds it).
const STDERR_GRACE: Duration = Duration::from_secs(1);

/// The credential helper git runs (as a shell snippet, with `get`, `store` or `erase`): it answers
/// `get` with the login from the environment and ignores the rest.
const CREDENTIAL_HELPER: &str = r#"!f() { test "$1" = get || exit 0; printf 'username=%s\npassword=%s\n' "$GANTRY_GIT_USERNAME" "$GANTRY_GIT_PASSWORD"; }; f"#;

/// Variables that would point git at another repository than the mirror.
const REPOSITORY_VARIABLES: [&str; 8] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_COMMON_DIR",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_CONFIG_PARAMETERS",
    "GIT_NAMESPACE",
];

/// Why a fetch failed.
#[derive(Debug)]
pub(super) enum FetchError {
    /// The remote has no ref a refspec names (a request's ref that does not exist).
    NoSuchRef,
    /// Anything else, as git or libgit2 said it, credentials scrubbed out.
    Failed(String),
}

/// Fetch `refspecs` of `url` into the bare mirror at `mirror` (created on first use), pruning the
/// refs the refspecs cover that the remote deleted; a fetch running longer than `timeout` is
/// stopped.
pub(super) async fn fetch(
    mirror: &Path,
    url: &RepoUrl,
    refspecs: &[&str],
    timeout: Duration,
) -> Result<(), FetchError> {
    let started = Instant::now();
    let (path, url_, refspecs_): (_, _, Vec<String>) =
        (mirror.to_path_buf(), url.clone(), refspecs.iter().map(|r| r.to_string()).collect());
    let on_this_machine = url.is_on_this_machine();
    let opened = tokio::task::spawn_blocking(move || {
        let mirror = open_or_init(&path).map_err(|e| FetchError::Failed(url_.scrub(e.message())))?;
        if on_this_machine {
            let refspecs: Vec<&str> = refspecs_.iter().map(String::as_str).collect();
            fetch_in_process(&mirror, &url_, &refspecs, timeout)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| FetchError::Failed(format!("the fetch task failed: {e}")))?;
    opened?;
    if !on_this_machine {
        fetch_with_git(mirror, url, refspecs, timeout).await?;
    }
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, on_this_machine, "fetched");
    Ok(())
}

fn open_or_init(path: &Path) -> Result<Repository, git2::Error> {
    Repository::open_bare(path).or_else(|_| Repository::init_bare(path))
}

/// A repository on this machine, fetched by libgit2.
fn fetch_in_process(
    mirror: &Repository,
    url: &RepoUrl,
    refspecs: &[&str],
    timeout: Duration,
) -> Result<(), FetchError> {
    let failed = |e: git2::Error| FetchError::Failed(url.scrub(e.message()));
    let mut remote = mirror.remote_anonymous(url.expose()).map_err(failed)?;
    let started = Instant::now();
    let mut callbacks = RemoteCallbacks::new();
    // Returning false from the progress callback aborts a transfer that takes too long.
    callbacks.transfer_progress(move |_| started.elapsed() < timeout);
    let mut options = FetchOptions::new();
    options.remote_callbacks(callbacks).prune(FetchPrune::On).download_tags(AutotagOption::None);
    remote.fetch(refspecs, Some(&mut options), None).map_err(failed)
}

/// A repository on a host, fetched by the `git` command.
async fn fetch_with_git(mirror: &Path, url: &RepoUrl, refspecs: &[&str], timeout: Duration) -> Result<(), FetchError> {
    let (remote, login) = url.for_git_command();
    let mut config: Vec<(String, String)> = vec![
        // Asked for a password anyway, git asks nobody (no askpass program, no terminal).
        ("core.askPass".into(), String::new()),
        // Maintenance after a fetch (packing loose objects) finishes before git exits, inside the
        // fetch's lock and timeout, instead of in a process left behind.
        ("gc.autoDetach".into(), "false".into()),
        ("maintenance.autoDetach".into(), "false".into()),
        ("http.lowSpeedLimit".into(), "1".into()),
        ("http.lowSpeedTime".into(), HTTP_STALL.as_secs().to_string()),
    ];
    let mut command = tokio::process::Command::new("git");
    if let Some(login) = login {
        if [&login.username, &login.password].iter().any(|s| s.contains(['\n', '\0'])) {
            return Err(FetchError::Failed("the URL's credentials hold a line break, which git cannot take".into()));
        }
        // An empty helper first empties the list of helpers configured so far.
        config.push(("credential.helper".into(), String::new()));
        config.push((format!("credential.{}.helper", origin(&remote)), CREDENTIAL_HELPER.into()));
        command.env("GANTRY_GIT_USERNAME", login.username).env("GANTRY_GIT_PASSWORD", login.password);
    }
    command.env("GIT_CONFIG_COUNT", config.len().to_string());
    for (i, (key, value)) in config.iter().enumerate() {
        command.env(format!("GIT_CONFIG_KEY_{i}"), key).env(format!("GIT_CONFIG_VALUE_{i}"), value);
    }
    for variable in REPOSITORY_VARIABLES.iter().chain(&["GIT_ASKPASS", "SSH_ASKPASS"]) {
        command.env_remove(variable);
    }
    if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
        command.env("GIT_SSH_COMMAND", SSH_COMMAND);
    }
    command
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .arg("-C")
        .arg(mirror)
        .args(["fetch", "--quiet", "--prune", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules", "--"])
        .arg(&remote)
        .args(refspecs)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| FetchError::Failed(format!("could not run git: {e}")))?;
    // Declared after the child, so dropped before it: a fetch abandoned midway (the server
    // stopping) kills the whole group while its leader is not yet reaped.
    let mut group = Group(child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw));
    let mut stderr = child.stderr.take().expect("git's stderr is piped");
    let output = tokio::spawn(async move {
        let mut kept = Vec::new();
        let _ = (&mut stderr).take(STDERR_KEPT).read_to_end(&mut kept).await;
        // Read the rest too, so git never blocks on a full pipe.
        let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        kept
    });
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => {
            group.0 = None;
            status.map_err(|e| FetchError::Failed(format!("waiting for git failed: {e}")))?
        }
        Err(_) => {
            group.kill();
            let _ = child.wait().await;
            output.abort();
            return Err(FetchError::Failed(format!(
                "git fetch did not finish within {}",
                humantime::format_duration(timeout)
            )));
        }
    };
    if status.success() {
        output.abort();
        return Ok(());
    }
    let printed = match tokio::time::timeout(STDERR_GRACE, output).await {
        Ok(Ok(kept)) => String::from_utf8_lossy(&kept).trim().to_string(),
        _ => String::new(),
    };
    if printed.contains("couldn't find remote ref") {
        return Err(FetchError::NoSuchRef);
    }
    let message = if printed.is_empty() { format!("git fetch failed ({status})") } else { url.scrub(&printed) };
    Err(FetchError::Failed(message))
}

/// The process group of a running `git`, killed when this is dropped unless its leader was reaped
/// first (`None`): a reaped leader's id may be taken by another process.
struct Group(Option<Pid>);

impl Group {
    fn kill(&mut self) {
        if let Some(group) = self.0.take() {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `scheme://host[:port]` of a URL, what a credential helper is scoped to (git matches it against
/// every URL it asks credentials for, a redirect's included); the whole URL when it has no
/// authority.
fn origin(url: &str) -> &str {
    let Some(scheme_end) = url.find("://") else { return url };
    let start = scheme_end + "://".len();
    let end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    &url[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_is_scoped_to_the_scheme_and_host() {
        assert_eq!(origin("https://git.example.com/acme/shop.git"), "https://git.example.com");
        assert_eq!(origin("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(origin("http://127.0.0.1:8080?x#y"), "http://127.0.0.1:8080");
    }
}
