//! Builds on one machine cannot reach each other (issue 10): two builds at once on one local
//! provider, as root with the user pool, each host a user of its own and each build a network
//! namespace of its own. One build cannot read, list, signal or connect to the other, while its
//! own hosts reach each other; a process that clears its environment, leaves its home and
//! ignores SIGTERM is gone after teardown; and a restarted server reaps a crashed one's host by
//! its home's owner, a user no one else leases meanwhile. An isolated build still downloads,
//! through its egress proxy, from a test host beyond the machine (a namespace of the test's own),
//! and never reaches the machine itself through it.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use gantry_runner::provider::local::users::{LOCK_DIR, RELEASED_RECORD};
use gantry_runner::provider::local::{LocalConfig, LocalProvider};
use gantry_runner::provider::{HostId, HostRequest, Provider, ProvisionedHost};
use gantry_runner::transport::{ExecOutcome, ExecRequest};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// The port every listener of these tests uses: two builds' hosts may both listen on it.
const PORT: u16 = 8000;

/// What the other build's rendered config holds.
const SECRET_LINE: &str = "DB_PASSWORD=correct-horse-battery-staple-of-build-2";

/// A local provider on the user pool (root), or `None` when the prerequisites are missing.
fn pool_provider() -> Option<TestProvider> {
    pool_users()?;
    Some(TestProvider::with(|config| config.run_as = Some(RUN_AS_USER.to_string())))
}

fn request(id: &HostId, build: &str) -> HostRequest {
    HostRequest {
        id: id.clone(),
        build: build.to_string(),
        role: id.0.rsplit('-').next().unwrap().to_string(),
        image: None,
        size: None,
        build_timeout: Duration::from_secs(60),
    }
}

