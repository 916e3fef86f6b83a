//! Swapping a pool's routing policy while it serves: real Python workers,
//! real compiled components, the gated pipeline, rollback by hand and by
//! the circuit breaker.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pitboss::policy::{Candidate, SwapOptions, SwapStage, BUILTIN_ROUTERS};
use pitboss::{AdminError, CallRequest, Host};
use serde_json::json;
use support::{eventually, json_call, start_ready, test_plugin};

fn builtin(name: &str) -> Candidate {
    let builtin = BUILTIN_ROUTERS.iter().find(|b| b.name == name).expect("a built-in router");
    Candidate { label: format!("builtin:{name} (bytes)"), wasm: builtin.wasm.to_vec() }
}

fn plugin(name: &str) -> Candidate {
    let path = test_plugin(name);
    Candidate { label: path.display().to_string(), wasm: std::fs::read(path).unwrap() }
}

fn by(test: &str) -> SwapOptions {
    SwapOptions { requested_by: test.to_owned(), ..SwapOptions::default() }
}

async fn live_label(host: &Host) -> String {
    host.router_policies()[0].history[0].label.clone()
}

/// Enough calls that the pool's decision log has something to replay.
async fn some_traffic(host: &Host) {
    for n in 0..40 {
        assert_eq!(json_call(host, "add", json!({"a": n, "b": 1})).await, json!(n + 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_swaps_under_load_fail_no_call_and_each_new_version_decides() {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(start_ready(support::config(dir.path(), "size = 2")).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let callers: Vec<_> = (0..4)
        .map(|caller| {
            let (host, stop, served, failed) = (host.clone(), stop.clone(), served.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = CallRequest::json("add", serde_json::to_vec(&json!({"a": caller, "b": 1})).unwrap());
                    match host.execute("pool", request).await {
                        Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                        Err(err) => {
                            eprintln!("call failed during the swaps: {err}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    some_traffic(&host).await;

    for swap in 0..20 {
        let name = if swap % 2 == 0 { "round-robin" } else { "least-loaded" };
        let candidate = builtin(name);
        let label = candidate.label.clone();
        let report = host.swap_router("pool", candidate, by("the load test")).await.unwrap();
        assert!(report.promoted(), "swap {swap} to {name} refused: {:?}", report.refused);
        let replay = report.replay.as_ref().unwrap();
        assert!(replay.decisions > 0, "the replay had recent decisions to run: {replay:?}");
        assert_eq!(live_label(&host).await, label);
        let decided = eventually(Duration::from_secs(10), async || {
            let history = &host.router_policies()[0].history;
            history[0].label == label && history[0].decisions > 0
        })
        .await;
        assert!(decided, "swap {swap}: the new version made no decision: {:#?}", host.router_policies());
        let history = &host.router_policies()[0].history;
        let retired = history[1].decisions;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(host.router_policies()[0].history[1].decisions, retired, "the replaced version decided again");
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no call fails during 20 swaps");
    assert!(served.load(Ordering::Relaxed) > 100, "the callers kept calling: {}", served.load(Ordering::Relaxed));
    let policies = host.router_policies();
    assert_eq!(policies[0].history.len(), 21, "the config's version and 20 swaps: {:#?}", policies[0].history);
    assert!(policies[0].history[0].promoted_by.contains("the load test"));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_failing_a_gate_are_refused_and_the_live_policy_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::config(dir.path(), "size = 2\n[pool.router_limits]\ndecision_budget = \"50us\"");
    let host = start_ready(config).await;
    some_traffic(&host).await;
    let live = live_label(&host).await;

    let garbage = Candidate { label: "garbage.wasm".into(), wasm: b"not a component".to_vec() };
    let wrong_hash = SwapOptions { expected_sha256: Some("00".repeat(32)), ..by("test") };
    let cases = [
        ("garbage", garbage, by("test"), SwapStage::Check, "not a valid WebAssembly component"),
        ("wrong sha256", builtin("round-robin"), wrong_hash, SwapStage::Load, "not the expected 0000"),
        (
            "a newer contract",
            plugin("future-contract"),
            by("test"),
            SwapStage::Check,
            "built against pitboss:policy@0.2.0 (it uses `pitboss:policy/routing@0.2.0`); this host supports pitboss:policy@0.1.0",
        ),
        ("a socket import", plugin("socket-import"), by("test"), SwapStage::Check, "imports `wasi:sockets/"),
        ("a trap in init", plugin("init-trap"), by("test"), SwapStage::Init, "trap: during init"),
        ("invalid decisions", plugin("bad-decision"), by("test"), SwapStage::Replay, "which is not in the pool"),
        ("too slow", plugin("slow"), by("test"), SwapStage::Replay, "router_limits.decision_budget"),
    ];
    for (what, candidate, options, stage, reason) in cases {
        let report = host.swap_router("pool", candidate, options).await.unwrap();
        let (refused_at, why) = report.refused.clone().unwrap_or_else(|| panic!("{what} was not refused: {report:?}"));
        assert_eq!(refused_at, stage, "{what}: {why}");
        assert!(why.contains(reason), "{what}: {why}");
        assert!(!report.promoted(), "{what}");
        assert_eq!(live_label(&host).await, live, "{what}: the live policy stays");
        assert_eq!(json_call(&host, "add", json!({"a": 1, "b": 2})).await, json!(3), "{what}: still serving");
    }
    assert_eq!(host.router_policies()[0].history.len(), 1, "no refused candidate entered the history");

    let unknown = host.swap_router("nowhere", builtin("round-robin"), by("test")).await.unwrap_err();
    assert!(matches!(unknown, AdminError::NotFound(ref m) if m.contains("no pool named `nowhere`")), "{unknown:?}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reports_the_replay_and_promotes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_ready(support::config(dir.path(), "size = 2")).await;
    some_traffic(&host).await;
    let options = SwapOptions { dry_run: true, ..by("test") };
    let report = host.swap_router("pool", builtin("round-robin"), options).await.unwrap();
    assert!(report.refused.is_none() && !report.promoted(), "{report:?}");
    let replay = report.replay.unwrap();
    // Sequential calls on idle workers: least-loaded always picks worker 0,
    // round-robin alternates, so about half the decisions differ.
    assert!(replay.decisions >= 40, "{replay:?}");
    assert!(replay.differing > 0 && replay.differing < replay.decisions, "{replay:?}");
    assert!(!replay.examples.is_empty(), "{replay:?}");
    assert_eq!(live_label(&host).await, "builtin:least-loaded");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_the_replaced_version_once() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_ready(support::config(dir.path(), "size = 2")).await;
    let nothing = host.rollback_router("pool", "test").unwrap_err();
    assert!(matches!(nothing, AdminError::Refused(ref m) if m.contains("no earlier routing policy")), "{nothing:?}");

    some_traffic(&host).await;
    assert!(host.swap_router("pool", builtin("round-robin"), by("test")).await.unwrap().promoted());
    let rollback = host.rollback_router("pool", "test").unwrap();
    assert_eq!(rollback.restored.label(), "builtin:least-loaded");
    assert_eq!(live_label(&host).await, "builtin:least-loaded");
    assert_eq!(json_call(&host, "add", json!({"a": 2, "b": 2})).await, json!(4));
    let history = host.router_policies().remove(0).history;
    assert_eq!(history[0].promoted_by, "rollback by test");
    assert_eq!(history[1].ended.as_ref().unwrap().1, "rollback by test");
    assert!(host.rollback_router("pool", "test").is_err(), "a rollback is not undone by another");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_starts_faulting_is_rolled_back_by_the_circuit_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let adapter =
        "from pitboss_worker import Adapter, tool\n\n\nclass Target(Adapter):\n    thread_safe = True\n\n    \
                   @tool\n    def add(self, a, b):\n        return a + b\n\n    @tool\n    def attack(self):\n        \
                   return \"served\"\n";
    std::fs::write(dir.path().join("target.py"), adapter).unwrap();
    let limits = "size = 2\n[pool.router_limits]\nrollback_after_faults = 3\nrollback_window = \"1m\"";
    let host = start_ready(support::config_for(dir.path(), "target:Target", limits)).await;
    some_traffic(&host).await;
    // The plugin panics only for the tool `attack`, which the replay has
    // not seen: it passes every gate.
    let report = host.swap_router("pool", plugin("panic"), by("test")).await.unwrap();
    assert!(report.promoted(), "{report:?}");

    for _ in 0..3 {
        // Each fault costs the call nothing: the native fallback routes it.
        assert_eq!(json_call(&host, "attack", json!({})).await, json!("served"));
    }
    let policies = host.router_policies().remove(0);
    assert_eq!(policies.history[0].label, "builtin:least-loaded", "{:#?}", policies.history);
    assert!(policies.history[0].promoted_by.starts_with("circuit breaker: 3 faults"), "{:#?}", policies.history);
    let faulty = &policies.history[1];
    assert_eq!((faulty.faults, faulty.ended.is_some()), (3, true), "{faulty:#?}");
    assert_eq!(json_call(&host, "add", json!({"a": 1, "b": 1})).await, json!(2));
    assert_eq!(host.stats().await[0].router.policy, "builtin:least-loaded");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_can_carry_new_router_options_to_init() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_ready(support::config(dir.path(), "size = 2")).await;
    some_traffic(&host).await;
    let refusing = SwapOptions { router_options: Some(vec![("refuse".into(), "yes".into())]), ..by("test") };
    let report = host.swap_router("pool", plugin("completion-probe"), refusing).await.unwrap();
    let (stage, why) = report.refused.expect("init refuses with these options");
    assert_eq!(stage, SwapStage::Init);
    assert!(why.contains("completion-probe refuses pool pool"), "{why}");

    let accepting = SwapOptions { router_options: Some(vec![("refuse".into(), "no".into())]), ..by("test") };
    assert!(host.swap_router("pool", plugin("completion-probe"), accepting).await.unwrap().promoted());
    assert_eq!(json_call(&host, "add", json!({"a": 1, "b": 1})).await, json!(2));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_router_file_swaps_on_change_and_garbage_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let router = dir.path().join("router.wasm");
    std::fs::write(&router, builtin("round-robin").wasm).unwrap();
    let settings = format!("size = 2\nrouter = {router:?}\nrouter_watch = true");
    let host = start_ready(support::config(dir.path(), &settings)).await;
    some_traffic(&host).await;
    let first_hash = host.router_policies()[0].history[0].sha256.clone();

    std::fs::write(&router, builtin("least-loaded").wasm).unwrap();
    let swapped = eventually(Duration::from_secs(10), async || {
        let live = &host.router_policies()[0].history[0];
        live.sha256 != first_hash && live.promoted_by == "swap by router_watch"
    })
    .await;
    assert!(swapped, "the changed file was not swapped in: {:#?}", host.router_policies());
    let live_hash = host.router_policies()[0].history[0].sha256.clone();

    std::fs::write(&router, b"half a component").unwrap();
    // Two watch intervals and then some: the garbage was seen and refused.
    tokio::time::sleep(pitboss::host::WATCH_INTERVAL * 3).await;
    let policies = host.router_policies().remove(0);
    assert_eq!(policies.history[0].sha256, live_hash, "garbage does not go live");
    assert_eq!(policies.history.len(), 2);
    assert_eq!(json_call(&host, "add", json!({"a": 20, "b": 22})).await, json!(42));
    host.shutdown().await;
}

#[test]
fn watching_a_builtin_router_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pitboss.toml");
    let text = "[[pool]]\nname = \"p\"\nadapter = \"a:A\"\nrouter_watch = true\n";
    std::fs::write(&path, text).unwrap();
    let error = pitboss::Config::load(&path).unwrap_err().to_string();
    assert!(
        error.contains("pool.p.router_watch") && error.contains("`builtin:least-loaded`, compiled into pitboss"),
        "{error}"
    );
}

fn rules(kind: pitboss::host::RulesKind) -> Candidate {
    let (builtins, name) = match kind {
        pitboss::host::RulesKind::Config => (pitboss::policy::BUILTIN_CONFIG_RULES, "pool-rules"),
        pitboss::host::RulesKind::Compat => (pitboss::policy::BUILTIN_COMPAT_RULES, "compat-rules"),
    };
    let builtin = builtins.iter().find(|b| b.name == name).unwrap();
    Candidate { label: format!("builtin:{name} (bytes)"), wasm: builtin.wasm.to_vec() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_rules_are_swapped_only_if_the_running_config_passes_them() {
    use pitboss::host::{PolicyKind, RulesKind};
    let dir = tempfile::tempdir().unwrap();
    let host = start_ready(support::config(dir.path(), "size = 5")).await;

    // A site rule allowing at most four workers per pool: this host runs five.
    let report = host.swap_rules(RulesKind::Config, plugin("max-four-workers"), by("test")).await.unwrap();
    let (stage, why) = report.refused.clone().expect("the running config breaks the candidate's rule");
    assert_eq!(stage, SwapStage::Revalidate, "{why}");
    assert!(why.contains("pool.pool.size") && why.contains("at most 4 workers per pool (got 5)"), "{why}");
    let garbage = Candidate { label: "garbage".into(), wasm: b"nope".to_vec() };
    let report = host.swap_rules(RulesKind::Config, garbage, by("test")).await.unwrap();
    assert_eq!(report.refused.unwrap().0, SwapStage::Check);

    let report = host.swap_rules(RulesKind::Config, rules(RulesKind::Config), by("test")).await.unwrap();
    assert!(report.promoted(), "{report:?}");
    let report = host.swap_rules(RulesKind::Compat, rules(RulesKind::Compat), by("test")).await.unwrap();
    assert!(report.promoted(), "{report:?}");

    let listed = host.policies();
    let config_rules = listed.iter().find(|p| p.kind == PolicyKind::Rules(RulesKind::Config)).unwrap();
    assert_eq!(config_rules.history[0].label, "builtin:pool-rules (bytes)");
    assert_eq!(config_rules.history[1].label, "builtin:pool-rules");
    assert!(config_rules.can_roll_back);
    let (restored, _) = host.rollback_rules(RulesKind::Config, "test").unwrap();
    assert_eq!(restored, "builtin:pool-rules");
    assert!(host.rollback_rules(RulesKind::Config, "test").is_err(), "nothing left to roll back to");
    assert_eq!(json_call(&host, "add", json!({"a": 1, "b": 1})).await, json!(2));
    host.shutdown().await;
}
