//! The EC2 provider: one fresh virtual machine per host, reached over SSH, never left running.
//!
//! For each build it creates one security group (`gantry-<server>-<build>`), shared by the
//! build's hosts: TCP `ssh_port` from the server's CIDR only (by default the server's own address
//! as a /32; never 0.0.0.0/0) and any traffic between the build's own hosts. For each host:
//!
//! 1. an ed25519 client key generated in memory and imported as key pair `gantry-<server>-<host>`,
//!    and an ed25519 host key handed to cloud-init in user-data (`ssh_keys`), so the very first
//!    connection verifies a key Gantry knows: no trust on first use;
//! 2. `RunInstances` with instance-initiated shutdown = terminate and a `shutdown` timer in
//!    user-data a little past the pipeline's total timeout: a dead-man switch, so the VM ends
//!    itself even if this server never comes back;
//! 3. wait for `running`, then for SSH, with bounded backoff under the provisioning timeout.
//!
//! Every resource carries the tags `gantry:server`, `gantry:build`, `gantry:role` and
//! `gantry:host`. Teardown terminates the host's instances (found by id and by tag, so a host
//! whose id never reached the caller is found too), waits until they are terminated, then deletes
//! the key pair and, when no other instance of the build remains, the group. [`Provider::reap`]
//! sweeps what crashes and failed teardowns leave: instances, key pairs and groups of this server
//! whose host or build is no longer live.
//!
//! Every API call is retried with jittered exponential backoff on throttling, capacity and other
//! transient errors (the SDK's own retries are off, so there is one policy); any other error ends
//! the operation with AWS's code and message.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    Filter, Instance, InstanceNetworkInterfaceSpecification, InstanceStateName, InstanceType, IpPermission, IpRange,
    ResourceType, ShutdownBehavior, Tag, TagSpecification, UserIdGroupPair,
};
use aws_sdk_ec2::Client;
use backon::{ExponentialBuilder, Retryable};
use base64::Engine as _;
use ipnet::IpNet;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;
use serde::Serialize;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::{HostId, HostRequest, LiveHosts, Provider, ProviderError, ProvisionedHost, ReapReport};
use crate::transport::ssh::{SshTarget, SshTransport};

/// Tag keys on everything this provider creates.
pub const TAG_SERVER: &str = "gantry:server";
pub const TAG_BUILD: &str = "gantry:build";
pub const TAG_ROLE: &str = "gantry:role";
pub const TAG_HOST: &str = "gantry:host";

/// How long one host may take from the first API call to an SSH session.
pub const DEFAULT_PROVISION_TIMEOUT: Duration = Duration::from_secs(600);

/// How long teardown waits for its instances to reach `terminated`.
pub const DEFAULT_TERMINATE_TIMEOUT: Duration = Duration::from_secs(240);

/// How far past the pipeline's total timeout (plus provisioning) a VM shuts itself down.
pub const DEFAULT_SHUTDOWN_MARGIN: Duration = Duration::from_secs(900);

/// The instance type of a host that names no `size:` when the config has no `default` size.
pub const FALLBACK_INSTANCE_TYPE: &str = "t3.small";

/// The alias a host without `image:` or `size:` gets, when the config defines it.
pub const DEFAULT_ALIAS: &str = "default";

/// Where hosts' files go on the VM, under the login user's home: `~/gantry/<host id>`.
const WORK_ROOT: &str = "gantry";

/// Error codes worth another attempt: throttling, capacity and AWS-side failures.
const TRANSIENT_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientAddressCapacity",
    "InsufficientCapacity",
    "ServiceUnavailable",
    "Unavailable",
    "InternalError",
    "InternalFailure",
];

/// Which of an instance's addresses Gantry connects to and hands to the other hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Connect {
    #[default]
    Private,
    Public,
}

/// How API calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Attempts after the first.
    pub max_retries: usize,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy { min_delay: Duration::from_millis(500), max_delay: Duration::from_secs(20), max_retries: 8 }
    }
}

