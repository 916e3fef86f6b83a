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

fn problems(text: &str) -> Vec<String> {
    parse(text).expect_err("config must be refused").problems
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
    assert_eq!(pool.router_limits, PolicyLimits::default());
}

#[test]
fn unknown_keys_are_errors_with_a_suggestion() {
    let found = problems("[[pool]]\nname = \"p\"\nadapter = \"m\"\nsise = 2\n");
    assert_eq!(found.len(), 1);
    assert!(found[0].contains("unknown field `sise`"), "{found:?}");
    assert!(found[0].contains("line 4"), "{found:?}");
    assert!(found[0].contains("did you mean `size`?"), "{found:?}");

    let found = problems("[host]\napi_adress = \"x\"\n[[pool]]\nname = \"p\"\nadapter = \"m\"\n");
    assert!(found[0].contains("did you mean `api_address`?"), "{found:?}");

    let found = problems("[[pool]]\nname = \"p\"\nadapter = \"m\"\nflavour = 2\n");
    assert!(!found[0].contains("did you mean"), "nothing close: {found:?}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let found = problems(
        r#"
[host]
api_address = "nowhere"
shutdown_grace = "10"

[[pool]]
name = "a"
adapter = "m"
size = 0
profile = "fibre"
request_timeout = "0s"
queue_limit = -1

[[pool]]
name = "a"
adapter = "m"

[[pool]]
name = "b"
adapter = "m"
queue_timeout = "soon"
router_limits = { max_memory = "lots" }
"#,
    );
    let expected = [
        "host.api_address: `nowhere` is not an address",
        "host.shutdown_grace: `10` has no unit",
        "pool.a.profile: `fibre` is not a profile; use \"process\" or \"thread\"",
        "pool.a.size: must be between 1 and 65535 (got 0)",
        "pool.a.queue_limit: must be 0 or more (got -1)",
        "pool.a.request_timeout: must be longer than zero",
        "pool.a: the name is used twice",
        "pool.b.router_limits.max_memory: `lots` does not start with a number",
        "pool.b.queue_timeout: `soon` does not start with a number",
    ];
    for want in expected {
        assert!(found.iter().any(|p| p.starts_with(want)), "missing {want:?} in {found:#?}");
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn structural_mistakes_name_the_key() {
    let found = problems("[[pool]]\nname = \"p\"\n");
    assert!(found[0].contains("missing field `adapter`"), "{found:?}");
    let found = problems("[[pool]]\nname = \"p\"\nadapter = \"m\"\nsize = \"two\"\n");
    assert!(found[0].contains("invalid type") && found[0].contains("size"), "{found:?}");
    let found = problems("[[pool]\nname = \"p\"\n");
    assert!(found[0].contains("line 1"), "{found:?}");
    assert_eq!(problems(""), ["no pools: add at least one [[pool]] table with `name` and `adapter`"]);
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
    let text = "[host]\npython = \"../.venv/bin/python\"\n[[pool]]\nname = \"p\"\nadapter = \"m\"\npython_path = [\".\"]\n";
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
fn bad_thread_and_lifecycle_keys_are_all_reported() {
    let found = problems(
        r#"
[[pool]]
name = "p"
adapter = "m"
threads_per_worker = 4
fallback_profile = "process"
worker_ttl = "soon"
worker_max_requests = 0
worker_max_rss = "0MiB"
recycle_jitter = 0.9
max_concurrent_recycles = 0
startup_batch_size = -1
startup_batch_delay = "x"
ping_interval = "0s"
max_missed_pings = 0

[[pool]]
name = "t"
adapter = "m"
profile = "thread"
threads_per_worker = 0
fallback_profile = "thread"
"#,
    );
    let expected = [
        "pool.p.threads_per_worker: a process pool serves one call per worker (got 4)",
        "pool.p.fallback_profile: only thread pools fall back",
        "pool.p.worker_ttl: `soon` does not start with a number",
        "pool.p.worker_max_rss: must be more than zero",
        "pool.p.recycle_jitter: must be a fraction from 0 to 0.5 (got 0.9)",
        "pool.p.startup_batch_delay: `x` does not start with a number",
        "pool.p.worker_max_requests: must be between 1 and",
        "pool.p.max_concurrent_recycles: must be between 1 and 65535 (got 0)",
        "pool.p.startup_batch_size: must be between 1 and 65535 (got -1)",
        "pool.p.ping_interval: must be longer than zero",
        "pool.p.max_missed_pings: must be between 1 and 1000 (got 0)",
        "pool.t.threads_per_worker: must be between 1 and 1024 (got 0)",
        "pool.t.fallback_profile: `thread` cannot be a fallback",
    ];
    for want in expected {
        assert!(found.iter().any(|p| p.starts_with(want)), "missing {want:?} in {found:#?}");
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}
