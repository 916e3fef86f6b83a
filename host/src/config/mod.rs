//! Configuration: one TOML file with a `[host]` table and one `[[pool]]`
//! table per pool, turned into a typed [`Config`] with defaults applied and
//! relative paths resolved against the file's folder.
//!
//! Owns: parsing, units, defaults, the basic checks every config must pass,
//! and choosing each pool's Python interpreter. Must not start, spawn or
//! bind anything.

mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::policy::PolicyLimits;
pub use units::{parse_duration, parse_size};

/// A loaded, checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (`<inline>` for text parsed directly).
    pub source: PathBuf,
    pub host: HostConfig,
    pub pools: Vec<PoolConfig>,
}

#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Where worker sockets, the lock file and worker records live.
    pub run_dir: PathBuf,
    /// Address the gRPC API listens on.
    pub api_address: SocketAddr,
    /// Where compiled policy components are cached; `None` disables it.
    pub policy_cache: Option<PathBuf>,
    /// How long in-flight calls may run on after a shutdown is asked for.
    pub shutdown_grace: Duration,
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
    /// Calls one worker serves at once: 1 for process pools.
    pub threads_per_worker: u32,
    /// What a thread pool runs instead when its thread workers cannot start.
    pub fallback_profile: Option<Profile>,
    /// Ask thread workers to watch for concurrent entry into unsafe tools.
    pub thread_safety_checks: bool,
    pub lifecycle: Lifecycle,
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

impl Profile {
    fn parse(text: &str) -> Option<Profile> {
        match text {
            "process" => Some(Profile::Process),
            "thread" => Some(Profile::Thread),
            _ => None,
        }
    }
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
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config {}:", self.source.display())?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    host: RawHost,
    #[serde(default)]
    pool: Vec<RawPool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHost {
    python: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    api_address: Option<String>,
    policy_cache: Option<PathBuf>,
    shutdown_grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: String,
    profile: Option<String>,
    size: Option<i64>,
    adapter: String,
    python: Option<PathBuf>,
    #[serde(default)]
    python_path: Vec<PathBuf>,
    router: Option<String>,
    #[serde(default)]
    router_options: BTreeMap<String, String>,
    #[serde(default)]
    router_limits: RawRouterLimits,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    args: Vec<String>,
    startup_timeout: Option<String>,
    request_timeout: Option<String>,
    queue_limit: Option<i64>,
    queue_timeout: Option<String>,
    threads_per_worker: Option<i64>,
    fallback_profile: Option<String>,
    #[serde(default)]
    thread_safety_checks: bool,
    worker_ttl: Option<String>,
    worker_max_requests: Option<i64>,
    worker_max_rss: Option<String>,
    recycle_jitter: Option<f64>,
    max_concurrent_recycles: Option<i64>,
    startup_batch_size: Option<i64>,
    startup_batch_delay: Option<String>,
    ping_interval: Option<String>,
    max_missed_pings: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRouterLimits {
    call_deadline: Option<String>,
    init_deadline: Option<String>,
    fuel: Option<u64>,
    max_memory: Option<String>,
    log_lines_per_second: Option<u32>,
}

pub const DEFAULT_API_ADDRESS: &str = "127.0.0.1:50051";
pub const DEFAULT_ROUTER: &str = "builtin:least-loaded";

impl Config {
    /// Reads and checks the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            source: path.to_owned(),
            problems: vec![format!("cannot read it: {err}")],
        })?;
        Config::parse(&text, path)
    }

    /// Parses config text as if it were the file `path` (relative paths
    /// resolve against its folder).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError { source: path.to_owned(), problems };
        let raw: RawConfig = toml::from_str(text).map_err(|err| fail(vec![describe_toml_error(&err)]))?;
        // Absolute, so that paths keep their meaning in workers, which run in
        // this folder.
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = std::path::absolute(folder)
            .map_err(|err| fail(vec![format!("cannot resolve the config's folder: {err}")]))?;
        let mut problems = Vec::new();
        let host_python = raw.host.python.as_ref().map(|p| base.join(p));
        let host = host_config(raw.host, &base, &mut problems);
        if raw.pool.is_empty() {
            problems.push("no pools: add at least one [[pool]] table with `name` and `adapter`".to_owned());
        }
        let mut pools = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for pool in raw.pool {
            if !names.insert(pool.name.clone()) {
                problems.push(format!("pool.{}: the name is used twice; pool names must be unique", pool.name));
                continue;
            }
            if let Some(pool) = pool_config(pool, &base, host_python.as_deref(), &mut problems) {
                pools.push(pool);
            }
        }
        if problems.is_empty() {
            Ok(Config { source: path.to_owned(), host, pools })
        } else {
            Err(fail(problems))
        }
    }

    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}

