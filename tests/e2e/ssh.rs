//! A repo on the SSH pool provider: the same two-host pipeline as on local hosts, run on two real
//! OpenSSH servers on loopback addresses of their own, through the server.

use crate::builds::two_host_repo;
use crate::helpers::*;
use crate::sshd::Sshd;

#[tokio::test]
async fn a_two_host_build_runs_on_the_ssh_pool_and_leaves_the_machines_clean() {
    let (repo, sha) = two_host_repo();
    let machines = [Sshd::start(), Sshd::start()];
    let extra: String = machines.iter().map(pool_machine_toml).collect();
    let mut config = RepoConfig::new("shop", &repo);
    config.provider = Some("ssh");
    let app = spawn_app_with_toml(&[config], 2, &extra).await;

    let (status, body) = app.github_push("shop", "refs/heads/main", &sha).await;
    assert_eq!(status, 202, "{body}");
    let id = body["build"].as_i64().unwrap();
    let build = app.wait_for_build(id).await;
    assert_eq!(build["status"], "passed", "{build:#}\n{}", app.log(id, None).await);

    let mut addresses: Vec<String> =
        build["hosts"].as_array().unwrap().iter().map(|h| h["address"].as_str().unwrap().to_string()).collect();
    addresses.sort();
    let mut expected: Vec<String> = machines.iter().map(|m| m.address.to_string()).collect();
    expected.sort();
    assert_eq!(addresses, expected, "each host is one of the pool's machines");
    for host in build["hosts"].as_array().unwrap() {
        assert_eq!(host["provider"], "ssh");
        assert_eq!(host["state"], "torn_down", "{host:#}");
    }
    assert!(app.log(id, Some("fetch-from-db")).await.contains("hello from the db host"));

    // The db host's http.server is gone: nothing listens on its address any more.
    let db = build["hosts"].as_array().unwrap().iter().find(|h| h["role"] == "db").unwrap();
    let db_address = format!("{}:8000", db["address"].as_str().unwrap());
    assert!(std::net::TcpStream::connect(&db_address).is_err(), "{db_address} still answers");
    app.stop().await;
}

/// `machine` as a `[[provider.ssh.machine]]` of a server's configuration.
pub(crate) fn pool_machine_toml(machine: &Sshd) -> String {
    format!(
        "\n[[provider.ssh.machine]]\naddress = \"{}\"\nport = {}\nuser = \"{}\"\nkey_file = {:?}\nhost_key = \"{}\"\n",
        machine.address,
        machine.port,
        machine.user,
        machine.client_key.to_str().unwrap(),
        machine.host_key_public.trim(),
    )
}
