//! The EC2 provider against moto's EC2 server on loopback, behind a fault-injecting proxy that
//! records every call (see `support/ec2_cloud.rs`): lifecycle, tags, the /32 SSH rule, user-data,
//! concurrent launches, retries of throttling and capacity errors, the provisioning timeout,
//! teardown order and the reaper. The instances are reached at real OpenSSH servers started on
//! their loopback addresses with the keys the provider handed to cloud-init.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
use gantry_runner::provider::ec2::{Ec2Config, Ec2Provider, RetryPolicy};
use gantry_runner::provider::{HostId, HostRequest, LiveSet, Provider, ProviderError};
use gantry_runner::transport::{ExecOutcome, ExecRequest, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ec2_cloud::*;
use crate::moto::MOTO_AMI;

const SERVER_ID: &str = "gantry-test";

/// The pipeline's total timeout in every request: the shutdown timer is computed from it.
const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long the proxy holds the first of two concurrent launches for the second: far beyond the
/// time between them on any machine, and well within the provisioning timeout of `config`.
const SECOND_LAUNCH_DEADLINE: Duration = Duration::from_secs(30);

fn config(cloud: &Cloud) -> Ec2Config {
    let mut config = Ec2Config::new("us-east-1", SERVER_ID, &current_user());
    config.endpoint_url = Some(cloud.proxy.endpoint.clone());
    config.subnet_id = Some(cloud.subnet_id.clone());
    config.ssh_port = cloud.port;
    config.images = BTreeMap::from([("default".into(), MOTO_AMI.into()), ("debian-12".into(), MOTO_AMI.into())]);
    config.sizes = BTreeMap::from([("small".into(), "t3.small".into())]);
    config.provision_timeout = Duration::from_secs(60);
    config.terminate_timeout = Duration::from_secs(30);
    config.retry =
        RetryPolicy { min_delay: Duration::from_millis(10), max_delay: Duration::from_millis(100), max_retries: 8 };
    config.poll_interval = POLL;
    config
}

fn new_provider(cloud: &Cloud, config: Ec2Config) -> Ec2Provider {
    Ec2Provider::new(config, &sdk_config(&cloud.proxy.endpoint)).unwrap()
}

fn request(build: &str, role: &str) -> HostRequest {
    HostRequest {
        id: HostId(format!("{build}-{role}")),
        build: build.to_string(),
        role: role.to_string(),
        image: Some("debian-12".into()),
        size: Some("small".into()),
        build_timeout: BUILD_TIMEOUT,
    }
}

async fn run(transport: &dyn Transport, script: &str) -> (ExecOutcome, String) {
    let (lines, mut received) = mpsc::channel(64);
    let request = ExecRequest {
        script: script.to_string(),
        cwd: String::new(),
        env: BTreeMap::new(),
        secrets: BTreeMap::new(),
        mask: Default::default(),
        timeout: Duration::from_secs(30),
    };
    let outcome = transport.exec(&request, &lines, &CancellationToken::new()).await.unwrap();
    drop(lines);
    let mut output = String::new();
    while let Some(line) = received.recv().await {
        output.push_str(&line.text);
        output.push('\n');
    }
    (outcome, output)
}

#[tokio::test]
async fn a_host_is_launched_tagged_closed_and_verified_then_torn_down_to_nothing() {
    // The tag keys are documented (IAM conditions and billing reports may use them).
    assert_eq!(
        [TAG_SERVER, TAG_BUILD, TAG_ROLE, TAG_HOST],
        ["gantry:server", "gantry:build", "gantry:role", "gantry:host"]
    );
    let cloud = Cloud::start().await;
    let provider = new_provider(&cloud, config(&cloud));
    let request = request("b1", "web");
    let (host, servers) = tokio::join!(provider.provision(&request), cloud.serve_instances(1));
    let host = host.unwrap_or_else(|e| panic!("{e}\nmoto: {}", cloud.moto.log()));
    assert_eq!(host.address, std::net::IpAddr::from(cloud.instance_address(0)));
    assert!(host.provider_id.starts_with("i-"), "{}", host.provider_id);

    // The host answers over SSH, in a fresh work directory.
    let (outcome, output) = run(host.transport.as_ref(), "pwd; ls -A | grep -vx tmp | wc -l").await;
    assert_eq!(outcome, ExecOutcome::Exited(0), "{output} {}", servers[0].sshd.log());
    assert!(output.starts_with('/') && output.trim_end().ends_with("/gantry/b1-web\n0"), "{output}");

    // Tags, image, type and the dead-man switch.
    let instance =
        cloud.live_instances().await.into_iter().find(|i| i.instance_id() == Some(&host.provider_id)).unwrap();
    let tags = instance.tags();
    assert_eq!(tag_of(tags, TAG_SERVER), Some(SERVER_ID));
    assert_eq!(tag_of(tags, TAG_BUILD), Some("b1"));
    assert_eq!(tag_of(tags, TAG_ROLE), Some("web"));
    assert_eq!(tag_of(tags, TAG_HOST), Some("b1-web"));
    assert_eq!(instance.image_id(), Some(MOTO_AMI));
    assert_eq!(instance.instance_type().map(|t| t.as_str()), Some("t3.small"));
    let behaviour = cloud
        .client
        .describe_instance_attribute()
        .instance_id(&host.provider_id)
        .attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior)
        .send()
        .await
        .unwrap();
    assert_eq!(behaviour.instance_initiated_shutdown_behavior().and_then(|v| v.value()), Some("terminate"));
    let user_data = cloud.user_data(&host.provider_id).await;
    let minutes = (BUILD_TIMEOUT + provider.config().provision_timeout + provider.config().shutdown_margin)
        .as_secs()
        .div_ceil(60);
    assert_eq!(
        user_data["bootcmd"],
        serde_yaml::from_str::<serde_yaml::Value>(&format!("[[shutdown, -P, '+{minutes}']]")).unwrap()
    );
    assert_eq!(user_data["ssh_deletekeys"], serde_yaml::Value::Bool(true));
    let public = user_data["ssh_keys"]["ed25519_public"].as_str().unwrap();
    assert_eq!(
        public.split_whitespace().take(2).collect::<Vec<_>>(),
        servers[0].sshd.host_key_public.split_whitespace().take(2).collect::<Vec<_>>()
    );

    // The key pair and the group: SSH from one /32 only, everything from the build's own hosts.
    let keys = cloud.client.describe_key_pairs().key_names("gantry-gantry-test-b1-web").send().await.unwrap();
    assert_eq!(tag_of(keys.key_pairs()[0].tags(), TAG_HOST), Some("b1-web"));
    let groups = cloud.groups().await;
    assert_eq!(groups.len(), 1, "{groups:?}");
    let group = &groups[0];
    assert_eq!(group.group_name(), Some("gantry-gantry-test-b1"));
    assert_eq!(tag_of(group.tags(), TAG_BUILD), Some("b1"));
    let attached: Vec<_> = instance.security_groups().iter().filter_map(|g| g.group_id()).collect();
    assert_eq!(attached, [group.group_id().unwrap()]);
    let rules = group.ip_permissions();
    assert_eq!(rules.len(), 2, "{rules:?}");
    let ssh = rules.iter().find(|r| r.ip_protocol() == Some("tcp")).unwrap();
    assert_eq!((ssh.from_port(), ssh.to_port()), (Some(i32::from(cloud.port)), Some(i32::from(cloud.port))));
    let cidrs: Vec<_> = ssh.ip_ranges().iter().filter_map(|r| r.cidr_ip()).collect();
    assert_eq!(cidrs.len(), 1, "{cidrs:?}");
    let cidr: ipnet::IpNet = cidrs[0].parse().unwrap();
    assert!(cidr.prefix_len() == 32 && cidr.addr().is_loopback(), "SSH must be open to this server only: {cidr}");
    assert!(ssh.ipv6_ranges().is_empty() && ssh.user_id_group_pairs().is_empty(), "{ssh:?}");
    let peers = rules.iter().find(|r| r.ip_protocol() == Some("-1")).unwrap();
    assert!(peers.ip_ranges().is_empty(), "{peers:?}");
    assert_eq!(peers.user_id_group_pairs()[0].group_id(), group.group_id());

    // Teardown: terminate, wait until terminated, then the group and the key.
    cloud.proxy.reset_log();
    drop(host);
    provider.teardown(&request.id, instance.instance_id()).await.unwrap();
    assert!(cloud.live_instances().await.is_empty(), "{:?}", cloud.live_instances().await);
    assert!(cloud.groups().await.is_empty(), "{:?}", cloud.groups().await);
    assert!(cloud.key_names().await.is_empty(), "{:?}", cloud.key_names().await);
    let actions = cloud.proxy.actions();
    let position =
        |action: &str| actions.iter().position(|a| a == action).unwrap_or_else(|| panic!("no {action}: {actions:?}"));
    let terminate = position("TerminateInstances");
    let waited = actions[terminate..].iter().position(|a| a == "DescribeInstances").map(|p| p + terminate);
    assert!(waited.is_some(), "teardown never waited for termination: {actions:?}");
    assert!(waited.unwrap() < position("DeleteSecurityGroup"), "{actions:?}");
    assert!(waited.unwrap() < position("DeleteKeyPair"), "{actions:?}");
    // A second teardown finds nothing and succeeds.
    provider.teardown(&request.id, None).await.unwrap();
}

