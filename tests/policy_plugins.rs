//! The policy runtime against real compiled components: the built-ins, the
//! hostile plugins in tests/plugins, the optional hook, the compile cache
//! and the swappable slot.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pitboss::policy::{
    native_least_loaded, Decision, FaultKind, PolicyEngine, PolicyLimits, PolicySource, PoolInfo, Profile, RequestView,
    RouterInstance, RouterPolicy, RouterSlot, WorkerState, WorkerView,
};

fn test_plugin(name: &str) -> PolicySource {
    PolicySource::File(support::test_plugin(name))
}

/// Limits under which no well-behaved call can run out of time or fuel,
/// however loaded the machine: for tests about other limits, which must
/// not be decided by a descheduled call hitting the 20 ms default deadline.
fn only_faults_stop_it() -> PolicyLimits {
    PolicyLimits { call_deadline: Duration::from_secs(60), fuel_per_call: u64::MAX / 2, ..PolicyLimits::default() }
}

fn engine() -> PolicyEngine {
    PolicyEngine::new(None).expect("policy engine starts")
}

fn pool(name: &str) -> PoolInfo {
    PoolInfo { name: name.into(), profile: Profile::Process, size: 4, threads_per_worker: 1, options: Vec::new() }
}

fn workers() -> Vec<WorkerView> {
    let states =
        [WorkerState::Ready, WorkerState::Draining, WorkerState::Starting, WorkerState::Ready, WorkerState::Ready];
    states
        .iter()
        .enumerate()
        .map(|(id, state)| WorkerView {
            id: id as u32,
            capacity: 2,
            in_flight: if id == 3 { 2 } else { 0 },
            served: 10 - id as u64,
            age_ms: 1_000,
            rss_bytes: 50 << 20,
            state: *state,
        })
        .collect()
}

fn request(tool: &str) -> RequestView {
    RequestView { tool: tool.into(), session: None, payload_size: 10, metadata: Vec::new() }
}

fn router(source: &PolicySource, limits: PolicyLimits) -> RouterInstance {
    let policy = RouterPolicy::load(&engine(), source, limits).expect("plugin loads");
    RouterInstance::new(RouterSlot::new("test", policy), pool("test")).expect("plugin initialises")
}

/// The host survives the attack, the call falls back to the native choice,
/// the fault is reported and counted, and the next call is answered by a
/// rebuilt instance of the plugin itself.
fn assert_contained(plugin: &str, attack: &str, limits: PolicyLimits, expected: FaultKind) -> RouterInstance {
    let mut router = router(&test_plugin(plugin), limits);
    let workers = workers();

    let attacked = router.route(&request(attack), &workers);
    let fault = attacked.fault.clone().unwrap_or_else(|| panic!("{plugin}: no fault reported: {attacked:?}"));
    assert_eq!(fault.kind, expected, "{plugin}: {fault}");
    assert!(attacked.fallback, "{plugin}: the fault must be answered by the fallback");
    assert_eq!(attacked.decision, native_least_loaded(&workers));

    let next = router.route(&request("ordinary"), &workers);
    assert_eq!(next.fault, None, "{plugin}: the call after a fault must work");
    assert!(!next.fallback, "{plugin}: the rebuilt plugin must answer the next call itself");
    assert_eq!(next.decision, Decision::Worker(0), "{plugin}: least-loaded among ready workers with room");

    let stats = router.stats().snapshot();
    assert_eq!(stats.faults_of(expected), 1, "{plugin}: {stats:?}");
    assert_eq!(stats.total_faults(), 1, "{plugin}: {stats:?}");
    assert_eq!(stats.rebuilds, 2, "{plugin}: the faulty instance is replaced once: {stats:?}");
    assert_eq!(stats.fallbacks, 1);
    router
}

#[test]
fn infinite_loop_is_stopped_by_the_deadline() {
    let limits = PolicyLimits { fuel_per_call: u64::MAX / 2, ..PolicyLimits::default() };
    assert_contained("infinite-loop", "attack", limits, FaultKind::Deadline);
}

#[test]
fn infinite_loop_is_stopped_by_fuel_when_the_deadline_is_far() {
    let limits = PolicyLimits { fuel_per_call: 1_000_000, ..only_faults_stop_it() };
    assert_contained("infinite-loop", "attack", limits, FaultKind::FuelExhausted);
}

#[test]
fn memory_bomb_is_stopped_by_the_memory_cap() {
    // Only the memory cap may stop it: on a loaded machine, filling 16 MiB
    // can outlast the default 20 ms deadline.
    let limits = PolicyLimits { max_memory_bytes: 16 << 20, ..only_faults_stop_it() };
    assert_contained("memory-bomb", "attack", limits, FaultKind::OutOfMemory);
}

