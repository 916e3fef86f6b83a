use std::path::Path;

use super::*;

const GOOD: &str = r#"
[host]
api_address = "127.0.0.1:6000"
run_dir = "run"

[[pool]]
name = "hpc"
adapter = "examples.adapter:Example"
size = 3
python = "/opt/py/bin/python"
python_path = ["examples"]
env = { OMP_NUM_THREADS = "2" }
request_timeout = "1.5s"
queue_limit = 5
router_limits = { call_deadline = "5ms", max_memory = "16MiB" }
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/pitboss/pitboss.toml"))
}

/// `severity field: message` of each problem parsing found.
fn problems(text: &str) -> Vec<String> {
    let err = parse(text).expect_err("config must be refused");
    err.problems.iter().map(|d| format!("{} {}: {}", d.severity, d.field, d.message)).collect()
}

#[test]
fn a_full_config_parses_with_paths_resolved() {
    let config = parse(GOOD).unwrap();
    assert_eq!(config.host.api_address, "127.0.0.1:6000".parse().unwrap());
    assert_eq!(config.host.run_dir, Path::new("/etc/pitboss/run"));
    let pool = config.pool("hpc").unwrap();
    assert_eq!(pool.size, 3);
    assert_eq!(pool.python.path, Path::new("/opt/py/bin/python"));
    assert_eq!(pool.python.chosen_by, "the pool's `python` key");
    assert_eq!(pool.python_path, [PathBuf::from("/etc/pitboss/examples")]);
    assert_eq!(pool.working_dir, Path::new("/etc/pitboss"));
    assert_eq!(pool.request_timeout, Duration::from_millis(1500));
    assert_eq!(pool.queue_limit, 5);
    assert_eq!(pool.router, DEFAULT_ROUTER);
    assert_eq!(pool.router_limits.call_deadline, Duration::from_millis(5));
    assert_eq!(pool.router_limits.max_memory_bytes, 16 << 20);
    assert_eq!(pool.env["OMP_NUM_THREADS"], "2");
}

#[test]
fn defaults_fill_what_is_left_out() {
    let config = parse("[[pool]]\nname = \"p\"\nadapter = \"m\"\n").unwrap();
    assert_eq!(config.host.api_address.to_string(), DEFAULT_API_ADDRESS);
    let pool = &config.pools[0];
    assert!(pool.size >= 1);
    assert_eq!(pool.profile, Profile::Process);
    assert_eq!(pool.startup_timeout, Duration::from_secs(30));
    assert_eq!(pool.request_timeout, Duration::from_secs(60));
    assert_eq!(pool.queue_timeout, Duration::from_secs(30));
    assert_eq!(pool.queue_limit, 1000);
    assert_eq!(pool.calls_in_reserve, 0);
    assert_eq!(pool.router_limits, PolicyLimits::default());
    assert_eq!(config.host.config_rules, DEFAULT_CONFIG_RULES);
    assert_eq!(config.host.compat_rules, DEFAULT_COMPAT_RULES);
    assert_eq!(config.host.compat_enforce, Enforcement::Warn);
    assert!(config.notes.is_empty() && config.extra.is_empty() && pool.extra.is_empty());
}

#[test]
fn the_error_names_the_file() {
    let message = parse("[[pool]]\nname = \"p\"\n").unwrap_err().to_string();
    assert!(message.starts_with("invalid config /etc/pitboss/pitboss.toml:"), "{message}");
}

#[test]
fn interpreter_resolution_order() {
    let pool = Path::new("/pool/python");
    let host = Path::new("/host/python");
    assert_eq!(resolve_interpreter(Some(pool), Some(host)).path, pool);
    let from_host = resolve_interpreter(None, Some(host));
    assert_eq!(from_host.path, host);
    assert_eq!(from_host.chosen_by, "`host.python`");
}

#[test]
fn relative_paths_become_absolute() {
    let text =
        "[host]\npython = \"../.venv/bin/python\"\n[[pool]]\nname = \"p\"\nadapter = \"m\"\npython_path = [\".\"]\n";
    let config = Config::parse(text, Path::new("examples/pitboss.toml")).unwrap();
    let pool = &config.pools[0];
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(pool.python.path, cwd.join("examples/../.venv/bin/python"));
    assert_eq!(pool.working_dir, cwd.join("examples"));
    assert!(pool.python_path[0].is_absolute());
    let bare = Config::parse("[[pool]]\nname = \"p\"\nadapter = \"m\"\n", Path::new("pitboss.toml")).unwrap();
    assert_eq!(bare.pools[0].working_dir, cwd.join("."));
}

