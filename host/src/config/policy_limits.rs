//! Per-policy sandbox limits (how long, how much work and how much memory
//! one call into a plugin may take) and where compiled policies are cached:
//! plain settings, read from the config file; `policy` enforces them.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Limits applied to every call into one policy's instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyLimits {
    /// Wall-clock budget of one `route` or hook call. Generous against a
    /// typical decision (about 1 µs for 16 workers) so a descheduled call
    /// on a busy machine is not mistaken for a runaway one.
    pub call_deadline: Duration,
    /// Wall-clock budget of instantiation plus `init`.
    pub init_deadline: Duration,
    /// Deterministic instruction budget (wasmtime fuel) of one call. The
    /// default is about 400 times what `least-loaded` spends on 1,024
    /// workers, so on a normal machine the deadline fires first.
    pub fuel_per_call: u64,
    /// Largest size any one linear memory of the plugin may grow to.
    pub max_memory_bytes: usize,
    /// Lines per second of guest stdout/stderr passed to the host log;
    /// the rest are counted and reported as suppressed.
    pub log_lines_per_second: u32,
    /// The per-call p99 a candidate router must stay within when it is
    /// replayed over the pool's recent decisions before a swap.
    pub decision_budget: Duration,
    /// Faults of the live router within `rollback_window` that roll it
    /// back to the version it replaced (the circuit breaker); 0 disables.
    pub rollback_after_faults: u32,
    pub rollback_window: Duration,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        PolicyLimits {
            call_deadline: Duration::from_millis(20),
            init_deadline: Duration::from_millis(500),
            fuel_per_call: 100_000_000,
            max_memory_bytes: 64 << 20,
            log_lines_per_second: 20,
            decision_budget: Duration::from_millis(1),
            rollback_after_faults: 5,
            rollback_window: Duration::from_secs(10),
        }
    }
}

/// The default cache of compiled policies: `$XDG_CACHE_HOME/pitboss/components`,
/// else `~/.cache/pitboss/components`; `None` when neither is known.
pub fn default_policy_cache() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
    Some(base.join("pitboss").join("components"))
}
