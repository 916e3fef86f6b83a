//! `builtin:pool-rules`, pitboss's default config rules: every semantic rule
//! a config must pass, reported all at once. The host has already checked
//! types and units; this plugin checks that the values make sense together
//! and for the machine.
//!
//! Errors: no pools, duplicate or empty pool names, unknown keys (with the
//! closest known key as a hint), a size of 0, threads per worker that do not
//! fit the profile, zero or negative timeouts and limits, a bad fallback.
//! Warnings: totals of calls and memory against the machine, thread pools
//! whose BLAS variables multiply threads, huge process pools, recycling and
//! start-up settings that defeat themselves.

use std::collections::BTreeMap;

use pitboss_guest::{ConfigRules, Diagnostic, ExtraSetting, HostConfig, PoolSettings, Profile};

/// A process pool above this many workers is pointed at the thread profile.
const MANY_PROCESSES: u32 = 250;
/// Threads per worker above this multiple of the CPUs are warned about.
const THREADS_PER_CPU: u64 = 4;
/// Calls at once above this multiple of the CPUs are warned about.
const CALLS_PER_CPU: u64 = 2;
/// An RSS limit below this recycles workers all the time: an idle Python
/// worker already uses about this much.
const SMALLEST_USEFUL_RSS: u64 = 32 << 20;
/// Start-up spread longer than this is warned about.
const LONGEST_STARTUP_MS: u64 = 5 * 60_000;
/// Environment variables that size native thread pools (BLAS, OpenMP).
const BLAS_VARIABLES: &[&str] =
    &["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"];

struct PoolRules;

impl ConfigRules for PoolRules {
    fn validate(config: &HostConfig) -> Vec<Diagnostic> {
        validate(config)
    }
}

pitboss_guest::export_config_rules!(PoolRules);

/// Every rule, in file order: top level, `[host]`, each pool, then totals.
pub fn validate(config: &HostConfig) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    unknown_keys(&config.extra, "", &mut out);
    unknown_keys(&config.host.extra, "host.", &mut out);
    if config.pools.is_empty() {
        out.push(
            Diagnostic::error("pool", "no pools are configured")
                .hint("add a [[pool]] table with at least `name` and `adapter`"),
        );
    }
    let mut seen = BTreeMap::new();
    for (index, pool) in config.pools.iter().enumerate() {
        if pool.name.trim().is_empty() {
            out.push(
                Diagnostic::error(format!("pool[{index}].name"), "must not be empty")
                    .hint("name the pool; callers use the name"),
            );
        } else if let Some(first) = seen.insert(pool.name.as_str(), index) {
            out.push(
                Diagnostic::error(pool.field("name"), format!("`{}` names pools {first} and {index}", pool.name))
                    .hint("pool names must be unique: rename one"),
            );
        }
        unknown_keys(&pool.extra, &format!("pool.{}.", pool.name), &mut out);
        pool_rules(pool, config, &mut out);
    }
    totals(config, &mut out);
    out
}

fn unknown_keys(extra: &[ExtraSetting], prefix: &str, out: &mut Vec<Diagnostic>) {
    for setting in extra {
        let hint = match &setting.closest_known {
            Some(known) => format!("did you mean `{known}`?"),
            None => {
                "pitboss does not use this key: remove it, or name config rules that do in host.config_rules".into()
            }
        };
        out.push(Diagnostic::error(format!("{prefix}{}", setting.key), "unknown key").hint(hint));
    }
}

fn pool_rules(pool: &PoolSettings, config: &HostConfig, out: &mut Vec<Diagnostic>) {
    let cpus = config.machine.cpus.max(1);
    if pool.size == 0 {
        out.push(
            Diagnostic::error(pool.field("size"), "must be ≥ 1 (got 0)")
                .hint(format!("the number of worker processes; this machine has {cpus} CPUs")),
        );
    }
    profile_rules(pool, cpus, out);
    timeout_rules(pool, out);
    lifecycle_rules(pool, config, out);
}

