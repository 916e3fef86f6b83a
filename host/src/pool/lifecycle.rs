//! The pieces of a worker's life the dispatcher decides on: why a worker
//! is retired, its own (jittered) limits, and the environment a worker of
//! each profile starts with.
//!
//! Owns: those types and their small calculations. Must not touch: the
//! worker table or processes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::config::{Lifecycle, Profile};

/// Why a worker was retired or replaced; logged and counted per pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Ttl,
    MaxRequests,
    MaxRss,
    Manual,
    Crashed,
    Unresponsive,
    Timeout,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::Ttl,
        Reason::MaxRequests,
        Reason::MaxRss,
        Reason::Manual,
        Reason::Crashed,
        Reason::Unresponsive,
        Reason::Timeout,
    ];

    /// The reason [`Reason::as_str`] names.
    pub fn parse(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|reason| reason.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ttl => "ttl",
            Reason::MaxRequests => "max_requests",
            Reason::MaxRss => "max_rss",
            Reason::Manual => "manual",
            Reason::Crashed => "crashed",
            Reason::Unresponsive => "unresponsive",
            Reason::Timeout => "timeout",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Recycles and restarts of one pool, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecycleCounts(BTreeMap<Reason, u64>);

impl RecycleCounts {
    pub fn add(&mut self, reason: Reason) {
        self.add_many(reason, 1);
    }

    pub fn add_many(&mut self, reason: Reason, count: u64) {
        *self.0.entry(reason).or_default() += count;
    }

    pub fn get(&self, reason: Reason) -> u64 {
        self.0.get(&reason).copied().unwrap_or(0)
    }

    /// Every reason with its count, zeros included, in a fixed order.
    pub fn all(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL.into_iter().map(|reason| (reason, self.get(reason)))
    }
}

/// One worker's own limits: the pool's, each lowered by a random fraction
/// of at most `recycle_jitter`, so that workers started together retire
/// apart. A limit is never raised, so a worker never exceeds the pool's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorkerLimits {
    pub ttl: Option<Duration>,
    pub max_requests: Option<u64>,
    pub max_rss: Option<u64>,
}

impl WorkerLimits {
    pub fn jittered(lifecycle: &Lifecycle) -> Self {
        let factor = 1.0 - lifecycle.recycle_jitter * random_unit();
        WorkerLimits {
            ttl: lifecycle.worker_ttl.map(|ttl| ttl.mul_f64(factor)),
            max_requests: lifecycle.worker_max_requests.map(|max| ((max as f64 * factor).round() as u64).max(1)),
            max_rss: lifecycle.worker_max_rss.map(|max| (max as f64 * factor) as u64),
        }
    }

    /// The limit a worker of this age and memory has passed, if any.
    pub fn passed(&self, age: Duration, rss: u64) -> Option<Reason> {
        if self.ttl.is_some_and(|ttl| age >= ttl) {
            Some(Reason::Ttl)
        } else if self.max_rss.is_some_and(|max| rss > max) {
            Some(Reason::MaxRss)
        } else {
            None
        }
    }

    /// Whether `dispatched` calls used up the call limit.
    pub fn calls_used_up(&self, dispatched: u64) -> bool {
        self.max_requests.is_some_and(|max| dispatched >= max)
    }

    /// Whether the call limit is near enough that the worker's successor
    /// should start now: a quarter of the limit before it, at least one
    /// call, so that a busy worker's successor has imported its adapter by
    /// the time the old one stops taking calls.
    pub fn calls_nearly_used_up(&self, dispatched: u64) -> bool {
        self.max_requests.is_some_and(|max| dispatched + (max / 4).max(1) >= max)
    }

    /// Whether the worker is in the last tenth of its ttl, when its
    /// successor starts.
    pub fn ttl_nearly_reached(&self, age: Duration) -> bool {
        self.ttl.is_some_and(|ttl| age + ttl / 10 >= ttl)
    }
}

