//! A point-in-time view of a pool and its workers, for status pages,
//! the API and tests.
//!
//! Owns: the status types. Must not touch: the dispatcher's state (the
//! core builds these from it).

use std::collections::BTreeMap;
use std::time::Duration;

use super::call::ErrorKind;
use super::lifecycle::RecycleCounts;
use super::routing::RouterReport;

/// A point-in-time view of a pool.
#[derive(Clone, Debug)]
pub struct PoolStatus {
    pub name: String,
    /// The profile its workers run: the configured one, or `process` after
    /// a fallback.
    pub profile: String,
    /// Calls each worker serves at once.
    pub threads_per_worker: u32,
    /// Calls each worker may hold beyond those it runs (`calls_in_reserve`).
    pub calls_in_reserve: u32,
    /// Why a thread pool fell back to process workers.
    pub fallback: Option<String>,
    pub size: u32,
    /// Workers that said hello and are not being stopped (draining ones
    /// count: they finish their calls).
    pub ready: u32,
    pub starting: u32,
    /// Workers being recycled: no new calls, finishing their own.
    pub draining: u32,
    /// Calls running on workers.
    pub in_flight: u32,
    /// Calls sent to workers that wait behind a running one
    /// (`calls_in_reserve`).
    pub reserved: u32,
    pub queued: u32,
    /// Calls the pool can run at once now: serving workers × threads each.
    pub capacity: u32,
    /// Calls answered (successfully or not) since the pool started.
    pub served: u64,
    pub failed: u64,
    /// Failed calls by kind: those workers answered and those the pool
    /// refused (saturated, queue timeout, ...).
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Workers that exited without being asked to.
    pub crashes: u64,
    /// Workers started to replace others (recycles, crashes, timeouts,
    /// failed starts).
    pub restarts: u64,
    /// Recycles and restarts by reason.
    pub recycles: RecycleCounts,
    /// Crashing repeatedly: replacements are being delayed.
    pub degraded: bool,
    /// The routing policy and its counters.
    pub router: RouterReport,
    /// What the newest worker said about its interpreter; `None` until one
    /// is ready.
    pub facts: Option<PoolFacts>,
    pub workers: Vec<WorkerStatus>,
}

/// A pool's interpreter as its workers see it after importing the adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolFacts {
    pub python_version: String,
    pub implementation: String,
    pub free_threaded_build: bool,
    pub gil_enabled: bool,
    /// The adapter's `thread_safe` declaration, `None` when it made none.
    pub thread_safe: Option<bool>,
    pub unsafe_modules: Vec<String>,
    pub threads_per_worker: u32,
}

impl PoolStatus {
    /// `in_flight / capacity`, 0 without capacity.
    pub fn utilisation(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            f64::from(self.in_flight) / f64::from(self.capacity)
        }
    }

    /// Failed calls of `kind`.
    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        self.errors.get(&kind).copied().unwrap_or(0)
    }
}

#[derive(Clone, Debug)]
pub struct WorkerStatus {
    pub id: u32,
    /// 0 while starting.
    pub pid: u32,
    /// `starting`, `ready`, `draining` or `stopping`.
    pub state: &'static str,
    /// Said hello and is not being stopped (a draining worker is ready:
    /// it finishes its calls).
    pub ready: bool,
    /// Calls running on it.
    pub in_flight: u32,
    /// Calls sent to it that wait for its thread (`calls_in_reserve`).
    pub reserved: u32,
    /// Calls it serves at once.
    pub capacity: u32,
    pub served: u64,
    /// The Python process's resident memory at the last sample (about
    /// once a second).
    pub rss_bytes: u64,
    /// The process's OS threads at the last sample.
    pub threads: u32,
    /// Whether the GIL is on in it, as it reported after its imports.
    pub gil_enabled: bool,
    /// The last call that failed on it: "kind: message".
    pub last_error: Option<String>,
    pub age: Duration,
}

impl WorkerStatus {
    /// Every [`WorkerStatus::state`] there is.
    pub const STATES: [&'static str; 4] = ["starting", "ready", "draining", "stopping"];

    /// The state called `name`, or `"unknown"` for a name no state has.
    pub fn state_named(name: &str) -> &'static str {
        Self::STATES.into_iter().find(|state| *state == name).unwrap_or("unknown")
    }
}
