//! The local provider: fresh homes, distinct loopback addresses, and a teardown that leaves
//! nothing behind, daemons included, even for hosts of a previous (crashed) server.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::time::Duration;

use gantry_runner::process::host_processes;
use gantry_runner::provider::local::{LocalConfig, LocalProvider};
use gantry_runner::provider::{HostId, HostRequest, Provider, ProviderError, ProvisionedHost};
use gantry_runner::transport::{ExecOutcome, ExecRequest};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

fn request(id: &HostId) -> HostRequest {
    HostRequest {
        id: id.clone(),
        build: "b1".into(),
        role: "web".into(),
        image: None,
        size: None,
        build_timeout: Duration::from_secs(60),
    }
}

fn new_id(name: &str) -> HostId {
    host_ids(&pipeline(vec![host(name, None)], vec![]))[name].clone()
}

async fn run(host: &ProvisionedHost, script: &str) -> (ExecOutcome, Vec<String>) {
    let (tx, mut rx) = mpsc::channel(64);
    let req = ExecRequest {
        script: script.to_string(),
        cwd: String::new(),
        env: Default::default(),
        secrets: Default::default(),
        mask: Default::default(),
        timeout: Duration::from_secs(30),
    };
    let outcome = host.transport.exec(&req, &tx, &CancellationToken::new()).await.unwrap();
    drop(tx);
    let mut lines = Vec::new();
    while let Some(line) = rx.recv().await {
        lines.push(line.text);
    }
    (outcome, lines)
}

/// Start processes that try hard to outlive their host: a `setsid` daemon, a double fork, and a
/// process with an empty environment working inside the home. Returns their pids.
async fn start_daemons(host: &ProvisionedHost) -> Vec<i32> {
    let (outcome, lines) = run(
        host,
        "setsid sh -c 'sleep 1000' >/dev/null 2>&1 </dev/null &\n\
         echo pid=$!\n\
         ( sh -c 'sleep 1001 >/dev/null 2>&1 </dev/null & echo $! > double.pid' & )\n\
         mkdir -p work && cd work && env -i sleep 1002 >/dev/null 2>&1 </dev/null &\n\
         echo pid=$!\n\
         i=0; while [ ! -s double.pid ] && [ $i -lt 2000 ]; do i=$((i+1)); sleep 0.01; done\n\
         echo pid=$(cat double.pid)",
    )
    .await;
    assert_eq!(outcome, ExecOutcome::Exited(0), "{lines:?}");
    let pids = pids_in(&lines);
    assert_eq!(pids.len(), 3, "{lines:?}");
    pids
}

#[tokio::test]
async fn hosts_get_fresh_homes_and_distinct_addresses_that_teardown_frees() {
    let test = TestProvider::new();
    let ids: Vec<HostId> = (0..3).map(|i| new_id(&format!("h{i}"))).collect();
    let mut hosts = Vec::new();
    for id in &ids {
        hosts.push(test.provider.provision(&request(id)).await.unwrap());
    }
    let addresses: BTreeSet<IpAddr> = hosts.iter().map(|h| h.address).collect();
    assert_eq!(addresses.len(), 3, "two live hosts never share an address");
    for host in &hosts {
        assert_ne!(host.address, IpAddr::from([127, 0, 0, 1]));
        assert!(host.address.is_loopback());
        let home = std::path::Path::new(&host.provider_id);
        assert!(home.starts_with(test.root()));
        assert_eq!(std::fs::read_dir(home).unwrap().count(), 0, "a fresh, empty home");
        assert_eq!(std::fs::metadata(home).unwrap().permissions().mode() & 0o777, 0o700);
    }
    // The address works as a listening address without any configuration.
    let listener = std::net::TcpListener::bind((hosts[0].address, 0)).unwrap();
    drop(listener);

    test.provider.teardown(&ids[1], Some(&hosts[1].provider_id)).await.unwrap();
    assert!(!std::path::Path::new(&hosts[1].provider_id).exists());
    assert!(!test.provider.leased_addresses().contains(&match hosts[1].address {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!(),
    }));
    // Idempotent, and the freed address is handed out again.
    test.provider.teardown(&ids[1], Some(&hosts[1].provider_id)).await.unwrap();
    let again = test.provider.provision(&request(&new_id("again"))).await.unwrap();
    assert_eq!(again.address, hosts[1].address, "the first free address");
    for id in [&ids[0], &ids[2]] {
        test.provider.teardown(id, None).await.unwrap();
    }
    assert_eq!(test.provider.leased_addresses().len(), 1);
}