#[derive(Debug, Clone)]
pub struct Ec2Config {
    pub region: String,
    /// Another EC2 API endpoint (a test double, a VPC endpoint).
    pub endpoint_url: Option<String>,
    /// The subnet instances are launched in; the default VPC's default subnet otherwise.
    pub subnet_id: Option<String>,
    pub connect: Connect,
    pub ssh_user: String,
    pub ssh_port: u16,
    /// Who may connect to `ssh_port`; this server's own address as a /32 when `None`.
    pub allow_ssh_from: Option<IpNet>,
    /// Marks this server's resources: two servers sharing an account never reap each other's.
    pub server_id: String,
    /// `image:` alias → AMI id.
    pub images: BTreeMap<String, String>,
    /// `size:` alias → instance type.
    pub sizes: BTreeMap<String, String>,
    pub provision_timeout: Duration,
    pub terminate_timeout: Duration,
    pub shutdown_margin: Duration,
    pub retry: RetryPolicy,
    /// Between two `DescribeInstances` while waiting for a state.
    pub poll_interval: Duration,
}

impl Ec2Config {
    /// A configuration with the default timeouts, retries and addresses.
    pub fn new(region: &str, server_id: &str, ssh_user: &str) -> Ec2Config {
        Ec2Config {
            region: region.to_string(),
            endpoint_url: None,
            subnet_id: None,
            connect: Connect::Private,
            ssh_user: ssh_user.to_string(),
            ssh_port: 22,
            allow_ssh_from: None,
            server_id: server_id.to_string(),
            images: BTreeMap::new(),
            sizes: BTreeMap::new(),
            provision_timeout: DEFAULT_PROVISION_TIMEOUT,
            terminate_timeout: DEFAULT_TERMINATE_TIMEOUT,
            shutdown_margin: DEFAULT_SHUTDOWN_MARGIN,
            retry: RetryPolicy::default(),
            poll_interval: Duration::from_secs(2),
        }
    }

    fn check(&self) -> Result<(), ProviderError> {
        let id = &self.server_id;
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ProviderError::Config(format!("server_id {id:?} must be 1 to 64 letters, digits, '-' or '_'")));
        }
        if self.ssh_user.is_empty() {
            return Err(ProviderError::Config("ssh_user is empty".to_string()));
        }
        if self.images.is_empty() {
            return Err(ProviderError::Config("images maps no alias to an AMI".to_string()));
        }
        if let Some(cidr) = self.allow_ssh_from {
            if cidr.prefix_len() == 0 {
                return Err(ProviderError::Config(format!(
                    "allow_ssh_from = {cidr} would open SSH to the whole internet"
                )));
            }
        }
        if self.connect == Connect::Public && self.allow_ssh_from.is_none() {
            return Err(ProviderError::Config(
                "connect = \"public\" needs allow_ssh_from: the server's own address is not what AWS sees".to_string(),
            ));
        }
        Ok(())
    }
}

/// An EC2 API error, with AWS's code and message when it gave them.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{action}: {message}")]
pub struct ApiError {
    pub action: &'static str,
    pub code: Option<String>,
    pub message: String,
    transient: bool,
}

impl ApiError {
    fn from_sdk<E>(action: &'static str, error: SdkError<E, aws_sdk_ec2::config::http::HttpResponse>) -> ApiError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = error.code().map(str::to_string);
        let transient = match &error {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(service) => {
                code.as_deref().is_some_and(|c| TRANSIENT_CODES.contains(&c))
                    || (code.is_none() && service.raw().status().is_server_error())
            }
            _ => false,
        };
        let message = match (&code, error.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.clone(),
            _ => DisplayErrorContext(&error).to_string(),
        };
        ApiError { action, code, message, transient }
    }

    fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    fn is_not_found(&self) -> bool {
        self.code.as_deref().is_some_and(|c| c.ends_with(".NotFound") || c.ends_with(".Malformed"))
    }
}

/// The VPC facts provisioning needs, looked up once.
#[derive(Debug, Clone)]
struct Network {
    vpc_id: String,
    subnet_id: Option<String>,
    ssh_from: IpNet,
}