#[tokio::test]
async fn the_hosts_of_a_build_launch_concurrently_and_share_one_group() {
    let cloud = Cloud::start().await;
    let provider = new_provider(&cloud, config(&cloud));
    // The proxy holds the first launch until the second arrives: launched one after the other,
    // the first is answered with the proxy's error instead, and provisioning fails with it.
    cloud.proxy.barrier("RunInstances", SECOND_LAUNCH_DEADLINE);
    let (web, db) = (request("b2", "web"), request("b2", "db"));
    // A failed launch ends the wait at once, before the cloud misses its instance.
    let launched = futures::future::try_join(provider.provision(&web), provider.provision(&db));
    let served = async { Ok(cloud.serve_instances(2).await) };
    let ((web_host, db_host), _servers) =
        futures::future::try_join(launched, served).await.unwrap_or_else(|e: ProviderError| panic!("{e}"));
    assert_ne!(web_host.address, db_host.address);
    let launches: Vec<_> = cloud.proxy.calls().into_iter().filter(|c| c.action == "RunInstances").collect();
    assert_eq!(launches.len(), 2, "{launches:?}");
    assert_eq!(cloud.groups().await.len(), 1, "one group per build");
    assert_eq!(cloud.key_names().await.len(), 2, "one key pair per host");

    drop((web_host, db_host));
    let (a, b) = tokio::join!(provider.teardown(&web.id, None), provider.teardown(&db.id, None));
    a.unwrap();
    b.unwrap();
    assert!(cloud.live_instances().await.is_empty());
    assert!(cloud.groups().await.is_empty());
    assert!(cloud.key_names().await.is_empty());
}

