//! Routing policies: loading a router component, and the warm instance a
//! pool's dispatcher calls for every request, with fault handling and the
//! native fallback.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context, Result};
use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::Store;

use super::component::{self, arm};
use super::engine::{PolicyEngine, PolicyState, Sandbox};
use super::fault::{FaultKind, PolicyFault};
use super::guest_log::LogCounters;
use super::meta::PluginMeta;
use super::slot::RouterSlot;
use super::source::PolicySource;
use super::vetting::{CONTRACT_PACKAGE, CONTRACT_VERSION};
use crate::config::PolicyLimits;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "router-with-completion",
        with: { "pitboss:policy/types": crate::policy::contract },
    });
}

use super::contract::{self, PoolInfo};
use crate::pool::{self, Decision, RequestView, RouterReport, WorkerState, WorkerView};
use bindings::exports::pitboss::policy::{completion, routing};

/// Registers the router contract's host side (its shared types) with the
/// engine's linker.
pub(super) fn add_to_linker(linker: &mut Linker<PolicyState>) -> Result<()> {
    contract::add_to_linker::<PolicyState, HasSelf<PolicyState>>(linker, |state| state)?;
    Ok(())
}

/// One loaded, type-checked version of a routing policy. Immutable; pools
/// share it through [`RouterSlot`] and each instantiates it for itself.
pub struct RouterPolicy {
    label: String,
    meta: PluginMeta,
    limits: PolicyLimits,
    engine: PolicyEngine,
    pre: InstancePre<PolicyState>,
    routing: routing::GuestIndices,
    completion: Option<completion::GuestIndices>,
    from_cache: bool,
    loaded_at: SystemTime,
    usage: Arc<VersionUsage>,
    /// Options this version's `init` gets instead of the pool's configured
    /// `router_options` (a swap may carry new ones).
    options: Option<Vec<(String, String)>>,
}

/// Decisions, faults, fallbacks and decision time of one version, across
/// every instance of it and every stretch it was live: what the metrics
/// label with the version.
#[derive(Debug, Default)]
pub struct VersionUsage {
    pub(super) decisions: AtomicU64,
    pub(super) faults: AtomicU64,
    fallbacks: AtomicU64,
    /// Decisions by latency bucket ([`pool::DECISION_BUCKETS_NS`]).
    latency: [AtomicU64; pool::DECISION_BUCKETS_NS.len() + 1],
    latency_sum_ns: AtomicU64,
}