#[test]
fn deep_recursion_is_stopped_by_the_stack_limit() {
    assert_contained("deep-recursion", "attack", only_faults_stop_it(), FaultKind::StackOverflow);
}

#[test]
fn panic_is_a_contained_trap() {
    assert_contained("panic", "attack", only_faults_stop_it(), FaultKind::Trap);
}

#[test]
fn decisions_naming_unusable_workers_are_refused() {
    for (attack, complaint) in
        [("unknown", "not in the pool"), ("draining", "Draining"), ("starting", "Starting"), ("full", "full (2/2")]
    {
        let mut router = assert_contained("bad-decision", attack, only_faults_stop_it(), FaultKind::InvalidDecision);
        let routed = router.route(&request(attack), &workers());
        let detail = routed.fault.expect("refused again").detail;
        assert!(detail.contains(complaint), "{attack}: {detail}");
    }
}

#[test]
fn log_flood_is_rate_limited_and_stopped() {
    let limits = PolicyLimits { log_lines_per_second: 5, fuel_per_call: u64::MAX / 2, ..PolicyLimits::default() };
    let router = assert_contained("log-flood", "attack", limits, FaultKind::Deadline);
    let stats = router.stats().snapshot();
    assert!(stats.log_lines <= 5, "at most the per-second budget reaches the log: {stats:?}");
    assert!(stats.log_lines_dropped > 100, "the flood is dropped, not logged: {stats:?}");
}

#[test]
fn builtins_route_as_documented() {
    let workers = workers();
    // Ready with room: 0 (served 10) and 4 (served 6), both idle; 3 is
    // full. Equally loaded: the lowest id, however much it served.
    let mut least = router(&PolicySource::parse("builtin:least-loaded").unwrap(), only_faults_stop_it());
    assert_eq!(least.route(&request("x"), &workers).decision, Decision::Worker(0));

    let mut round = router(&PolicySource::parse("builtin:round-robin").unwrap(), only_faults_stop_it());
    let picks: Vec<Decision> = (0..4).map(|_| round.route(&request("x"), &workers).decision).collect();
    assert_eq!(picks, [Decision::Worker(0), Decision::Worker(4), Decision::Worker(0), Decision::Worker(4)]);

    let full: Vec<WorkerView> = workers.iter().map(|w| WorkerView { in_flight: w.capacity, ..*w }).collect();
    assert_eq!(least.route(&request("x"), &full).decision, Decision::Queue);
    assert_eq!(round.route(&request("x"), &full).decision, Decision::Queue);
}

#[test]
fn a_plugin_without_the_completion_hook_is_never_called_on_it() {
    let mut router = router(&PolicySource::parse("builtin:least-loaded").unwrap(), only_faults_stop_it());
    assert!(!router.policy().has_completion_hook());
    for _ in 0..3 {
        assert_eq!(router.on_complete(0, "x", true, 100), None);
    }
    let stats = router.stats().snapshot();
    assert_eq!(stats.hook_calls, 0);
    assert_eq!(stats.total_faults(), 0);
}

#[test]
fn a_plugin_with_the_completion_hook_hears_every_completion() {
    let mut router = router(&test_plugin("completion-probe"), only_faults_stop_it());
    assert!(router.policy().has_completion_hook());
    for ok in [true, false, true] {
        assert_eq!(router.on_complete(0, "x", ok, 100), None);
    }
    let report = router.route(&request("report"), &workers()).decision;
    assert_eq!(report, Decision::Reject("completions=3 ok=2".into()));
    assert_eq!(router.stats().snapshot().hook_calls, 3);
}

#[test]
fn init_can_refuse_a_pool() {
    let policy = RouterPolicy::load(&engine(), &test_plugin("completion-probe"), only_faults_stop_it()).unwrap();
    let mut info = pool("picky");
    info.options.push(("refuse".into(), "yes".into()));
    let fault = RouterInstance::new(RouterSlot::new("test", policy), info).err().expect("init refuses");
    assert_eq!(fault.kind, FaultKind::InitRejected);
    assert_eq!(fault.detail, "completion-probe refuses pool picky");
}

