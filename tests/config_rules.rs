//! Config rules end to end: bad configs through parsing, `builtin:pool-rules`
//! and the host's hard limits, each diagnostic pinned by field path and
//! severity; a site's own rules (tests/plugins/max-four-workers) through
//! `pitboss check`; and a host that refuses a config its rules reject.

mod support;

use std::path::Path;
use std::process::Command;

use pitboss::config::{Config, Severity};
use pitboss::policy::{check_config, PolicyEngine};

const PITBOSS: &str = env!("CARGO_BIN_EXE_pitboss");

use Severity::{Error, Info, Warning};

/// A pool that passes every rule, for cases to add one mistake to.
const POOL: &str = "[[pool]]\nname = \"p\"\nadapter = \"m\"\nsize = 1\n";

fn engine() -> PolicyEngine {
    PolicyEngine::new(Some(support::root().join("target/test-policy-cache"))).expect("policy engine starts")
}

/// Every diagnostic for `text`: parse errors when parsing refuses it,
/// otherwise what `check_config` (notes, rules, hard limits) says.
fn diagnose(engine: &PolicyEngine, text: &str) -> Vec<(Severity, String)> {
    let diagnostics = match Config::parse(text, Path::new("/etc/pitboss/pitboss.toml")) {
        Err(err) => err.problems,
        Ok(config) => check_config(engine, &config).expect("the built-in rules run"),
    };
    diagnostics.into_iter().map(|d| (d.severity, d.field)).collect()
}