impl VersionUsage {
    pub fn decisions(&self) -> u64 {
        self.decisions.load(Ordering::Relaxed)
    }

    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// Requests the native least-loaded rule routed in this version's place.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    pub fn decision_latency(&self) -> pool::DecisionLatency {
        pool::DecisionLatency {
            counts: std::array::from_fn(|bucket| self.latency[bucket].load(Ordering::Relaxed)),
            sum_ns: self.latency_sum_ns.load(Ordering::Relaxed),
        }
    }

    fn count_latency(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = pool::DECISION_BUCKETS_NS.iter().position(|bound| ns <= *bound).unwrap_or(self.latency.len() - 1);
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl RouterPolicy {
    /// Loads `source` as a router: compiles it (or takes it from the cache),
    /// links it against the sandbox, and checks it exports the routing
    /// interface. Detects the optional completion hook.
    pub fn load(engine: &PolicyEngine, source: &PolicySource, limits: PolicyLimits) -> Result<Arc<Self>> {
        let wasm = source.read()?;
        Self::from_bytes(engine, source.to_string(), &wasm, limits, None)
            .with_context(|| format!("cannot load routing policy {source}"))
    }

    /// Loads a router from its bytes; `label` names it in logs and status
    /// (a path, or where the bytes came from). `options`, when given,
    /// replace the pool's `router_options` for this version's `init`.
    pub fn from_bytes(
        engine: &PolicyEngine,
        label: String,
        wasm: &[u8],
        limits: PolicyLimits,
        options: Option<Vec<(String, String)>>,
    ) -> Result<Arc<Self>> {
        let component::Linked { meta, pre, from_cache } = component::link(engine, wasm, &limits)?;
        let routing = routing::GuestIndices::new(&pre).map_err(|err| {
            anyhow!("{err:#}\nThe component is not a router: export it with `pitboss_guest::export_router!`")
        })?;
        let completion = completion::GuestIndices::new(&pre).ok();
        let policy = RouterPolicy {
            label,
            meta,
            limits,
            engine: engine.clone(),
            pre,
            routing,
            completion,
            from_cache,
            loaded_at: SystemTime::now(),
            usage: Arc::default(),
            options,
        };
        // Instantiating once proves the exports have the contract's types, so
        // a plugin built against another version fails here, not per request.
        policy.bind(&RouterStats::default(), Sandbox::Live).map_err(|fault| {
            anyhow!("the component does not instantiate as a {CONTRACT_PACKAGE}@{CONTRACT_VERSION} router: {fault}")
        })?;
        Ok(Arc::new(policy))
    }

    /// Where the policy came from: `builtin:NAME` or the component path.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn meta(&self) -> &PluginMeta {
        &self.meta
    }

    pub fn limits(&self) -> &PolicyLimits {
        &self.limits
    }

    /// Whether the component exports the optional completion hook.
    pub fn has_completion_hook(&self) -> bool {
        self.completion.is_some()
    }

    /// Whether loading took the compiled artifact from the disk cache.
    pub fn compiled_from_cache(&self) -> bool {
        self.from_cache
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Decisions and faults of this version so far, in every pool.
    pub fn usage(&self) -> &Arc<VersionUsage> {
        &self.usage
    }

    /// Instantiates the policy for `pool` and runs its `init`, as a pool
    /// would, then drops the instance: the swap pipeline's init gate.
    pub fn check_init(&self, pool: &PoolInfo) -> Result<(), PolicyFault> {
        self.instantiate(pool, &RouterStats::default(), Sandbox::Live).map(drop)
    }

    /// An instance for `pool` in the replay sandbox, `init` done.
    pub(super) fn replay_instance(&self, pool: &PoolInfo) -> Result<ReplayInstance<'_>, PolicyFault> {
        let live = self.instantiate(pool, &RouterStats::default(), Sandbox::Replay)?;
        Ok(ReplayInstance { policy: self, live })
    }

    /// A fresh store and instance, initialised for `pool`.
    fn instantiate(&self, pool: &PoolInfo, stats: &RouterStats, sandbox: Sandbox) -> Result<Live, PolicyFault> {
        let mut live = self.bind(stats, sandbox)?;
        let init = match &self.options {
            Some(options) => &PoolInfo { options: options.clone(), ..pool.clone() },
            None => pool,
        };
        match live.routing.call_init(&mut live.store, init) {
            Ok(Ok(())) => Ok(live),
            Ok(Err(reason)) => Err(PolicyFault { kind: FaultKind::InitRejected, detail: reason }),
            Err(err) => Err(PolicyFault::from_call(&err, &live.store, "init")),
        }
    }

    /// A fresh store and instance with its exports bound and type-checked,
    /// under the init limits; `init` not yet called.
    fn bind(&self, stats: &RouterStats, sandbox: Sandbox) -> Result<Live, PolicyFault> {
        stats.rebuilds.fetch_add(1, Ordering::Relaxed);
        let mut store = component::store(&self.engine, &self.label, &self.limits, stats.log.clone(), sandbox);
        let bound = self.pre.instantiate(&mut store).and_then(|instance| {
            let routing = self.routing.load(&mut store, &instance)?;
            let completion = self.completion.as_ref().map(|hook| hook.load(&mut store, &instance)).transpose()?;
            Ok((routing, completion))
        });
        match bound {
            Ok((routing, completion)) => Ok(Live { store, routing, completion }),
            Err(err) => Err(PolicyFault::from_call(&err, &store, "instantiate")),
        }
    }
}

/// A live instance with its store and bound exports.
struct Live {
    store: Store<PolicyState>,
    routing: routing::Guest,
    completion: Option<completion::Guest>,
}

impl Live {
    /// One `route` call under the per-call limits; the decision is not yet
    /// checked against the workers.
    fn route(
        &mut self,
        limits: &PolicyLimits,
        request: &RequestView,
        workers: &[WorkerView],
    ) -> Result<Decision, PolicyFault> {
        arm(&mut self.store, limits.call_deadline, limits.fuel_per_call);
        self.routing
            .call_route(&mut self.store, request, workers)
            .map_err(|err| PolicyFault::from_call(&err, &self.store, "route"))
    }
}

/// An instance of a candidate in the replay sandbox.
pub(super) struct ReplayInstance<'a> {
    policy: &'a RouterPolicy,
    live: Live,
}

impl ReplayInstance<'_> {
    pub(super) fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Result<Decision, PolicyFault> {
        self.live.route(&self.policy.limits, request, workers)
    }
}

/// The outcome of one routing call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    /// The decision to act on: the policy's, or the native fallback's.
    pub decision: Decision,
    /// True when the native least-loaded rule decided.
    pub fallback: bool,
    /// The fault this call hit, if any.
    pub fault: Option<PolicyFault>,
}

