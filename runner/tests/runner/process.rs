//! Reaping: every process carrying a host's marker, or working inside its home, is found and
//! killed, however it detached.

use std::process::Stdio;

use gantry_runner::process::{host_marker, host_processes, reap_host, HOST_HOME_VAR, HOST_MARKER_VAR, REAP_DEADLINE};
use gantry_runner::provider::HostId;

use crate::helpers::*;

fn canonical(path: &std::path::Path) -> std::path::PathBuf {
    std::fs::canonicalize(path).unwrap()
}

fn unique_id(name: &str) -> HostId {
    HostId(format!("p{}-{name}", std::process::id()))
}

#[test]
fn marked_and_resident_processes_are_found_and_killed_but_strangers_are_not() {
    let home = tempfile::tempdir().unwrap();
    let id = unique_id("reap");
    // A marked process that double-forks into its own session, like a daemon.
    let daemonizer = std::process::Command::new("/bin/sh")
        .args(["-c", "setsid sh -c 'sleep 1000 >/dev/null 2>&1 & echo $!'"])
        .env(HOST_MARKER_VAR, &id.0)
        .env(HOST_HOME_VAR, canonical(home.path()))
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let daemon: i32 = String::from_utf8(daemonizer.stdout).unwrap().trim().parse().unwrap();
    // An unmarked process whose working directory is the host's home.
    let mut resident = std::process::Command::new("sleep").arg("1000").current_dir(home.path()).spawn().unwrap();
    // A stranger with a similar but different marker.
    let mut stranger = std::process::Command::new("sleep")
        .arg("1000")
        .env(HOST_MARKER_VAR, format!("{}-other", id.0))
        .env(HOST_HOME_VAR, canonical(home.path()))
        .spawn()
        .unwrap();
    // The host of the same id of another server (another data dir): a namesake, not ours.
    let other_home = tempfile::tempdir().unwrap();
    let mut namesake = std::process::Command::new("sleep")
        .arg("1000")
        .env(HOST_MARKER_VAR, &id.0)
        .env(HOST_HOME_VAR, canonical(other_home.path()))
        .spawn()
        .unwrap();

    let found = host_processes(&id, &[home.path()]).unwrap();
    assert!(found.contains(&daemon), "{found:?} misses the daemon {daemon}");
    assert!(found.contains(&(resident.id() as i32)), "{found:?} misses the resident");
    assert!(!found.contains(&(stranger.id() as i32)), "{found:?} includes a stranger");
    assert!(!found.contains(&(namesake.id() as i32)), "{found:?} includes another server's host");

    let killed = reap_host(&id, &[home.path()], REAP_DEADLINE).unwrap();
    assert!(killed >= 2, "killed {killed}");
    resident.wait().unwrap();
    wait_until("the daemon is gone", || process_gone(daemon));
    assert!(host_processes(&id, &[home.path()]).unwrap().is_empty());
    assert!(stranger.try_wait().unwrap().is_none(), "the stranger still runs");
    assert!(namesake.try_wait().unwrap().is_none(), "another server's host still runs");
    for mut other in [stranger, namesake] {
        other.kill().unwrap();
        other.wait().unwrap();
    }
    assert_eq!(host_marker(&id), format!("GANTRY_HOST_ID={}", id.0));
}

#[test]
fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
    let home = tempfile::tempdir().unwrap();
    let id = unique_id("stubborn");
    let mut stubborn = std::process::Command::new("python3")
        .args(["-c", "import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(1000)"])
        .env(HOST_MARKER_VAR, &id.0)
        .env(HOST_HOME_VAR, canonical(home.path()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the handler is installed: python prints only after it is.
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stubborn.stdout.as_mut().unwrap()), &mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let deadline = std::time::Duration::from_secs(2);
    assert_eq!(reap_host(&id, &[home.path()], deadline).unwrap(), 1);
    let status = stubborn.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "SIGTERM was ignored, SIGKILL was not");
}