/// A case: what it is, the config text, and every diagnostic expected
/// (severity and field path), in order.
type Case<'a> = (&'a str, String, Vec<(Severity, &'a str)>);

#[test]
fn bad_configs_give_exactly_these_diagnostics() {
    let thread = "[[pool]]\nname = \"t\"\nadapter = \"m\"\nsize = 1\nprofile = \"thread\"\nthreads_per_worker = 2\n";
    let cases: Vec<Case> = vec![
        ("a good pool", POOL.into(), vec![]),
        ("no pools", "[host]\n".into(), vec![(Error, "pool")]),
        ("missing adapter", "[[pool]]\nname = \"p\"\nsize = 1\n".into(), vec![(Error, "pool.p.adapter")]),
        ("missing name", "[[pool]]\nadapter = \"m\"\nsize = 1\n".into(), vec![(Error, "pool[0].name")]),
        ("zero size", POOL.replace("size = 1", "size = 0"), vec![(Error, "pool.p.size")]),
        ("negative size", POOL.replace("size = 1", "size = -2"), vec![(Error, "pool.p.size")]),
        ("size of the wrong type", POOL.replace("size = 1", "size = \"two\""), vec![(Error, "pool.p.size")]),
        ("duplicate names", format!("{POOL}{POOL}"), vec![(Error, "pool.p.name")]),
        ("a typo", format!("{POOL}sise = 2\n"), vec![(Error, "pool.p.sise")]),
        ("unknown host key", format!("[host]\napi_adress = \"x\"\n{POOL}"), vec![(Error, "host.api_adress")]),
        (
            "unknown nested key",
            format!("{POOL}router_limits = {{ fule = 1 }}\n"),
            vec![(Error, "pool.p.router_limits.fule")],
        ),
        ("unknown top-level key", format!("flavour = 1\n{POOL}"), vec![(Error, "flavour")]),
        ("legacy form", "pool_size = 1\nadapter = \"m\"\n".into(), vec![(Info, "pool.default")]),
        ("legacy mixed with pools", format!("pool_size = 1\n{POOL}"), vec![(Error, "pool_size")]),
        (
            "process pool with threads",
            format!("{POOL}threads_per_worker = 4\n"),
            vec![(Error, "pool.p.threads_per_worker")],
        ),
        ("thread pool with one thread", thread.replace("= 2", "= 1"), vec![(Error, "pool.t.threads_per_worker")]),
        (
            "thread pool with BLAS threads",
            format!("{thread}env = {{ OMP_NUM_THREADS = \"4\" }}\n"),
            vec![(Warning, "pool.t.env.OMP_NUM_THREADS")],
        ),
        (
            "fallback of a process pool",
            format!("{POOL}fallback_profile = \"process\"\n"),
            vec![(Error, "pool.p.fallback_profile")],
        ),
        (
            "fallback to threads",
            format!("{thread}fallback_profile = \"thread\"\n"),
            vec![(Error, "pool.t.fallback_profile")],
        ),
        ("unknown profile", format!("{POOL}profile = \"fibre\"\n"), vec![(Error, "pool.p.profile")]),
        ("zero timeout", format!("{POOL}request_timeout = \"0s\"\n"), vec![(Error, "pool.p.request_timeout")]),
        ("negative timeout", format!("{POOL}queue_timeout = \"-1s\"\n"), vec![(Error, "pool.p.queue_timeout")]),
        ("timeout without a unit", format!("{POOL}startup_timeout = 30\n"), vec![(Error, "pool.p.startup_timeout")]),
        ("zero ttl", format!("{POOL}worker_ttl = \"0s\"\n"), vec![(Error, "pool.p.worker_ttl")]),
        ("zero max requests", format!("{POOL}worker_max_requests = 0\n"), vec![(Error, "pool.p.worker_max_requests")]),
        ("zero max rss", format!("{POOL}worker_max_rss = \"0MiB\"\n"), vec![(Error, "pool.p.worker_max_rss")]),
        ("tiny max rss", format!("{POOL}worker_max_rss = \"1MiB\"\n"), vec![(Warning, "pool.p.worker_max_rss")]),
        ("jitter too big", format!("{POOL}recycle_jitter = 0.9\n"), vec![(Error, "pool.p.recycle_jitter")]),
        ("zero batch", format!("{POOL}startup_batch_size = 0\n"), vec![(Error, "pool.p.startup_batch_size")]),
        ("zero pings", format!("{POOL}max_missed_pings = 0\n"), vec![(Error, "pool.p.max_missed_pings")]),
        (
            "bad enforcement",
            format!("[host]\ncompat_enforce = \"strict\"\n{POOL}"),
            vec![(Error, "host.compat_enforce")],
        ),
        (
            "huge process pool",
            POOL.replace("size = 1", "size = 300"),
            vec![(Warning, "pool.p.size"), (Warning, "pool")],
        ),
        (
            "every problem of a pool at once",
            format!("{POOL}threads_per_worker = 3\nrequest_timeout = \"0s\"\nstartup_batch_size = 0\n")
                .replace("size = 1\n", "size = 0\n"),
            vec![
                (Error, "pool.p.size"),
                (Error, "pool.p.threads_per_worker"),
                (Error, "pool.p.request_timeout"),
                (Error, "pool.p.startup_batch_size"),
            ],
        ),
    ];
    let engine = engine();
    let mut failures = Vec::new();
    for (name, text, expected) in &cases {
        let found = diagnose(&engine, text);
        let expected: Vec<(Severity, String)> = expected.iter().map(|(s, f)| (*s, f.to_string())).collect();
        if found != expected {
            failures.push(format!("{name}:\n  expected {expected:?}\n  found    {found:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn a_typo_gets_a_did_you_mean_and_messages_carry_the_value() {
    let config =
        Config::parse(&format!("{POOL}sise = 2\n").replace("size = 1", "size = 0"), Path::new("x.toml")).unwrap();
    let diagnostics = check_config(&engine(), &config).unwrap();
    let rendered: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(
        rendered,
        [
            "error: pool.p.sise: unknown key\n  hint: did you mean `size`?",
            &format!(
                "error: pool.p.size: must be ≥ 1 (got 0)\n  hint: the number of worker processes; this machine has {} CPUs",
                std::thread::available_parallelism().unwrap()
            ),
        ]
    );
}

/// A config in `dir` whose one pool has `size` workers, checked by `rules`.
fn write_config(dir: &Path, size: u32, rules: &str) -> std::path::PathBuf {
    let path = dir.join("pitboss.toml");
    let text = format!(
        "[host]\nconfig_rules = {rules:?}\npolicy_cache = {:?}\n\n[[pool]]\nname = \"big\"\nadapter = \"m\"\nsize = {size}\n",
        support::root().join("target/test-policy-cache")
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn check(config: &Path, json: bool) -> (Option<i32>, String) {
    let mut command = Command::new(PITBOSS);
    command.args(["check", "--config"]).arg(config);
    if json {
        command.arg("--json");
    }
    let output = command.output().unwrap();
    (output.status.code(), String::from_utf8(output.stdout).unwrap())
}

#[test]
fn a_site_plugin_written_with_the_sdk_is_enforced_by_pitboss_check() {
    let dir = tempfile::tempdir().unwrap();
    let site = support::test_plugin("max-four-workers");

    let (code, out) = check(&write_config(dir.path(), 5, &site.display().to_string()), false);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with("error: pool.big.size: this site allows at most 4 workers per pool (got 5)\n  hint: split"),
        "{out}"
    );

    let (code, out) = check(&write_config(dir.path(), 4, &site.display().to_string()), false);
    assert_eq!(code, Some(0), "{out}");

    let (code, out) = check(&write_config(dir.path(), 5, "builtin:pool-rules"), true);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (code, report["errors"].as_u64()),
        (Some(0), Some(0)),
        "back on the built-in rules, 5 workers pass: {out}"
    );
    assert_eq!(report["rules"], "builtin:pool-rules");
}

#[test]
fn lenient_site_rules_still_meet_the_hosts_hard_limits() {
    let dir = tempfile::tempdir().unwrap();
    let site = support::test_plugin("max-four-workers");
    let (code, out) = check(&write_config(dir.path(), 0, &site.display().to_string()), false);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("error: pool.big.size: pitboss cannot run this: it needs at least one worker"), "{out}");
}

#[test]
fn a_plugin_of_the_wrong_kind_is_a_clear_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let router = support::test_plugin("panic");
    let output = Command::new(PITBOSS)
        .args(["check", "--config"])
        .arg(write_config(dir.path(), 1, &router.display().to_string()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot load config rules"), "{stderr}");
    assert!(stderr.contains("export it with `pitboss_guest::export_config_rules!`"), "{stderr}");
}

#[test]
fn check_prints_parse_errors_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pitboss.toml");
    std::fs::write(&path, "[[pool]]\nname = \"p\"\nsize = \"two\"\n").unwrap();
    let (code, out) = check(&path, false);
    assert_eq!(code, Some(1));
    assert!(out.contains("error: pool.p.size: must be a whole number from 0 to 4294967295 (got \"two\")"), "{out}");
    assert!(out.contains("error: pool.p.adapter: is missing"), "{out}");
}

#[tokio::test]
async fn the_host_refuses_a_config_its_rules_reject() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::config(dir.path(), "size = 0\n");
    let err = match pitboss::Host::start(config).await {
        Ok(_) => panic!("a pool of 0 workers must not start"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains("is refused by its rules (builtin:pool-rules)"), "{err}");
    assert!(err.contains("error: pool.pool.size: must be ≥ 1 (got 0)"), "{err}");
}