fn profile_rules(pool: &PoolSettings, cpus: u32, out: &mut Vec<Diagnostic>) {
    let threads = pool.threads_per_worker;
    match pool.profile {
        Profile::Process => {
            if threads != 1 {
                out.push(
                    Diagnostic::error(
                        pool.field("threads_per_worker"),
                        format!("a process pool serves one call per worker (got {threads})"),
                    )
                    .hint("set `profile = \"thread\"`, or remove threads_per_worker"),
                );
            }
            if pool.fallback_profile.is_some() {
                out.push(
                    Diagnostic::error(pool.field("fallback_profile"), "only thread pools fall back")
                        .hint("remove the key"),
                );
            }
            if pool.thread_safety_checks {
                out.push(
                    Diagnostic::warning(pool.field("thread_safety_checks"), "has no effect on a process pool")
                        .hint("remove it, or set `profile = \"thread\"`"),
                );
            }
            if pool.size > MANY_PROCESSES {
                out.push(
                    Diagnostic::warning(pool.field("size"), format!("{} worker processes cost a Python interpreter each", pool.size))
                        .hint("a thread pool (`profile = \"thread\"`) serves as many calls with fewer processes; `pitboss doctor` says whether this interpreter and its libraries allow it"),
                );
            }
        }
        Profile::Thread => {
            if threads < 2 {
                out.push(
                    Diagnostic::error(
                        pool.field("threads_per_worker"),
                        format!("a thread pool needs at least 2 threads per worker (got {threads})"),
                    )
                    .hint("use `profile = \"process\"` for one call per worker"),
                );
            } else if u64::from(threads) > THREADS_PER_CPU * u64::from(cpus) {
                out.push(
                    Diagnostic::warning(
                        pool.field("threads_per_worker"),
                        format!(
                            "{threads} threads per worker is more than {THREADS_PER_CPU}× this machine's {cpus} CPUs"
                        ),
                    )
                    .hint("more threads than that only help code that waits on I/O"),
                );
            }
            if pool.fallback_profile == Some(Profile::Thread) {
                out.push(
                    Diagnostic::error(pool.field("fallback_profile"), "a thread pool cannot fall back to threads")
                        .hint("the only fallback is \"process\""),
                );
            }
            blas_rules(pool, out);
        }
    }
}

/// In a thread pool every call thread starts its own BLAS/OpenMP team.
fn blas_rules(pool: &PoolSettings, out: &mut Vec<Diagnostic>) {
    for (key, value) in &pool.env {
        let Some(blas) = BLAS_VARIABLES.iter().find(|v| *v == key).and_then(|_| value.trim().parse::<u64>().ok())
        else {
            continue;
        };
        if blas > 1 {
            let threads = u64::from(pool.threads_per_worker);
            out.push(
                Diagnostic::warning(
                    pool.field(&format!("env.{key}")),
                    format!(
                        "{threads} call threads × {blas} {key} threads = {} native threads per worker",
                        threads * blas
                    ),
                )
                .hint(format!("set {key} = \"1\" in a thread pool: the pool's threads are the parallelism")),
            );
        }
    }
}

fn timeout_rules(pool: &PoolSettings, out: &mut Vec<Diagnostic>) {
    for (key, ms) in [
        ("startup_timeout", pool.startup_timeout_ms),
        ("request_timeout", pool.request_timeout_ms),
        ("queue_timeout", pool.queue_timeout_ms),
        ("ping_interval", pool.ping_interval_ms),
    ] {
        if ms == 0 {
            out.push(
                Diagnostic::error(pool.field(key), "must be longer than zero")
                    .hint("write a duration with its unit, e.g. \"30s\""),
            );
        }
    }
    if pool.max_missed_pings == 0 {
        out.push(
            Diagnostic::error(pool.field("max_missed_pings"), "must be ≥ 1 (got 0)").hint("3 tolerates a busy moment"),
        );
    }
}