#[tokio::test]
async fn throttled_and_capacity_errors_are_retried_until_the_host_is_up() {
    let cloud = Cloud::start().await;
    let provider = new_provider(&cloud, config(&cloud));
    cloud.proxy.throttle("RunInstances", 2);
    cloud.proxy.throttle("ImportKeyPair", 1);
    cloud.proxy.throttle("CreateSecurityGroup", 1);
    cloud.proxy.fail(
        "DescribeInstances",
        1,
        500,
        "InsufficientInstanceCapacity",
        "We currently do not have sufficient capacity.",
    );
    let request = request("b3", "web");
    let (host, _servers) = tokio::join!(provider.provision(&request), cloud.serve_instances(1));
    let host = host.unwrap();
    assert_eq!(cloud.proxy.count("RunInstances"), 3, "{:?}", cloud.proxy.actions());
    assert_eq!(cloud.proxy.count("ImportKeyPair"), 2);
    assert_eq!(cloud.live_instances().await.len(), 1, "retries launched one instance only");

    cloud.proxy.throttle("TerminateInstances", 2);
    cloud.proxy.throttle("DeleteSecurityGroup", 1);
    cloud.proxy.throttle("DeleteKeyPair", 1);
    drop(host);
    provider.teardown(&request.id, None).await.unwrap();
    assert_eq!(cloud.proxy.count("TerminateInstances"), 3);
    assert!(cloud.live_instances().await.is_empty());
    assert!(cloud.groups().await.is_empty());
    assert!(cloud.key_names().await.is_empty());
}

#[tokio::test]
async fn errors_that_retrying_cannot_fix_end_provisioning_with_aws_words() {
    let cloud = Cloud::start().await;
    let provider = new_provider(&cloud, config(&cloud));
    cloud.proxy.fail(
        "RunInstances",
        1,
        400,
        "InvalidParameterValue",
        "Value (t9.huge) for parameter instanceType is invalid.",
    );
    let request = request("b4", "web");
    let error = provider.provision(&request).await.err().expect("provisioning must fail");
    let message = error.to_string();
    assert!(
        message.contains("RunInstances") && message.contains("InvalidParameterValue: Value (t9.huge)"),
        "{message}"
    );
    assert_eq!(cloud.proxy.count("RunInstances"), 1, "not retried");
    provider.teardown(&request.id, None).await.unwrap();
    assert!(cloud.groups().await.is_empty() && cloud.key_names().await.is_empty());

    // An AMI moto (like AWS) does not know is refused by the API, not by Gantry.
    let mut config = config(&cloud);
    config.images.insert("debian-12".into(), "ami-00000000deadbeef0".into());
    let provider = new_provider(&cloud, config);
    let message = provider.provision(&request).await.err().unwrap().to_string();
    assert!(message.contains("InvalidAMIID"), "{message}");
    provider.teardown(&request.id, None).await.unwrap();

    // An alias the config does not map fails before any call.
    let mut unknown = request.clone();
    unknown.size = Some("huge".into());
    cloud.proxy.reset_log();
    let message = provider.provision(&unknown).await.err().unwrap().to_string();
    assert!(message.contains("\"huge\"") && message.contains("small"), "{message}");
    assert!(cloud.proxy.actions().is_empty(), "{:?}", cloud.proxy.actions());
}