#[tokio::test]
async fn an_exhausted_pool_is_an_error_and_localhost_is_never_used() {
    let test = TestProvider::with(|config| config.addresses = "127.0.0.0/30".parse().unwrap());
    // 127.0.0.0/30 holds .1 and .2; .1 is localhost, so one host fits.
    let first = test.provider.provision(&request(&new_id("only"))).await.unwrap();
    assert_eq!(first.address, IpAddr::from([127, 0, 0, 2]));
    let second = test.provider.provision(&request(&new_id("more"))).await;
    assert!(matches!(second, Err(ProviderError::Exhausted(_))), "{:?}", second.err());
    let mut outside = LocalConfig::new(test.data.path().join("x"));
    outside.addresses = "10.0.0.0/24".parse().unwrap();
    assert!(LocalProvider::new(outside).is_err());
}

#[tokio::test]
async fn teardown_kills_daemons_removes_the_home_and_frees_the_address() {
    let test = TestProvider::new();
    let id = new_id("daemons");
    let host = test.provider.provision(&request(&id)).await.unwrap();
    let pids = start_daemons(&host).await;
    let home = std::path::PathBuf::from(&host.provider_id);
    for pid in &pids {
        assert!(!process_gone(*pid), "{pid} should still run before teardown");
    }
    // A file the host made unwritable does not stop the removal.
    run(&host, "mkdir -p locked/inner && touch locked/inner/f && chmod 0500 locked/inner locked").await;

    test.provider.teardown(&id, Some(&host.provider_id)).await.unwrap();
    for pid in &pids {
        assert!(process_gone(*pid), "{pid} survived teardown");
    }
    assert!(host_processes(&id, &[home.as_path()]).unwrap().is_empty());
    assert!(!home.exists());
    assert!(test.provider.leased_addresses().is_empty(), "the address is free again");
}

#[tokio::test]
async fn a_new_provider_reaps_the_hosts_of_a_crashed_one() {
    let crashed = TestProvider::new();
    let id = new_id("orphan");
    let host = crashed.provider.provision(&request(&id)).await.unwrap();
    let pids = start_daemons(&host).await;
    run(&host, "echo stale > stale-file").await;

    // A restarted server: a new provider over the same root, knowing only the host id.
    let mut config = LocalConfig::new(crashed.root());
    config.addresses = address_pool();
    let restarted = Arc::new(LocalProvider::new(config).unwrap());
    // Provisioning the same id again starts from an empty home, with the old processes gone.
    let fresh = restarted.provision(&request(&id)).await.unwrap();
    for pid in &pids {
        assert!(process_gone(*pid), "{pid} survived");
    }
    assert_eq!(std::fs::read_dir(&fresh.provider_id).unwrap().count(), 0);
    let pids = start_daemons(&fresh).await;
    restarted.teardown(&id, None).await.unwrap();
    for pid in &pids {
        assert!(process_gone(*pid), "{pid} survived");
    }
    assert!(crashed.leftover_dirs().is_empty(), "{:?}", crashed.leftover_dirs());
}

