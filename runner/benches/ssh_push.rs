//! Pushing a 100 MB tree over the SSH transport (`upload_tar`: one channel streaming a tar into
//! `tar -x`) against OpenSSH's own client piping the same bytes into `cat > file`, both against
//! a real sshd on a loopback address. Prints MB/s for each and the ratio (target: at least 80%).
//! Run with `cargo bench -p gantry-runner --bench ssh_push`.

#[path = "../tests/support/sshd.rs"]
mod sshd;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_runner::provider::HostId;
use gantry_runner::transport::ssh::{parse_public_key, SshTarget, SshTransport};
use gantry_runner::transport::Transport;

/// Total bytes of file content in the pushed tree.
const TREE_BYTES: usize = 100 * 1024 * 1024;

/// Size of one generated file.
const FILE_BYTES: usize = 256 * 1024;

/// Files per directory of the generated tree.
const FILES_PER_DIR: usize = 20;

/// Runs of each method; the best one counts (the machine is shared).
const RUNS: usize = 3;

/// How long connecting to the benchmark's sshd may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let server = sshd::Sshd::start();
    let tree = tempfile::tempdir().unwrap();
    generate_tree(tree.path());
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all("tree", tree.path()).unwrap();
    let archive = builder.into_inner().unwrap();
    let megabytes = archive.len() as f64 / MIB;
    println!("tree: {} files, archive {megabytes:.1} MiB", TREE_BYTES / FILE_BYTES);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let home = tempfile::tempdir().unwrap();
    let target = SshTarget {
        address: server.address.into(),
        port: server.port,
        user: server.user.clone(),
        key: Arc::new(russh::keys::load_secret_key(&server.client_key, None).unwrap()),
        host_key: parse_public_key(&server.host_key_public).unwrap(),
        home: home.path().to_string_lossy().into_owned(),
        host_id: HostId("bench-push".into()),
    };
    let transport = runtime.block_on(SshTransport::connect(target, CONNECT_TIMEOUT)).unwrap();

    let mut gantry_best = Duration::MAX;
    let mut ssh_best = Duration::MAX;
    for run in 0..RUNS {
        let dest = format!("push{run}");
        let started = Instant::now();
        runtime.block_on(transport.upload_tar(&dest, archive.clone())).unwrap();
        gantry_best = gantry_best.min(started.elapsed());
        assert!(home.path().join(&dest).join("tree").is_dir());
        std::fs::remove_dir_all(home.path().join(&dest)).unwrap();

        let file = home.path().join(format!("cat{run}"));
        let started = Instant::now();
        ssh_cat(&server, &archive, &file);
        ssh_best = ssh_best.min(started.elapsed());
        assert_eq!(std::fs::metadata(&file).unwrap().len(), archive.len() as u64);
        std::fs::remove_file(&file).unwrap();
    }
    let gantry_rate = megabytes / gantry_best.as_secs_f64();
    let ssh_rate = megabytes / ssh_best.as_secs_f64();
    println!("gantry upload_tar:      {gantry_rate:8.1} MiB/s (best of {RUNS}: {gantry_best:?})");
    println!("ssh 'cat > file':       {ssh_rate:8.1} MiB/s (best of {RUNS}: {ssh_best:?})");
    println!("ratio:                  {:8.0}% (target >= 80%)", 100.0 * gantry_rate / ssh_rate);
}

/// Incompressible files (xorshift output) in a few directories.
fn generate_tree(root: &Path) {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for index in 0..TREE_BYTES / FILE_BYTES {
        let dir = root.join(format!("dir{}", index / FILES_PER_DIR));
        std::fs::create_dir_all(&dir).unwrap();
        let mut contents = Vec::with_capacity(FILE_BYTES);
        while contents.len() < FILE_BYTES {
            contents.extend_from_slice(&next().to_le_bytes());
        }
        std::fs::write(dir.join(format!("file{index}.bin")), contents).unwrap();
    }
}

/// `ssh -i KEY -p PORT host 'cat > FILE'` with the archive on stdin, verifying the host key.
fn ssh_cat(server: &sshd::Sshd, bytes: &[u8], file: &Path) {
    let known_hosts = server.dir.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("[{}]:{} {}\n", server.address, server.port, server.host_key_public)).unwrap();
    let mut child = Command::new("ssh")
        .arg("-i")
        .arg(&server.client_key)
        .arg("-p")
        .arg(server.port.to_string())
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .arg(format!("{}@{}", server.user, server.address))
        .arg(format!("cat > '{}'", file.display()))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "ssh failed: {status}");
}
