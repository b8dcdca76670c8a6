//! A cloud for the EC2 provider's tests: moto's EC2 server on loopback, a fault-injecting proxy
//! in front of it, and a VPC of 127.0.0.0/16 with one /24 subnet per cloud, so moto gives
//! instances loopback addresses (from `.4` of the subnet). [`Cloud::serve_instances`] plays
//! cloud-init: for each instance it starts a real OpenSSH server at the instance's address with
//! the host key from its user-data and the public key of its key pair, so Gantry connects exactly
//! as on AWS. Nothing outside this machine is contacted. Shared by the runner's tests and the
//! end-to-end suite (included with `#[path]`, beside `moto.rs`, `fault_proxy.rs` and `sshd.rs`).

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_sdk_ec2::types::{InstanceAttributeName, InstanceStateName, ResourceType, Tag, TagSpecification};
use aws_sdk_ec2::Client;
use base64::Engine as _;

use crate::fault_proxy::FaultProxy;
use crate::moto::{Moto, MOTO_AMI};
use crate::sshd::{free_port, Sshd};

/// The tags the provider puts on everything.
pub use gantry_runner::provider::ec2::{TAG_BUILD, TAG_HOST, TAG_ROLE, TAG_SERVER};

/// How long a test waits for moto to show what it expects.
pub const CLOUD_DEADLINE: Duration = Duration::from_secs(60);

/// The pause between two looks at moto.
pub const POLL: Duration = Duration::from_millis(50);

/// A VPC of 127.0.0.0/16 in moto with one /24 subnet of its own per test.
pub struct Cloud {
    pub moto: Moto,
    pub proxy: FaultProxy,
    /// Straight to moto: the test's own calls stay out of the proxy's record.
    pub client: Client,
    pub subnet_id: String,
    /// The subnet's first three octets: instances get `.4`, `.5`, …
    pub prefix: [u8; 3],
    /// The SSH port the instances' servers listen on.
    pub port: u16,
}

pub fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
            aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "tests"),
        ))
        .build()
}

impl Cloud {
    pub async fn start() -> Cloud {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // The process id spreads concurrent test processes (two checkouts on one machine) over
        // different subnets, so their stand-in VMs never share an address.
        let prefix = [127, 0, 200 + ((n + std::process::id()) % 50) as u8];
        let moto = Moto::start().await;
        let proxy = FaultProxy::start(&moto.endpoint).await;
        let client = Client::new(&sdk_config(&moto.endpoint));
        let vpc = client.create_vpc().cidr_block("127.0.0.0/16").send().await.unwrap();
        let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
        let subnet = client
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block(format!("{}.{}.{}.0/24", prefix[0], prefix[1], prefix[2]))
            .send()
            .await
            .unwrap();
        let subnet_id = subnet.subnet().unwrap().subnet_id().unwrap().to_string();
        let mut cloud = Cloud { moto, proxy, client, subnet_id, prefix, port: 0 };
        cloud.port = cloud.free_port_on_instances();
        cloud
    }

