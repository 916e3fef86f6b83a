//! The host's hard limits: values pitboss cannot act on whatever the config
//! rules say. The config-rules plugin owns the rules and their advice; this
//! is the floor under a site's rules when they are more lenient than
//! `builtin:pool-rules` (which reports each of these itself, with a hint).
//!
//! Must not grow into a second rule set: only what would break the host
//! (a pool without workers, a zero interval, two pools with one name).

use std::collections::BTreeSet;
use std::time::Duration;

use super::{Config, Diagnostic, PoolConfig, Profile};

/// Beyond this a reserve only queues on a worker what the host's queue
/// holds better (where any worker can take it).
const MAX_CALLS_IN_RESERVE: u32 = 1024;

pub(super) fn hard_limits(config: &Config) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut require = |holds: bool, field: String, what: &str| {
        if !holds {
            out.push(Diagnostic::error(field, format!("pitboss cannot run this: it needs {what}")));
        }
    };
    require(!config.pools.is_empty(), "pool".to_owned(), "at least one pool");
    let mut names = BTreeSet::new();
    for pool in &config.pools {
        let key = |name: &str| format!("pool.{}.{name}", pool.name);
        require(!pool.name.is_empty() && names.insert(&pool.name), key("name"), "a unique, non-empty pool name");
        require(!pool.adapter.trim().is_empty(), key("adapter"), "an adapter to import");
        require(pool.size >= 1, key("size"), "at least one worker");
        require(threads_fit(pool), key("threads_per_worker"), "1 for a process pool, at least 1 for a thread pool");
        require(
            pool.calls_in_reserve <= MAX_CALLS_IN_RESERVE,
            key("calls_in_reserve"),
            &format!("at most {MAX_CALLS_IN_RESERVE} calls in reserve per worker"),
        );
        require(
            pool.calls_in_reserve == 0 || pool.profile == Profile::Process,
            key("calls_in_reserve"),
            "0 for a thread pool (its calls end out of order, so the host could not tell when a call in reserve \
             starts); raise threads_per_worker instead",
        );
        require(
            pool.fallback_profile.is_none()
                || (pool.profile, pool.fallback_profile) == (Profile::Thread, Some(Profile::Process)),
            key("fallback_profile"),
            "\"process\" as the fallback of a thread pool, and none elsewhere",
        );
        let durations = [
            ("startup_timeout", Some(pool.startup_timeout)),
            ("request_timeout", Some(pool.request_timeout)),
            ("queue_timeout", Some(pool.queue_timeout)),
            ("session_idle", Some(pool.session_idle)),
            ("ping_interval", Some(pool.lifecycle.ping_interval)),
            ("worker_ttl", pool.lifecycle.worker_ttl),
        ];
        for (name, value) in durations {
            require(value != Some(Duration::ZERO), key(name), "a duration longer than zero");
        }
        let lifecycle = &pool.lifecycle;
        let counts = [
            ("worker_max_requests", lifecycle.worker_max_requests),
            ("worker_max_rss", lifecycle.worker_max_rss),
            ("max_concurrent_recycles", Some(u64::from(lifecycle.max_concurrent_recycles))),
            ("startup_batch_size", Some(u64::from(lifecycle.startup_batch_size))),
            ("max_missed_pings", Some(u64::from(lifecycle.max_missed_pings))),
        ];
        for (name, value) in counts {
            require(value != Some(0), key(name), "a value above zero");
        }
        require((0.0..1.0).contains(&lifecycle.recycle_jitter), key("recycle_jitter"), "a fraction from 0 up to 1");
    }
    out
}

fn threads_fit(pool: &PoolConfig) -> bool {
    match pool.profile {
        Profile::Process => pool.threads_per_worker == 1,
        Profile::Thread => pool.threads_per_worker >= 1,
    }
}
