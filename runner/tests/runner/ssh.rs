//! The SSH transport and the SSH pool provider against real OpenSSH servers started by the tests
//! on loopback addresses of their own: streamed output, exit codes, the environment and marker,
//! tree upload, files, path checks, host key refusal, timeouts, cancellation, a lost connection,
//! leases, teardown (daemons included, and from the provider id alone after a crash), and a whole
//! two-host build through `execute`. The servers run on this machine, so tests check remote
//! results directly in the file system and `/proc`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gantry_runner::event::{BuildEvent, BuildStatus, Stream};
use gantry_runner::execute;
use gantry_runner::provider::ssh_pool::{SshMachine, SshPoolConfig, SshPoolProvider, DEFAULT_WORK_ROOT};
use gantry_runner::provider::{HostId, HostRequest, Provider, ProviderError};
use gantry_runner::source::{GitCommitSource, Source};
use gantry_runner::transport::ssh::{parse_public_key, SshTarget, SshTransport};
use gantry_runner::transport::{ExecOutcome, ExecRequest, OutputLine, Transport, TransportError};
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;
use crate::sshd::Sshd;

/// How long connecting to a test sshd may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// A step timeout long enough never to fire in a test that does not test timeouts.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a test waits for a line it expects.
const LINE_DEADLINE: Duration = Duration::from_secs(20);

