//! What `/metrics` exposes, in the Prometheus text format, through the Prometheus project's own
//! client (`prometheus-client`): nothing here formats exposition text by hand.
//!
//! Two kinds of numbers. Events are counted where they happen: the scheduler counts builds as
//! they reach a final status ([`Metrics::build_finished`]), the persister observes each step's
//! duration ([`Metrics::step_finished`]), the webhook route counts deliveries by the status code
//! it answered ([`Metrics::webhook_answered`]). States are read from the store when scraped
//! ([`Metrics::encode`] with a [`Snapshot`]): the queue's length, the builds queued or running by
//! status and the hosts not torn down by provider, so they are right after a restart and across
//! servers sharing a database; each is an index range that does not grow with the history.
//! Finished builds are counted, not gauged: `gantry_builds_finished_total{status}`, which
//! Prometheus' `increase()` reads across restarts. One [`Metrics`] belongs to one scheduler; this
//! module reads nothing itself.

use std::sync::Mutex;

use gantry_event::{BuildStatus, StepKind, StepStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of what [`Metrics::encode`] writes (text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the step-duration histogram's buckets: from a quick push to an hour
/// of tests.
pub const STEP_DURATION_BUCKETS: [f64; 13] =
    [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

/// The statuses of a live build, so each has a series (at zero) from the first scrape on.
const LIVE_STATUSES: [BuildStatus; 3] = [BuildStatus::Queued, BuildStatus::Provisioning, BuildStatus::Running];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    kind: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

/// The states a scrape reports, read from the store just before.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Builds queued, provisioning or running, by status (statuses with none may be left out).
    pub live_builds: Vec<(BuildStatus, i64)>,
    /// Hosts not torn down, by provider name.
    pub hosts_alive: Vec<(String, i64)>,
    /// The configured providers, each reported even with no host alive.
    pub providers: Vec<String>,
}

/// The server's metrics. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    builds_finished: Family<StatusLabel, Counter>,
    step_duration: Family<StepLabels, Histogram>,
    webhook_deliveries: Family<CodeLabel, Counter>,
    queue_length: Gauge,
    builds_live: Family<StatusLabel, Gauge>,
    hosts_alive: Family<ProviderLabel, Gauge>,
    /// One scrape at a time: its gauges are set, then encoded.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gantry");
        let builds_finished = Family::<StatusLabel, Counter>::default();
        registry.register("builds_finished", "Builds that reached a final status, by status", builds_finished.clone());
        // Every series of the family gets the same buckets.
        let step_duration = Family::<StepLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(STEP_DURATION_BUCKETS)) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "step_duration",
            "How long finished steps (provision, push, setup, stage, teardown) took",
            Unit::Seconds,
            step_duration.clone(),
        );
        let webhook_deliveries = Family::<CodeLabel, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries, by the HTTP status code they were answered with",
            webhook_deliveries.clone(),
        );
        let queue_length = Gauge::default();
        registry.register("queue_length", "Builds queued and not yet claimed", queue_length.clone());
        let builds_live = Family::<StatusLabel, Gauge>::default();
        registry.register("builds_live", "Builds queued, provisioning or running, by status", builds_live.clone());
        let hosts_alive = Family::<ProviderLabel, Gauge>::default();
        registry.register("hosts_alive", "Hosts requested and not yet torn down, by provider", hosts_alive.clone());
        Metrics {
            registry,
            builds_finished,
            step_duration,
            webhook_deliveries,
            queue_length,
            builds_live,
            hosts_alive,
            scrape: Mutex::new(()),
        }
    }

    /// A build reached `status` (final).
    pub fn build_finished(&self, status: BuildStatus) {
        self.builds_finished.get_or_create(&StatusLabel { status: status.as_str() }).inc();
    }

    /// A step of `kind` ended with `status` after `took_ms`.
    pub fn step_finished(&self, kind: StepKind, status: StepStatus, took_ms: i64) {
        let labels = StepLabels { kind: kind.as_str(), status: status.as_str() };
        self.step_duration.get_or_create(&labels).observe(took_ms.max(0) as f64 / 1000.0);
    }

    /// A webhook delivery was answered with `code`.
    pub fn webhook_answered(&self, code: u16) {
        self.webhook_deliveries.get_or_create(&CodeLabel { code }).inc();
    }

    /// Every metric in the Prometheus text format, the states taken from `snapshot`.
    pub fn encode(&self, snapshot: &Snapshot) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count =
            |status: BuildStatus| snapshot.live_builds.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
        for status in LIVE_STATUSES {
            self.builds_live.get_or_create(&StatusLabel { status: status.as_str() }).set(count(status));
        }
        self.queue_length.set(count(BuildStatus::Queued));
        self.hosts_alive.clear();
        for provider in &snapshot.providers {
            self.hosts_alive.get_or_create(&ProviderLabel { provider: provider.clone() }).set(0);
        }
        for (provider, alive) in &snapshot.hosts_alive {
            self.hosts_alive.get_or_create(&ProviderLabel { provider: provider.clone() }).set(*alive);
        }
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing into a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_states_are_exposed_in_the_text_format() {
        let metrics = Metrics::new();
        metrics.build_finished(BuildStatus::Passed);
        metrics.build_finished(BuildStatus::Passed);
        metrics.step_finished(StepKind::Stage, StepStatus::Passed, 1_500);
        metrics.webhook_answered(202);
        let snapshot = Snapshot {
            live_builds: vec![(BuildStatus::Queued, 3), (BuildStatus::Running, 2)],
            hosts_alive: vec![("local".to_string(), 2)],
            providers: vec!["local".to_string(), "ec2".to_string()],
        };
        let text = metrics.encode(&snapshot);
        for line in [
            "# TYPE gantry_builds_finished_total counter",
            "gantry_builds_finished_total{status=\"passed\"} 2",
            "gantry_step_duration_seconds_bucket{kind=\"stage\",status=\"passed\",le=\"2.5\"} 1",
            "gantry_step_duration_seconds_bucket{kind=\"stage\",status=\"passed\",le=\"1\"} 0",
            "gantry_step_duration_seconds_sum{kind=\"stage\",status=\"passed\"} 1.5",
            "gantry_webhook_deliveries_total{code=\"202\"} 1",
            "gantry_queue_length 3",
            "gantry_builds_live{status=\"queued\"} 3",
            "gantry_builds_live{status=\"running\"} 2",
            "gantry_builds_live{status=\"provisioning\"} 0",
            "gantry_hosts_alive{provider=\"local\"} 2",
            "gantry_hosts_alive{provider=\"ec2\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        // A provider whose hosts are gone drops to zero at the next scrape.
        let text = metrics.encode(&Snapshot { providers: vec!["local".to_string()], ..Snapshot::default() });
        assert!(text.lines().any(|l| l == "gantry_hosts_alive{provider=\"local\"} 0"), "{text}");
        assert!(!text.contains("provider=\"ec2\""), "{text}");
    }
}