fn host_config(raw: RawHost, base: &Path, problems: &mut Vec<String>) -> HostConfig {
    let api_text = raw.api_address.unwrap_or_else(|| DEFAULT_API_ADDRESS.to_owned());
    let api_address = api_text.parse().unwrap_or_else(|_| {
        problems.push(format!("host.api_address: `{api_text}` is not an address; write e.g. \"{DEFAULT_API_ADDRESS}\""));
        DEFAULT_API_ADDRESS.parse().unwrap()
    });
    HostConfig {
        run_dir: raw.run_dir.map(|dir| base.join(dir)).unwrap_or_else(default_run_dir),
        api_address,
        policy_cache: raw.policy_cache.map(|dir| base.join(dir)).or_else(crate::policy::PolicyEngine::default_cache_dir),
        shutdown_grace: duration("host.shutdown_grace", raw.shutdown_grace, Duration::from_secs(10), problems),
    }
}

fn pool_config(raw: RawPool, base: &Path, host_python: Option<&Path>, problems: &mut Vec<String>) -> Option<PoolConfig> {
    let key = |field: &str| format!("pool.{}.{field}", raw.name);
    let before = problems.len();
    if raw.name.trim().is_empty() {
        problems.push("pool.name: must not be empty".to_owned());
    }
    let profile = match raw.profile.as_deref().map(|text| (text, Profile::parse(text))) {
        None => Profile::Process,
        Some((_, Some(profile))) => profile,
        Some((other, None)) => {
            problems.push(format!("{}: `{other}` is not a profile; use \"process\" or \"thread\"", key("profile")));
            Profile::Process
        }
    };
    let size = bounded(&key("size"), raw.size, 1, i64::from(u16::MAX), problems).map_or_else(default_pool_size, |n| n as u32);
    let threads_per_worker = match (profile, raw.threads_per_worker) {
        (Profile::Process, Some(threads)) if threads != 1 => {
            problems.push(format!(
                "{}: a process pool serves one call per worker (got {threads}); set `profile = \"thread\"` or remove the key",
                key("threads_per_worker")
            ));
            1
        }
        (Profile::Process, _) => 1,
        (Profile::Thread, threads) => bounded(&key("threads_per_worker"), threads, 1, 1024, problems).map_or(4, |n| n as u32),
    };
    let fallback_profile = match (profile, raw.fallback_profile.as_deref()) {
        (_, None) => None,
        (Profile::Thread, Some("process")) => Some(Profile::Process),
        (Profile::Thread, Some(other)) => {
            problems.push(format!("{}: `{other}` cannot be a fallback; the only one is \"process\"", key("fallback_profile")));
            None
        }
        (Profile::Process, Some(_)) => {
            problems.push(format!("{}: only thread pools fall back; remove the key", key("fallback_profile")));
            None
        }
    };
    let lifecycle = lifecycle(&raw, &key, problems);
    if raw.adapter.trim().is_empty() {
        problems.push(format!("{}: must name a module or module:Class", key("adapter")));
    }
    let queue_limit = match raw.queue_limit {
        None => 1000,
        Some(limit) if limit >= 0 => limit as usize,
        Some(limit) => {
            problems.push(format!("{}: must be 0 or more (got {limit})", key("queue_limit")));
            0
        }
    };
    let defaults = PolicyLimits::default();
    let limits = raw.router_limits;
    let router_limits = PolicyLimits {
        call_deadline: duration(&key("router_limits.call_deadline"), limits.call_deadline, defaults.call_deadline, problems),
        init_deadline: duration(&key("router_limits.init_deadline"), limits.init_deadline, defaults.init_deadline, problems),
        fuel_per_call: limits.fuel.unwrap_or(defaults.fuel_per_call),
        max_memory_bytes: match limits.max_memory.as_deref().map(parse_size) {
            None => defaults.max_memory_bytes,
            Some(Ok(bytes)) => usize::try_from(bytes).unwrap_or(usize::MAX),
            Some(Err(err)) => {
                problems.push(format!("{}: {err}", key("router_limits.max_memory")));
                defaults.max_memory_bytes
            }
        },
        log_lines_per_second: limits.log_lines_per_second.unwrap_or(defaults.log_lines_per_second),
    };
    let pool = PoolConfig {
        profile,
        size,
        python: resolve_interpreter(raw.python.map(|p| base.join(p)).as_deref(), host_python),
        python_path: raw.python_path.iter().map(|p| base.join(p)).collect(),
        working_dir: base.to_owned(),
        router: raw.router.unwrap_or_else(|| DEFAULT_ROUTER.to_owned()),
        router_options: raw.router_options,
        router_limits,
        env: raw.env,
        args: raw.args,
        startup_timeout: duration(&key("startup_timeout"), raw.startup_timeout, Duration::from_secs(30), problems),
        request_timeout: duration(&key("request_timeout"), raw.request_timeout, Duration::from_secs(60), problems),
        queue_limit,
        queue_timeout: duration(&key("queue_timeout"), raw.queue_timeout, Duration::from_secs(30), problems),
        threads_per_worker,
        fallback_profile,
        thread_safety_checks: raw.thread_safety_checks,
        lifecycle,
        adapter: raw.adapter,
        name: raw.name,
    };
    (problems.len() == before).then_some(pool)
}