/// Host ids unique across this test process: `i<pid>-<n>-<build>-<role>`.
fn new_id(build: &str, role: &str) -> HostId {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    HostId(format!("i{}-{}-{build}-{role}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// Run `script` on `host` (with `GANTRY_HOST_ADDR`, as the executor sets it) and return its exit
/// and output lines (stdout and stderr).
async fn run(host: &ProvisionedHost, script: &str) -> (ExecOutcome, Vec<String>) {
    let (tx, mut rx) = mpsc::channel(256);
    let req = ExecRequest {
        script: script.to_string(),
        cwd: String::new(),
        env: [("GANTRY_HOST_ADDR".to_string(), host.address.to_string())].into(),
        secrets: Default::default(),
        mask: Default::default(),
        timeout: Duration::from_secs(60),
    };
    let outcome = host.transport.exec(&req, &tx, &CancellationToken::new()).await.unwrap();
    drop(tx);
    let mut lines = Vec::new();
    while let Some(line) = rx.recv().await {
        lines.push(line.text);
    }
    (outcome, lines)
}

/// Run `script` and insist it succeeds.
async fn run_ok(host: &ProvisionedHost, script: &str) -> Vec<String> {
    let (outcome, lines) = run(host, script).await;
    assert_eq!(outcome, ExecOutcome::Exited(0), "{script}\n{lines:?}");
    lines
}

/// Start a TCP listener on the host's own address and wait until it accepts, from inside the
/// host (its namespace). The listener answers every connection with `hello from ROLE`.
async fn listen(host: &ProvisionedHost, role: &str) {
    let script = format!(
        r#"nohup python3 -c '
import os, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((os.environ["GANTRY_HOST_ADDR"], {PORT}))
s.listen()
while True:
    c, _ = s.accept()
    c.sendall(b"hello from {role}\n")
    c.close()
' >/dev/null 2>&1 </dev/null &
python3 - <<'PY'
import os, socket, time
deadline = time.monotonic() + 20
while True:
    try:
        socket.create_connection((os.environ["GANTRY_HOST_ADDR"], {PORT}), timeout=2).close()
        break
    except OSError:
        assert time.monotonic() < deadline, "the listener never came up"
        time.sleep(0.01)
PY"#
    );
    run_ok(host, &script).await;
}

/// A Python snippet that connects to `address:port` and prints what it got or the error's name.
fn connect_script(address: &str, port: u16) -> String {
    format!(
        r#"python3 - <<'PY'
import errno, socket
try:
    c = socket.create_connection(("{address}", {port}), timeout=5)
    print("connected:", c.recv(100).decode().strip())
except OSError as e:
    print("refused:", errno.errorcode.get(e.errno, e))
PY"#
    )
}

/// Pids of live (not zombie) processes whose `Uid:` line in `/proc/PID/status` names `uid`,
/// read here rather than through the code under test.
fn processes_of_uid(uid: u32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        let zombie = status.lines().any(|l| l.starts_with("State:") && l.contains("Z (zombie)"));
        let runs_as = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .is_some_and(|ids| ids.split_whitespace().any(|id| id == uid.to_string()));
        if runs_as && !zombie {
            found.push(pid);
        }
    }
    found
}

fn home_of(host: &ProvisionedHost) -> PathBuf {
    PathBuf::from(&host.provider_id)
}

fn owner(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().uid()
}

/// The escaping process of issue 10: no environment, working directory `/`, SIGTERM ignored,
/// reading another host's file forever. Returns its pid.
async fn start_escapee(host: &ProvisionedHost, target: &Path) -> i32 {
    let script = format!(
        "env -i sh -c 'cd /; trap \"\" TERM; while :; do cat {}/secret.txt; sleep 1; done' >/dev/null 2>&1 </dev/null &\n\
         echo pid=$!",
        target.display()
    );
    let lines = run_ok(host, &script).await;
    let pid = pids_in(&lines)[0];
    // It has left the home and its marker behind once `env -i` has run.
    wait_until("the escapee cleared its environment", || {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.is_empty())
    });
    pid
}

#[tokio::test]
async fn two_builds_at_once_cannot_read_list_signal_or_connect_to_each_other() {
    let Some(test) = pool_provider() else { return };
    let provider = test.provider.clone();
    let (a_web, a_db, b_db) = (new_id("b1", "web"), new_id("b1", "db"), new_id("b2", "db"));
    let requests = [request(&a_web, "b1"), request(&a_db, "b1"), request(&b_db, "b2")];
    let (web, db, other) = tokio::join!(
        provider.provision(&requests[0]),
        provider.provision(&requests[1]),
        provider.provision(&requests[2]),
    );
    let (web, db, other) = (web.unwrap(), db.unwrap(), other.unwrap());
    let uids = [owner(&home_of(&web)), owner(&home_of(&db)), owner(&home_of(&other))];
    assert!(uids[0] != uids[1] && uids[1] != uids[2] && uids[0] != uids[2], "a user of its own each: {uids:?}");
    assert!(web.isolation.ends_with("network namespace of b1"), "{}", web.isolation);
    assert!(other.isolation.ends_with("network namespace of b2"), "{}", other.isolation);
    assert_eq!(provider.live_namespaces(), 2, "one namespace per build");

    // Build 2's home holds a rendered config with a secret, and a running service.
    other.transport.write_file("src/.env", format!("{SECRET_LINE}\n").into_bytes()).await.unwrap();
    other.transport.write_file("secret.txt", b"build 2's secret\n".to_vec()).await.unwrap();
    assert_eq!(run_ok(&other, "cat src/.env").await, [SECRET_LINE], "its own host reads it");
    let service = run_ok(&other, "sleep 1000 >/dev/null 2>&1 </dev/null &\necho pid=$!").await;
    let service = pids_in(&service)[0];
    listen(&other, "build 2").await;
    listen(&db, "db of build 1").await;

    // Reading or listing build 2's home, or the hosts' root, is refused.
    let other_home = home_of(&other);
    for script in [
        format!("cat {}/src/.env", other_home.display()),
        format!("ls {}", other_home.display()),
        format!("ls {}", test.root().display()),
    ] {
        let (outcome, lines) = run(&web, &script).await;
        assert_ne!(outcome, ExecOutcome::Exited(0), "{script}: {lines:?}");
        assert!(lines.iter().any(|l| l.contains("Permission denied")), "{script}: {lines:?}");
        assert!(!lines.iter().any(|l| l.contains("correct-horse")), "{script} leaked the secret: {lines:?}");
    }

    // Signalling build 2's process is refused (EPERM), even the existence probe of `kill -0`.
    let probe = format!(
        "python3 -c 'import os\ntry:\n    os.kill({service}, 0); print(\"signalled\")\nexcept OSError as e: print(e.strerror)'"
    );
    assert_eq!(run_ok(&web, &probe).await, ["Operation not permitted"]);
    assert!(!process_gone(service));

    // Build 1's hosts reach each other; build 2's listener, on the same port, and a service on
    // the machine's own loopback are out of reach.
    let db_address = db.address.to_string();
    assert_eq!(run_ok(&web, &connect_script(&db_address, PORT)).await, ["connected: hello from db of build 1"]);
    let other_address = other.address.to_string();
    assert_eq!(run_ok(&web, &connect_script(&other_address, PORT)).await, ["refused: ECONNREFUSED"]);
    let machine = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let machine_port = machine.local_addr().unwrap().port();
    assert_eq!(run_ok(&web, &connect_script("127.0.0.1", machine_port)).await, ["refused: ECONNREFUSED"]);
    // From its own namespace, build 2 still reaches its service: the refusal above is isolation.
    assert_eq!(run_ok(&other, &connect_script(&other_address, PORT)).await, ["connected: hello from build 2"]);

    // The escaping process of build 1 (no environment, out of its home, deaf to SIGTERM) reads
    // nothing of build 2's and is gone once build 1 is torn down.
    let escapee = start_escapee(&web, &other_home).await;
    for id in [&a_web, &a_db] {
        provider.teardown(id, None).await.unwrap();
    }
    // The executor drops a build's transports (which hold the namespace too) when it ends.
    drop((web, db));
    assert!(process_gone(escapee), "the escapee survived teardown");
    for uid in &uids[..2] {
        assert_eq!(processes_of_uid(*uid), Vec::<i32>::new(), "processes of uid {uid} survived teardown");
    }
    assert_eq!(provider.live_namespaces(), 1, "build 1's namespace went with its last host");
    assert!(!process_gone(service), "build 2's service is not build 1's to kill");

    provider.teardown(&b_db, None).await.unwrap();
    drop(other);
    assert!(process_gone(service));
    assert_eq!(processes_of_uid(uids[2]), Vec::<i32>::new());
    assert!(test.leftover_dirs().is_empty(), "{:?}", test.leftover_dirs());
    assert_eq!(provider.live_namespaces(), 0);
}

#[tokio::test]
async fn scratch_files_a_host_user_leaves_are_gone_before_the_user_serves_again() {
    let Some(test) = pool_provider() else { return };
    let id = new_id("b3", "app");
    let host = test.provider.provision(&request(&id, "b3")).await.unwrap();
    let uid = owner(&home_of(&host));
    let name = format!("gantry-isolation-{}-{uid}", std::process::id());
    run_ok(
        &host,
        &format!("echo left > /tmp/{name}; mkdir /var/tmp/{name}; echo x > /var/tmp/{name}/f; echo y > /dev/shm/{name}; ln -s /etc/passwd /tmp/{name}.link"),
    )
    .await;
    test.provider.teardown(&id, None).await.unwrap();
    for path in
        [format!("/tmp/{name}"), format!("/var/tmp/{name}"), format!("/dev/shm/{name}"), format!("/tmp/{name}.link")]
    {
        assert!(std::fs::symlink_metadata(&path).is_err(), "{path} outlived its host");
    }
    assert!(std::fs::metadata("/etc/passwd").is_ok(), "a symlink is removed, never followed");
}

#[tokio::test]
async fn a_restarted_server_reaps_a_crashed_ones_host_by_its_homes_owner() {
    let Some(crashed) = pool_provider() else { return };
    let id = new_id("b4", "app");
    let host = crashed.provider.provision(&request(&id, "b4")).await.unwrap();
    let home = home_of(&host);
    let uid = owner(&home);
    let escapee = start_escapee(&host, Path::new("/nonexistent")).await;
    // The server dies: its leases' locks go with it (here: with the provider), the host lives on.
    drop(host);
    let root = crashed.root();
    drop(crashed.provider);

    // Until the orphan is reaped no one leases its user: neither another server (another data
    // dir), which sees the lease's record naming a home that still exists, nor the restarted one,
    // which sees the home in its own root.
    let neighbour = pool_provider().unwrap();
    let mut config = LocalConfig::new(root.clone());
    config.addresses = address_pool();
    config.run_as = Some(RUN_AS_USER.to_string());
    let restarted = std::sync::Arc::new(LocalProvider::new(config).unwrap());
    let (neighbour_id, restarted_id) = (new_id("b5", "app"), new_id("b6", "app"));
    let theirs = neighbour.provider.provision(&request(&neighbour_id, "b5")).await.unwrap();
    let ours = restarted.provision(&request(&restarted_id, "b6")).await.unwrap();
    assert_ne!(owner(&home_of(&theirs)), uid, "another server leased the orphan's user");
    assert_ne!(owner(&home_of(&ours)), uid, "the restarted server leased the orphan's user");
    assert!(!process_gone(escapee));

    // Recovery knows the host id and the recorded home, nothing else.
    restarted.teardown(&id, Some(home.to_str().unwrap())).await.unwrap();
    assert!(process_gone(escapee), "the orphan's escapee survived");
    assert_eq!(processes_of_uid(uid), Vec::<i32>::new());
    assert!(!home.exists());
    let record = std::fs::read_to_string(Path::new(LOCK_DIR).join(format!("{uid}.lock"))).unwrap();
    assert_eq!(record, RELEASED_RECORD, "the user is free again, and clean");
    neighbour.provider.teardown(&neighbour_id, None).await.unwrap();
    restarted.teardown(&restarted_id, None).await.unwrap();
}

#[tokio::test]
async fn a_user_locked_by_another_process_is_never_leased() {
    let Some(test) = pool_provider() else { return };
    // Another process (another server on this machine) takes the lock of a user this provider
    // just released, the one it would be likeliest to lease again. The other tests of this binary
    // share the pool, so one of them may lease that user first: then try again.
    let mut locked = None;
    for attempt in 0..20 {
        let first = new_id(&format!("b8-{attempt}"), "app");
        let host = test.provider.provision(&request(&first, "b8")).await.unwrap();
        let uid = owner(&home_of(&host));
        test.provider.teardown(&first, None).await.unwrap();
        let lock = Path::new(LOCK_DIR).join(format!("{uid}.lock"));
        // One process holds the lock, the one killed at the end: the shell opens the file (read
        // only: its record stays), locks it (flock(1) on the shell's descriptor) and becomes the
        // sleep. `flock FILE COMMAND` would run the command as a child of its own, which outlived
        // the kill of flock, kept the user locked and this binary's output pipe open for 1,000 s.
        let mut holder = std::process::Command::new("sh")
            .args(["-c", "exec 9<\"$0\" && flock --exclusive --nonblock 9 && echo locked && exec sleep 1000"])
            .arg(&lock)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()), &mut line).unwrap();
        if line.trim() == "locked" {
            locked = Some((uid, holder));
            break;
        }
        // flock found the user leased again (by a test running alongside) and gave up.
        assert!(!holder.wait().unwrap().success());
    }
    let (uid, mut holder) = locked.expect("no released user stayed free long enough for another process to lock it");
    let second = new_id("b9", "app");
    let host = test.provider.provision(&request(&second, "b9")).await.unwrap();
    assert_ne!(owner(&home_of(&host)), uid, "a user another process holds was leased");
    test.provider.teardown(&second, None).await.unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[tokio::test]
