//! Launching one host's instance: everything from the first API call to an instance that runs
//! and has the address Gantry connects to. It owns the per-host credentials (an ed25519 client key
//! imported as the host's key pair, an ed25519 host key handed to cloud-init in user-data, so the
//! first SSH connection verifies a key Gantry knows), the build's security group (created by
//! whichever host comes first, SSH from this server's CIDR only), the user-data with its dead-man
//! switch, `RunInstances` and the wait for `running`. The SSH connection itself is `mod.rs`'s.
//! It never deletes what it created when a step fails: that is teardown's job, which finds
//! everything by its tags.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    Filter, InstanceNetworkInterfaceSpecification, InstanceStateName, InstanceType, IpPermission, IpRange,
    ResourceType, ShutdownBehavior, Tag, TagSpecification, UserIdGroupPair,
};
use base64::Engine as _;
use ipnet::IpNet;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;
use serde::Serialize;
use tokio::time::Instant;

use super::api::{invalid, state, tag, ApiError};
use super::{Connect, Ec2Provider, TAG_BUILD, TAG_HOST, TAG_ROLE, TAG_SERVER};
use crate::provider::HostRequest;

/// The VPC facts provisioning needs, looked up once.
#[derive(Debug, Clone)]
pub(super) struct Network {
    vpc_id: String,
    subnet_id: Option<String>,
    ssh_from: IpNet,
}

/// The cloud-init user-data of a host.
#[derive(Serialize)]
struct CloudConfig {
    ssh_deletekeys: bool,
    ssh_genkeytypes: Vec<String>,
    ssh_keys: BTreeMap<&'static str, String>,
    bootcmd: Vec<Vec<String>>,
}

impl Ec2Provider {
    /// The tags of a resource of `build`, with the host's role and id when it is a host's own.
    fn tags(&self, request: Option<&HostRequest>, build: &str, name: String) -> Vec<Tag> {
        let mut tags = vec![tag(TAG_SERVER, &self.config.server_id), tag(TAG_BUILD, build), tag("Name", &name)];
        if let Some(request) = request {
            tags.push(tag(TAG_ROLE, &request.role));
            tags.push(tag(TAG_HOST, &request.id.0));
        }
        tags
    }

    /// `tags` for a resource of `kind` created by the call that carries them.
    fn tag_spec(&self, kind: ResourceType, tags: &[Tag]) -> TagSpecification {
        TagSpecification::builder().resource_type(kind).set_tags(Some(tags.to_vec())).build()
    }

    /// The VPC, subnet and SSH source CIDR, looked up on first use.
    async fn network(&self, deadline: Instant) -> Result<&Network, ApiError> {
        self.network
            .get_or_try_init(|| async {
                let (vpc_id, cidr, subnet_id) = match &self.config.subnet_id {
                    Some(subnet) => {
                        let out = self
                            .call("DescribeSubnets", deadline, || {
                                self.client.describe_subnets().subnet_ids(subnet).send()
                            })
                            .await?;
                        let found = out
                            .subnets()
                            .first()
                            .ok_or_else(|| invalid("DescribeSubnets", format!("subnet {subnet} does not exist")))?;
                        (
                            found.vpc_id().unwrap_or_default().to_string(),
                            found.cidr_block().unwrap_or_default().to_string(),
                            Some(subnet.clone()),
                        )
                    }
                    None => {
                        let out = self
                            .call("DescribeVpcs", deadline, || {
                                self.client
                                    .describe_vpcs()
                                    .filters(Filter::builder().name("is-default").values("true").build())
                                    .send()
                            })
                            .await?;
                        let vpc = out.vpcs().first().ok_or_else(|| {
                            invalid("DescribeVpcs", "the region has no default VPC: set subnet_id".to_string())
                        })?;
                        (
                            vpc.vpc_id().unwrap_or_default().to_string(),
                            vpc.cidr_block().unwrap_or_default().to_string(),
                            None,
                        )
                    }
                };
                let ssh_from = match self.config.allow_ssh_from {
                    Some(cidr) => cidr,
                    None => own_address_towards(&cidr).map_err(|message| invalid("allow_ssh_from", message))?,
                };
                tracing::info!(vpc = %vpc_id, subnet = ?subnet_id, ssh_from = %ssh_from, "EC2 network");
                Ok(Network { vpc_id, subnet_id, ssh_from })
            })
            .await
    }