    pub fn instance_address(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], 4 + n)
    }

    /// A port free on the addresses of the first few instances.
    pub fn free_port_on_instances(&self) -> u16 {
        loop {
            let port = free_port(self.instance_address(0));
            if (1..4).all(|n| std::net::TcpListener::bind((self.instance_address(n), port)).is_ok()) {
                return port;
            }
        }
    }

    /// Every instance moto knows, in any state.
    pub async fn instances(&self) -> Vec<aws_sdk_ec2::types::Instance> {
        let out = self.client.describe_instances().send().await.unwrap();
        out.reservations().iter().flat_map(|r| r.instances()).cloned().collect()
    }

    pub async fn live_instances(&self) -> Vec<aws_sdk_ec2::types::Instance> {
        self.instances().await.into_iter().filter(|i| state(i) != InstanceStateName::Terminated).collect()
    }

    /// Security groups other than the VPCs' default ones.
    pub async fn groups(&self) -> Vec<aws_sdk_ec2::types::SecurityGroup> {
        let out = self.client.describe_security_groups().send().await.unwrap();
        out.security_groups().iter().filter(|g| g.group_name() != Some("default")).cloned().collect()
    }

    pub async fn key_names(&self) -> Vec<String> {
        let out = self.client.describe_key_pairs().send().await.unwrap();
        out.key_pairs().iter().filter_map(|k| k.key_name().map(str::to_string)).collect()
    }

    /// Plays cloud-init for the next `count` instances: an sshd at each one's address with the
    /// host key from its user-data and the public key of its key pair.
    pub async fn serve_instances(&self, count: usize) -> Vec<Vm> {
        let mut served = HashSet::new();
        let mut servers = Vec::new();
        let deadline = tokio::time::Instant::now() + CLOUD_DEADLINE;
        while servers.len() < count {
            for instance in self.live_instances().await {
                let id = instance.instance_id().unwrap().to_string();
                if served.contains(&id) {
                    continue;
                }
                let user_data = self.user_data(&id).await;
                let Some(host_key) = user_data["ssh_keys"]["ed25519_private"].as_str().map(str::to_string) else {
                    continue;
                };
                let key_name = instance.key_name().unwrap();
                let keys =
                    self.client.describe_key_pairs().key_names(key_name).include_public_key(true).send().await.unwrap();
                let authorized = keys.key_pairs()[0].public_key().unwrap().to_string();
                let address: Ipv4Addr = instance.private_ip_address().unwrap().parse().unwrap();
                let host = tag_of(instance.tags(), TAG_HOST).unwrap().to_string();
                assert!(address.is_loopback(), "moto gave {address}: never connect outside loopback");
                let port = self.port;
                let sshd = tokio::task::spawn_blocking(move || Sshd::start_with(address, port, &host_key, &authorized))
                    .await
                    .unwrap();
                servers.push(Vm { sshd, host });
                served.insert(id);
            }
            assert!(tokio::time::Instant::now() < deadline, "only {} of {count} instances launched", servers.len());
            tokio::time::sleep(POLL).await;
        }
        servers
    }

    /// An instance's user-data, decoded, without its `#cloud-config` line.
    pub async fn user_data(&self, instance: &str) -> serde_yaml::Value {
        let out = self
            .client
            .describe_instance_attribute()
            .instance_id(instance)
            .attribute(InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap();
        let encoded = out.user_data().and_then(|v| v.value()).unwrap_or_default();
        let text = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap();
        assert!(text.starts_with("#cloud-config\n"), "{text}");
        serde_yaml::from_str(&text).unwrap()
    }

    /// Launch an instance straight through moto, tagged as `server`'s host, as a crashed server
    /// would have left it.
    pub async fn leftover(&self, server: &str, build: &str, host: &str) -> String {
        let tags = [tag(TAG_SERVER, server), tag(TAG_BUILD, build), tag(TAG_HOST, host), tag(TAG_ROLE, "web")];
        let spec = |kind| TagSpecification::builder().resource_type(kind).set_tags(Some(tags.to_vec())).build();
        let group = self
            .client
            .create_security_group()
            .group_name(format!("gantry-{server}-{build}"))
            .description("left over")
            .vpc_id(self.vpc_id().await)
            .tag_specifications(spec(ResourceType::SecurityGroup))
            .send()
            .await
            .unwrap();
        let key = format!("gantry-{server}-{host}");
        self.client
            .create_key_pair()
            .key_name(&key)
            .tag_specifications(spec(ResourceType::KeyPair))
            .send()
            .await
            .unwrap();
        let run = self
            .client
            .run_instances()
            .image_id(MOTO_AMI)
            .min_count(1)
            .max_count(1)
            .subnet_id(&self.subnet_id)
            .key_name(key)
            .security_group_ids(group.group_id().unwrap())
            .tag_specifications(spec(ResourceType::Instance))
            .send()
            .await
            .unwrap();
        run.instances()[0].instance_id().unwrap().to_string()
    }

    pub async fn vpc_id(&self) -> String {
        let out = self.client.describe_subnets().subnet_ids(&self.subnet_id).send().await.unwrap();
        out.subnets()[0].vpc_id().unwrap().to_string()
    }
}

/// A "virtual machine": the sshd standing in for an instance. Dropping it is the VM's death:
/// every process a host started on it (found by the host's marker in its environment) is
/// killed and the host's work directory removed, as terminating the instance would.
pub struct Vm {
    pub sshd: Sshd,
    /// The host id the instance was tagged with.
    pub host: String,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let marker = format!("GANTRY_HOST_ID={}", self.host);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            if environ.split(|b| *b == 0).any(|var| var == marker.as_bytes()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        let home = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap().dir;
        let _ = std::fs::remove_dir_all(home.join("gantry").join(&self.host));
    }
}

pub fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

pub fn tag_of<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

pub fn state(instance: &aws_sdk_ec2::types::Instance) -> InstanceStateName {
    instance.state().unwrap().name().unwrap().clone()
}

pub fn current_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap().name
}
