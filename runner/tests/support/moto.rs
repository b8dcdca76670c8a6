//! moto's EC2 API server on a free loopback port, for the EC2 provider's tests: one
//! `moto_server` process per `Moto`, with its log in a temporary directory of its own, killed when
//! dropped. It owns starting, resetting and stopping that process; what moto does not simulate
//! (throttling, capacity errors, latency) belongs to `fault_proxy.rs`, placed in front of it.
//! Included with `#[path]` by the test binaries that need it.
//!
//! moto finds the service and the region of a request in its SigV4 `Authorization` header: a
//! request without one is taken for S3. Clients must therefore sign (any credentials will do), as
//! the AWS SDK always does.

#![allow(dead_code)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An AMI every moto 5.2 EC2 backend knows in every region without being told: Amazon Linux 2
/// (`amzn2-ami-hvm-2.0.20180810-x86_64-gp2`, x86_64, HVM, EBS root, platform `Linux/UNIX`).
///
/// moto loads `moto/ec2/resources/amis.json.gz` (44 region-less images, mostly 2017 Windows
/// Server, plus Amazon Linux, Ubuntu, SUSE, RHEL and the EKS `ami-ekslinux`) into every region,
/// and on top of that `latest_amis/<region>.json.gz` and `ecs/optimized_amis/<region>.json.gz`.
/// moto's own tests use `ami-12c6146b`, a Windows image; this one is a Linux image from the same
/// always-loaded list. It stops being known only if `MOTO_EC2_LOAD_DEFAULT_AMIS=false` or
/// `MOTO_AMIS_PATH` is set, which `Moto::start` never does. With
/// `MOTO_ENABLE_AMI_VALIDATION=1` any other id fails `RunInstances` with `InvalidAMIID.NotFound`.
pub const MOTO_AMI: &str = "ami-04681a1dbd79675a5";

/// Where `scripts/install-deps --tests` installs moto, under the cache directory.
const VENV_BIN: &str = "gantry/moto-venv/bin/moto_server";

/// moto's strict modes: unknown key pairs, AMIs and instance types are errors, as on AWS.
const STRICT_ENV: [(&str, &str); 3] = [
    ("MOTO_ENABLE_KEYPAIR_VALIDATION", "1"),
    ("MOTO_ENABLE_AMI_VALIDATION", "1"),
    ("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "1"),
];

/// How long moto (a Python program importing every AWS service) may take to answer.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// How many times `start` tries a fresh port when another process took the free one first.
const START_ATTEMPTS: usize = 3;

/// The pause between two readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long one readiness probe or reset may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What moto prints when its port was taken between `free_port` and its bind.
const ADDRESS_IN_USE: &str = "Address already in use";

pub struct Moto {
    /// `http://127.0.0.1:PORT`, for `endpoint_url`.
    pub endpoint: String,
    child: Child,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Moto {
    /// Start moto on a free loopback port and wait until it answers.
    pub async fn start() -> Moto {
        let program = moto_server();
        let dir = tempfile::tempdir().unwrap();
        let client = reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT).build().unwrap();
        let log = dir.path().join("moto.log");
        let port = free_port();
        let child = spawn(&program, port, &log);
        // Built before waiting, so that a panic below still kills the child.
        let mut moto = Moto { endpoint: endpoint(port), child, dir, client };
        for attempt in 1..=START_ATTEMPTS {
            match moto.wait_ready().await {
                Ok(()) => return moto,
                Err(log_text) if log_text.contains(ADDRESS_IN_USE) && attempt < START_ATTEMPTS => {
                    // Another process took the port first; the failed child has been reaped.
                    let port = free_port();
                    moto.child = spawn(&program, port, &log);
                    moto.endpoint = endpoint(port);
                }
                Err(log_text) => panic!("moto_server ({}) exited before answering: {log_text}", program.display()),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Forget every resource moto holds, in every region (`POST /moto-api/reset`).
    pub async fn reset(&self) {
        let url = format!("{}/moto-api/reset", self.endpoint);
        let response = self.client.post(&url).send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status();
        assert!(status.is_success(), "{url} answered {status}: {}", self.log());
    }

    /// moto's stdout and stderr (its request log and tracebacks), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// Poll `GET /moto-api/` until it answers 200. `Err` with the log if moto exited.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let url = format!("{}/moto-api/", self.endpoint);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let answered = matches!(self.client.get(&url).send().await, Ok(r) if r.status() == reqwest::StatusCode::OK);
            // Checked after the probe too: another server may hold the port and answer for moto.
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("{status}\n{}", self.log()));
            }
            if answered {
                return Ok(());
            }
            if Instant::now() >= deadline {
                panic!("moto_server never answered {url} within {START_DEADLINE:?}: {}", self.log());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `moto_server` on `PATH`, else in the venv `scripts/install-deps --tests` creates.
fn moto_server() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("moto_server"))
        .find(|candidate| is_executable(candidate));
    if let Some(found) = on_path {
        return found;
    }
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"),
    };
    let venv = cache.join(VENV_BIN);
    assert!(
        is_executable(&venv),
        "moto_server is neither on PATH nor at {}: run `scripts/install-deps --tests`",
        venv.display()
    );
    venv
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn spawn(program: &Path, port: u16, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .envs(STRICT_ENV)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

fn endpoint(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// A port nobody listens on at 127.0.0.1 right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}