#[test]
fn thread_pools_and_lifecycle_keys() {
    let config = parse(
        r#"
[[pool]]
name = "t"
adapter = "m"
profile = "thread"
threads_per_worker = 8
fallback_profile = "process"
thread_safety_checks = true
worker_ttl = "30m"
worker_max_requests = 500
worker_max_rss = "1.5GiB"
recycle_jitter = 0.2
max_concurrent_recycles = 2
startup_batch_size = 4
startup_batch_delay = "250ms"
ping_interval = "2s"
max_missed_pings = 5
"#,
    )
    .unwrap();
    let pool = &config.pools[0];
    assert_eq!((pool.profile, pool.threads_per_worker), (Profile::Thread, 8));
    assert_eq!(pool.fallback_profile, Some(Profile::Process));
    assert!(pool.thread_safety_checks);
    let expected = Lifecycle {
        worker_ttl: Some(Duration::from_secs(1800)),
        worker_max_requests: Some(500),
        worker_max_rss: Some(1536 << 20),
        recycle_jitter: 0.2,
        max_concurrent_recycles: 2,
        startup_batch_size: 4,
        startup_batch_delay: Duration::from_millis(250),
        ping_interval: Duration::from_secs(2),
        max_missed_pings: 5,
    };
    assert_eq!(pool.lifecycle, expected);

    let plain = parse("[[pool]]\nname = \"p\"\nadapter = \"m\"\nworker_ttl = \"never\"\n").unwrap();
    assert_eq!(plain.pools[0].threads_per_worker, 1);
    assert_eq!(plain.pools[0].lifecycle, Lifecycle::default());
    let thread = parse("[[pool]]\nname = \"p\"\nadapter = \"m\"\nprofile = \"thread\"\n").unwrap();
    assert_eq!(thread.pools[0].threads_per_worker, 4);
}

#[test]
fn unknown_keys_are_kept_for_the_rules_with_the_closest_known_key() {
    let config = parse(
        "bogus = 1\n[host]\napi_adress = \"x\"\n[[pool]]\nname = \"p\"\nadapter = \"m\"\nsise = 2\nflavour = [1]\nrouter_limits = { fule = 5 }\n",
    )
    .unwrap();
    let keys = |extra: &[ExtraSetting]| -> Vec<(String, Option<String>)> {
        extra.iter().map(|e| (e.key.clone(), e.closest_known.clone())).collect()
    };
    assert_eq!(keys(&config.extra), [("bogus".to_owned(), None)]);
    assert_eq!(keys(&config.host.extra), [("api_adress".to_owned(), Some("api_address".to_owned()))]);
    assert_eq!(
        keys(&config.pools[0].extra),
        [
            ("router_limits.fule".to_owned(), Some("fuel".to_owned())),
            ("flavour".to_owned(), None),
            ("sise".to_owned(), Some("size".to_owned())),
        ]
    );
    assert_eq!(config.pools[0].extra[1].value, SettingValue::Toml("[1]".to_owned()));
    assert_eq!(config.pools[0].extra[2].value, SettingValue::Integer(2));
}

#[test]
fn every_type_and_unit_problem_is_reported_at_once() {
    let found = problems(
        r#"
[host]
api_address = "nowhere"
shutdown_grace = "10"
compat_enforce = "strict"

[[pool]]
name = "a"
adapter = "m"
size = -1
profile = "fibre"
request_timeout = 30
queue_limit = "many"
env = { OMP_NUM_THREADS = 2 }

[[pool]]
adapter = "m"

[[pool]]
name = "b"
queue_timeout = "soon"
router_limits = { max_memory = "lots" }
worker_ttl = "forever"
"#,
    );
    let expected = [
        "error host.api_address: `nowhere` is not an address; write e.g. \"127.0.0.1:50051\"",
        "error host.shutdown_grace: `10` has no unit: write e.g. \"10s\" or \"10ms\"",
        "error host.compat_enforce: `strict` is not an enforcement; use \"warn\" or \"deny\"",
        "error pool.a.profile: `fibre` is not a profile; use \"process\" or \"thread\"",
        "error pool.a.size: must be a whole number from 0 to 4294967295 (got -1)",
        "error pool.a.env: must be a table of strings, e.g. { NAME = \"value\" } (got a table)",
        "error pool.a.request_timeout: must be a duration such as \"30s\" (got 30)",
        "error pool.a.queue_limit: must be a whole number from 0 to 9223372036854775807 (got \"many\")",
        "error pool[1].name: is missing: every pool needs the name callers use",
        "error pool.b.adapter: is missing: name the Python module (or module:Class) the workers serve",
        "error pool.b.router_limits.max_memory: `lots` does not start with a number",
        "error pool.b.queue_timeout: `soon` does not start with a number",
        "error pool.b.worker_ttl: `forever` does not start with a number",
    ];
    assert_eq!(found, expected);
}

#[test]
fn syntax_errors_give_the_position() {
    let found = problems("[[pool]\nname = \"p\"\n");
    assert!(found[0].contains("line 1"), "{found:?}");
}

