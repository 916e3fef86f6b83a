//! The plugin author's simulator (`pitboss plugin test`): drives a routing
//! policy through synthetic pools with the same runtime the host uses,
//! checking every decision and timing every call.
//!
//! Owns: the scenarios, their deterministic random pools, and the report.
//! Must not touch: real pools or workers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::{PolicyEngine, PolicyLimits, PolicySource, PoolInfo, Profile, RouterInstance, RouterPolicy, RouterSlot};
use crate::pool::{Decision, RequestView, WorkerState, WorkerView};

/// One synthetic situation a router must handle.
#[derive(Clone, Copy)]
enum Scenario {
    /// Every worker ready and idle; each call finishes at once.
    Idle,
    /// Thread workers (capacity 4) with uneven load, some starting or
    /// draining; calls finish at random.
    MixedLoad,
    /// Every worker at capacity: only `queue` or `reject` are valid.
    Full,
    /// Every other worker draining.
    Draining,
    /// Requests carrying session keys and metadata.
    Sessions,
}

impl Scenario {
    const ALL: [Scenario; 5] =
        [Scenario::Idle, Scenario::MixedLoad, Scenario::Full, Scenario::Draining, Scenario::Sessions];

    fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::MixedLoad => "mixed-load",
            Scenario::Full => "full",
            Scenario::Draining => "draining",
            Scenario::Sessions => "sessions",
        }
    }

    fn capacity(self) -> u32 {
        match self {
            Scenario::MixedLoad => 4,
            _ => 1,
        }
    }

    fn initial_workers(self, count: u32, rng: &mut Lcg) -> Vec<WorkerView> {
        let capacity = self.capacity();
        (0..count)
            .map(|id| {
                let (state, in_flight) = match self {
                    Scenario::Idle | Scenario::Sessions => (WorkerState::Ready, 0),
                    Scenario::Full => (WorkerState::Ready, capacity),
                    Scenario::Draining if id % 2 == 0 => (WorkerState::Draining, 0),
                    Scenario::Draining => (WorkerState::Ready, 0),
                    Scenario::MixedLoad if id % 7 == 3 => (WorkerState::Starting, 0),
                    Scenario::MixedLoad if id % 5 == 1 => (WorkerState::Draining, rng.below(capacity + 1)),
                    Scenario::MixedLoad => (WorkerState::Ready, rng.below(capacity + 1)),
                };
                WorkerView {
                    id,
                    capacity,
                    in_flight,
                    served: u64::from(rng.below(50)),
                    age_ms: u64::from(rng.below(3_600_000)),
                    rss_bytes: (40 << 20) + u64::from(rng.below(200 << 20)),
                    state,
                }
            })
            .collect()
    }

    fn request(self, index: u32) -> RequestView {
        let sessions = matches!(self, Scenario::Sessions);
        RequestView {
            tool: ["predict", "embed", "echo"][index as usize % 3].to_owned(),
            session: sessions.then(|| format!("user-{}", index % 32)),
            payload_size: u64::from(index % 4096),
            metadata: if sessions { vec![("tenant".to_owned(), format!("t{}", index % 3))] } else { Vec::new() },
        }
    }
}

/// Deterministic pseudo-random numbers, so every run sees the same pools.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, bound: u32) -> u32 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % u64::from(bound.max(1))) as u32
    }
}

/// What a simulation found.
#[derive(Serialize)]
pub struct SimulationReport {
    pub plugin: String,
    /// The plugin's name and version from its metadata.
    pub identity: String,
    pub completion_hook: bool,
    pub compiled_from_cache: bool,
    pub load_ms: f64,
    pub scenarios: Vec<ScenarioReport>,
    /// No scenario saw a fault.
    pub passed: bool,
}

/// One scenario's decisions, faults and per-call cost.
#[derive(Serialize, Default)]
pub struct ScenarioReport {
    pub name: &'static str,
    pub decisions: u64,
    pub to_worker: u64,
    pub queued: u64,
    pub rejected: u64,
    pub workers_used: usize,
    pub fallbacks: u64,
    /// Instances built: 1, plus one after each fault.
    pub instances: u64,
    pub faults: BTreeMap<String, u64>,
    pub first_fault: Option<String>,
    pub p50_ns: u64,
    pub p99_ns: u64,
}

