//! Configuration: one TOML file with a `[host]` table and one `[[pool]]`
//! table per pool, turned into a typed [`Config`] with defaults applied and
//! relative paths resolved against the file's folder.
//!
//! Owns: parsing, types and units, defaults, the legacy single-pool form,
//! choosing each pool's Python interpreter, and the host's hard limits
//! ([`Config::hard_limits`]). Semantic rules (a size of 0, thread settings,
//! timeouts, totals against the machine) belong to the config-rules plugin
//! (`builtin:pool-rules` by default), which `policy` runs on a parsed
//! [`Config`]. Keys the host does not know are kept as [`ExtraSetting`]s
//! for those rules. Must not start, spawn or bind anything.

mod admin_address;
mod diagnostic;
mod invariants;
mod parse;
mod policy_limits;
mod read;
mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use admin_address::AdminAddress;
pub use diagnostic::{Diagnostic, ExtraSetting, SettingValue, Severity};
pub use parse::{default_admin_address, default_run_dir, resolve_interpreter};
pub use policy_limits::{default_policy_cache, PolicyLimits};
pub use units::{parse_duration, parse_size};

/// A loaded, checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (`<inline>` for text parsed directly).
    pub source: PathBuf,
    pub host: HostConfig,
    pub pools: Vec<PoolConfig>,
    /// Top-level keys the host does not know.
    pub extra: Vec<ExtraSetting>,
    /// What parsing has to say about an accepted config (the legacy form's
    /// conversion); the config rules add theirs.
    pub notes: Vec<Diagnostic>,
}

#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Where worker sockets, the lock file and worker records live.
    pub run_dir: PathBuf,
    /// Address the gRPC API listens on.
    pub api_address: SocketAddr,
    /// Where the operators' `Admin` service listens, out of callers'
    /// reach: a Unix socket (mode 0600), `<run_dir>/admin.sock` by default;
    /// a TCP address only with `admin_allow_tcp = true`.
    pub admin_address: AdminAddress,
    /// Where compiled policy components are cached; `None` disables it.
    pub policy_cache: Option<PathBuf>,
    /// Where Prometheus scrapes `/metrics`; `None`: not served.
    pub metrics_address: Option<SocketAddr>,
    /// How long in-flight calls may run on after a shutdown is asked for.
    pub shutdown_grace: Duration,
    /// The config-rules plugin: `builtin:NAME` or a component path.
    pub config_rules: String,
    /// The compat-rules plugin: `builtin:NAME` or a component path.
    pub compat_rules: String,
    /// What `unsafe` compatibility findings do to a thread pool.
    pub compat_enforce: Enforcement,
    /// `[host]` keys the host does not know.
    pub extra: Vec<ExtraSetting>,
}

/// What the host does with `unsafe` compatibility findings for a thread pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// Log them and start the pool (the default).
    Warn,
    /// Refuse to start the pool.
    Deny,
}

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub name: String,
    pub profile: Profile,
    /// Worker processes.
    pub size: u32,
    /// `module:Class` or `module`.
    pub adapter: String,
    pub python: Interpreter,
    /// Folders added to the worker's import path.
    pub python_path: Vec<PathBuf>,
    /// Working directory of the workers: the config file's folder.
    pub working_dir: PathBuf,
    /// `builtin:NAME` or a path to a routing component.
    pub router: String,
    pub router_options: BTreeMap<String, String>,
    /// Swap the router (through the full pipeline) whenever its component
    /// file changes.
    pub router_watch: bool,
    pub router_limits: PolicyLimits,
    /// Environment for the workers; overrides pitboss's defaults key by key.
    pub env: BTreeMap<String, String>,
    /// Extra arguments for `python -m pitboss_worker`.
    pub args: Vec<String>,
    pub startup_timeout: Duration,
    pub request_timeout: Duration,
    /// Requests that may wait for a worker; more are refused at once.
    pub queue_limit: usize,
    pub queue_timeout: Duration,
    /// Times a call to an idempotent tool is retried after its worker
    /// crashed or timed out.
    pub retries: u32,
    /// How long a session's state may go unused in a worker before the
    /// worker drops it.
    pub session_idle: Duration,
    /// Calls one worker serves at once: 1 for process pools.
    pub threads_per_worker: u32,
    /// Calls a process worker may hold beyond the one it runs, so that it
    /// starts the next at once instead of waiting for the host to send it.
    pub calls_in_reserve: u32,
    /// What a thread pool runs instead when its thread workers cannot start.
    pub fallback_profile: Option<Profile>,
    /// Ask thread workers to watch for concurrent entry into unsafe tools.
    pub thread_safety_checks: bool,
    pub lifecycle: Lifecycle,
    /// Keys of this pool's table the host does not know.
    pub extra: Vec<ExtraSetting>,
}