/// Counters of one pool's router, readable while the dispatcher works.
#[derive(Default)]
pub struct RouterStats {
    decisions: AtomicU64,
    fallbacks: AtomicU64,
    rebuilds: AtomicU64,
    hook_calls: AtomicU64,
    faults: [AtomicU64; FaultKind::ALL.len()],
    log: Arc<LogCounters>,
}

/// A point-in-time copy of [`RouterStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterStatsSnapshot {
    /// Routing calls answered (by the policy or the fallback).
    pub decisions: u64,
    /// Calls decided by the native fallback.
    pub fallbacks: u64,
    /// Instances built (the first one included).
    pub rebuilds: u64,
    /// Completion hook calls made.
    pub hook_calls: u64,
    /// Faults by kind, only kinds seen.
    pub faults: Vec<(FaultKind, u64)>,
    /// Lines the policy printed that reached the host log.
    pub log_lines: u64,
    /// Lines dropped by the log rate limit.
    pub log_lines_dropped: u64,
}

impl RouterStatsSnapshot {
    pub fn total_faults(&self) -> u64 {
        self.faults.iter().map(|(_, n)| n).sum()
    }

    pub fn faults_of(&self, kind: FaultKind) -> u64 {
        self.faults.iter().find(|(k, _)| *k == kind).map_or(0, |(_, n)| *n)
    }
}

impl RouterStats {
    pub fn snapshot(&self) -> RouterStatsSnapshot {
        RouterStatsSnapshot {
            decisions: self.decisions.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            rebuilds: self.rebuilds.load(Ordering::Relaxed),
            hook_calls: self.hook_calls.load(Ordering::Relaxed),
            faults: FaultKind::ALL
                .iter()
                .zip(&self.faults)
                .map(|(kind, count)| (*kind, count.load(Ordering::Relaxed)))
                .filter(|(_, count)| *count > 0)
                .collect(),
            log_lines: self.log.emitted.load(Ordering::Relaxed),
            log_lines_dropped: self.log.dropped.load(Ordering::Relaxed),
        }
    }

    fn count_fault(&self, kind: FaultKind) {
        let index = FaultKind::ALL.iter().position(|k| *k == kind).expect("every kind is listed");
        self.faults[index].fetch_add(1, Ordering::Relaxed);
    }
}