fn lifecycle_rules(pool: &PoolSettings, config: &HostConfig, out: &mut Vec<Diagnostic>) {
    if pool.worker_ttl_ms == Some(0) {
        out.push(
            Diagnostic::error(pool.field("worker_ttl"), "must be longer than zero")
                .hint("leave it out, or write \"never\", to keep workers"),
        );
    }
    if pool.worker_max_requests == Some(0) {
        out.push(
            Diagnostic::error(pool.field("worker_max_requests"), "must be ≥ 1 (got 0)")
                .hint("leave it out for no limit"),
        );
    }
    match pool.worker_max_rss_bytes {
        Some(0) => {
            out.push(
                Diagnostic::error(pool.field("worker_max_rss"), "must be more than zero")
                    .hint("leave it out for no limit"),
            );
        }
        Some(rss) if rss < SMALLEST_USEFUL_RSS => out.push(
            Diagnostic::warning(
                pool.field("worker_max_rss"),
                format!(
                    "{} is less than an idle Python worker uses; workers would be recycled after every call",
                    bytes(rss)
                ),
            )
            .hint("allow at least a few hundred MiB"),
        ),
        Some(rss) if config.machine.memory_bytes > 0 && rss > config.machine.memory_bytes => {
            out.push(Diagnostic::warning(
                pool.field("worker_max_rss"),
                format!(
                    "{} is more than this machine's {} of memory; the limit never applies",
                    bytes(rss),
                    bytes(config.machine.memory_bytes)
                ),
            ))
        }
        _ => {}
    }
    if !(0.0..=0.5).contains(&pool.recycle_jitter) {
        out.push(
            Diagnostic::error(
                pool.field("recycle_jitter"),
                format!("must be a fraction from 0 to 0.5 (got {})", pool.recycle_jitter),
            )
            .hint("0.1 spreads recycling by up to 10%"),
        );
    }
    if pool.max_concurrent_recycles == 0 {
        out.push(
            Diagnostic::error(pool.field("max_concurrent_recycles"), "must be ≥ 1 (got 0)")
                .hint("1 recycles one worker at a time"),
        );
    } else if pool.size > 1 && pool.max_concurrent_recycles >= pool.size && recycles(pool) {
        out.push(
            Diagnostic::warning(
                pool.field("max_concurrent_recycles"),
                format!(
                    "{} lets all {} workers drain at once; the pool would stop serving",
                    pool.max_concurrent_recycles, pool.size
                ),
            )
            .hint("keep it below the pool's size"),
        );
    }
    if pool.startup_batch_size == 0 {
        out.push(
            Diagnostic::error(pool.field("startup_batch_size"), "must be ≥ 1 (got 0)")
                .hint("8 starts eight workers at a time"),
        );
    } else {
        let batches = u64::from(pool.size.div_ceil(pool.startup_batch_size));
        let spread = batches.saturating_sub(1) * pool.startup_batch_delay_ms;
        if spread > LONGEST_STARTUP_MS {
            out.push(
                Diagnostic::warning(
                    pool.field("startup_batch_delay"),
                    format!(
                        "{} workers in {batches} batches, {} apart, take {} to start",
                        pool.size,
                        duration(pool.startup_batch_delay_ms),
                        duration(spread)
                    ),
                )
                .hint("raise startup_batch_size or lower startup_batch_delay"),
            );
        }
    }
}

fn recycles(pool: &PoolSettings) -> bool {
    pool.worker_ttl_ms.is_some() || pool.worker_max_requests.is_some() || pool.worker_max_rss_bytes.is_some()
}

/// Calls at once and worker memory, summed over every pool, against the
/// machine.
fn totals(config: &HostConfig, out: &mut Vec<Diagnostic>) {
    let cpus = u64::from(config.machine.cpus.max(1));
    let calls: u64 = config.pools.iter().map(PoolSettings::concurrency).sum();
    if calls > CALLS_PER_CPU * cpus {
        let parts: Vec<String> =
            config.pools.iter().map(|p| format!("{} {}×{}", p.name, p.size, p.threads_per_worker)).collect();
        out.push(
            Diagnostic::warning(
                "pool",
                format!("the pools run {calls} calls at once ({}) on {cpus} CPUs", parts.join(", ")),
            )
            .hint("CPU-bound calls will queue for the CPUs; fewer workers or threads lose nothing"),
        );
    }
    let memory = config.machine.memory_bytes;
    let capped: Vec<&PoolSettings> = config.pools.iter().filter(|p| p.worker_max_rss_bytes.is_some()).collect();
    let worst: u64 = capped.iter().map(|p| u64::from(p.size).saturating_mul(p.worker_max_rss_bytes.unwrap_or(0))).sum();
    if memory > 0 && worst > memory {
        let parts: Vec<String> = capped
            .iter()
            .map(|p| format!("{} {}×{}", p.name, p.size, bytes(p.worker_max_rss_bytes.unwrap_or(0))))
            .collect();
        out.push(
            Diagnostic::warning(
                "pool",
                format!(
                    "workers may grow to {} in all ({}), more than this machine's {}",
                    bytes(worst),
                    parts.join(", "),
                    bytes(memory)
                ),
            )
            .hint("lower worker_max_rss or the pool sizes, or the machine will swap before workers are recycled"),
        );
    }
}

fn duration(ms: u64) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    format!("{}{}", text.strip_suffix(".0").unwrap_or(&text), UNITS[unit])
}

#[cfg(test)]
mod tests;
