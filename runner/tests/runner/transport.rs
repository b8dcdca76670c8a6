//! The local transport: clean environments, streamed output, exit codes, timeouts that kill the
//! whole process group, and files that never leave the host's home.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use gantry_runner::event::Stream;
use gantry_runner::provider::HostId;
use gantry_runner::transport::local::LocalTransport;
use gantry_runner::transport::{ExecOutcome, ExecRequest, OutputLine, Transport, TransportError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

struct Host {
    home: tempfile::TempDir,
    transport: LocalTransport,
}

fn local_host(name: &str) -> Host {
    let home = tempfile::tempdir().unwrap();
    let canonical = std::fs::canonicalize(home.path()).unwrap();
    let id = HostId(format!("tr{}-{name}", std::process::id()));
    let transport = LocalTransport::new(id, canonical, IpAddr::from([127, 0, 10, 9]), None);
    Host { home, transport }
}

fn request(script: &str) -> ExecRequest {
    ExecRequest {
        script: script.to_string(),
        cwd: String::new(),
        env: BTreeMap::new(),
        secrets: BTreeMap::new(),
        mask: Default::default(),
        timeout: Duration::from_secs(30),
    }
}

/// Run a script to its end, returning its outcome and every output line.
async fn exec(transport: &LocalTransport, request: &ExecRequest) -> (ExecOutcome, Vec<OutputLine>) {
    let (tx, mut rx) = mpsc::channel(64);
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        lines
    });
    let outcome = transport.exec(request, &tx, &CancellationToken::new()).await.unwrap();
    drop(tx);
    (outcome, collector.await.unwrap())
}

fn texts(lines: &[OutputLine]) -> Vec<&str> {
    lines.iter().map(|l| l.text.as_str()).collect()
}

#[tokio::test]
async fn scripts_get_a_clean_marked_environment_in_their_home() {
    let host = local_host("env");
    let mut req = request("env | sort; pwd; echo err >&2");
    req.env.insert("APP_ENV".into(), "test".into());
    req.env.insert("GANTRY_HOST_ID".into(), "an-attempt-to-hide".into());
    req.env.insert("GANTRY_HOST_HOME".into(), "/elsewhere".into());
    let (outcome, lines) = exec(&host.transport, &req).await;
    assert_eq!(outcome, ExecOutcome::Exited(0));
    let stdout: Vec<&str> = lines.iter().filter(|l| l.stream == Stream::Stdout).map(|l| l.text.as_str()).collect();
    let home = host.transport.home().display().to_string();
    for expected in [
        format!("HOME={home}"),
        format!("TMPDIR={home}/tmp"),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        "LANG=C.UTF-8".to_string(),
        "SHELL=/bin/sh".to_string(),
        "APP_ENV=test".to_string(),
        format!("GANTRY_HOST_ID={}", host.transport.host_id()),
        format!("GANTRY_HOST_HOME={home}"),
    ] {
        assert!(stdout.contains(&expected.as_str()), "{expected} missing from {stdout:?}");
    }
    assert!(stdout.iter().any(|l| l.starts_with("USER=")), "{stdout:?}");
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")), "cargo runs this test");
    assert!(!stdout.iter().any(|l| l.starts_with("CARGO")), "the server's environment leaked");
    assert_eq!(*stdout.last().unwrap(), home, "runs in the home");
    assert!(lines.iter().any(|l| l.stream == Stream::Stderr && l.text == "err"));
    assert!(host.home.path().join("tmp").is_dir());
}

#[tokio::test]
async fn exit_codes_and_signals_are_reported_and_sh_e_stops_at_the_first_failure() {
    let host = local_host("exit");
    assert_eq!(exec(&host.transport, &request("exit 3")).await.0, ExecOutcome::Exited(3));
    assert_eq!(exec(&host.transport, &request("kill -9 $$")).await.0, ExecOutcome::Exited(137));
    let (outcome, lines) = exec(&host.transport, &request("echo one\nfalse\necho never")).await;
    assert_eq!(outcome, ExecOutcome::Exited(1));
    assert_eq!(texts(&lines), ["one"]);
}