    /// The build's security group, created by whichever of its hosts comes first.
    async fn ensure_group(&self, request: &HostRequest, deadline: Instant) -> Result<String, ApiError> {
        let network = self.network(deadline).await?.clone();
        let name = self.group_name(&request.build);
        if let Some(id) = self.find_group(&name, &network.vpc_id, deadline).await? {
            return Ok(id);
        }
        let tags = self.tags(None, &request.build, name.clone());
        let created = self
            .call("CreateSecurityGroup", deadline, || {
                self.client
                    .create_security_group()
                    .group_name(&name)
                    .description(format!("Gantry build {} of server {}", request.build, self.config.server_id))
                    .vpc_id(&network.vpc_id)
                    .tag_specifications(self.tag_spec(ResourceType::SecurityGroup, &tags))
                    .send()
            })
            .await;
        let group_id = match created {
            Ok(out) => out.group_id().unwrap_or_default().to_string(),
            // Another host of the build created it in between.
            Err(e) if e.is("InvalidGroup.Duplicate") => {
                return self
                    .find_group(&name, &network.vpc_id, deadline)
                    .await?
                    .ok_or_else(|| invalid("CreateSecurityGroup", format!("group {name} exists but cannot be found")));
            }
            Err(e) => return Err(e),
        };
        let ssh = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(i32::from(self.config.ssh_port))
            .to_port(i32::from(self.config.ssh_port))
            .ip_ranges(
                IpRange::builder().cidr_ip(network.ssh_from.to_string()).description("Gantry server (SSH)").build(),
            )
            .build();
        let peers = IpPermission::builder()
            .ip_protocol("-1")
            .user_id_group_pairs(
                UserIdGroupPair::builder().group_id(&group_id).description("hosts of the same build").build(),
            )
            .build();
        self.call("AuthorizeSecurityGroupIngress", deadline, || {
            self.client
                .authorize_security_group_ingress()
                .group_id(&group_id)
                .ip_permissions(ssh.clone())
                .ip_permissions(peers.clone())
                .send()
        })
        .await?;
        Ok(group_id)
    }

    async fn find_group(&self, name: &str, vpc_id: &str, deadline: Instant) -> Result<Option<String>, ApiError> {
        let out = self
            .call("DescribeSecurityGroups", deadline, || {
                self.client
                    .describe_security_groups()
                    .filters(Filter::builder().name("group-name").values(name).build())
                    .filters(Filter::builder().name("vpc-id").values(vpc_id).build())
                    .send()
            })
            .await?;
        Ok(out.security_groups().first().and_then(|g| g.group_id()).map(str::to_string))
    }

    /// Import the host's client key, replacing a leftover of the same name.
    async fn import_key(&self, request: &HostRequest, key: &PrivateKey, deadline: Instant) -> Result<(), ApiError> {
        let name = self.key_name(&request.id);
        let public = key.public_key().to_openssh().map_err(|e| invalid("ImportKeyPair", e.to_string()))?;
        let tags = self.tags(Some(request), &request.build, name.clone());
        for _ in 0..2 {
            let imported = self
                .call("ImportKeyPair", deadline, || {
                    self.client
                        .import_key_pair()
                        .key_name(&name)
                        .public_key_material(Blob::new(public.as_bytes()))
                        .tag_specifications(self.tag_spec(ResourceType::KeyPair, &tags))
                        .send()
                })
                .await;
            match imported {
                Err(e) if e.is("InvalidKeyPair.Duplicate") => {
                    tracing::warn!(key = %name, "replacing a leftover key pair");
                    self.delete_key(&name, deadline).await?;
                }
                other => return other.map(|_| ()),
            }
        }
        Err(invalid("ImportKeyPair", format!("key pair {name} keeps existing")))
    }

    fn user_data(&self, request: &HostRequest, host_key: &PrivateKey) -> Result<String, String> {
        let private = host_key.to_openssh(LineEnding::LF).map_err(|e| e.to_string())?;
        let public = host_key.public_key().to_openssh().map_err(|e| e.to_string())?;
        let lifetime = request.build_timeout + self.config.provision_timeout + self.config.shutdown_margin;
        let minutes = lifetime.as_secs().div_ceil(60).max(1);
        let config = CloudConfig {
            ssh_deletekeys: true,
            ssh_genkeytypes: Vec::new(),
            ssh_keys: BTreeMap::from([("ed25519_private", private.to_string()), ("ed25519_public", public)]),
            // The dead-man switch: with shutdown behaviour = terminate, this ends the VM.
            bootcmd: vec![vec!["shutdown".into(), "-P".into(), format!("+{minutes}")]],
        };
        let yaml = serde_yaml::to_string(&config).map_err(|e| e.to_string())?;
        Ok(base64::engine::general_purpose::STANDARD.encode(format!("#cloud-config\n{yaml}")))
    }