/// A number in `[0, 1)`. std's hasher keys are random per instance, which
/// is all the randomness jitter needs.
fn random_unit() -> f64 {
    use std::hash::BuildHasher;
    let bits = std::hash::RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Native thread-pool variables set to 1 for every worker: N processes, or
/// N request threads, times M native threads would oversubscribe the CPUs.
/// The pool's `env` wins.
const THREAD_LIMIT_VARS: [&str; 5] =
    ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"];

/// The environment a worker starts with: pitboss's defaults, then the
/// pool's `env` key by key.
pub fn worker_env(profile: Profile, pool_env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = THREAD_LIMIT_VARS.iter().map(|v| (v.to_string(), "1".to_owned())).collect();
    env.insert("PYTHONUNBUFFERED".into(), "1".into());
    if profile == Profile::Thread {
        // Python 3.13+ sizes its own pools (os.process_cpu_count, executors)
        // by it; the machine's core count overstates a container's share.
        env.insert("PYTHON_CPU_COUNT".into(), usable_cpus().to_string());
    }
    env.extend(pool_env.clone());
    env
}

/// CPUs this process may really use. std reads the affinity mask and the
/// cgroup CPU quota (v1 and v2) for this, not just the machine's cores.
pub fn usable_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_only_lowers_limits() {
        let lifecycle = Lifecycle {
            worker_ttl: Some(Duration::from_secs(100)),
            worker_max_requests: Some(1000),
            worker_max_rss: Some(1 << 30),
            recycle_jitter: 0.2,
            ..Lifecycle::default()
        };
        for _ in 0..200 {
            let limits = WorkerLimits::jittered(&lifecycle);
            let ttl = limits.ttl.unwrap();
            assert!(ttl <= Duration::from_secs(100) && ttl >= Duration::from_secs(80), "{ttl:?}");
            assert!((800..=1000).contains(&limits.max_requests.unwrap()));
            assert!(limits.max_rss.unwrap() <= 1 << 30);
        }
        let spread: std::collections::BTreeSet<u64> =
            (0..50).map(|_| WorkerLimits::jittered(&lifecycle).max_requests.unwrap()).collect();
        assert!(spread.len() > 5, "jitter spreads workers apart: {spread:?}");
        let exact =
            WorkerLimits::jittered(&Lifecycle { worker_max_requests: Some(5), recycle_jitter: 0.0, ..lifecycle });
        assert_eq!(exact.max_requests, Some(5));
    }

    #[test]
    fn limits_passed() {
        let limits = WorkerLimits { ttl: Some(Duration::from_secs(2)), max_requests: None, max_rss: Some(100) };
        assert_eq!(limits.passed(Duration::from_secs(1), 50), None);
        assert_eq!(limits.passed(Duration::from_secs(2), 50), Some(Reason::Ttl));
        assert_eq!(limits.passed(Duration::from_secs(1), 101), Some(Reason::MaxRss));
        assert!(!limits.ttl_nearly_reached(Duration::from_millis(1799)));
        assert!(limits.ttl_nearly_reached(Duration::from_millis(1800)));

        let calls = WorkerLimits { ttl: None, max_requests: Some(100), max_rss: None };
        assert!(!calls.calls_nearly_used_up(74) && calls.calls_nearly_used_up(75));
        assert!(!calls.calls_used_up(99) && calls.calls_used_up(100));
        let one = WorkerLimits { max_requests: Some(1), ..calls };
        assert!(one.calls_nearly_used_up(0) && one.calls_used_up(1));
        assert!(!limits.calls_nearly_used_up(u64::MAX) && !limits.calls_used_up(u64::MAX), "no call limit");
    }

    #[test]
    fn thread_workers_get_a_cpu_count_and_the_pool_env_wins() {
        let pool_env = BTreeMap::from([("OMP_NUM_THREADS".to_owned(), "4".to_owned())]);
        let env = worker_env(Profile::Thread, &pool_env);
        assert_eq!(env["OMP_NUM_THREADS"], "4");
        assert_eq!(env["MKL_NUM_THREADS"], "1");
        assert_eq!(env["PYTHON_CPU_COUNT"], usable_cpus().to_string());
        assert!(!worker_env(Profile::Process, &pool_env).contains_key("PYTHON_CPU_COUNT"));
    }
}