pub struct Ec2Provider {
    client: Client,
    config: Ec2Config,
    network: OnceCell<Network>,
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
    /// A provider whose client comes from aws-config's standard chain (environment, profiles,
    /// web identity, container and instance credentials) with the configured region and endpoint.
    pub async fn from_env(config: Ec2Config) -> Result<Ec2Provider, ProviderError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()));
        if let Some(endpoint) = &config.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk = loader.load().await;
        Ec2Provider::new(config, &sdk)
    }

    /// A provider on an explicit SDK configuration (credentials, region, endpoint).
    pub fn new(config: Ec2Config, sdk: &aws_config::SdkConfig) -> Result<Ec2Provider, ProviderError> {
        config.check()?;
        let mut builder = aws_sdk_ec2::config::Builder::from(sdk)
            .region(aws_sdk_ec2::config::Region::new(config.region.clone()))
            // One retry policy, ours: it knows capacity errors and the provisioning deadline.
            .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_ec2::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            );
        if let Some(endpoint) = &config.endpoint_url {
            builder = builder.endpoint_url(endpoint);
        }
        Ok(Ec2Provider { client: Client::from_conf(builder.build()), config, network: OnceCell::new() })
    }

    pub fn config(&self) -> &Ec2Config {
        &self.config
    }

    /// `gantry-<server>-<host>`: the key pair of a host.
    pub fn key_name(&self, host: &HostId) -> String {
        format!("gantry-{}-{host}", self.config.server_id)
    }

    /// `gantry-<server>-<build>`: the security group of a build.
    pub fn group_name(&self, build: &str) -> String {
        format!("gantry-{}-{build}", self.config.server_id)
    }

    /// Run one API call under the retry policy, until `deadline` at the latest.
    async fn call<T, E, F, Fut>(&self, action: &'static str, deadline: Instant, mut op: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, aws_sdk_ec2::config::http::HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let policy = self.config.retry;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(policy.min_delay)
            .with_max_delay(policy.max_delay)
            .with_max_times(policy.max_retries)
            .with_jitter();
        let attempt = || {
            let sent = op();
            async move { sent.await.map_err(|e| ApiError::from_sdk(action, e)) }
        };
        // What the last failed attempt said, for the error when the deadline cuts the retries.
        let last = std::sync::Mutex::new(None::<String>);
        let retried = attempt.retry(backoff).sleep(tokio::time::sleep).when(|e: &ApiError| e.transient).notify(
            |e: &ApiError, after: Duration| {
                tracing::warn!(action, error = %e.message, retry_in = ?after, "EC2 call failed; retrying");
                *last.lock().expect("last error poisoned") = Some(e.message.clone());
            },
        );
        match tokio::time::timeout_at(deadline, retried).await {
            Ok(result) => result,
            Err(_) => Err(ApiError {
                action,
                code: None,
                message: match last.into_inner().expect("last error poisoned") {
                    Some(error) => format!("{error} (still failing at the deadline)"),
                    None => "no answer before the deadline".to_string(),
                },
                transient: false,
            }),
        }
    }

    fn tags(&self, request: Option<&HostRequest>, build: &str, name: String) -> Vec<Tag> {
        let mut tags = vec![tag(TAG_SERVER, &self.config.server_id), tag(TAG_BUILD, build), tag("Name", &name)];
        if let Some(request) = request {
            tags.push(tag(TAG_ROLE, &request.role));
            tags.push(tag(TAG_HOST, &request.id.0));
        }
        tags
    }

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

    async fn delete_key(&self, name: &str, deadline: Instant) -> Result<(), ApiError> {
        match self.call("DeleteKeyPair", deadline, || self.client.delete_key_pair().key_name(name).send()).await {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
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

    fn image_of(&self, request: &HostRequest) -> Result<String, String> {
        resolve(&self.config.images, request.image.as_deref(), "image", "images")?.ok_or_else(|| {
            format!("host {} names no image and [provider.ec2.images] has no {DEFAULT_ALIAS:?} alias", request.role)
        })
    }

    fn instance_type_of(&self, request: &HostRequest) -> Result<String, String> {
        Ok(resolve(&self.config.sizes, request.size.as_deref(), "size", "sizes")?
            .unwrap_or_else(|| FALLBACK_INSTANCE_TYPE.to_string()))
    }

    /// Everything up to a running instance; `Err` leaves cleanup to `teardown`.
    async fn launch(
        &self,
        request: &HostRequest,
        deadline: Instant,
    ) -> Result<(String, IpAddr, Arc<PrivateKey>, russh::keys::PublicKey), String> {
        let image = self.image_of(request)?;
        let instance_type = self.instance_type_of(request)?;
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

    /// Instances of this server matching `filters`, in any state but terminated.
    async fn instances(&self, filters: Vec<Filter>, deadline: Instant) -> Result<Vec<Instance>, ApiError> {
        let mut all = vec![
            tag_filter(TAG_SERVER, &self.config.server_id),
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(
                    ["pending", "running", "shutting-down", "stopping", "stopped"].map(String::from).to_vec(),
                ))
                .build(),
        ];
        all.extend(filters);
        let reservations = self
            .call("DescribeInstances", deadline, || {
                self.client
                    .describe_instances()
                    .set_filters(Some(all.clone()))
                    .into_paginator()
                    .items()
                    .send()
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(reservations.iter().flat_map(|r| r.instances()).cloned().collect())
    }

    /// Terminate `ids` and wait until every one is terminated (or gone).
    async fn terminate(&self, ids: &[String], deadline: Instant) -> Result<(), ApiError> {
        if ids.is_empty() {
            return Ok(());
        }
        match self
            .call("TerminateInstances", deadline, || {
                self.client.terminate_instances().set_instance_ids(Some(ids.to_vec())).send()
            })
            .await
        {
            Err(e) if !e.is_not_found() => return Err(e),
            _ => {}
        }
        loop {
            let described = self
                .call("DescribeInstances", deadline, || {
                    self.client.describe_instances().set_instance_ids(Some(ids.to_vec())).send()
                })
                .await;
            let remaining: Vec<String> = match described {
                Ok(out) => out
                    .reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .filter(|i| state(i) != Some(InstanceStateName::Terminated))
                    .filter_map(|i| i.instance_id().map(str::to_string))
                    .collect(),
                Err(e) if e.is_not_found() => Vec::new(),
                Err(e) => return Err(e),
            };
            if remaining.is_empty() {
                return Ok(());
            }
            if Instant::now() + self.config.poll_interval > deadline {
                return Err(ApiError {
                    action: "TerminateInstances",
                    code: None,
                    message: format!("{} still not terminated", remaining.join(", ")),
                    transient: false,
                });
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// Delete the build's group unless an instance of the build still runs somewhere; how many
    /// groups went.
    async fn delete_group_if_unused(&self, build: &str, deadline: Instant) -> Result<usize, ApiError> {
        let users = self.instances(vec![tag_filter(TAG_BUILD, build)], deadline).await?;
        if !users.is_empty() {
            return Ok(0);
        }
        let mut deleted = 0;
        let groups = self.groups(vec![tag_filter(TAG_BUILD, build)], deadline).await?;
        for (group_id, _) in groups {
            match self
                .call("DeleteSecurityGroup", deadline, || {
                    self.client.delete_security_group().group_id(&group_id).send()
                })
                .await
            {
                Ok(_) => {
                    tracing::info!(group = %group_id, build, "deleted security group");
                    deleted += 1;
                }
                Err(e) if e.is_not_found() => {}
                // A network interface may detach a little after its instance terminates.
                Err(e) if e.is("DependencyViolation") => {
                    tracing::warn!(group = %group_id, build, "security group still in use; the reaper deletes it later");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// This server's groups matching `filters`: (group id, build tag).
    async fn groups(&self, filters: Vec<Filter>, deadline: Instant) -> Result<Vec<(String, String)>, ApiError> {
        let mut all = vec![tag_filter(TAG_SERVER, &self.config.server_id)];
        all.extend(filters);
        let groups = self
            .call("DescribeSecurityGroups", deadline, || {
                self.client
                    .describe_security_groups()
                    .set_filters(Some(all.clone()))
                    .into_paginator()
                    .items()
                    .send()
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(groups
            .iter()
            .filter_map(|g| {
                Some((g.group_id()?.to_string(), tag_value(g.tags(), TAG_BUILD).unwrap_or_default().to_string()))
            })
            .collect())
    }

    /// This server's key pairs: (name, host tag).
    async fn keys(&self, deadline: Instant) -> Result<Vec<(String, Option<String>)>, ApiError> {
        let out = self
            .call("DescribeKeyPairs", deadline, || {
                self.client.describe_key_pairs().filters(tag_filter(TAG_SERVER, &self.config.server_id)).send()
            })
            .await?;
        Ok(out
            .key_pairs()
            .iter()
            .filter(|k| tag_value(k.tags(), TAG_SERVER) == Some(self.config.server_id.as_str()))
            .filter_map(|k| Some((k.key_name()?.to_string(), tag_value(k.tags(), TAG_HOST).map(str::to_string))))
            .collect())
    }
}

#[async_trait]
impl Provider for Ec2Provider {
    fn name(&self) -> &'static str {
        "ec2"
    }

    async fn provision(&self, request: &HostRequest) -> Result<ProvisionedHost, ProviderError> {
        let deadline = Instant::now() + self.config.provision_timeout;
        let failed = |message: String| ProviderError::Provision { host: request.id.clone(), message };
        let (instance_id, address, client_key, host_key) = self.launch(request, deadline).await.map_err(failed)?;
        let target = SshTarget {
            address,
            port: self.config.ssh_port,
            user: self.config.ssh_user.clone(),
            key: client_key,
            host_key,
            home: "/".to_string(),
            host_id: request.id.clone(),
        };
        let connected = async {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let transport = SshTransport::connect(target, remaining).await?;
            let home = format!("{}/{WORK_ROOT}/{}", transport.login_home().await?.trim_end_matches('/'), request.id);
            let transport = transport.with_home(home);
            transport.create_home().await?;
            Ok::<_, crate::transport::TransportError>(transport)
        };
        let transport = connected.await.map_err(|e| {
            failed(format!("instance {instance_id} at {}: {e}", SocketAddr::new(address, self.config.ssh_port)))
        })?;
        tracing::info!(host = %request.id, instance = %instance_id, %address, "EC2 host ready");
        Ok(ProvisionedHost { address, provider_id: instance_id, transport: Arc::new(transport) })
    }

    async fn teardown(&self, id: &HostId, provider_id: Option<&str>) -> Result<(), ProviderError> {
        let deadline = Instant::now() + self.config.terminate_timeout;
        let failed = |e: ApiError| ProviderError::Teardown { host: id.clone(), message: e.to_string() };
        let mut found = self.instances(vec![tag_filter(TAG_HOST, &id.0)], deadline).await.map_err(failed)?;
        let mut ids: BTreeSet<String> = found.iter().filter_map(|i| i.instance_id().map(str::to_string)).collect();
        if let Some(instance) = provider_id.filter(|p| p.starts_with("i-")) {
            if ids.insert(instance.to_string()) {
                // Not tagged as expected (or not yet visible by tag): look it up by id.
                let described = self
                    .call("DescribeInstances", deadline, || {
                        self.client.describe_instances().instance_ids(instance).send()
                    })
                    .await;
                match described {
                    Ok(out) => found.extend(out.reservations().iter().flat_map(|r| r.instances()).cloned()),
                    Err(e) if e.is_not_found() => {
                        ids.remove(instance);
                    }
                    Err(e) => return Err(failed(e)),
                }
            }
        }
        // The build's group goes with its last host; the build is known from the instance's
        // tags, or from the key pair's when no instance was launched.
        let mut builds: BTreeSet<String> =
            found.iter().filter_map(|i| tag_value(i.tags(), TAG_BUILD).map(str::to_string)).collect();
        let key = self.key_name(id);
        let keys =
            self.call("DescribeKeyPairs", deadline, || self.client.describe_key_pairs().key_names(&key).send()).await;
        match keys {
            Ok(out) => {
                builds.extend(out.key_pairs().iter().filter_map(|k| tag_value(k.tags(), TAG_BUILD).map(str::to_string)))
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(failed(e)),
        }
        let ids: Vec<String> = ids.into_iter().collect();
        self.terminate(&ids, deadline).await.map_err(failed)?;
        self.delete_key(&key, deadline).await.map_err(failed)?;
        for build in builds {
            self.delete_group_if_unused(&build, deadline).await.map_err(failed)?;
        }
        tracing::info!(host = %id, instances = ?ids, "tore down EC2 host");
        Ok(())
    }

    async fn reap(&self, live: &dyn LiveHosts) -> Result<ReapReport, ProviderError> {
        let deadline = Instant::now() + self.config.terminate_timeout;
        let failed = |e: ApiError| ProviderError::Reap(e.to_string());
        // List first, then ask what is live: a host recorded after the listing cannot own any of
        // what was listed, so nothing just being provisioned is taken for an orphan.
        let instances = self.instances(Vec::new(), deadline).await.map_err(failed)?;
        let keys = self.keys(deadline).await.map_err(failed)?;
        let groups = self.groups(Vec::new(), deadline).await.map_err(failed)?;
        let live = live.live().await.map_err(ProviderError::Reap)?;
        let is_live = |host: Option<&str>| host.is_some_and(|h| live.hosts.contains(&HostId(h.to_string())));

        let mut report = ReapReport::default();
        let orphans: Vec<String> = instances
            .iter()
            .filter(|i| {
                !matches!(state(i), Some(InstanceStateName::ShuttingDown) | Some(InstanceStateName::Terminated))
            })
            .filter(|i| !is_live(tag_value(i.tags(), TAG_HOST)))
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        if !orphans.is_empty() {
            tracing::warn!(instances = ?orphans, "terminating EC2 instances no live build owns");
            self.terminate(&orphans, deadline).await.map_err(failed)?;
            report.instances = orphans.len();
        }
        for (name, host) in keys {
            if !is_live(host.as_deref()) {
                tracing::warn!(key = %name, "deleting a key pair no live build owns");
                self.delete_key(&name, deadline).await.map_err(failed)?;
                report.key_pairs += 1;
            }
        }
        let orphan_builds: BTreeSet<String> =
            groups.into_iter().map(|(_, build)| build).filter(|build| !live.builds.contains(build)).collect();
        for build in orphan_builds {
            report.security_groups += self.delete_group_if_unused(&build, deadline).await.map_err(failed)?;
        }
        Ok(report)
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder().name(format!("tag:{key}")).values(value).build()
}

fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

fn state(instance: &Instance) -> Option<InstanceStateName> {
    instance.state().and_then(|s| s.name()).cloned()
}

fn invalid(action: &'static str, message: String) -> ApiError {
    ApiError { action, code: None, message, transient: false }
}

/// An alias from the pipeline resolved through the config map; the `default` alias (or nothing)
/// when the pipeline names none.
fn resolve(
    map: &BTreeMap<String, String>,
    alias: Option<&str>,
    what: &str,
    section: &str,
) -> Result<Option<String>, String> {
    match alias {
        Some(alias) => map.get(alias).cloned().map(Some).ok_or_else(|| {
            let known: Vec<&str> = map.keys().map(String::as_str).collect();
            format!("{what} {alias:?} is not in [provider.ec2.{section}] (known: {})", known.join(", "))
        }),
        None => Ok(map.get(DEFAULT_ALIAS).cloned()),
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

    fn config() -> Ec2Config {
        let mut config = Ec2Config::new("eu-west-1", "gantry-1", "admin");
        config.images = BTreeMap::from([("debian-12".into(), "ami-1".into()), ("default".into(), "ami-0".into())]);
        config.sizes = BTreeMap::from([("small".into(), "t3.small".into())]);
        config
    }

    #[test]
    fn aliases_resolve_through_the_config_and_unknown_ones_name_the_known() {
        let map = config().images;
        assert_eq!(resolve(&map, Some("debian-12"), "image", "images").unwrap().as_deref(), Some("ami-1"));
        assert_eq!(resolve(&map, None, "image", "images").unwrap().as_deref(), Some("ami-0"));
        let error = resolve(&map, Some("ubuntu"), "image", "images").unwrap_err();
        assert!(error.contains("\"ubuntu\"") && error.contains("debian-12"), "{error}");
    }

    #[test]
    fn config_refuses_an_open_ssh_rule_and_public_without_a_source() {
        let mut open = config();
        open.allow_ssh_from = Some("0.0.0.0/0".parse().unwrap());
        assert!(open.check().unwrap_err().to_string().contains("whole internet"));
        let mut public = config();
        public.connect = Connect::Public;
        assert!(public.check().unwrap_err().to_string().contains("allow_ssh_from"));
        let mut bad = config();
        bad.server_id = "a b".into();
        assert!(bad.check().is_err());
        assert!(config().check().is_ok());
    }

    #[test]
    fn own_address_is_a_single_loopback_host() {
        let own = own_address_towards("127.0.0.0/16").unwrap();
        assert!(own.addr().is_loopback(), "{own}");
        assert_eq!(own.prefix_len(), 32);
    }
}