async fn a_user_not_released_clean_loses_its_leftover_processes_before_it_serves() {
    let Some(test) = pool_provider() else { return };
    let pool = test.provider.users().pool().unwrap();
    // A user nobody holds now; it stays ours while the lease lives.
    let lease = pool.users().iter().rev().find_map(|user| pool.try_lock(user).unwrap()).expect("a free user");
    let user = lease.user().clone();
    // A leftover of a holder that died: deaf to SIGTERM, out of any home, no environment.
    let mut leftover = std::process::Command::new("python3")
        .args(["-c", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(1000)"])
        .env_clear()
        .current_dir("/")
        .uid(user.uid)
        .gid(user.gid)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(leftover.stdout.as_mut().unwrap()), &mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    lease.purge().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(leftover.wait().unwrap().signal(), Some(9), "SIGTERM was ignored, SIGKILL was not");
    assert_eq!(processes_of_uid(user.uid), Vec::<i32>::new());
    lease.release();
}

/// A test host beyond the machine: a network namespace of this test's own, joined to the
/// machine's by a veth pair with a /30 of 198.18.0.0/15 (the benchmarking range, routed nowhere
/// here) on it, serving `hello.txt` over HTTP on port [`PORT`]. Gone when dropped.
struct RemoteHost {
    netns: String,
    server: std::process::Child,
    /// The machine's side of the veth pair, and the remote host's address.
    machine_side: std::net::Ipv4Addr,
    address: std::net::Ipv4Addr,
    _files: tempfile::TempDir,
}

impl RemoteHost {
    fn start() -> RemoteHost {
        let pid = std::process::id();
        let (netns, outside, inside) = (format!("gantry-test-{pid}"), format!("gtv{pid}a"), format!("gtv{pid}b"));
        // A /30 of 198.18.0.0/15 this machine has no address in.
        let own: Vec<std::net::IpAddr> = nix::ifaddrs::getifaddrs()
            .unwrap()
            .filter_map(|i| i.address.and_then(|a| a.as_sockaddr_in().map(|a| std::net::IpAddr::V4(a.ip()))))
            .collect();
        let base = (0..u32::from(u16::MAX))
            .map(|n| u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + ((pid + n) % 32768) * 4)
            .find(|base| own.iter().all(|a| !matches!(a, std::net::IpAddr::V4(v4) if u32::from(*v4) & !3 == *base)))
            .unwrap();
        let (machine_side, address) = (std::net::Ipv4Addr::from(base + 1), std::net::Ipv4Addr::from(base + 2));
        let ip = |args: &str| {
            let status = std::process::Command::new("ip").args(args.split(' ')).status().expect("iproute2's ip");
            assert!(status.success(), "ip {args}");
        };
        ip(&format!("netns add {netns}"));
        ip(&format!("link add {outside} type veth peer name {inside}"));
        ip(&format!("link set {inside} netns {netns}"));
        ip(&format!("addr add {machine_side}/30 dev {outside}"));
        ip(&format!("link set {outside} up"));
        ip(&format!("netns exec {netns} ip addr add {address}/30 dev {inside}"));
        ip(&format!("netns exec {netns} ip link set {inside} up"));
        let files = tempfile::tempdir().unwrap();
        std::fs::write(files.path().join("hello.txt"), "hello from beyond the machine\n").unwrap();
        let server = std::process::Command::new("ip")
            .args(["netns", "exec", &netns, "python3", "-m", "http.server", &PORT.to_string()])
            .args(["--bind", &address.to_string(), "--directory"])
            .arg(files.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let remote = RemoteHost { netns, server, machine_side, address, _files: files };
        let socket = std::net::SocketAddr::from((address, PORT));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&socket, Duration::from_secs(1)).is_err() {
            assert!(std::time::Instant::now() < deadline, "the remote host's HTTP server never came up");
            std::thread::sleep(Duration::from_millis(20));
        }
        remote
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        // Deleting the namespace deletes the veth pair with it.
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

/// `curl` in a step, printing the body (or the proxy's refusal) and the HTTP status.
fn curl(args: &str) -> String {
    format!("curl -sS --max-time 10 -w ' status=%{{http_code}}' {args} 2>&1 || true")
}

#[tokio::test]
async fn an_isolated_build_downloads_through_its_egress_proxy_but_never_reaches_this_machine() {
    let Some(test) = pool_provider() else { return };
    let remote = RemoteHost::start();
    let id = new_id("b6", "web");
    let host = test.provider.provision(&request(&id, "b6")).await.unwrap();

    let env = run_ok(&host, "echo $http_proxy $https_proxy $no_proxy").await;
    assert_eq!(env, ["http://127.0.0.1:3128 http://127.0.0.1:3128 localhost,127.0.0.0/8,::1"]);
    let hello = format!("http://{}:{PORT}/hello.txt", remote.address);
    // A plain HTTP request forwarded, and a CONNECT tunnel (what HTTPS uses).
    assert_eq!(run_ok(&host, &curl(&hello)).await, ["hello from beyond the machine", " status=200"]);
    assert_eq!(run_ok(&host, &curl(&format!("-p {hello}"))).await, ["hello from beyond the machine", " status=200"]);
    // Without the proxy the namespace still has no way out.
    let direct = run_ok(&host, &curl(&format!("--noproxy '*' {hello}"))).await.join("\n");
    assert!(direct.contains("status=000"), "{direct}");

    // Through the proxy, this machine is out of reach: its other addresses (the veth's side
    // here) and link-local addresses such as a cloud's metadata service are refused, and a
    // loopback address is the build's own, reached inside its namespace, where the machine's
    // loopback listener is not (the executor's tests reach a build's other host this way).
    let on_loopback = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let on_machine = std::net::TcpListener::bind((remote.machine_side, 0)).unwrap();
    let loopback_port = on_loopback.local_addr().unwrap().port();
    for (target, answer) in [
        (format!("http://{}/", on_machine.local_addr().unwrap()), "403"),
        ("http://169.254.169.254/latest/meta-data/".to_string(), "403"),
        (format!("http://127.0.0.1:{loopback_port}/"), "502"),
        (format!("http://localhost:{loopback_port}/"), "502"),
    ] {
        for how in ["--noproxy '' -x http://127.0.0.1:3128", "--noproxy '' -p -x http://127.0.0.1:3128"] {
            let out = run_ok(&host, &curl(&format!("{how} {target}"))).await.join("\n");
            // curl reports a refused tunnel as its own error, naming the proxy's answer.
            let answered = out.contains(&format!("status={answer}"))
                || out.contains(&format!("CONNECT tunnel failed, response {answer}"));
            assert!(answered, "{how} {target}: expected {answer}, got {out}");
        }
    }
    test.provider.teardown(&id, None).await.unwrap();
    drop(host);
    // The proxy went with the namespace: nothing listens for the build any more.
    assert_eq!(test.provider.live_namespaces(), 0);
    drop(remote);
}

#[tokio::test]
async fn without_egress_an_isolated_build_has_no_proxy_and_no_way_out() {
    let Some(_) = pool_users() else { return };
    let test = TestProvider::with(|config| {
        config.run_as = Some(RUN_AS_USER.to_string());
        config.egress = false;
    });
    let id = new_id("b7", "web");
    let host = test.provider.provision(&request(&id, "b7")).await.unwrap();
    assert_eq!(run_ok(&host, "echo \"[${http_proxy:-none}]\"").await, ["[none]"]);
    assert_eq!(run_ok(&host, &connect_script("127.0.0.1", 3128)).await, ["refused: ECONNREFUSED"]);
    test.provider.teardown(&id, None).await.unwrap();
}
