//! A real OpenSSH server for tests and benchmarks: its own host key, client key, config and pid
//! file in a temporary directory, listening on a free port of a loopback address of its own. It
//! is killed, with every session process it forked, when dropped. Shared by the runner's test
//! binary and the `ssh_push` benchmark (included with `#[path]`).

#![allow(dead_code)]

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where Debian's openssh-server installs the daemon.
pub const SSHD: &str = "/usr/sbin/sshd";

/// The privilege separation directory sshd insists on.
const PRIVSEP_DIR: &str = "/run/sshd";

/// How long sshd may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// The pause between two checks of whether sshd listens.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long a test waits for sshd's session processes to exit once killed.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

/// A distinct loopback address per server this process starts: 127.90–99.x.y, away from the
/// local provider's pools (127.60–69) and the end-to-end suite (127.70–79).
pub fn next_address() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ipv4Addr::new(127, 90 + (std::process::id() % 10) as u8, (n / 250 % 250) as u8 + 1, (n % 250) as u8 + 2)
}

pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub address: Ipv4Addr,
    pub port: u16,
    /// The login user (the one running the tests).
    pub user: String,
    /// The client's private key file.
    pub client_key: PathBuf,
    /// The server's host key as an OpenSSH public key line.
    pub host_key_public: String,
    child: Child,
}

impl Sshd {
    /// Start a server on a fresh loopback address.
    pub fn start() -> Sshd {
        Sshd::start_on(next_address())
    }

    /// Start a server on `address`.
    pub fn start_on(address: Ipv4Addr) -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let host_key = dir.path().join("host_ed25519");
        let client_key = dir.path().join("client_ed25519");
        keygen(&host_key);
        keygen(&client_key);
        std::fs::copy(client_key.with_extension("pub"), dir.path().join("authorized_keys")).unwrap();
        let port = free_port(address);
        Sshd::launch(dir, address, port, client_key)
    }

    /// Start a server on `address:port` with a host key and an authorized client key chosen by
    /// someone else (the way cloud-init sets up a VM from user-data). `client_key` is then
    /// unknown: it names a file that does not exist.
    pub fn start_with(address: Ipv4Addr, port: u16, host_key_private: &str, authorized_key: &str) -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let host_key = dir.path().join("host_ed25519");
        std::fs::write(&host_key, host_key_private).unwrap();
        std::fs::set_permissions(&host_key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let public = Command::new("ssh-keygen").arg("-y").arg("-f").arg(&host_key).output().unwrap();
        assert!(public.status.success(), "not a private key: {}", String::from_utf8_lossy(&public.stderr));
        std::fs::write(host_key.with_extension("pub"), &public.stdout).unwrap();
        std::fs::write(dir.path().join("authorized_keys"), format!("{}\n", authorized_key.trim())).unwrap();
        let client_key = dir.path().join("client_key_unknown");
        Sshd::launch(dir, address, port, client_key)
    }

    fn launch(dir: tempfile::TempDir, address: Ipv4Addr, port: u16, client_key: PathBuf) -> Sshd {
        assert!(Path::new(SSHD).exists(), "{SSHD} is missing: install Debian's openssh-server");
        std::fs::create_dir_all(PRIVSEP_DIR).unwrap();
        let host_key = dir.path().join("host_ed25519");
        let host_key_public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap().trim().to_string();
        let user = current_user();
        let config = dir.path().join("sshd_config");
        let mut file = std::fs::File::create(&config).unwrap();
        write!(
            file,
            "ListenAddress {address}:{port}\n\
             HostKey {host_key}\n\
             AuthorizedKeysFile {keys}\n\
             PidFile {pid}\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             UsePAM no\n\
             StrictModes no\n\
             PermitRootLogin prohibit-password\n\
             AllowUsers {user}\n\
             MaxSessions 64\n\
             MaxStartups 64\n\
             LogLevel ERROR\n",
            host_key = host_key.display(),
            keys = dir.path().join("authorized_keys").display(),
            pid = dir.path().join("sshd.pid").display(),
        )
        .unwrap();
        let child = spawn(&config, dir.path());
        let mut sshd = Sshd { dir, address, port, user, client_key, host_key_public, child };
        sshd.wait_listening();
        sshd
    }

    pub fn socket(&self) -> SocketAddr {
        SocketAddr::from((self.address, self.port))
    }

    /// The listening daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The sshd processes serving connections (every sshd descendant of the listener).
    pub fn session_processes(&self) -> Vec<i32> {
        descendants(self.pid()).into_iter().filter(|(_, comm)| comm == "sshd").map(|(pid, _)| pid).collect()
    }

    /// Kill every connection's sshd processes, so clients see their connections drop; the
    /// listener goes on accepting new ones.
    pub fn drop_connections(&self) {
        let sessions = self.session_processes();
        assert!(!sessions.is_empty(), "sshd has no session to drop");
        for pid in &sessions {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
        }
        let deadline = Instant::now() + KILL_DEADLINE;
        while sessions.iter().any(|pid| alive(*pid)) {
            assert!(Instant::now() < deadline, "sshd session processes survived SIGKILL");
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The sshd log (stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if TcpStream::connect_timeout(&self.socket(), POLL_INTERVAL * 10).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sshd exited with {status}: {}", self.log());
            }
            assert!(Instant::now() < deadline, "sshd never listened on {}: {}", self.socket(), self.log());
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Sessions first, while the listener still lives to reap them (this machine's init may
        // not reap orphans), then the listener.
        let sessions = self.session_processes();
        for pid in &sessions {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
        }
        let deadline = Instant::now() + KILL_DEADLINE;
        while Instant::now() < deadline
            && sessions.iter().any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        {
            std::thread::sleep(POLL_INTERVAL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config: &Path, dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
    Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "gantry-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "ssh-keygen failed");
}

/// A port nobody listens on at `address` right now.
pub fn free_port(address: Ipv4Addr) -> u16 {
    TcpListener::bind((address, 0)).unwrap().local_addr().unwrap().port()
}

fn current_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().expect("the current user has a name").name
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Every descendant of `root` with its command name, from `/proc`.
pub fn descendants(root: i32) -> Vec<(i32, String)> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let comm = head.split_once('(').map(|(_, c)| c.to_string()).unwrap_or_default();
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok()).unwrap_or(0);
        parents.push((pid, ppid, comm));
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid, comm) in &parents {
            if *ppid == parent {
                found.push((*pid, comm.clone()));
                frontier.push(*pid);
            }
        }
    }
    found
}