fn lifecycle(raw: &RawPool, key: &dyn Fn(&str) -> String, problems: &mut Vec<String>) -> Lifecycle {
    let defaults = Lifecycle::default();
    let worker_ttl = match raw.worker_ttl.as_deref() {
        None | Some("never") => None,
        Some(text) => Some(duration(&key("worker_ttl"), Some(text.to_owned()), Duration::MAX, problems)),
    };
    let worker_max_rss = match raw.worker_max_rss.as_deref().map(parse_size) {
        None => None,
        Some(Ok(bytes)) if bytes > 0 => Some(bytes),
        Some(Ok(_)) => {
            problems.push(format!("{}: must be more than zero; leave it out for no limit", key("worker_max_rss")));
            None
        }
        Some(Err(err)) => {
            problems.push(format!("{}: {err}; write e.g. \"1.5GiB\"", key("worker_max_rss")));
            None
        }
    };
    let recycle_jitter = match raw.recycle_jitter {
        None => defaults.recycle_jitter,
        Some(jitter) if (0.0..=0.5).contains(&jitter) => jitter,
        Some(jitter) => {
            problems.push(format!("{}: must be a fraction from 0 to 0.5 (got {jitter})", key("recycle_jitter")));
            defaults.recycle_jitter
        }
    };
    let startup_batch_delay = match raw.startup_batch_delay.as_deref().map(parse_duration) {
        None => defaults.startup_batch_delay,
        Some(Ok(delay)) => delay,
        Some(Err(err)) => {
            problems.push(format!("{}: {err}", key("startup_batch_delay")));
            defaults.startup_batch_delay
        }
    };
    let count = |name: &str, value: Option<i64>, max: u16, problems: &mut Vec<String>| {
        bounded(&key(name), value, 1, i64::from(max), problems).map(|n| n as u32)
    };
    Lifecycle {
        worker_ttl,
        worker_max_requests: bounded(&key("worker_max_requests"), raw.worker_max_requests, 1, i64::MAX, problems),
        worker_max_rss,
        recycle_jitter,
        max_concurrent_recycles: count("max_concurrent_recycles", raw.max_concurrent_recycles, u16::MAX, problems)
            .unwrap_or(defaults.max_concurrent_recycles),
        startup_batch_size: count("startup_batch_size", raw.startup_batch_size, u16::MAX, problems)
            .unwrap_or(defaults.startup_batch_size),
        startup_batch_delay,
        ping_interval: duration(&key("ping_interval"), raw.ping_interval.clone(), defaults.ping_interval, problems),
        max_missed_pings: count("max_missed_pings", raw.max_missed_pings, 1000, problems)
            .unwrap_or(defaults.max_missed_pings),
    }
}