    /// Everything up to a running instance; `Err` leaves cleanup to `teardown`.
    pub(super) async fn launch(
        &self,
        request: &HostRequest,
        deadline: Instant,
    ) -> Result<(String, IpAddr, Arc<PrivateKey>, russh::keys::PublicKey), String> {
        let image = self.config.image_of(request)?;
        let instance_type = self.config.instance_type_of(request)?;
        let client_key = Arc::new(random_ed25519().map_err(|e| format!("cannot generate a key: {e}"))?);
        let host_key = random_ed25519().map_err(|e| format!("cannot generate a host key: {e}"))?;
        let user_data = self.user_data(request, &host_key)?;
        let (group, imported) =
            tokio::join!(self.ensure_group(request, deadline), self.import_key(request, &client_key, deadline));
        let group = group.map_err(|e| e.to_string())?;
        imported.map_err(|e| e.to_string())?;
        let network = self.network(deadline).await.map_err(|e| e.to_string())?.clone();

        let tags = self.tags(Some(request), &request.build, format!("gantry {} {}", self.config.server_id, request.id));
        let token = format!("{}-{}", self.key_name(&request.id), random_suffix());
        let launched = self
            .call("RunInstances", deadline, || {
                let mut run = self
                    .client
                    .run_instances()
                    .image_id(&image)
                    .instance_type(InstanceType::from(instance_type.as_str()))
                    .min_count(1)
                    .max_count(1)
                    .key_name(self.key_name(&request.id))
                    .user_data(&user_data)
                    .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
                    .client_token(&token)
                    .tag_specifications(self.tag_spec(ResourceType::Instance, &tags))
                    .tag_specifications(self.tag_spec(ResourceType::Volume, &tags));
                run = match self.config.connect {
                    Connect::Public => run.network_interfaces(
                        InstanceNetworkInterfaceSpecification::builder()
                            .device_index(0)
                            .set_subnet_id(network.subnet_id.clone())
                            .groups(&group)
                            .associate_public_ip_address(true)
                            .delete_on_termination(true)
                            .build(),
                    ),
                    Connect::Private => run.set_subnet_id(network.subnet_id.clone()).security_group_ids(&group),
                };
                run.send()
            })
            .await
            .map_err(|e| e.to_string())?;
        let instance_id = launched
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .ok_or("RunInstances returned no instance")?
            .to_string();
        tracing::info!(host = %request.id, instance = %instance_id, %image, %instance_type, "launched EC2 instance");
        let address = self.wait_running(&instance_id, deadline).await?;
        Ok((instance_id, address, client_key, host_key.public_key().clone()))
    }

    /// Poll until the instance runs and has the address Gantry connects to.
    async fn wait_running(&self, instance_id: &str, deadline: Instant) -> Result<IpAddr, String> {
        loop {
            let described = self
                .call("DescribeInstances", deadline, || {
                    self.client.describe_instances().instance_ids(instance_id).send()
                })
                .await;
            match described {
                Ok(out) => {
                    let instance = out.reservations().iter().flat_map(|r| r.instances()).next();
                    if let Some(instance) = instance {
                        match state(instance) {
                            Some(InstanceStateName::Running) => {
                                let address = match self.config.connect {
                                    Connect::Private => instance.private_ip_address(),
                                    Connect::Public => instance.public_ip_address(),
                                };
                                if let Some(address) = address {
                                    return address
                                        .parse()
                                        .map_err(|_| format!("instance {instance_id} has a bad address {address:?}"));
                                }
                            }
                            Some(InstanceStateName::Pending) | None => {}
                            Some(other) => {
                                let reason =
                                    instance.state_reason().and_then(|r| r.message()).unwrap_or("no reason given");
                                return Err(format!(
                                    "instance {instance_id} is {} before it ran: {reason}",
                                    other.as_str()
                                ));
                            }
                        }
                    }
                }
                // Eventual consistency: a new instance may not be described yet.
                Err(e) if e.is("InvalidInstanceID.NotFound") => {}
                Err(e) => return Err(e.to_string()),
            }
            if Instant::now() + self.config.poll_interval > deadline {
                return Err(format!("instance {instance_id} was not running within the provisioning timeout"));
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }
}

/// A fresh ed25519 key from the operating system's random source.
fn random_ed25519() -> Result<PrivateKey, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| e.to_string())?;
    Ok(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap_or_default();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// This machine's address on the route towards `cidr` (the VPC), as a /32 or /128. A UDP
/// `connect` only picks the route: no packet is sent.
fn own_address_towards(cidr: &str) -> Result<IpNet, String> {
    let network: IpNet = cidr.parse().map_err(|_| format!("the VPC's CIDR {cidr:?} is not a network"))?;
    let probe = SocketAddr::new(network.hosts().next().unwrap_or(network.addr()), 9);
    let bind: SocketAddr = if probe.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("a valid address");
    let socket = UdpSocket::bind(bind).map_err(|e| format!("cannot find this server's address: {e}"))?;
    socket.connect(probe).map_err(|e| format!("no route from this server to {cidr}: {e}"))?;
    let own = socket.local_addr().map_err(|e| e.to_string())?.ip();
    Ok(IpNet::from(own))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_address_is_a_single_loopback_host() {
        let own = own_address_towards("127.0.0.0/16").unwrap();
        assert!(own.addr().is_loopback(), "{own}");
        assert_eq!(own.prefix_len(), 32);
    }
}