#[tokio::test]
async fn as_root_steps_run_as_a_user_of_the_pool_that_owns_the_home() {
    if pool_users().is_none() {
        return;
    }
    let test = TestProvider::with(|config| config.run_as = Some(RUN_AS_USER.to_string()));
    let pool = test.provider.users().pool().expect("the pool scripts/install-deps creates");
    assert!(pool.users()[0].name == format!("{RUN_AS_USER}-1"), "{:?}", pool.users()[0]);
    assert_eq!(std::fs::metadata(test.root()).unwrap().permissions().mode() & 0o777, 0o711);
    // A private (0700) data dir lets the users through, without letting them list.
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut config = LocalConfig::new(private.path().join("hosts"));
    config.addresses = address_pool();
    config.run_as = Some(RUN_AS_USER.to_string());
    LocalProvider::new(config).unwrap();
    assert_eq!(std::fs::metadata(private.path()).unwrap().permissions().mode() & 0o777, 0o701);
    let id = new_id("runas");
    let host = test.provider.provision(&request(&id)).await.unwrap();
    let home = std::path::PathBuf::from(&host.provider_id);
    let owner = std::fs::metadata(&home).unwrap().uid();
    let user = pool.by_uid(owner).expect("the home belongs to a user of the pool").clone();
    assert!(host.isolation.starts_with(&format!("user {}, network namespace of b1", user.name)), "{}", host.isolation);

    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(2);
    archive.append_data(&mut header, "data/sub/seed.sql", &b"s\n"[..]).unwrap();
    host.transport.upload_tar("", archive.into_inner().unwrap()).await.unwrap();
    host.transport.write_file("src/.env", b"A=1\n".to_vec()).await.unwrap();
    for path in ["data", "data/sub", "data/sub/seed.sql", "src", "src/.env"] {
        assert_eq!(std::fs::metadata(home.join(path)).unwrap().uid(), user.uid, "{path}");
    }

    let (outcome, lines) =
        run(&host, "id -u; id -G; echo $USER; echo more >> data/sub/seed.sql; touch src/new; mktemp").await;
    assert_eq!(outcome, ExecOutcome::Exited(0), "{lines:?}");
    assert_eq!(lines[0], user.uid.to_string());
    assert_eq!(lines[1], user.gid.to_string(), "no supplementary groups are kept");
    assert_eq!(lines[2], user.name);
    assert!(lines[3].starts_with(&format!("{}/tmp/", home.display())), "{lines:?}");
    let pids = start_daemons(&host).await;
    test.provider.teardown(&id, None).await.unwrap();
    for pid in &pids {
        assert!(process_gone(*pid), "{pid} survived");
    }
    assert!(!home.exists());
}

#[tokio::test]
async fn a_run_as_user_that_cannot_reach_the_data_dir_is_a_clear_configuration_error() {
    if run_as_user().is_none() {
        return;
    }
    // The data dir's parent is not this provider's to open up.
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut config = LocalConfig::new(parent.path().join("data/hosts"));
    config.run_as = Some(RUN_AS_USER.to_string());
    let result = LocalProvider::new(config);
    match result {
        Err(ProviderError::Config(message)) => {
            assert!(
                message.contains(RUN_AS_USER) && message.contains(&parent.path().display().to_string()),
                "{message}"
            );
        }
        other => panic!("expected a configuration error, got {:?}", other.err()),
    }
    let mut config = LocalConfig::new(parent.path().join("hosts"));
    config.run_as = Some("gantry-no-such-user".to_string());
    let missing = LocalProvider::new(config);
    assert!(matches!(missing, Err(ProviderError::Config(m)) if m.contains("does not exist")));
}

#[tokio::test]
async fn tearing_down_a_host_spares_the_same_id_of_another_data_dir() {
    // Two servers on one machine both number their builds from 1, so both have a host `b1-web`.
    let (first, second) = (TestProvider::new(), TestProvider::new());
    let id = new_id("namesake");
    let mine = first.provider.provision(&request(&id)).await.unwrap();
    let theirs = second.provider.provision(&request(&id)).await.unwrap();
    start_daemons(&mine).await;
    let their_pids = start_daemons(&theirs).await;

    first.provider.teardown(&id, Some(&mine.provider_id)).await.unwrap();
    assert!(first.leftover_dirs().is_empty());
    for pid in &their_pids {
        assert!(!process_gone(*pid), "{pid} of the other data dir was killed");
    }
    second.provider.teardown(&id, Some(&theirs.provider_id)).await.unwrap();
    for pid in &their_pids {
        assert!(process_gone(*pid), "{pid} survived");
    }
}
