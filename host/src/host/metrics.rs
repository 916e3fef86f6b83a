//! The host's Prometheus metrics. Calls are counted as they pass through
//! the [`Host`](super::Host) (requests, latency, queue wait, retries,
//! streams); everything else is read from the pools' stats and the policy
//! slots at each scrape (queue depth, workers by state, recycles,
//! restarts, policy decisions, faults, fallbacks, decision latency, swaps
//! and rollbacks), so a scrape never disagrees with `pitboss status`.
//!
//! Owns: the metric families, their names and labels. Must not touch: the
//! pools or the policies (it is handed their snapshots).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::policy::{PolicyChanges, VersionUsage};
use crate::pool::{CallError, CallOutput, DecisionLatency, ErrorKind, PoolStatus, WorkerStatus, DECISION_BUCKETS_NS};

/// The content type of [`CallMetrics::encode`]'s text.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Seconds: 100 µs to a minute, the span of a call from a no-op to a
/// model's inference.
const LATENCY_BUCKETS: [f64; 18] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// What the host counts as calls pass.
pub(super) struct CallMetrics {
    requests: Family<Labels, Counter>,
    duration: Histograms,
    queue_wait: Histograms,
    retries: Family<Labels, Counter>,
    streams: Family<Labels, Counter>,
}

impl Default for CallMetrics {
    fn default() -> Self {
        CallMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            queue_wait: Family::new_with_constructor(latency_histogram),
            retries: Family::default(),
            streams: Family::default(),
        }
    }
}

/// The `pool` and `tool` labels of a call. Names a caller made up (an
/// unknown pool or tool) are not labels, or any caller could add series
/// without bound.
fn call_labels(pool: &str, tool: &str, error: Option<ErrorKind>) -> Labels {
    let (pool, tool) = match error {
        Some(ErrorKind::UnknownPool) => ("", ""),
        Some(ErrorKind::UnknownTool) => (pool, ""),
        _ => (pool, tool),
    };
    vec![("pool", pool.to_owned()), ("tool", tool.to_owned())]
}

impl CallMetrics {
    /// Counts one finished `Execute` of `tool` on `pool` that took `elapsed`.
    pub(super) fn record(&self, pool: &str, tool: &str, outcome: &Result<CallOutput, CallError>, elapsed: Duration) {
        let mut labels = call_labels(pool, tool, outcome.as_ref().err().map(|e| e.kind));
        if let Ok(output) = outcome {
            self.queue_wait.get_or_create(&labels[..1].to_vec()).observe(output.queued.as_secs_f64());
            if output.attempts > 1 {
                self.retries.get_or_create(&labels).inc_by(u64::from(output.attempts - 1));
            }
        }
        labels.push(("outcome", outcome.as_ref().map_or_else(|e| e.kind.as_str(), |_| "ok").to_owned()));
        self.requests.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// Counts one `ExecuteStream` started.
    pub(super) fn record_stream(&self, pool: &str, tool: &str, known_pool: bool) {
        let refused = if known_pool { None } else { Some(ErrorKind::UnknownPool) };
        self.streams.get_or_create(&call_labels(pool, tool, refused)).inc();
    }

    /// The text exposition of everything: these counters and `snapshot`.
    pub(super) fn encode(&self, snapshot: Snapshot) -> String {
        let mut registry = Registry::default();
        registry.register(
            "pitboss_requests",
            "Execute calls answered, by pool, tool and outcome (ok or the error kind)",
            self.requests.clone(),
        );
        registry.register(
            "pitboss_request_duration_seconds",
            "Time from a call reaching the host to its answer, queueing included",
            self.duration.clone(),
        );
        registry.register(
            "pitboss_queue_wait_seconds",
            "Time answered calls waited for a worker",
            self.queue_wait.clone(),
        );
        registry.register(
            "pitboss_retries",
            "Extra attempts of idempotent calls whose worker crashed or timed out",
            self.retries.clone(),
        );
        registry.register("pitboss_streams", "ExecuteStream calls started", self.streams.clone());
        registry.register_collector(Box::new(snapshot));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }
}

/// The pools' and policies' state at one scrape.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub pools: Vec<PoolStatus>,
    /// Each pool's routing policies, by pool name.
    pub policies: Vec<PoolPolicyUsage>,
}

/// What one pool's routing policies did.
#[derive(Debug)]
pub(super) struct PoolPolicyUsage {
    pub pool: String,
    pub changes: PolicyChanges,
    /// Every version that has been live, by its label
    /// ([`crate::policy::RouterSlot::version_usage`]).
    pub versions: Vec<(String, Arc<VersionUsage>)>,
}

impl PoolPolicyUsage {
    /// Usage summed by version label: the same component swapped in twice
    /// is one version with one series.
    fn by_version(&self) -> BTreeMap<&str, VersionTotals> {
        let mut totals: BTreeMap<&str, VersionTotals> = BTreeMap::new();
        for (version, usage) in &self.versions {
            let total = totals.entry(version).or_default();
            total.decisions += usage.decisions();
            total.faults += usage.faults();
            total.fallbacks += usage.fallbacks();
            let latency = usage.decision_latency();
            total.latency.sum_ns += latency.sum_ns;
            for (sum, count) in total.latency.counts.iter_mut().zip(latency.counts) {
                *sum += count;
            }
        }
        totals
    }
}

