//! How long the EC2 provider takes to provision a two-host build against a one-host build, with
//! moto's EC2 server behind the fault-injecting proxy and a real sshd standing in for each
//! instance (the runner's own test cloud, `tests/support/ec2_cloud.rs`). The hosts of a build
//! launch concurrently, so the two-host time should stay close to the one-host time.
//!
//! Each round provisions a one-host build (role `web`), tears it down, then a two-host build
//! (`web` and `db`, both `provision` calls joined as the executor joins them), and tears it down;
//! every other round runs the two in the opposite order, and every build has a key of its own. One
//! untimed round first warms the provider (its network lookup, its HTTP connections). Two figures
//! per build, medians over the rounds, and the two-host/one-host ratio of each:
//! - wall: from calling `provision` until every host is ready (SSH session open, work
//!   directory created);
//! - API: from the arrival at the proxy of the provisioning's first EC2 call to the arrival of
//!   its last (SSH does not go through the proxy), so it leaves out the last call's answer;
//! - sshd up: until the cloud's stand-in sshds all listen. It belongs to the harness, not the
//!   provider: `serve_instances` polls moto, then starts one sshd after the other, so a second
//!   host's server comes up later, and the provider's SSH connection attempts (100, 200, 400 ms
//!   apart, doubling) may then wait a whole step longer for it.
//!
//! `--latency MS` holds every EC2 call that long at the proxy before forwarding it, like the round
//! trip to a real region (default 0). Waiting for `running` polls `DescribeInstances` every
//! `POLL_INTERVAL` (50 ms), which bounds how late `running` is noticed; moto reports `running`
//! at the first look, so here the interval never adds to the figures. Teardown is not timed.
//! Nothing outside loopback is contacted. Run with
//! `cargo bench -p gantry-runner --bench ec2_provision -- --runs 7 --latency 100`.

#[path = "../tests/support/ec2_cloud.rs"]
mod ec2_cloud;
#[path = "../tests/support/fault_proxy.rs"]
mod fault_proxy;
#[path = "../tests/support/moto.rs"]
mod moto;
#[path = "../tests/support/sshd.rs"]
mod sshd;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gantry_runner::provider::ec2::{Ec2Config, Ec2Provider, RetryPolicy};
use gantry_runner::provider::{HostId, HostRequest, Provider};

use crate::ec2_cloud::{current_user, sdk_config, Cloud};
use crate::moto::MOTO_AMI;

/// Rounds without `--runs`.
const DEFAULT_RUNS: usize = 7;

/// The provider's pause between two `DescribeInstances` while waiting for `running`.
const POLL_INTERVAL: Duration = ec2_cloud::POLL;

/// How long one host may take to provision before the benchmark fails.
const PROVISION_TIMEOUT: Duration = Duration::from_secs(60);

/// How long teardown may wait for its instances to terminate.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(30);

/// The pipeline's total timeout in every request (it only sets the VM's shutdown timer).
const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);

const SERVER_ID: &str = "gantry-bench";

/// The roles of the two builds compared.
const ONE_HOST: &[&str] = &["web"];
const TWO_HOSTS: &[&str] = &["web", "db"];

struct Args {
    runs: usize,
    latency: Duration,
}

/// One provisioning of a build.
struct Sample {
    wall: Duration,
    api: Duration,
    /// Until every stand-in sshd listened.
    served: Duration,
    calls: usize,
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let cloud = Cloud::start().await;
    cloud.proxy.delay_all(args.latency);
    let provider = Ec2Provider::new(config(&cloud), &sdk_config(&cloud.proxy.endpoint)).unwrap();
    let mut builds = (0..).map(|n| format!("b{n}"));
    let mut build = || builds.next().expect("an endless supply of keys");

    measure(&cloud, &provider, &build(), TWO_HOSTS).await;
    measure(&cloud, &provider, &build(), ONE_HOST).await;
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for round in 0..args.runs {
        if round.is_multiple_of(2) {
            one.push(measure(&cloud, &provider, &build(), ONE_HOST).await);
            two.push(measure(&cloud, &provider, &build(), TWO_HOSTS).await);
        } else {
            two.push(measure(&cloud, &provider, &build(), TWO_HOSTS).await);
            one.push(measure(&cloud, &provider, &build(), ONE_HOST).await);
        }
    }
    drop(provider);
    drop(cloud);

