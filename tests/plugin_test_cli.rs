//! `pitboss plugin test` as a plugin author runs it: the real binary on the
//! built-in plugins and on a faulty one.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn plugin_test(plugin: &str, extra: &[&str]) -> (i32, Value) {
    let cache = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args(["plugin", "test", plugin, "--json"])
        .args(extra)
        .env("XDG_CACHE_HOME", cache.path())
        .output()
        .expect("pitboss runs");
    let report = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("no JSON report ({err}); stderr: {}", String::from_utf8_lossy(&output.stderr)));
    (output.status.code().expect("exited"), report)
}

fn scenario<'r>(report: &'r Value, name: &str) -> &'r Value {
    report["scenarios"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()
}

#[test]
fn both_builtins_pass() {
    // Idle pools: least-loaded keeps using the same warm worker, round-robin
    // goes round all of them. Draining workers are never chosen (a choice of
    // one would count as a fault).
    for (builtin, idle_workers, draining_workers) in [("builtin:least-loaded", 1, 1), ("builtin:round-robin", 8, 4)] {
        let (code, report) = plugin_test(builtin, &["--workers", "8", "--requests", "300"]);
        assert_eq!(code, 0, "{builtin}: {report:#}");
        assert_eq!(report["passed"], true);
        assert_eq!(report["completion_hook"], false);
        for s in report["scenarios"].as_array().unwrap() {
            assert_eq!(s["faults"], serde_json::json!({}), "{builtin}: {s:#}");
            assert_eq!(s["decisions"], 300);
        }
        assert_eq!(scenario(&report, "idle")["workers_used"], idle_workers, "{builtin}");
        assert_eq!(scenario(&report, "full")["queued"], 300, "{builtin}");
        assert_eq!(scenario(&report, "draining")["workers_used"], draining_workers, "{builtin}");
    }
}

#[test]
fn a_faulty_plugin_fails_with_its_faults_reported() {
    let plugin = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins/wasm32-wasip2/plugin/pitboss_test_bad_decision.wasm");
    assert!(plugin.exists(), "{} is missing: run `scripts/build-test-plugins`", plugin.display());
    let (code, report) = plugin_test(plugin.to_str().unwrap(), &["--requests", "50"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["passed"], false);
    let idle = scenario(&report, "idle");
    assert_eq!(idle["faults"]["invalid_decision"], 50);
    assert_eq!(idle["fallbacks"], 50);
    assert!(idle["first_fault"].as_str().unwrap().contains("not in the pool"), "{idle:#}");
}

#[test]
fn an_unknown_builtin_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_pitboss")).args(["plugin", "test", "builtin:nope"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown built-in policy `builtin:nope`"), "{stderr}");
}

#[test]
fn router_options_reach_the_plugin() {
    let (code, report) = plugin_test("builtin:weighted-tools", &["--workers", "8", "--requests", "300"]);
    assert_eq!(code, 1, "without patterns weighted-tools refuses to start: {report:#}");
    let idle = scenario(&report, "idle");
    assert!(idle["first_fault"].as_str().unwrap().contains("gives weighted-tools no patterns"), "{idle:#}");

    let options = ["--option", "embed*=0-1", "--option", "*=2-7"];
    let (code, report) =
        plugin_test("builtin:weighted-tools", &[&["--workers", "8", "--requests", "300"], &options[..]].concat());
    assert_eq!(code, 0, "{report:#}");
    for s in report["scenarios"].as_array().unwrap() {
        assert_eq!(s["faults"], serde_json::json!({}), "{s:#}");
    }
    // Idle workers, least-loaded within each pattern's slots: one for the
    // embed calls, one for the rest.
    assert_eq!(scenario(&report, "idle")["workers_used"], 2, "{report:#}");
}

#[test]
fn a_router_option_without_a_value_is_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args(["plugin", "test", "builtin:least-loaded", "--option", "embed"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`embed` is not KEY=VALUE"), "{stderr}");
}