/// The synthetic pools: their size, and the router options they hand the
/// plugin.
#[derive(Clone, Debug)]
pub struct Simulation {
    /// Workers in each synthetic pool.
    pub workers: u32,
    /// Routing calls per scenario.
    pub requests: u32,
    /// What a pool's `router_options` would give the plugin's `init`, in
    /// key order.
    pub options: Vec<(String, String)>,
}

/// Loads `source` under `limits` and drives it through every scenario.
pub fn simulate(
    engine: &PolicyEngine,
    source: &PolicySource,
    limits: PolicyLimits,
    simulation: Simulation,
) -> Result<SimulationReport> {
    let started = Instant::now();
    let policy = RouterPolicy::load(engine, source, limits)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let slot = RouterSlot::new("simulation", policy.clone());
    let scenarios: Vec<ScenarioReport> =
        Scenario::ALL.iter().map(|scenario| run_scenario(*scenario, &slot, &simulation)).collect();
    Ok(SimulationReport {
        plugin: source.to_string(),
        identity: policy.meta().to_string(),
        completion_hook: policy.has_completion_hook(),
        compiled_from_cache: policy.compiled_from_cache(),
        load_ms,
        passed: scenarios.iter().all(|s| s.faults.is_empty()),
        scenarios,
    })
}

fn run_scenario(scenario: Scenario, slot: &Arc<RouterSlot>, args: &Simulation) -> ScenarioReport {
    let mut report = ScenarioReport { name: scenario.name(), ..ScenarioReport::default() };
    let mut rng = Lcg(0x5eed ^ scenario.name().len() as u64);
    let mut workers = scenario.initial_workers(args.workers, &mut rng);
    let pool = PoolInfo {
        name: format!("plugin-test-{}", scenario.name()),
        profile: if scenario.capacity() > 1 { Profile::Thread } else { Profile::Process },
        size: args.workers,
        threads_per_worker: scenario.capacity(),
        options: args.options.clone(),
    };
    let mut router = match RouterInstance::new(slot.clone(), pool) {
        Ok(router) => router,
        Err(fault) => {
            report.first_fault = Some(fault.to_string());
            report.faults.insert(fault.kind.to_string(), 1);
            return report;
        }
    };

    let mut costs = Vec::with_capacity(args.requests as usize);
    let mut used = BTreeSet::new();
    for index in 0..args.requests {
        let request = scenario.request(index);
        let started = Instant::now();
        let routed = router.route(&request, &workers);
        costs.push(started.elapsed().as_nanos() as u64);

        if let Some(fault) = routed.fault {
            report.first_fault.get_or_insert_with(|| fault.to_string());
        }
        match routed.decision {
            Decision::Worker(id) => {
                report.to_worker += 1;
                used.insert(id);
                if let Some(worker) = workers.iter_mut().find(|w| w.id == id) {
                    worker.in_flight += 1;
                }
            }
            Decision::Queue => report.queued += 1,
            Decision::Reject(_) => report.rejected += 1,
        }
        if !matches!(scenario, Scenario::Full) {
            if let Some(finished) = finish_one(&mut workers, &mut rng) {
                if let Some(fault) = router.on_complete(finished, &request.tool, true, 1_000) {
                    report.first_fault.get_or_insert_with(|| fault.to_string());
                }
            }
        }
    }

    let stats = router.stats().snapshot();
    report.decisions = stats.decisions;
    report.fallbacks = stats.fallbacks;
    report.instances = stats.rebuilds;
    report.faults = stats.faults.iter().map(|(kind, n)| (kind.to_string(), *n)).collect();
    report.workers_used = used.len();
    costs.sort_unstable();
    report.p50_ns = percentile(&costs, 50);
    report.p99_ns = percentile(&costs, 99);
    report
}

/// Completes one call on a random busy worker; returns that worker's id.
fn finish_one(workers: &mut [WorkerView], rng: &mut Lcg) -> Option<u32> {
    let start = rng.below(workers.len() as u32) as usize;
    let count = workers.len();
    let worker = (0..count).map(|i| (start + i) % count).find(|&i| workers[i].in_flight > 0)?;
    let worker = &mut workers[worker];
    worker.in_flight -= 1;
    worker.served += 1;
    Some(worker.id)
}

fn percentile(sorted: &[u64], pct: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() - 1) * pct / 100]
}