/// After a failed rebuild, how long to route natively before trying again:
/// a policy whose `init` always fails must not be re-instantiated for
/// every request.
const FIRST_RETRY: Duration = Duration::from_millis(10);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The warm router instance of one pool. It has a single owner (the pool's
/// dispatcher), so the hot path takes no lock. It follows its
/// [`RouterSlot`]: a newly published version is picked up before the next
/// decision.
pub struct RouterInstance {
    slot: Arc<RouterSlot>,
    policy: Arc<RouterPolicy>,
    pool: PoolInfo,
    live: Option<Live>,
    retry_at: Option<Instant>,
    retry_delay: Duration,
    stats: Arc<RouterStats>,
}

impl RouterInstance {
    /// Instantiates the slot's current policy for `pool` and runs its
    /// `init`; an error here means the pool cannot use this policy.
    pub fn new(slot: Arc<RouterSlot>, pool: PoolInfo) -> Result<Self, PolicyFault> {
        let policy = slot.current();
        let stats = Arc::new(RouterStats::default());
        let live = policy.instantiate(&pool, &stats, Sandbox::Live)?;
        Ok(RouterInstance { slot, policy, pool, live: Some(live), retry_at: None, retry_delay: FIRST_RETRY, stats })
    }

    /// The version this instance runs (after the last decision).
    pub fn policy(&self) -> &Arc<RouterPolicy> {
        &self.policy
    }

    pub fn stats(&self) -> Arc<RouterStats> {
        self.stats.clone()
    }

    /// Decides where `request` goes. Never fails: a fault in the policy is
    /// reported in the result and the native least-loaded rule decides.
    pub fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Routed {
        let started = Instant::now();
        self.stats.decisions.fetch_add(1, Ordering::Relaxed);
        let routed = match self.ensure_live() {
            // Waiting out a failed rebuild: the native rule decides.
            None => self.fallback(workers, None),
            Some(ready) => {
                let outcome = ready.and_then(|()| {
                    let live = self.live.as_mut().expect("ensure_live built the instance");
                    let decision = live.route(&self.policy.limits, request, workers)?;
                    check_decision(&decision, workers).map(|()| decision)
                });
                self.policy.usage.decisions.fetch_add(1, Ordering::Relaxed);
                match outcome {
                    Ok(decision) => Routed { decision, fallback: false, fault: None },
                    Err(fault) => {
                        self.record_fault(&fault);
                        self.fallback(workers, Some(fault))
                    }
                }
            }
        };
        self.slot.decisions().record(request, workers, &routed.decision);
        self.policy.usage.count_latency(started.elapsed());
        routed
    }

    /// Tells the policy a call finished, if it exports the completion hook;
    /// otherwise does nothing. A fault is counted and the instance rebuilt.
    pub fn on_complete(&mut self, worker: u32, tool: &str, ok: bool, latency_us: u64) -> Option<PolicyFault> {
        let outcome = match self.ensure_live()? {
            Err(fault) => Err(fault),
            Ok(()) => {
                let live = self.live.as_mut().expect("ensure_live built the instance");
                let hook = live.completion.as_ref()?;
                self.stats.hook_calls.fetch_add(1, Ordering::Relaxed);
                arm(&mut live.store, self.policy.limits.call_deadline, self.policy.limits.fuel_per_call);
                hook.call_on_complete(&mut live.store, worker, tool, ok, latency_us)
                    .map_err(|err| PolicyFault::from_call(&err, &live.store, "on-complete"))
            }
        };
        let fault = outcome.err()?;
        self.record_fault(&fault);
        Some(fault)
    }

    /// Makes sure an instance of the slot's current version is live,
    /// rebuilding it if the slot moved on or a fault discarded it. `None`
    /// while waiting out a failed rebuild.
    fn ensure_live(&mut self) -> Option<Result<(), PolicyFault>> {
        if !self.slot.is_current(&self.policy) {
            self.policy = self.slot.current();
            self.live = None;
            self.retry_at = None;
            self.retry_delay = FIRST_RETRY;
        }
        if self.live.is_none() {
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                return None;
            }
            match self.policy.instantiate(&self.pool, &self.stats, Sandbox::Live) {
                Ok(live) => {
                    self.live = Some(live);
                    self.retry_at = None;
                    self.retry_delay = FIRST_RETRY;
                }
                Err(fault) => {
                    self.retry_at = Some(Instant::now() + self.retry_delay);
                    self.retry_delay = (self.retry_delay * 2).min(MAX_RETRY);
                    return Some(Err(fault));
                }
            }
        }
        Some(Ok(()))
    }

    /// Discards the instance (its state may be corrupt) and reports.
    fn record_fault(&mut self, fault: &PolicyFault) {
        self.live = None;
        self.stats.count_fault(fault.kind);
        self.policy.usage.faults.fetch_add(1, Ordering::Relaxed);
        self.slot.note_fault(&self.policy, Instant::now());
        tracing::warn!(
            pool = %self.pool.name,
            policy = %self.policy.label,
            plugin = %self.policy.meta,
            kind = %fault.kind,
            detail = %fault.detail,
            "routing policy fault; instance discarded, request routed by native least-loaded",
        );
    }

    fn fallback(&self, workers: &[WorkerView], fault: Option<PolicyFault>) -> Routed {
        self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        self.policy.usage.fallbacks.fetch_add(1, Ordering::Relaxed);
        Routed { decision: pool::least_loaded(workers), fallback: true, fault }
    }
}

impl pool::Router for RouterInstance {
    fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Decision {
        RouterInstance::route(self, request, workers).decision
    }

    fn on_complete(&mut self, worker: u32, tool: &str, ok: bool, latency: Duration) {
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        RouterInstance::on_complete(self, worker, tool, ok, latency_us);
    }

    fn report(&self) -> RouterReport {
        let stats = self.stats.snapshot();
        RouterReport {
            policy: self.policy.label.clone(),
            version: self.policy.meta.to_string(),
            decisions: stats.decisions,
            fallbacks: stats.fallbacks,
            faults: stats.total_faults(),
        }
    }
}

/// A `worker(id)` decision must name a ready worker with room.
pub(super) fn check_decision(decision: &Decision, workers: &[WorkerView]) -> Result<(), PolicyFault> {
    let Decision::Worker(id) = *decision else { return Ok(()) };
    let problem = match workers.iter().find(|w| w.id == id) {
        None => format!("chose worker {id}, which is not in the pool"),
        Some(w) if w.state != WorkerState::Ready => format!("chose worker {id}, which is {:?}", w.state),
        Some(w) if w.in_flight >= w.capacity => {
            format!("chose worker {id}, which is full ({}/{} in flight)", w.in_flight, w.capacity)
        }
        Some(_) => return Ok(()),
    };
    Err(PolicyFault { kind: FaultKind::InvalidDecision, detail: problem })
}