/// When workers are retired and replaced, and how a pool starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Lifecycle {
    /// Age after which a worker is recycled; `None` is "never".
    pub worker_ttl: Option<Duration>,
    /// Calls after which a worker is recycled.
    pub worker_max_requests: Option<u64>,
    /// Resident memory above which a worker is recycled after its current call.
    pub worker_max_rss: Option<u64>,
    /// Fraction (0 to 0.5) by which each worker's limits are lowered at
    /// random, so that workers started together do not retire together.
    pub recycle_jitter: f64,
    /// Workers of one pool that may be draining at the same time.
    pub max_concurrent_recycles: u32,
    /// Workers started together at pool start.
    pub startup_batch_size: u32,
    /// Pause between two startup batches.
    pub startup_batch_delay: Duration,
    /// How often each worker is pinged.
    pub ping_interval: Duration,
    /// Pings in a row a worker may leave unanswered before it is killed.
    pub max_missed_pings: u32,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            worker_ttl: None,
            worker_max_requests: None,
            worker_max_rss: None,
            recycle_jitter: 0.1,
            max_concurrent_recycles: 1,
            startup_batch_size: 8,
            startup_batch_delay: Duration::ZERO,
            ping_interval: Duration::from_secs(5),
            max_missed_pings: 3,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Single-threaded workers, one call each at a time.
    Process,
    /// Workers that each serve `threads_per_worker` calls at once.
    Thread,
}

impl HostConfig {
    /// Where detected interpreter facts are cached: `python/` in the run
    /// directory.
    pub fn python_cache(&self) -> PathBuf {
        self.run_dir.join("python")
    }
}

impl Profile {
    const CHOICES: [(&str, Profile); 2] = [("process", Profile::Process), ("thread", Profile::Thread)];
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::Process => "process",
            Profile::Thread => "thread",
        })
    }
}

/// A pool's Python interpreter and how it was chosen, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interpreter {
    pub path: PathBuf,
    pub chosen_by: String,
}

impl fmt::Display for Interpreter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (from {})", self.path.display(), self.chosen_by)
    }
}

/// Why a config was refused: every problem found, with the file named.
#[derive(Debug)]
pub struct ConfigError {
    pub source: PathBuf,
    /// Every diagnostic, errors and notes alike.
    pub problems: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config {}:", self.source.display())?;
        for problem in &self.problems {
            let text = problem.to_string().replace('\n', "\n    ");
            write!(f, "\n  {text}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

pub const DEFAULT_API_ADDRESS: &str = "127.0.0.1:50051";
pub const DEFAULT_ROUTER: &str = "builtin:least-loaded";
pub const DEFAULT_CONFIG_RULES: &str = "builtin:pool-rules";
pub const DEFAULT_COMPAT_RULES: &str = "builtin:compat-rules";
/// Name of the pool the legacy single-pool form becomes.
pub const LEGACY_POOL: &str = "default";
impl Config {
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Values the host cannot act on whatever the config rules say (a pool
    /// without workers, a zero ping interval...): the check that holds when
    /// a site's rules are more lenient than the built-in ones.
    pub fn hard_limits(&self) -> Vec<Diagnostic> {
        invariants::hard_limits(self)
    }
}

#[cfg(test)]
mod tests;