#[tokio::test]
async fn the_provisioning_timeout_ends_a_launch_that_never_gets_through() {
    let cloud = Cloud::start().await;
    let mut config = config(&cloud);
    config.provision_timeout = Duration::from_secs(2);
    let provider = new_provider(&cloud, config);
    cloud.proxy.throttle("RunInstances", usize::MAX);
    let request = request("b5", "web");
    let started = std::time::Instant::now();
    let error = provider.provision(&request).await.err().expect("provisioning must time out");
    assert!(matches!(error, ProviderError::Provision { .. }), "{error}");
    assert!(error.to_string().contains("RunInstances: RequestLimitExceeded"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(30), "the timeout did not bound provisioning");
    assert!(cloud.proxy.count("RunInstances") > 1, "throttling was not retried");

    cloud.proxy.clear();
    provider.teardown(&request.id, None).await.unwrap();
    assert!(cloud.live_instances().await.is_empty());
    assert!(cloud.groups().await.is_empty() && cloud.key_names().await.is_empty());
}

#[tokio::test]
async fn a_host_that_never_answers_ssh_fails_provisioning_and_is_found_by_its_tags() {
    let cloud = Cloud::start().await;
    let mut config = config(&cloud);
    config.provision_timeout = Duration::from_secs(3);
    let provider = new_provider(&cloud, config);
    let request = request("b6", "web");
    let error = provider.provision(&request).await.err().expect("nobody answers SSH");
    assert!(error.to_string().contains(&cloud.instance_address(0).to_string()), "{error}");
    assert_eq!(cloud.live_instances().await.len(), 1);
    // The caller never learnt the instance id: teardown finds it by its tags.
    provider.teardown(&request.id, None).await.unwrap();
    assert!(cloud.live_instances().await.is_empty());
    assert!(cloud.groups().await.is_empty() && cloud.key_names().await.is_empty());
}

#[tokio::test]
async fn the_reaper_removes_what_no_live_host_owns_and_nothing_else() {
    let cloud = Cloud::start().await;
    let provider = new_provider(&cloud, config(&cloud));
    let dead = cloud.leftover(SERVER_ID, "b7", "b7-web").await;
    let live = cloud.leftover(SERVER_ID, "b8", "b8-web").await;
    let foreign = cloud.leftover("another-server", "b7", "b7-web").await;

    let live_set =
        LiveSet { hosts: HashSet::from([HostId("b8-web".into())]), builds: HashSet::from(["b8".to_string()]) };
    let report = provider.reap(&live_set).await.unwrap();
    assert_eq!((report.instances, report.key_pairs, report.security_groups), (1, 1, 1), "{report:?}");

    let running: HashSet<String> =
        cloud.live_instances().await.iter().map(|i| i.instance_id().unwrap().to_string()).collect();
    assert_eq!(running, HashSet::from([live.clone(), foreign]), "only {dead} may go");
    let mut keys = cloud.key_names().await;
    keys.sort();
    assert_eq!(keys, ["gantry-another-server-b7-web", "gantry-gantry-test-b8-web"]);
    let mut groups: Vec<_> = cloud.groups().await.iter().map(|g| g.group_name().unwrap().to_string()).collect();
    groups.sort();
    assert_eq!(groups, ["gantry-another-server-b7", "gantry-gantry-test-b8"]);

    // Nothing live any more: the rest of this server's resources go, the other server's stay.
    let report = provider.reap(&LiveSet::default()).await.unwrap();
    assert_eq!((report.instances, report.key_pairs, report.security_groups), (1, 1, 1), "{report:?}");
    let ours = cloud
        .client
        .describe_instances()
        .filters(Filter::builder().name(format!("tag:{TAG_SERVER}")).values(SERVER_ID).build())
        .filters(Filter::builder().name("instance-state-name").values("running").values("pending").build())
        .send()
        .await
        .unwrap();
    assert!(ours.reservations().is_empty(), "{ours:?}");
    assert_eq!(cloud.live_instances().await.len(), 1, "the other server's instance stays");
}