#[derive(Default)]
struct VersionTotals {
    decisions: u64,
    faults: u64,
    fallbacks: u64,
    latency: DecisionLatency,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pool = |p: &PoolStatus| vec![("pool", p.name.clone())];
        let per_pool = |value: fn(&PoolStatus) -> u64| self.pools.iter().map(move |p| (pool(p), value(p)));
        gauges(&mut encoder, "pitboss_queue_depth", "Calls waiting for a worker", per_pool(|p| p.queued.into()))?;
        gauges(&mut encoder, "pitboss_in_flight", "Calls running on workers", per_pool(|p| p.in_flight.into()))?;
        gauges(
            &mut encoder,
            "pitboss_reserved",
            "Calls sent to workers that wait behind a running one (calls_in_reserve)",
            per_pool(|p| p.reserved.into()),
        )?;
        gauges(
            &mut encoder,
            "pitboss_capacity",
            "Calls the pool can run at once: serving workers times threads each",
            per_pool(|p| p.capacity.into()),
        )?;
        // From each worker's own state, so the states do not overlap
        // (the pool's `ready` also counts workers still draining).
        let by_state = self.pools.iter().flat_map(|p| {
            WorkerStatus::STATES.map(|state| {
                let count = p.workers.iter().filter(|w| w.state == state).count();
                (vec![("pool", p.name.clone()), ("state", state.to_owned())], count as u64)
            })
        });
        gauges(&mut encoder, "pitboss_workers", "Workers by state", by_state)?;
        let rss = self.pools.iter().flat_map(|p| {
            p.workers.iter().map(|w| {
                let labels = vec![("pool", p.name.clone()), ("worker", w.id.to_string())];
                (labels, w.rss_bytes)
            })
        });
        gauges(&mut encoder, "pitboss_worker_rss_bytes", "Resident memory of each worker process", rss)?;

        let recycles = self.pools.iter().flat_map(|p| {
            p.recycles
                .all()
                .map(|(reason, count)| (vec![("pool", p.name.clone()), ("reason", reason.to_string())], count))
        });
        counters(&mut encoder, "pitboss_worker_recycles", "Workers replaced, by reason", recycles)?;
        counters(
            &mut encoder,
            "pitboss_worker_restarts",
            "Workers started to replace others (recycles, crashes, timeouts)",
            per_pool(|p| p.restarts),
        )?;
        counters(&mut encoder, "pitboss_worker_crashes", "Workers that exited unasked", per_pool(|p| p.crashes))?;

        let versions: Vec<(&str, BTreeMap<&str, VersionTotals>)> =
            self.policies.iter().map(|p| (p.pool.as_str(), p.by_version())).collect();
        let per_version = |value: fn(&VersionTotals) -> u64| {
            versions.iter().flat_map(move |(pool, totals)| {
                totals.iter().map(move |(version, total)| (version_labels(pool, version), value(total)))
            })
        };
        let each = "by pool and policy version, over every stretch the version was live";
        counters(
            &mut encoder,
            "pitboss_policy_decisions",
            &format!("Routing decisions the policy took, {each}"),
            per_version(|v| v.decisions),
        )?;
        counters(
            &mut encoder,
            "pitboss_policy_faults",
            &format!("Routing policy faults (traps, fuel, deadline, bad decisions), {each}"),
            per_version(|v| v.faults),
        )?;
        counters(
            &mut encoder,
            "pitboss_policy_fallbacks",
            &format!("Requests the native least-loaded rule routed in the policy's place, {each}"),
            per_version(|v| v.fallbacks),
        )?;
        let help = format!("Time a routing decision took, {each}");
        let mut latency =
            encoder.encode_descriptor("pitboss_policy_decision_seconds", &help, None, MetricType::Histogram)?;
        for (pool, totals) in &versions {
            for (version, total) in totals {
                let bounds = DECISION_BUCKETS_NS.iter().map(|ns| *ns as f64 / 1e9).chain([f64::INFINITY]);
                let buckets: Vec<(f64, u64)> = bounds.zip(total.latency.counts).collect();
                latency.encode_family(&version_labels(pool, version))?.encode_histogram::<NoLabelSet>(
                    total.latency.sum_ns as f64 / 1e9,
                    total.latency.counts.iter().sum(),
                    &buckets,
                    None,
                )?;
            }
        }
        let changes = |value: fn(&PolicyChanges) -> u64| {
            self.policies.iter().map(move |p| (vec![("pool", p.pool.clone())], value(&p.changes)))
        };
        counters(&mut encoder, "pitboss_policy_swaps", "Routing policy versions made live", changes(|c| c.swaps))?;
        counters(
            &mut encoder,
            "pitboss_policy_rollbacks",
            "Routing policy rollbacks, asked for or by the circuit breaker",
            changes(|c| c.rollbacks),
        )
    }
}

fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values {
        ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn version_labels(pool: &str, version: &str) -> Labels {
    vec![("pool", pool.to_owned()), ("version", version.to_owned())]
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}
