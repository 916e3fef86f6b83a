use pitboss_guest::{Enforcement, HostSettings, Machine, Severity};

use super::*;

fn pool(name: &str) -> PoolSettings {
    PoolSettings {
        name: name.into(),
        profile: Profile::Process,
        size: 2,
        threads_per_worker: 1,
        adapter: "m".into(),
        python: "python3".into(),
        router: "builtin:least-loaded".into(),
        env: Vec::new(),
        startup_timeout_ms: 30_000,
        request_timeout_ms: 10_000,
        queue_limit: 1000,
        queue_timeout_ms: 30_000,
        fallback_profile: None,
        thread_safety_checks: false,
        worker_ttl_ms: None,
        worker_max_requests: None,
        worker_max_rss_bytes: None,
        recycle_jitter: 0.1,
        max_concurrent_recycles: 1,
        startup_batch_size: 8,
        startup_batch_delay_ms: 0,
        ping_interval_ms: 5_000,
        max_missed_pings: 3,
        extra: Vec::new(),
    }
}

fn config(pools: Vec<PoolSettings>) -> HostConfig {
    HostConfig {
        source: "pitboss.toml".into(),
        host: HostSettings {
            run_dir: "/run/pitboss".into(),
            api_address: "127.0.0.1:50051".into(),
            shutdown_grace_ms: 10_000,
            config_rules: "builtin:pool-rules".into(),
            compat_rules: "builtin:compat-rules".into(),
            compat_enforce: Enforcement::Warn,
            extra: Vec::new(),
        },
        pools,
        extra: Vec::new(),
        machine: Machine { cpus: 8, memory_bytes: 16 << 30 },
    }
}

fn found(config: &HostConfig) -> Vec<(Severity, String)> {
    validate(config).into_iter().map(|d| (d.severity, d.field)).collect()
}

#[test]
fn a_sensible_config_passes() {
    assert!(validate(&config(vec![pool("a"), pool("b")])).is_empty());
}

#[test]
fn every_problem_of_a_pool_is_reported_at_once() {
    let mut bad = pool("hpc");
    bad.size = 0;
    bad.threads_per_worker = 3;
    bad.request_timeout_ms = 0;
    bad.recycle_jitter = 0.9;
    bad.startup_batch_size = 0;
    let diagnostics = validate(&config(vec![bad]));
    let fields: Vec<&str> = diagnostics.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "pool.hpc.size",
            "pool.hpc.threads_per_worker",
            "pool.hpc.request_timeout",
            "pool.hpc.recycle_jitter",
            "pool.hpc.startup_batch_size"
        ]
    );
    assert!(diagnostics.iter().all(|d| d.severity == Severity::Error));
    assert_eq!(diagnostics[0].message, "must be ≥ 1 (got 0)");
}

#[test]
fn thread_pools_with_blas_threads_are_warned() {
    let mut threaded = pool("t");
    threaded.profile = Profile::Thread;
    threaded.threads_per_worker = 4;
    threaded.env = vec![("OMP_NUM_THREADS".into(), "8".into()), ("OTHER".into(), "9".into())];
    let diagnostics = validate(&config(vec![threaded]));
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert_eq!(diagnostics[0].field, "pool.t.env.OMP_NUM_THREADS");
    assert!(diagnostics[0].message.contains("= 32 native threads"), "{}", diagnostics[0].message);
}

#[test]
fn totals_are_warned_with_numbers() {
    let mut big = pool("big");
    big.size = 20;
    big.worker_max_rss_bytes = Some(1 << 30);
    let diagnostics = validate(&config(vec![big]));
    let messages: Vec<&str> = diagnostics.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "the pools run 20 calls at once (big 20×1) on 8 CPUs",
            "workers may grow to 20GiB in all (big 20×1GiB), more than this machine's 16GiB"
        ]
    );
}

#[test]
fn no_pools_and_duplicates() {
    assert_eq!(found(&config(Vec::new())), [(Severity::Error, "pool".to_owned())]);
    assert_eq!(found(&config(vec![pool("a"), pool("a")])), [(Severity::Error, "pool.a.name".to_owned())]);
}

#[test]
fn units_print_short() {
    assert_eq!(duration(90_000), "90s");
    assert_eq!(duration(120_000), "2m");
    assert_eq!(duration(1_500), "1500ms");
    assert_eq!(bytes(1536 << 20), "1.5GiB");
    assert_eq!(bytes(512), "512B");
}