#[test]
fn semantic_problems_are_left_to_the_rules() {
    let config =
        parse("[[pool]]\nname = \"p\"\nadapter = \"m\"\nsize = 0\nthreads_per_worker = 4\nrequest_timeout = \"0s\"\n")
            .unwrap();
    assert_eq!((config.pools[0].size, config.pools[0].threads_per_worker), (0, 4));
    assert!(parse("").unwrap().pools.is_empty());
}

#[test]
fn the_legacy_single_pool_form_becomes_pool_default() {
    let config = parse("pool_size = 3\nadapter = \"m:C\"\nsise = 1\n[host]\nrun_dir = \"run\"\n").unwrap();
    assert_eq!(config.pools.len(), 1);
    let pool = &config.pools[0];
    assert_eq!(
        (pool.name.as_str(), pool.size, pool.profile, pool.adapter.as_str()),
        ("default", 3, Profile::Process, "m:C")
    );
    assert_eq!(pool.extra[0].key, "sise");
    let notes: Vec<(Severity, &str)> = config.notes.iter().map(|d| (d.severity, d.field.as_str())).collect();
    assert_eq!(notes, [(Severity::Info, "pool.default")]);

    let mixed = problems("adapter = \"m\"\n[[pool]]\nname = \"p\"\nadapter = \"m\"\n");
    assert_eq!(mixed.len(), 1);
    assert!(mixed[0].starts_with("error adapter: belongs to the legacy single-pool form"), "{mixed:?}");
}

#[test]
fn hard_limits_hold_whatever_the_rules_say() {
    let config = parse(
        r#"
[[pool]]
name = "a"
adapter = "m"
size = 0
threads_per_worker = 2
calls_in_reserve = 5000
ping_interval = "0s"
recycle_jitter = 1.5
startup_batch_size = 0

[[pool]]
name = "a"
adapter = " "
profile = "thread"
calls_in_reserve = 2
fallback_profile = "thread"
"#,
    )
    .unwrap();
    let fields: Vec<String> = config.hard_limits().into_iter().map(|d| d.field).collect();
    assert_eq!(
        fields,
        [
            "pool.a.size",
            "pool.a.threads_per_worker",
            "pool.a.calls_in_reserve",
            "pool.a.ping_interval",
            "pool.a.startup_batch_size",
            "pool.a.recycle_jitter",
            "pool.a.name",
            "pool.a.adapter",
            "pool.a.calls_in_reserve",
            "pool.a.fallback_profile",
        ]
    );
    assert!(parse(GOOD).unwrap().hard_limits().is_empty());
}

#[test]
fn relative_policy_paths_resolve_against_the_config_folder() {
    let text = "[host]\nconfig_rules = \"rules/site.wasm\"\n\n[[pool]]\nname = \"p\"\nadapter = \"m\"\nrouter = \"routers/mine.wasm\"\n";
    let config = parse(text).unwrap();
    assert_eq!(config.host.config_rules, "/etc/pitboss/rules/site.wasm");
    assert_eq!(config.host.compat_rules, "builtin:compat-rules");
    assert_eq!(config.pools[0].router, "/etc/pitboss/routers/mine.wasm");
    let absolute = parse("[[pool]]\nname = \"p\"\nadapter = \"m\"\nrouter = \"/opt/r.wasm\"\n").unwrap();
    assert_eq!(absolute.pools[0].router, "/opt/r.wasm");
}

#[test]
fn a_tcp_admin_address_needs_the_opt_in_and_its_own_port() {
    let pool = "[[pool]]\nname = \"p\"\nadapter = \"m\"\n";
    let socket = parse(&format!("[host]\nadmin_address = \"admin.sock\"\n{pool}")).unwrap();
    assert_eq!(socket.host.admin_address, AdminAddress::Unix("/etc/pitboss/admin.sock".into()));

    let refused = problems(&format!("[host]\nadmin_address = \"tcp://10.0.0.5:50052\"\n{pool}"));
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].starts_with("error host.admin_address: `tcp://10.0.0.5:50052` is a TCP address"), "{refused:?}");
    assert!(refused[0].contains("set `admin_allow_tcp = true`"), "the fix is named: {refused:?}");

    let allowed = parse(&format!("[host]\nadmin_address = \"tcp://10.0.0.5:50052\"\nadmin_allow_tcp = true\n{pool}"));
    assert_eq!(allowed.unwrap().host.admin_address, AdminAddress::Tcp("10.0.0.5:50052".parse().unwrap()));

    let shared = problems(&format!(
        "[host]\napi_address = \"127.0.0.1:7000\"\nadmin_address = \"tcp://127.0.0.1:7000\"\nadmin_allow_tcp = true\n{pool}"
    ));
    assert!(shared[0].contains("is the api_address: callers must not reach the Admin service"), "{shared:?}");
}
