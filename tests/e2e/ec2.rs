//! Repos on the EC2 provider, through the real `gantry` binary (it takes its AWS credentials from
//! the environment, as in production) against moto on loopback: a two-host build whose instances
//! are reached at real OpenSSH servers on the addresses moto gave them, and a server killed with
//! SIGKILL between launch and teardown whose restart leaves no instance of its own running.

use std::path::Path;
use std::time::Instant;

use aws_sdk_ec2::types::Filter;
use serde_json::Value;

use crate::builds::two_host_repo;
use crate::ec2_cloud::*;
use crate::helpers::*;
use crate::moto::MOTO_AMI;

const SERVER_ID: &str = "e2e";

/// Credentials for moto, and nothing that could send the SDK anywhere else (no instance
/// metadata lookups, no profile files).
const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/dev/null"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
];

fn write_config(dir: &Path, cloud: &Cloud, repo: &TestRepo, provision_timeout: &str) -> std::path::PathBuf {
    write_config_with_ami(dir, cloud, repo, provision_timeout, MOTO_AMI)
}

fn write_config_with_ami(
    dir: &Path,
    cloud: &Cloud,
    repo: &TestRepo,
    provision_timeout: &str,
    ami: &str,
) -> std::path::PathBuf {
    let mut repo_config = RepoConfig::new("shop", repo);
    repo_config.provider = Some("ec2");
    let mut toml = config_toml(dir, &[repo_config], 2);
    toml.push_str(&format!(
        "\n[provider.ec2]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nsubnet_id = \"{}\"\nssh_user = \"{}\"\n\
         ssh_port = {}\nserver_id = \"{SERVER_ID}\"\nprovision_timeout = \"{provision_timeout}\"\n\
         images = {{ default = \"{ami}\" }}\n",
        cloud.proxy.endpoint,
        cloud.subnet_id,
        current_user(),
        cloud.port,
    ));
    let path = dir.join("gantry.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Instances of `server` that are not terminated (nor on their way there).
async fn running_of(cloud: &Cloud, server: &str) -> Vec<String> {
    let out = cloud
        .client
        .describe_instances()
        .filters(Filter::builder().name(format!("tag:{TAG_SERVER}")).values(server).build())
        .filters(Filter::builder().name("instance-state-name").values("pending").values("running").build())
        .send()
        .await
        .unwrap();
    out.reservations().iter().flat_map(|r| r.instances()).filter_map(|i| i.instance_id().map(str::to_string)).collect()
}

async fn trigger(server: &ServerProcess) -> i64 {
    let response = server
        .client
        .post(format!("{}/api/repos/shop/builds", server.base))
        .json(&serde_json::json!({ "branch": "main" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json::<Value>().await.unwrap()["build"].as_i64().unwrap()
}

#[tokio::test]
async fn a_two_host_build_runs_on_ec2_instances_and_leaves_nothing_behind() {
    let cloud = Cloud::start().await;
    let (repo, _sha) = two_host_repo();
    let data = tempfile::TempDir::new().unwrap();
    let config = write_config(data.path(), &cloud, &repo, "2m");
    let server = ServerProcess::start_with_env(&config, &free_loopback_port(), AWS_ENV).await;

    let id = trigger(&server).await;
    let (build, vms) = tokio::join!(server.wait_for_build(id), cloud.serve_instances(2));
    let log =
        server.client.get(format!("{}/api/builds/{id}/log", server.base)).send().await.unwrap().text().await.unwrap();
    assert_eq!(build["status"], "passed", "{build:#}\n{log}");
    assert!(log.contains("hello from the db host"), "{log}");

    let vm_addresses: Vec<String> = vms.iter().map(|vm| vm.sshd.address.to_string()).collect();
    for host in build["hosts"].as_array().unwrap() {
        assert_eq!(host["provider"], "ec2", "{host:#}");
        assert_eq!(host["state"], "torn_down", "{host:#}");
        assert!(vm_addresses.contains(&host["address"].as_str().unwrap().to_string()), "{host:#} {vm_addresses:?}");
    }
    // The build page names each host's instance.
    let page = server.client.get(format!("{}/builds/{id}", server.base)).send().await.unwrap().text().await.unwrap();
    for instance in cloud.instances().await {
        assert!(page.contains(instance.instance_id().unwrap()), "the page does not show {:?}", instance.instance_id());
    }

    assert!(running_of(&cloud, SERVER_ID).await.is_empty());
    assert!(cloud.live_instances().await.is_empty(), "{:?}", cloud.live_instances().await);
    assert!(cloud.groups().await.is_empty(), "{:?}", cloud.groups().await);
    assert!(cloud.key_names().await.is_empty(), "{:?}", cloud.key_names().await);
}

#[tokio::test]
async fn a_server_killed_between_launch_and_teardown_reaps_its_instances_after_restart() {
    let cloud = Cloud::start().await;
    let (repo, _sha) = two_host_repo();
    let data = tempfile::TempDir::new().unwrap();
    // Nobody answers SSH on the instances: the build stays in provisioning until the kill.
    let config = write_config(data.path(), &cloud, &repo, "10m");
    let listen = free_loopback_port();
    let mut server = ServerProcess::start_with_env(&config, &listen, AWS_ENV).await;
    let id = trigger(&server).await;
    let start = Instant::now();
    while running_of(&cloud, SERVER_ID).await.len() < 2 {
        assert!(start.elapsed() < EVENT_DEADLINE, "the instances were never launched: {}", cloud.moto.log());
        tokio::time::sleep(POLL_EVERY).await;
    }
    server.kill9();

    // What an older crash left (a host this database never heard of), and another server's VM.
    let stray = cloud.leftover(SERVER_ID, "b999", "b999-web").await;
    let foreign = cloud.leftover("another-server", "b1", "b1-web").await;
    assert_eq!(running_of(&cloud, SERVER_ID).await.len(), 3);

    let server = ServerProcess::start_with_env(&config, &listen, AWS_ENV).await;
    let start = Instant::now();
    loop {
        let build = server.build(id).await;
        let running = running_of(&cloud, SERVER_ID).await;
        let groups = cloud.groups().await.iter().filter(|g| tag_of(g.tags(), TAG_SERVER) == Some(SERVER_ID)).count();
        let keys = cloud.key_names().await.iter().filter(|k| k.starts_with(&format!("gantry-{SERVER_ID}-"))).count();
        if build["status"] == "interrupted" && running.is_empty() && groups == 0 && keys == 0 {
            break;
        }
        assert!(
            start.elapsed() < EVENT_DEADLINE,
            "not reaped after restart: {build:#} running {running:?} ({stray} among them?), {groups} groups, {keys} keys"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
    assert_eq!(running_of(&cloud, "another-server").await, [foreign], "another server's VM is not ours to reap");
}

#[tokio::test]
async fn an_error_from_aws_ends_the_build_as_errored_with_aws_words_on_its_page() {
    let cloud = Cloud::start().await;
    let (repo, _sha) = two_host_repo();
    let data = tempfile::TempDir::new().unwrap();
    let config = write_config_with_ami(data.path(), &cloud, &repo, "2m", "ami-00000000deadbeef0");
    let server = ServerProcess::start_with_env(&config, &free_loopback_port(), AWS_ENV).await;

    let id = trigger(&server).await;
    let build = server.wait_for_build(id).await;
    assert_eq!(build["status"], "errored", "{build:#}");
    let error = build["error"].as_str().unwrap_or_default();
    assert!(error.contains("RunInstances: InvalidAMIID.NotFound"), "{build:#}");
    let page = server.client.get(format!("{}/builds/{id}", server.base)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("InvalidAMIID.NotFound"), "the page does not show AWS's error");

    assert!(cloud.live_instances().await.is_empty());
    assert!(cloud.groups().await.is_empty(), "{:?}", cloud.groups().await);
    assert!(cloud.key_names().await.is_empty(), "{:?}", cloud.key_names().await);
}