fn unique_id(name: &str) -> HostId {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    HostId(format!("s{}-{}-{name}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)))
}

fn target(sshd: &Sshd, home: &Path, id: HostId) -> SshTarget {
    SshTarget {
        address: sshd.address.into(),
        port: sshd.port,
        user: sshd.user.clone(),
        key: Arc::new(russh::keys::load_secret_key(&sshd.client_key, None).unwrap()),
        host_key: parse_public_key(&sshd.host_key_public).unwrap(),
        home: home.to_string_lossy().into_owned(),
        host_id: id,
    }
}

/// A server, a fresh home directory on it and a connected transport.
struct Remote {
    sshd: Sshd,
    home: tempfile::TempDir,
    transport: SshTransport,
}

async fn remote() -> Remote {
    let sshd = Sshd::start();
    let home = tempfile::tempdir().unwrap();
    let transport = SshTransport::connect(target(&sshd, home.path(), unique_id("t")), CONNECT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", sshd.log()));
    Remote { sshd, home, transport }
}

fn request(script: &str) -> ExecRequest {
    ExecRequest {
        script: script.to_string(),
        cwd: String::new(),
        env: BTreeMap::new(),
        secrets: BTreeMap::new(),
        mask: Default::default(),
        timeout: STEP_TIMEOUT,
    }
}

/// Run a script to its end and collect its lines.
async fn run(
    transport: &SshTransport,
    request: &ExecRequest,
) -> (Result<ExecOutcome, TransportError>, Vec<OutputLine>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let outcome = transport.exec(request, &tx, &CancellationToken::new()).await;
    drop(tx);
    let mut lines = Vec::new();
    while let Some(line) = rx.recv().await {
        lines.push(line);
    }
    (outcome, lines)
}

fn texts(lines: &[OutputLine], stream: Stream) -> Vec<String> {
    lines.iter().filter(|l| l.stream == stream).map(|l| l.text.clone()).collect()
}

/// Wait for the next line, with a deadline.
async fn next_line(rx: &mut mpsc::Receiver<OutputLine>) -> OutputLine {
    tokio::time::timeout(LINE_DEADLINE, rx.recv()).await.expect("no line in time").expect("output closed")
}

#[tokio::test]
async fn output_streams_while_the_command_runs_and_exit_codes_come_back() {
    let r = remote().await;
    let go = r.home.path().join("go");
    let script = "echo first\necho err-line >&2\nwhile [ ! -e go ]; do sleep 0.01; done\necho second\nexit 3";
    let (tx, mut rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let req = request(script);
    {
        let exec = r.transport.exec(&req, &tx, &cancel);
        tokio::pin!(exec);
        // The first line must arrive while the script still waits for `go`.
        let first = tokio::select! {
            line = next_line(&mut rx) => line,
            outcome = &mut exec => panic!("the script ended before its first line arrived: {outcome:?}"),
        };
        assert_eq!(first, OutputLine { stream: Stream::Stdout, text: "first".into() });
        std::fs::write(&go, "").unwrap();
        let outcome = exec.await.unwrap();
        assert_eq!(outcome, ExecOutcome::Exited(3));
    }
    drop(tx);
    let mut rest = Vec::new();
    while let Some(line) = rx.recv().await {
        rest.push(line);
    }
    assert!(rest.contains(&OutputLine { stream: Stream::Stderr, text: "err-line".into() }), "{rest:?}");
    assert_eq!(texts(&rest, Stream::Stdout), ["second"]);

    let (outcome, _) = run(&r.transport, &request("true")).await;
    assert_eq!(outcome.unwrap(), ExecOutcome::Exited(0));
    // `sh -e`: the first failing command ends the script.
    let (outcome, lines) = run(&r.transport, &request("false\necho unreachable")).await;
    assert_eq!(outcome.unwrap(), ExecOutcome::Exited(1));
    assert!(lines.is_empty(), "{lines:?}");
    let (outcome, _) = run(&r.transport, &request("kill -TERM $$")).await;
    assert_eq!(outcome.unwrap(), ExecOutcome::Exited(128 + 15));
}

#[tokio::test]
async fn steps_see_a_clean_environment_with_the_host_marker_in_their_cwd() {
    let r = remote().await;
    std::fs::create_dir(r.home.path().join("sub")).unwrap();
    let mut req = request("env\npwd");
    req.cwd = "sub".into();
    req.env.insert("QUOTED".into(), "it's \"x\" $HOME".into());
    req.env.insert("GANTRY_HOST_ID".into(), "forged".into());
    let (outcome, lines) = run(&r.transport, &req).await;
    assert_eq!(outcome.unwrap(), ExecOutcome::Exited(0), "{lines:?}");
    let out = texts(&lines, Stream::Stdout);
    let home = r.home.path().to_string_lossy().into_owned();
    let id = r.transport.target().host_id.to_string();
    assert!(out.contains(&format!("HOME={home}")), "{out:?}");
    assert!(out.contains(&format!("GANTRY_HOST_ID={id}")), "the marker must win over a step's env: {out:?}");
    assert!(out.contains(&format!("GANTRY_HOST_HOME={home}")), "{out:?}");
    assert!(out.contains(&"QUOTED=it's \"x\" $HOME".to_string()), "{out:?}");
    assert!(out.contains(&format!("TMPDIR={home}/tmp")), "{out:?}");
    assert!(!out.iter().any(|l| l.starts_with("SSH_")), "sshd's variables leak into steps: {out:?}");
    assert_eq!(out.last().unwrap(), &format!("{home}/sub"));
    let missing = ExecRequest { cwd: "no/such/dir".into(), ..request("true") };
    let error = run(&r.transport, &missing).await.0.unwrap_err();
    assert!(error.to_string().contains("does not exist"), "{error}");
    let mut bad = request("true");
    bad.env.insert("NOT A NAME".into(), "x".into());
    assert!(matches!(run(&r.transport, &bad).await.0, Err(TransportError::Other(_))));
}

#[tokio::test]
async fn a_tree_uploads_in_one_stream_with_modes_and_symlinks() {
    let r = remote().await;
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, mode: u32, contents: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(mode);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, contents).unwrap();
    };
    add("src/main.rs", 0o644, b"fn main() {}\n");
    add("ci/run.sh", 0o755, b"#!/bin/sh\necho ran\n");
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    builder.append_link(&mut link, "latest", "src/main.rs").unwrap();
    let archive = builder.into_inner().unwrap();

    r.transport.upload_tar("code/app", archive).await.unwrap();
    let root = r.home.path().join("code/app");
    assert_eq!(std::fs::read_to_string(root.join("src/main.rs")).unwrap(), "fn main() {}\n");
    assert_eq!(std::fs::metadata(root.join("ci/run.sh")).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(std::fs::read_link(root.join("latest")).unwrap(), PathBuf::from("src/main.rs"));
    let (outcome, lines) = run(&r.transport, &ExecRequest { cwd: "code/app".into(), ..request("./ci/run.sh") }).await;
    assert_eq!(outcome.unwrap(), ExecOutcome::Exited(0));
    assert_eq!(texts(&lines, Stream::Stdout), ["ran"]);
}

#[tokio::test]
async fn files_are_written_and_read_inside_the_home_only() {
    let r = remote().await;
    r.transport.write_file("conf/app.env", b"A='1'\nB=2\n".to_vec()).await.unwrap();
    assert_eq!(std::fs::read(r.home.path().join("conf/app.env")).unwrap(), b"A='1'\nB=2\n");
    assert_eq!(r.transport.read_file("conf/app.env", 1024).await.unwrap().unwrap(), b"A='1'\nB=2\n");
    assert_eq!(r.transport.read_file("conf/app.env", 3).await.unwrap().unwrap(), b"A='");
    assert_eq!(r.transport.read_file("conf/missing.xml", 1024).await.unwrap(), None);
    assert_eq!(r.transport.read_file("conf", 1024).await.unwrap(), None, "a directory is no file");
    let binary: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    r.transport.write_file("bin/blob", binary.clone()).await.unwrap();
    assert_eq!(r.transport.read_file("bin/blob", 1 << 20).await.unwrap().unwrap(), binary);

    // Paths that leave the home, by name or through a symlink, are refused.
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), r.home.path().join("out")).unwrap();
    std::fs::write(outside.path().join("secret"), "s").unwrap();
    for result in [
        r.transport.write_file("../x", b"x".to_vec()).await,
        r.transport.write_file("/tmp/x", b"x".to_vec()).await,
        r.transport.write_file("out/x", b"x".to_vec()).await,
        r.transport.upload_tar("out", tar::Builder::new(Vec::new()).into_inner().unwrap()).await,
    ] {
        assert!(matches!(result, Err(TransportError::PathEscapes(_))), "{result:?}");
    }
    // Refused before the remote end read a byte of a large input: still the path error.
    let big = vec![b'x'; 8 << 20];
    let result = r.transport.write_file("out/big", big).await;
    assert!(matches!(result, Err(TransportError::PathEscapes(_))), "{result:?}");
    assert!(matches!(r.transport.read_file("out/secret", 10).await, Err(TransportError::PathEscapes(_))));
    assert!(matches!(r.transport.read_file("../etc/passwd", 10).await, Err(TransportError::PathEscapes(_))));
    assert!(!outside.path().join("x").exists());
}

#[tokio::test]
async fn writing_a_file_never_follows_a_symlink_a_commit_placed() {
    let r = remote().await;
    let outside = tempfile::tempdir().unwrap();
    let out = outside.path().to_str().unwrap().to_string();
    std::fs::write(outside.path().join("victim"), "untouched").unwrap();
    // A commit whose tree plants symlinks where config pushes land: at the target itself, at the
    // name the old temporary file had, and a target that is a link to a directory outside.
    let repo = TestRepo::new();
    let victim = format!("{out}/victim");
    let commit = repo.commit(&[
        ("conf/app.env", Entry::Symlink(&victim)),
        ("conf/.gantry-write-app.env", Entry::Symlink(&victim)),
        ("conf/.gantry-write-db.env", Entry::Symlink(&out)),
        ("conf/settings", Entry::Symlink(&out)),
        ("README", Entry::File("x\n")),
    ]);
    let source = GitCommitSource { repo_path: repo.path().to_path_buf(), commit, label: "shop".into() };
    let mut archive = Vec::new();
    source.archive("", "", &mut archive).unwrap();
    r.transport.upload_tar("code", archive).await.unwrap();

    for (path, contents) in
        [("code/conf/app.env", "A=1\n"), ("code/conf/db.env", "B=2\n"), ("code/conf/settings", "C=3\n")]
    {
        r.transport.write_file(path, contents.as_bytes().to_vec()).await.unwrap();
        let written = r.home.path().join(path);
        let meta = std::fs::symlink_metadata(&written).unwrap();
        assert!(meta.file_type().is_file(), "{path} is a regular file now, not a link");
        assert_eq!(std::fs::read_to_string(&written).unwrap(), contents);
    }
    // Nothing outside the home changed: the victim keeps its text and no file appeared beside it.
    assert_eq!(std::fs::read_to_string(outside.path().join("victim")).unwrap(), "untouched");
    let names: Vec<_> = std::fs::read_dir(outside.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["victim"], "files appeared outside the home: {names:?}");
}

#[tokio::test]
async fn an_unknown_host_key_refuses_the_connection() {
    let sshd = Sshd::start();
    let home = tempfile::tempdir().unwrap();
    let mut wrong = target(&sshd, home.path(), unique_id("k"));
    // The client's own public key is a valid ed25519 key, but not this server's.
    let other = std::fs::read_to_string(sshd.client_key.with_extension("pub")).unwrap();
    wrong.host_key = parse_public_key(&other).unwrap();
    let error = SshTransport::connect(wrong, CONNECT_TIMEOUT).await.err().expect("a wrong host key must be refused");
    assert!(matches!(error, TransportError::HostKeyMismatch(_)), "{error:?}");
    assert!(error.to_string().contains("host key"), "{error}");

    // The right key with another comment is the same key.
    let mut right = target(&sshd, home.path(), unique_id("k"));
    let body: Vec<&str> = sshd.host_key_public.split_whitespace().take(2).collect();
    right.host_key = parse_public_key(&format!("{} some-other-comment", body.join(" "))).unwrap();
    SshTransport::connect(right, CONNECT_TIMEOUT).await.unwrap();

    // A client key the server does not know is refused too.
    let mut stranger = target(&sshd, home.path(), unique_id("k"));
    let keydir = tempfile::tempdir().unwrap();
    let key = keydir.path().join("k");
    assert!(std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap()
        .success());
    stranger.key = Arc::new(russh::keys::load_secret_key(&key, None).unwrap());
    let error = SshTransport::connect(stranger, CONNECT_TIMEOUT).await.err().expect("an unknown client key");
    assert!(matches!(error, TransportError::Auth(_)), "{error:?}");
    assert!(parse_public_key("ssh-ed25519 not-base64").is_err());
}

#[tokio::test]
async fn a_timeout_kills_the_remote_process_group() {
    let r = remote().await;
    let mut req = request("sleep 1000 &\necho pid=$!\nwait");
    req.timeout = Duration::from_millis(1500);
    let (outcome, lines) = run(&r.transport, &req).await;
    assert_eq!(outcome.unwrap(), ExecOutcome::TimedOut);
    let pids = pids_in(&texts(&lines, Stream::Stdout));
    assert_eq!(pids.len(), 1, "{lines:?}");
    wait_until("the timed-out step's background sleep is gone", || process_gone(pids[0]));
}

#[tokio::test]
async fn secrets_reach_the_step_but_never_a_command_line() {
    let r = remote().await;
    let value = format!("ssh-secret-{}-value", std::process::id());
    let (tx, mut rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let mut req = request(
        "[ \"$API_KEY\" = \"$(cat \"$HOME/expected\")\" ] && echo matches\n[ -z \"$(cat)\" ] && echo stdin-empty\n\
         echo ready\nsleep 1000",
    );
    std::fs::write(r.home.path().join("expected"), &value).unwrap();
    req.secrets.insert("API_KEY".into(), SecretString::from(value.clone()));
    let exec = r.transport.exec(&req, &tx, &cancel);
    tokio::pin!(exec);
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("ready") {
        let line = tokio::select! {
            line = next_line(&mut rx) => line,
            outcome = &mut exec => panic!("ended early: {outcome:?} after {seen:?}"),
        };
        seen.push(line.text);
    }
    assert_eq!(seen, ["matches", "stdin-empty", "ready"]);
    // While the step runs, no process on the machine shows the value in its command line.
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        assert!(
            !cmdline.windows(value.len()).any(|w| w == value.as_bytes()),
            "{} shows the secret: {}",
            entry.path().display(),
            String::from_utf8_lossy(&cmdline)
        );
    }
    cancel.cancel();
    assert_eq!(exec.await.unwrap(), ExecOutcome::Cancelled);
}

#[tokio::test]
async fn cancelling_kills_the_running_command() {
    let r = remote().await;
    let (tx, mut rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let req = request("sleep 1000 &\necho pid=$!\nwait");
    let exec = r.transport.exec(&req, &tx, &cancel);
    tokio::pin!(exec);
    let line = tokio::select! {
        line = next_line(&mut rx) => line,
        outcome = &mut exec => panic!("ended early: {outcome:?}"),
    };
    let pid = pids_in(&[line.text])[0];
    assert!(!process_gone(pid));
    cancel.cancel();
    assert_eq!(exec.await.unwrap(), ExecOutcome::Cancelled);
    wait_until("the cancelled step's sleep is gone", || process_gone(pid));
}

#[tokio::test]
async fn a_lost_connection_fails_the_running_step_and_the_next_one_reconnects() {
    let r = remote().await;
    let (tx, mut rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let req = request("echo ready\nwhile :; do sleep 0.05; done");
    let exec = r.transport.exec(&req, &tx, &cancel);
    tokio::pin!(exec);
    let line = tokio::select! {
        line = next_line(&mut rx) => line,
        outcome = &mut exec => panic!("ended early: {outcome:?}"),
    };
    assert_eq!(line.text, "ready");
    r.sshd.drop_connections();
    let error = tokio::time::timeout(LINE_DEADLINE, exec).await.expect("the step noticed nothing").unwrap_err();
    assert!(matches!(error, TransportError::ConnectionLost(_)), "{error:?}");

    let (outcome, lines) = run(&r.transport, &request("echo again")).await;
    assert_eq!(outcome.unwrap(), ExecOutcome::Exited(0));
    assert_eq!(texts(&lines, Stream::Stdout), ["again"]);
    // The orphaned loop of the lost step is the teardown's to reap.
    r.transport.reap_and_remove().await.unwrap();
    assert!(!r.home.path().exists());
}

fn machine(sshd: &Sshd) -> SshMachine {
    SshMachine {
        address: sshd.address.into(),
        port: sshd.port,
        user: sshd.user.clone(),
        key_file: sshd.client_key.clone(),
        host_key: sshd.host_key_public.clone(),
    }
}

fn pool(machines: Vec<SshMachine>, work_root: &Path, lease_timeout: Duration) -> Arc<SshPoolProvider> {
    let mut config = SshPoolConfig::new(machines);
    config.work_root = work_root.to_string_lossy().into_owned();
    config.lease_timeout = lease_timeout;
    config.connect_timeout = CONNECT_TIMEOUT;
    Arc::new(SshPoolProvider::new(config).unwrap())
}

fn host_request(id: &HostId) -> HostRequest {
    HostRequest {
        id: id.clone(),
        build: "b1".into(),
        role: "app".into(),
        image: None,
        size: None,
        build_timeout: Duration::from_secs(600),
    }
}

#[tokio::test]
async fn the_pool_leases_each_machine_to_one_host_and_waits_then_gives_up() {
    let (a, b) = (Sshd::start(), Sshd::start());
    let work = tempfile::tempdir().unwrap();
    let provider = pool(vec![machine(&a), machine(&b)], work.path(), Duration::from_millis(300));
    assert_eq!(provider.name(), "ssh");
    let (one, two, three) = (unique_id("one"), unique_id("two"), unique_id("three"));
    let first = provider.provision(&host_request(&one)).await.unwrap();
    let second = provider.provision(&host_request(&two)).await.unwrap();
    assert_ne!(first.provider_id, second.provider_id);
    assert_ne!(first.address, second.address);
    let ids = [machine(&a).provider_id(), machine(&b).provider_id()];
    assert!(ids.contains(&first.provider_id) && ids.contains(&second.provider_id));
    assert!(work.path().join(&one.0).join("tmp").is_dir(), "a fresh work dir for the host");

    let error = provider.provision(&host_request(&three)).await.err().expect("a third host has no machine");
    assert!(matches!(error, ProviderError::Exhausted(_)), "{error:?}");

    provider.teardown(&one, Some(&first.provider_id)).await.unwrap();
    provider.teardown(&two, Some(&second.provider_id)).await.unwrap();
    assert!(!work.path().join(&one.0).exists() && !work.path().join(&two.0).exists());
    // Tearing down twice, or a host that never got a machine, succeeds.
    provider.teardown(&one, Some(&first.provider_id)).await.unwrap();
    provider.teardown(&unique_id("never"), None).await.unwrap();

    // A host waiting for a machine gets the one a teardown frees.
    let patient = pool(vec![machine(&a), machine(&b)], work.path(), Duration::from_secs(30));
    let (four, five, six) = (unique_id("four"), unique_id("five"), unique_id("six"));
    let fourth = patient.provision(&host_request(&four)).await.unwrap();
    let fifth = patient.provision(&host_request(&five)).await.unwrap();
    let waiter = {
        let patient = patient.clone();
        let six = six.clone();
        tokio::spawn(async move { patient.provision(&host_request(&six)).await })
    };
    patient.teardown(&four, Some(&fourth.provider_id)).await.unwrap();
    let sixth = waiter.await.unwrap().unwrap();
    assert_eq!(sixth.provider_id, fourth.provider_id);
    patient.teardown(&five, Some(&fifth.provider_id)).await.unwrap();
    patient.teardown(&six, Some(&sixth.provider_id)).await.unwrap();
}

/// Start a daemon (double fork, new session, no output) on a host and return its pid.
async fn start_daemon(transport: &Arc<dyn Transport>) -> i32 {
    let script = "setsid sh -c 'sleep 1000 & echo pid=$! > daemon.pid' </dev/null >/dev/null 2>&1 &\n\
                  while [ ! -s daemon.pid ]; do sleep 0.01; done\ncat daemon.pid";
    let (tx, mut rx) = mpsc::channel(16);
    let outcome = transport.exec(&request(script), &tx, &CancellationToken::new()).await.unwrap();
    assert_eq!(outcome, ExecOutcome::Exited(0));
    drop(tx);
    let mut lines = Vec::new();
    while let Some(line) = rx.recv().await {
        lines.push(line.text);
    }
    let pids = pids_in(&lines);
    assert_eq!(pids.len(), 1, "{lines:?}");
    assert!(!process_gone(pids[0]));
    pids[0]
}

#[tokio::test]
async fn teardown_kills_daemons_and_removes_the_work_dir_even_from_a_new_provider() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let id = unique_id("daemon");
    let provider = pool(vec![machine(&sshd)], work.path(), Duration::from_millis(100));
    let host = provider.provision(&host_request(&id)).await.unwrap();
    let first = start_daemon(&host.transport).await;
    provider.teardown(&id, Some(&host.provider_id)).await.unwrap();
    wait_until("the daemon is gone", || process_gone(first));
    assert!(!work.path().join(&id.0).exists());

    // A crash: the provider that provisioned the host is gone; a new one reaps from the provider
    // id alone.
    let crashed = unique_id("crash");
    let host = provider.provision(&host_request(&crashed)).await.unwrap();
    let daemon = start_daemon(&host.transport).await;
    let provider_id = host.provider_id.clone();
    drop(host);
    drop(provider);
    let restarted = pool(vec![machine(&sshd)], work.path(), Duration::from_millis(100));
    restarted.teardown(&crashed, Some(&provider_id)).await.unwrap();
    wait_until("the crashed host's daemon is gone", || process_gone(daemon));
    assert!(!work.path().join(&crashed.0).exists());
    // The restarted provider leases the machine again.
    let again = unique_id("again");
    let host = restarted.provision(&host_request(&again)).await.unwrap();
    restarted.teardown(&again, Some(&host.provider_id)).await.unwrap();
}

#[tokio::test]
async fn the_default_work_root_lies_in_the_login_home() {
    let sshd = Sshd::start();
    let provider = Arc::new(SshPoolProvider::new(SshPoolConfig::new(vec![machine(&sshd)])).unwrap());
    let id = unique_id("default-root");
    let host = provider.provision(&host_request(&id)).await.unwrap();
    let login_home = nix::unistd::User::from_name(&sshd.user).unwrap().unwrap().dir;
    let home = login_home.join(DEFAULT_WORK_ROOT).join(&id.0);
    assert!(home.join("tmp").is_dir(), "{} was not created", home.display());
    let (tx, mut rx) = mpsc::channel(4);
    let outcome = host.transport.exec(&request("pwd"), &tx, &CancellationToken::new()).await.unwrap();
    assert_eq!(outcome, ExecOutcome::Exited(0));
    assert_eq!(rx.recv().await.unwrap().text, home.to_string_lossy());
    provider.teardown(&id, Some(&host.provider_id)).await.unwrap();
    assert!(!home.exists());
}

#[tokio::test]
async fn a_pool_configuration_error_names_the_machine() {
    let sshd = Sshd::start();
    let mut bad_key = machine(&sshd);
    bad_key.key_file = PathBuf::from("/nonexistent/key");
    let error = SshPoolProvider::new(SshPoolConfig::new(vec![bad_key.clone()])).err().unwrap();
    assert!(error.to_string().contains(&bad_key.provider_id()), "{error}");
    let mut bad_host_key = machine(&sshd);
    bad_host_key.host_key = "ssh-ed25519 ???".into();
    let error = SshPoolProvider::new(SshPoolConfig::new(vec![bad_host_key.clone()])).err().unwrap();
    assert!(
        error.to_string().contains(&bad_host_key.provider_id()) && error.to_string().contains("host_key"),
        "{error}"
    );
}

#[tokio::test]
async fn a_two_host_build_runs_on_the_ssh_pool() {
    let (a, b) = (Sshd::start(), Sshd::start());
    let work = tempfile::tempdir().unwrap();
    let provider = pool(vec![machine(&a), machine(&b)], work.path(), Duration::from_secs(10));
    let repo = TestRepo::new();
    let commit = repo.commit(&[
        ("www/index.txt", Entry::File("served over ssh\n")),
        ("ci/t.sh", Entry::Executable("#!/bin/sh\necho tool\n")),
    ]);
    let source: Arc<dyn gantry_runner::source::Source> = Arc::new(gantry_runner::source::GitCommitSource {
        repo_path: repo.path().to_path_buf(),
        commit,
        label: "shop".into(),
    });
    let mut pipeline = pipeline(
        vec![host("db", Some("echo setup on $GANTRY_HOST_ADDR")), host("app", None)],
        vec![
            stage("check", "app", &[], "./ci/t.sh\necho db=$GANTRY_HOST_DB\ntest -f ci/t.sh"),
            stage("db-side", "db", &["check"], "cat data/www/index.txt"),
        ],
    );
    pipeline.push.code_to = vec!["app".into()];
    pipeline.push.data = vec![gantry_runner::pipeline::DataPush { from: "www".into(), to: "db".into() }];
    let plan = plan(pipeline, source);
    let ids = plan.host_ids.clone();
    let (tx, mut rx) = mpsc::channel(256);
    let build = tokio::spawn(execute(plan, provider, tx, CancellationToken::new()));
    let mut events = Vec::new();
    while let Some(event) = rx.recv().await {
        events.push(event);
    }
    let result = build.await.unwrap();
    assert_eq!(result.status, BuildStatus::Passed, "{result:?}\n{events:#?}");
    let logs: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            BuildEvent::Log { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert!(logs.contains(&"tool".to_string()), "{logs:?}");
    assert!(logs.contains(&"served over ssh".to_string()), "{logs:?}");
    assert!(logs.iter().any(|l| l.starts_with("db=127.9")), "{logs:?}");
    for id in ids.values() {
        assert!(!work.path().join(&id.0).exists(), "host {id} was not torn down");
    }
}