    let median_of = |samples: &[Sample], field: fn(&Sample) -> Duration| median(samples.iter().map(field).collect());
    let (one_wall, two_wall) = (median_of(&one, |s| s.wall), median_of(&two, |s| s.wall));
    let (one_api, two_api) = (median_of(&one, |s| s.api), median_of(&two, |s| s.api));
    let (one_served, two_served) = (median_of(&one, |s| s.served), median_of(&two, |s| s.served));
    let calls = |samples: &[Sample]| {
        let mut counts: Vec<usize> = samples.iter().map(|s| s.calls).collect();
        counts.sort_unstable();
        counts[counts.len() / 2]
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "command: cargo bench -p gantry-runner --bench ec2_provision -- --runs {} --latency {}",
        args.runs,
        args.latency.as_millis()
    );
    println!(
        "EC2 calls held {} ms each, DescribeInstances polled every {} ms; medians of {} rounds",
        args.latency.as_millis(),
        POLL_INTERVAL.as_millis(),
        args.runs
    );
    println!("                  wall        API    sshd up   EC2 calls");
    println!("1 host:     {:8.0} ms {:7.0} ms {:7.0} ms {:8}", ms(one_wall), ms(one_api), ms(one_served), calls(&one));
    println!("2 hosts:    {:8.0} ms {:7.0} ms {:7.0} ms {:8}", ms(two_wall), ms(two_api), ms(two_served), calls(&two));
    println!(
        "ratio 2/1:  {:10.2} {:10.2} {:10.2}    (wall and API: target close to 1.00)",
        two_wall.as_secs_f64() / one_wall.as_secs_f64(),
        two_api.as_secs_f64() / one_api.as_secs_f64(),
        two_served.as_secs_f64() / one_served.as_secs_f64()
    );
}

/// `--runs N` and `--latency MS`; `--bench`, which cargo passes, is ignored.
fn parse_args() -> Args {
    let mut args = Args { runs: DEFAULT_RUNS, latency: Duration::ZERO };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        let mut value = |name: &str| -> u64 {
            let text = given.next().unwrap_or_else(|| panic!("{name} needs a value"));
            text.parse().unwrap_or_else(|_| panic!("{name} {text:?} is not a whole number"))
        };
        match arg.as_str() {
            "--runs" => args.runs = value("--runs").try_into().expect("a run count"),
            "--latency" => args.latency = Duration::from_millis(value("--latency")),
            "--bench" => {}
            other => panic!("unknown argument {other:?}: expected --runs N, --latency MS"),
        }
    }
    assert!(args.runs > 0, "--runs must be at least 1");
    args
}

/// The runner's test configuration: the proxy as endpoint, the cloud's subnet, fast retries.
fn config(cloud: &Cloud) -> Ec2Config {
    let mut config = Ec2Config::new("us-east-1", SERVER_ID, &current_user());
    config.endpoint_url = Some(cloud.proxy.endpoint.clone());
    config.subnet_id = Some(cloud.subnet_id.clone());
    config.ssh_port = cloud.port;
    config.images = BTreeMap::from([("default".into(), MOTO_AMI.into())]);
    config.sizes = BTreeMap::from([("default".into(), "t3.small".into())]);
    config.provision_timeout = PROVISION_TIMEOUT;
    config.terminate_timeout = TERMINATE_TIMEOUT;
    config.retry =
        RetryPolicy { min_delay: Duration::from_millis(10), max_delay: Duration::from_millis(100), max_retries: 8 };
    config.poll_interval = POLL_INTERVAL;
    config
}

/// Provision one host per role of `build` concurrently while the cloud serves the instances,
/// then tear every host down and stop its sshd.
async fn measure(cloud: &Cloud, provider: &Ec2Provider, build: &str, roles: &[&str]) -> Sample {
    let requests: Vec<HostRequest> = roles
        .iter()
        .map(|role| HostRequest {
            id: HostId(format!("{build}-{role}")),
            build: build.to_string(),
            role: role.to_string(),
            image: None,
            size: None,
            build_timeout: BUILD_TIMEOUT,
        })
        .collect();
    cloud.proxy.reset_log();
    let started = Instant::now();
    let provisioning = async {
        let hosts = futures::future::join_all(requests.iter().map(|request| provider.provision(request))).await;
        (hosts, started.elapsed())
    };
    let serving = async {
        let vms = cloud.serve_instances(requests.len()).await;
        (vms, started.elapsed())
    };
    let ((hosts, wall), (vms, served)) = tokio::join!(provisioning, serving);
    let hosts: Vec<_> =
        hosts.into_iter().map(|host| host.unwrap_or_else(|e| panic!("{e}\nmoto: {}", cloud.moto.log()))).collect();
    let calls = cloud.proxy.calls();
    let first = calls.iter().map(|call| call.at).min().expect("provisioning called EC2");
    let last = calls.iter().map(|call| call.at).max().expect("provisioning called EC2");

    let instances: Vec<String> = hosts.iter().map(|host| host.provider_id.clone()).collect();
    drop(hosts);
    let teardowns =
        requests.iter().zip(&instances).map(|(request, instance)| provider.teardown(&request.id, Some(instance)));
    for torn_down in futures::future::join_all(teardowns).await {
        torn_down.unwrap();
    }
    drop(vms);
    assert!(cloud.live_instances().await.is_empty(), "teardown left instances running");
    Sample { wall, api: last.duration_since(first), served, calls: calls.len() }
}

/// The middle value; the mean of the two middle ones for an even count.
fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2
    } else {
        values[middle]
    }
}