/// An integer key that must lie in `min..=max`; `None` when absent or wrong
/// (the problem is recorded).
fn bounded(key: &str, value: Option<i64>, min: i64, max: i64, problems: &mut Vec<String>) -> Option<u64> {
    let value = value?;
    if (min..=max).contains(&value) {
        Some(value as u64)
    } else {
        problems.push(format!("{key}: must be between {min} and {max} (got {value})"));
        None
    }
}

fn duration(key: &str, text: Option<String>, default: Duration, problems: &mut Vec<String>) -> Duration {
    match text.as_deref().map(parse_duration) {
        None => default,
        Some(Ok(value)) if !value.is_zero() => value,
        Some(Ok(_)) => {
            problems.push(format!("{key}: must be longer than zero"));
            default
        }
        Some(Err(err)) => {
            problems.push(format!("{key}: {err}"));
            default
        }
    }
}

/// The interpreter for a pool: the pool's `python`, the host's `python`,
/// then `PITBOSS_PYTHON`, then the active virtualenv, then `python3`.
pub fn resolve_interpreter(pool: Option<&Path>, host: Option<&Path>) -> Interpreter {
    let pick = |path: PathBuf, chosen_by: &str| Interpreter { path, chosen_by: chosen_by.to_owned() };
    if let Some(path) = pool {
        return pick(path.to_owned(), "the pool's `python` key");
    }
    if let Some(path) = host {
        return pick(path.to_owned(), "`host.python`");
    }
    if let Some(path) = std::env::var_os("PITBOSS_PYTHON").filter(|v| !v.is_empty()) {
        return pick(PathBuf::from(path), "the PITBOSS_PYTHON environment variable");
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        return pick(Path::new(&venv).join("bin").join("python"), "the active virtualenv (VIRTUAL_ENV)");
    }
    pick(PathBuf::from("python3"), "the default `python3` on PATH")
}

fn default_pool_size() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

fn default_run_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => Path::new(&dir).join("pitboss"),
        None => std::env::temp_dir().join(format!("pitboss-{}", nix::unistd::getuid())),
    }
}

/// The TOML error with its position, plus a did-you-mean for an unknown
/// key that is close to a known one.
fn describe_toml_error(err: &toml::de::Error) -> String {
    let text = err.to_string();
    let message = err.message();
    let Some(rest) = message.strip_prefix("unknown field `") else { return text.trim_end().to_owned() };
    let Some((unknown, expected)) = rest.split_once('`') else { return text.trim_end().to_owned() };
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let closest = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(unknown, k), *k))
        .min()
        .filter(|(distance, k)| *distance <= 2.max(k.len() / 4));
    match closest {
        Some((_, suggestion)) => format!("{}\n    did you mean `{suggestion}`?", text.trim_end()),
        None => text.trim_end().to_owned(),
    }
}

#[cfg(test)]
mod tests;
