//! `pitboss plugin test`: the plugin author's local runner. Loads a routing
//! plugin through the same runtime the host uses and drives it through
//! synthetic pools, checking every decision.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::policy::{
    Decision, PolicyEngine, PolicyLimits, PolicySource, PoolInfo, Profile, RequestView, RouterInstance, RouterPolicy,
    RouterSlot, WorkerState, WorkerView,
};

#[derive(clap::Args)]
pub struct Args {
    /// The plugin: `builtin:NAME` or a path to a .wasm component.
    plugin: String,
    /// Workers in each synthetic pool.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    workers: u32,
    /// Routing calls per scenario.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Wall-clock budget of one call, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 20)]
    call_deadline_ms: u64,
    /// Instruction budget (fuel) of one call.
    #[arg(long, default_value_t = PolicyLimits::default().fuel_per_call)]
    fuel: u64,
    /// Memory cap of the plugin, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    max_memory_mib: usize,
}

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

#[derive(Serialize)]
struct Report {
    plugin: String,
    identity: String,
    completion_hook: bool,
    compiled_from_cache: bool,
    load_ms: f64,
    scenarios: Vec<ScenarioReport>,
    passed: bool,
}

#[derive(Serialize, Default)]
struct ScenarioReport {
    name: &'static str,
    decisions: u64,
    to_worker: u64,
    queued: u64,
    rejected: u64,
    workers_used: usize,
    fallbacks: u64,
    /// Instances built: 1, plus one after each fault.
    instances: u64,
    faults: BTreeMap<String, u64>,
    first_fault: Option<String>,
    p50_ns: u64,
    p99_ns: u64,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let source = PolicySource::parse(&args.plugin)?;
    let limits = PolicyLimits {
        call_deadline: Duration::from_millis(args.call_deadline_ms),
        fuel_per_call: args.fuel,
        max_memory_bytes: args.max_memory_mib << 20,
        ..PolicyLimits::default()
    };
    let engine = PolicyEngine::new(PolicyEngine::default_cache_dir())?;
    let started = Instant::now();
    let policy = RouterPolicy::load(&engine, &source, limits)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let slot = RouterSlot::new(policy.clone());

    let scenarios = Scenario::ALL.iter().map(|scenario| run_scenario(*scenario, &slot, args)).collect::<Vec<_>>();
    let passed = scenarios.iter().all(|s| s.faults.is_empty());
    let report = Report {
        plugin: source.to_string(),
        identity: policy.meta().to_string(),
        completion_hook: policy.has_completion_hook(),
        compiled_from_cache: policy.compiled_from_cache(),
        load_ms,
        scenarios,
        passed,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report, args);
    }
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn run_scenario(scenario: Scenario, slot: &std::sync::Arc<RouterSlot>, args: &Args) -> ScenarioReport {
    let mut report = ScenarioReport { name: scenario.name(), ..ScenarioReport::default() };
    let mut rng = Lcg(0x5eed ^ scenario.name().len() as u64);
    let mut workers = scenario.initial_workers(args.workers, &mut rng);
    let pool = PoolInfo {
        name: format!("plugin-test-{}", scenario.name()),
        profile: if scenario.capacity() > 1 { Profile::Thread } else { Profile::Process },
        size: args.workers,
        threads_per_worker: scenario.capacity(),
        options: Vec::new(),
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

fn print_table(report: &Report, args: &Args) {
    println!("plugin     {}", report.plugin);
    println!("identity   {}", report.identity);
    println!(
        "loaded     {:.1} ms ({}), completion hook: {}",
        report.load_ms,
        if report.compiled_from_cache { "from cache" } else { "compiled" },
        if report.completion_hook { "yes" } else { "no" },
    );
    println!("pools      {} workers, {} requests per scenario\n", args.workers, args.requests);
    println!(
        "{:<12} {:>9} {:>8} {:>7} {:>7} {:>8} {:>9} {:>7} {:>10} {:>10}",
        "scenario", "decisions", "worker", "queue", "reject", "workers", "fallback", "faults", "p50", "p99"
    );
    for s in &report.scenarios {
        let faults: u64 = s.faults.values().sum();
        println!(
            "{:<12} {:>9} {:>8} {:>7} {:>7} {:>8} {:>9} {:>7} {:>10} {:>10}",
            s.name,
            s.decisions,
            s.to_worker,
            s.queued,
            s.rejected,
            s.workers_used,
            s.fallbacks,
            faults,
            format_ns(s.p50_ns),
            format_ns(s.p99_ns)
        );
    }
    for s in report.scenarios.iter().filter(|s| !s.faults.is_empty()) {
        let kinds: Vec<String> = s.faults.iter().map(|(kind, n)| format!("{kind} ×{n}")).collect();
        println!("\n{}: faults {}", s.name, kinds.join(", "));
        if let Some(first) = &s.first_fault {
            println!("  first: {first}");
        }
    }
    println!("\nresult     {}", if report.passed { "PASS" } else { "FAIL: the plugin faulted (see above)" });
}

fn format_ns(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{:.2} µs", ns as f64 / 1e3)
    } else {
        format!("{ns} ns")
    }
}