#[tokio::test]
async fn output_arrives_while_the_script_still_runs() {
    let host = local_host("stream");
    let go = host.home.path().join("go");
    let script = format!(
        "echo first\ni=0\nwhile [ ! -e {go} ]; do i=$((i+1)); [ $i -lt 2000 ] || exit 9; sleep 0.01; done\necho second",
        go = go.display()
    );
    let (tx, mut rx) = mpsc::channel(64);
    let req = request(&script);
    let cancel = CancellationToken::new();
    let exec = host.transport.exec(&req, &tx, &cancel);
    tokio::pin!(exec);
    // The first line comes before the script can end: it waits for the file this test writes
    // only after seeing that line.
    let first = tokio::select! {
        line = rx.recv() => line.unwrap(),
        outcome = &mut exec => panic!("the script ended first: {outcome:?}"),
    };
    assert_eq!(first.text, "first");
    std::fs::write(&go, "").unwrap();
    assert_eq!(exec.await.unwrap(), ExecOutcome::Exited(0));
    assert_eq!(rx.recv().await.unwrap().text, "second");
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let host = local_host("timeout");
    let mut req = request("sleep 1000 &\necho pid=$!\nsleep 1000");
    req.timeout = Duration::from_millis(300);
    let (outcome, lines) = exec(&host.transport, &req).await;
    assert_eq!(outcome, ExecOutcome::TimedOut);
    let pids = pids_in(&texts(&lines).iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(pids.len(), 1, "{lines:?}");
    wait_until("the background sleep is killed", || process_gone(pids[0]));
}

#[tokio::test]
async fn cancelling_kills_the_script() {
    let host = local_host("cancel");
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let req = request("echo pid=$$\nsleep 1000");
    let exec = host.transport.exec(&req, &tx, &cancel);
    tokio::pin!(exec);
    let line = tokio::select! {
        line = rx.recv() => line.unwrap(),
        outcome = &mut exec => panic!("the script ended first: {outcome:?}"),
    };
    cancel.cancel();
    assert_eq!(exec.await.unwrap(), ExecOutcome::Cancelled);
    let pid: i32 = line.text.strip_prefix("pid=").unwrap().parse().unwrap();
    wait_until("the script is killed", || process_gone(pid));
}

#[tokio::test]
async fn a_background_service_holding_the_pipes_does_not_hold_the_step() {
    let host = local_host("service");
    // The service inherits stdout and stderr and keeps them open after the script exits.
    let (outcome, lines) =
        tokio::time::timeout(WAIT_DEADLINE, exec(&host.transport, &request("sleep 1000 &\necho pid=$!\necho done")))
            .await
            .expect("exec returned although a background process holds its pipes");
    assert_eq!(outcome, ExecOutcome::Exited(0));
    assert_eq!(texts(&lines), [format!("pid={}", pids_in(&[lines[0].text.clone()])[0]).as_str(), "done"]);
    let pid = pids_in(&[lines[0].text.clone()])[0];
    assert!(!process_gone(pid), "the service keeps running until teardown");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
}

#[tokio::test]
async fn files_are_written_read_and_unpacked_inside_the_home_only() {
    let host = local_host("files");
    let t = &host.transport;
    t.write_file("src/conf/.env", b"A=1\n".to_vec()).await.unwrap();
    assert_eq!(std::fs::read(host.home.path().join("src/conf/.env")).unwrap(), b"A=1\n");
    t.write_file("src/conf/.env", b"A=2\n".to_vec()).await.unwrap();
    assert_eq!(t.read_file("src/conf/.env", 1024).await.unwrap().unwrap(), b"A=2\n");
    assert_eq!(t.read_file("src/conf/.env", 2).await.unwrap().unwrap(), b"A=", "at most max_bytes");
    assert_eq!(t.read_file("missing.xml", 1024).await.unwrap(), None);

    for bad in ["../escape", "/etc/passwd", "src/../../escape"] {
        assert!(matches!(t.write_file(bad, b"x".to_vec()).await, Err(TransportError::PathEscapes(_))), "{bad}");
        assert!(matches!(t.read_file(bad, 10).await, Err(TransportError::PathEscapes(_))), "{bad}");
    }
    // Symlinks out of the home are not followed, neither to read nor to write.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "secret").unwrap();
    std::os::unix::fs::symlink(outside.path(), host.home.path().join("out")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), host.home.path().join("secret-link")).unwrap();
    assert!(matches!(t.read_file("out/secret", 100).await, Err(TransportError::PathEscapes(_))));
    assert!(matches!(t.read_file("secret-link", 100).await, Err(TransportError::PathEscapes(_))));
    assert!(matches!(t.write_file("out/new", b"x".to_vec()).await, Err(TransportError::PathEscapes(_))));
    assert!(!outside.path().join("new").exists());
    // Writing over a symlink replaces the link, never the file it points to.
    t.write_file("secret-link", b"replaced".to_vec()).await.unwrap();
    assert_eq!(std::fs::read_to_string(outside.path().join("secret")).unwrap(), "secret");
    assert_eq!(std::fs::read_to_string(host.home.path().join("secret-link")).unwrap(), "replaced");

    // A tar archive unpacks with its modes; an entry climbing out with `..` is refused.
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o755);
    header.set_size(3);
    builder.append_data(&mut header, "data/run.sh", &b"hi\n"[..]).unwrap();
    t.upload_tar("", builder.into_inner().unwrap()).await.unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(host.home.path().join("data/run.sh")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);

    let mut evil = tar::Header::new_old();
    evil.as_old_mut().name[..10].copy_from_slice(b"../escaped");
    evil.set_size(1);
    evil.set_mode(0o644);
    evil.set_cksum();
    let mut archive = evil.as_bytes().to_vec();
    archive.extend_from_slice(&[b'x'; 512]);
    archive.extend_from_slice(&[0; 1024]);
    assert!(matches!(t.upload_tar("sub", archive).await, Err(TransportError::PathEscapes(_))));
    assert!(!host.home.path().join("escaped").exists());
}