#[test]
fn second_load_of_a_component_comes_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let source = PolicySource::parse("builtin:round-robin").unwrap();

    let first = PolicyEngine::new(Some(cache.path().to_owned())).unwrap();
    let policy = RouterPolicy::load(&first, &source, only_faults_stop_it()).unwrap();
    assert!(!policy.compiled_from_cache());
    assert_eq!(first.compilations(), 1);

    let second = PolicyEngine::new(Some(cache.path().to_owned())).unwrap();
    let policy = RouterPolicy::load(&second, &source, only_faults_stop_it()).unwrap();
    assert!(policy.compiled_from_cache());
    assert_eq!(second.compilations(), 0, "a cached component must not be recompiled");
    let mut router = RouterInstance::new(RouterSlot::new("test", policy), pool("cached")).unwrap();
    assert_eq!(router.route(&request("x"), &workers()).decision, Decision::Worker(0));
}

#[test]
fn a_corrupt_cache_entry_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let source = PolicySource::parse("builtin:least-loaded").unwrap();
    RouterPolicy::load(&PolicyEngine::new(Some(cache.path().to_owned())).unwrap(), &source, only_faults_stop_it())
        .unwrap();
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"not a compiled component").unwrap();
    }
    let engine = PolicyEngine::new(Some(cache.path().to_owned())).unwrap();
    let policy = RouterPolicy::load(&engine, &source, only_faults_stop_it()).unwrap();
    assert!(!policy.compiled_from_cache());
    assert_eq!(engine.compilations(), 1);
}

#[test]
fn a_published_version_takes_over_before_the_next_decision() {
    let engine = engine();
    let probe = RouterPolicy::load(&engine, &test_plugin("completion-probe"), only_faults_stop_it()).unwrap();
    let least =
        RouterPolicy::load(&engine, &PolicySource::parse("builtin:least-loaded").unwrap(), only_faults_stop_it())
            .unwrap();
    let slot = RouterSlot::new("test", probe.clone());
    let mut router = RouterInstance::new(slot.clone(), pool("swap")).unwrap();
    assert!(matches!(router.route(&request("report"), &workers()).decision, Decision::Reject(_)));

    let replaced = slot.promote(least.clone(), "test".to_owned());
    assert!(Arc::ptr_eq(&replaced, &probe));
    assert_eq!(router.route(&request("report"), &workers()).decision, Decision::Worker(0));
    assert!(Arc::ptr_eq(router.policy(), &least));
}

#[test]
fn bad_policy_references_are_clear_errors() {
    let err = PolicySource::parse("builtin:fastest").err().unwrap().to_string();
    assert!(err.contains("builtin:least-loaded, builtin:round-robin"), "{err}");

    let missing = PolicySource::parse("/nonexistent/policy.wasm").unwrap();
    let err = format!("{:#}", RouterPolicy::load(&engine(), &missing, only_faults_stop_it()).err().unwrap());
    assert!(err.contains("cannot read policy component /nonexistent/policy.wasm"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm garbage").unwrap();
    let err =
        format!("{:#}", RouterPolicy::load(&engine(), &PolicySource::File(junk), only_faults_stop_it()).err().unwrap());
    assert!(err.contains("not a valid WebAssembly component"), "{err}");
}

#[test]
fn a_component_with_the_wrong_contract_is_refused_at_load() {
    let err = RouterPolicy::load(&engine(), &test_plugin("wrong-contract"), only_faults_stop_it()).err().unwrap();
    let message = format!("{err:#}");
    assert!(message.contains("does not instantiate as a pitboss:policy@0.1.0 router"), "{message}");
}

#[test]
fn every_worker_field_reaches_the_guest_intact() {
    let mut router = router(&test_plugin("completion-probe"), only_faults_stop_it());
    let workers = [
        WorkerView {
            id: 7,
            capacity: 8,
            in_flight: 3,
            served: u64::MAX,
            age_ms: 1 << 40,
            rss_bytes: 123_456_789_012,
            state: WorkerState::Draining,
        },
        WorkerView {
            id: u32::MAX,
            capacity: 1,
            in_flight: 0,
            served: 0,
            age_ms: 5,
            rss_bytes: 0,
            state: WorkerState::Starting,
        },
        WorkerView {
            id: 0,
            capacity: u32::MAX,
            in_flight: u32::MAX - 1,
            served: 42,
            age_ms: 0,
            rss_bytes: 1,
            state: WorkerState::Ready,
        },
    ];
    let described = router.route(&request("describe"), &workers).decision;
    let expected = format!(
        "7:3/8 served={} age={} rss=123456789012 WorkerState::Draining; {}:0/1 served=0 age=5 rss=0 WorkerState::Starting; 0:{}/{} served=42 age=0 rss=1 WorkerState::Ready",
        u64::MAX,
        1u64 << 40,
        u32::MAX,
        u32::MAX - 1,
        u32::MAX
    );
    assert_eq!(described, Decision::Reject(expected));
}
