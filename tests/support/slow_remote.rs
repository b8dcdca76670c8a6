//! A git remote on loopback that takes as long as a test wants to answer: `git daemon` serving a
//! directory of repositories, behind a TCP proxy that holds every connection for a delay before
//! passing it on. Gantry fetches `git://127.0.0.1:PORT/NAME` from it (with the `git` command,
//! as any repository on a host) like from any git server, so a fetch takes at least the delay. Included by path from `tests/e2e/main.rs` and
//! `tests/bench/builds.rs`.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// How long `git daemon` may take to start listening.
const DAEMON_START_DEADLINE: Duration = Duration::from_secs(20);

pub struct SlowRemote {
    daemon: Child,
    proxy: tokio::task::JoinHandle<()>,
    // The benchmark keeps its delay: only the test suite changes it.
    #[allow(dead_code)]
    delay_ms: Arc<AtomicU64>,
    port: u16,
}

impl SlowRemote {
    /// Serve the repositories directly under `base` (each directory a repository, bare or not),
    /// answering every connection after `delay`.
    pub async fn start(base: &Path, delay: Duration) -> SlowRemote {
        let daemon_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let daemon = Command::new("git")
            .arg("daemon")
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={daemon_port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // `git daemon` runs `git-daemon` as a child of its own, which a kill of `git` leaves
            // running: the whole group is killed when this is dropped.
            .process_group(0)
            .spawn()
            .expect("git daemon starts (it comes with git)");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", daemon_port)).await.is_err() {
            assert!(start.elapsed() < DAEMON_START_DEADLINE, "git daemon never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let delay_ms = Arc::new(AtomicU64::new(u64::try_from(delay.as_millis()).unwrap()));
        let delay = Arc::clone(&delay_ms);
        let proxy = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                let delay = Duration::from_millis(delay.load(Ordering::Relaxed));
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", daemon_port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        SlowRemote { daemon, proxy, delay_ms, port }
    }

    /// The URL of the repository `name` (a directory under the base).
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    /// From now on, connections wait `delay`.
    #[allow(dead_code)]
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(u64::try_from(delay.as_millis()).unwrap(), Ordering::Relaxed);
    }
}

impl Drop for SlowRemote {
    fn drop(&mut self) {
        self.proxy.abort();
        // The group the daemon leads (made at spawn): git and git-daemon.
        let group = nix::unistd::Pid::from_raw(self.daemon.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.daemon.wait();
    }
}
