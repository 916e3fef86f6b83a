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

mod diagnostic;
mod invariants;
mod policy_limits;
mod read;
mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use diagnostic::{Diagnostic, ExtraSetting, SettingValue, Severity};
pub use policy_limits::{default_policy_cache, PolicyLimits};
use read::Table;
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
    /// Where compiled policy components are cached; `None` disables it.
    pub policy_cache: Option<PathBuf>,
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
/// Top-level keys that mark Snakepit's legacy single-pool form.
const LEGACY_KEYS: [&str; 2] = ["pool_size", "adapter"];

impl Config {
    /// Reads and parses the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            source: path.to_owned(),
            problems: vec![Diagnostic::error("", format!("cannot read it: {err}"))],
        })?;
        Config::parse(&text, path)
    }

    /// Parses config text as if it were the file `path` (relative paths
    /// resolve against its folder). Checks syntax, types and units and
    /// reports every problem at once; the semantic rules run later
    /// (`policy::check_config`).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError { source: path.to_owned(), problems };
        let document: toml::Table = text
            .parse()
            .map_err(|err: toml::de::Error| fail(vec![Diagnostic::error("", err.to_string().trim_end())]))?;
        // Absolute, so that paths keep their meaning in workers, which run in
        // this folder.
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = std::path::absolute(folder)
            .map_err(|err| fail(vec![Diagnostic::error("", format!("cannot resolve the config's folder: {err}"))]))?;

        let mut top = Table::new("", document);
        let mut host_table = top.table("host");
        let host_python = host_table.string("python").map(|p| base.join(p));
        let host = host_config(&mut host_table, &base);
        top.problems.append(&mut host_table.problems);

        let mut notes = Vec::new();
        let mut pools = Vec::new();
        match top.take("pool") {
            Some(value) => {
                for key in LEGACY_KEYS {
                    if !top.has(key) {
                        continue;
                    }
                    top.problem(key, "belongs to the legacy single-pool form, which cannot be mixed with [[pool]] tables; move it into a [[pool]] table");
                    top.take(key);
                }
                for (index, table) in pool_tables(value, &mut top) {
                    pools.push(read_pool(table, index, None, &base, host_python.as_deref(), &mut top.problems));
                }
            }
            None if LEGACY_KEYS.iter().any(|key| top.has(key)) => {
                notes.push(
                    Diagnostic::info(
                        format!("pool.{LEGACY_POOL}"),
                        "the legacy single-pool form (top-level `pool_size`, `adapter`) became one process pool named \"default\"",
                    )
                    .with_hint("write it as a [[pool]] table with name = \"default\"; `pool_size` is `size` there"),
                );
                let rest = top.take_rest();
                pools.push(read_pool(rest, 0, Some(LEGACY_POOL), &base, host_python.as_deref(), &mut top.problems));
            }
            None => {}
        }
        let extra = top.finish();
        if top.problems.is_empty() {
            Ok(Config { source: path.to_owned(), host, pools, extra, notes })
        } else {
            Err(fail(top.problems))
        }
    }

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

/// `[[pool]]` tables with their index; anything else is a problem.
fn pool_tables(value: toml::Value, top: &mut Table) -> Vec<(usize, toml::Table)> {
    let toml::Value::Array(items) = value else {
        top.problem("pool", "must be [[pool]] tables");
        return Vec::new();
    };
    let mut tables = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match item {
            toml::Value::Table(table) => tables.push((index, table)),
            _ => top.problem(&format!("pool[{index}]"), "must be a table"),
        }
    }
    tables
}

fn host_config(raw: &mut Table, base: &Path) -> HostConfig {
    let api_text = raw.string("api_address").unwrap_or_else(|| DEFAULT_API_ADDRESS.to_owned());
    let api_address = api_text.parse().unwrap_or_else(|_| {
        raw.problem("api_address", format!("`{api_text}` is not an address; write e.g. \"{DEFAULT_API_ADDRESS}\""));
        DEFAULT_API_ADDRESS.parse().expect("the default address parses")
    });
    HostConfig {
        run_dir: raw.string("run_dir").map(|dir| base.join(dir)).unwrap_or_else(default_run_dir),
        api_address,
        policy_cache: raw
            .string("policy_cache")
            .map(|dir| base.join(dir))
            .or_else(default_policy_cache),
        shutdown_grace: raw.duration("shutdown_grace").unwrap_or(Duration::from_secs(10)),
        config_rules: raw.string("config_rules").unwrap_or_else(|| DEFAULT_CONFIG_RULES.to_owned()),
        compat_rules: raw.string("compat_rules").unwrap_or_else(|| DEFAULT_COMPAT_RULES.to_owned()),
        compat_enforce: raw
            .choice("compat_enforce", "an enforcement", &[("warn", Enforcement::Warn), ("deny", Enforcement::Deny)])
            .unwrap_or(Enforcement::Warn),
        extra: raw.finish(),
    }
}

/// One pool table, or the top level of the legacy form (`legacy` names the
/// pool; its size is `pool_size`). Problems go to `problems`.
fn read_pool(
    entries: toml::Table,
    index: usize,
    legacy: Option<&str>,
    base: &Path,
    host_python: Option<&Path>,
    problems: &mut Vec<Diagnostic>,
) -> PoolConfig {
    let written_name = match entries.get("name") {
        Some(toml::Value::String(name)) if !name.is_empty() => Some(name.clone()),
        _ => None,
    };
    let label = match legacy.map(str::to_owned).or(written_name) {
        Some(name) => format!("pool.{name}."),
        None => format!("pool[{index}]."),
    };
    let mut raw = Table::new(label, entries);
    let name = match legacy {
        Some(name) => name.to_owned(),
        None => raw.string("name").unwrap_or_else(|| {
            if raw.problems.is_empty() {
                raw.problem("name", "is missing: every pool needs the name callers use");
            }
            String::new()
        }),
    };
    let adapter = raw.string("adapter").unwrap_or_else(|| {
        raw.problem("adapter", "is missing: name the Python module (or module:Class) the workers serve");
        String::new()
    });
    let profile = raw.choice("profile", "a profile", &Profile::CHOICES).unwrap_or(Profile::Process);
    let size = raw.count(if legacy.is_some() { "pool_size" } else { "size" }).unwrap_or_else(default_pool_size);
    let threads_per_worker = raw.count("threads_per_worker").unwrap_or(match profile {
        Profile::Process => 1,
        Profile::Thread => 4,
    });
    let python = resolve_interpreter(raw.string("python").map(|p| base.join(p)).as_deref(), host_python);
    let defaults = PolicyLimits::default();
    let mut limits = raw.table("router_limits");
    let router_limits = PolicyLimits {
        call_deadline: limits.duration("call_deadline").unwrap_or(defaults.call_deadline),
        init_deadline: limits.duration("init_deadline").unwrap_or(defaults.init_deadline),
        fuel_per_call: limits.count("fuel").unwrap_or(defaults.fuel_per_call),
        max_memory_bytes: limits
            .size("max_memory")
            .map_or(defaults.max_memory_bytes, |b| usize::try_from(b).unwrap_or(usize::MAX)),
        log_lines_per_second: limits.count("log_lines_per_second").unwrap_or(defaults.log_lines_per_second),
    };
    raw.absorb("router_limits", limits);
    let mut pool = PoolConfig {
        name,
        profile,
        size,
        adapter,
        python,
        python_path: raw.strings("python_path").iter().map(|p| base.join(p)).collect(),
        working_dir: base.to_owned(),
        router: raw.string("router").unwrap_or_else(|| DEFAULT_ROUTER.to_owned()),
        router_options: raw.string_map("router_options"),
        router_limits,
        env: raw.string_map("env"),
        args: raw.strings("args"),
        startup_timeout: raw.duration("startup_timeout").unwrap_or(Duration::from_secs(30)),
        request_timeout: raw.duration("request_timeout").unwrap_or(Duration::from_secs(60)),
        queue_limit: raw.count::<u64>("queue_limit").map_or(1000, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        queue_timeout: raw.duration("queue_timeout").unwrap_or(Duration::from_secs(30)),
        threads_per_worker,
        fallback_profile: raw.choice("fallback_profile", "a profile", &Profile::CHOICES),
        thread_safety_checks: raw.boolean("thread_safety_checks").unwrap_or(false),
        lifecycle: lifecycle(&mut raw),
        extra: Vec::new(),
    };
    pool.extra = raw.finish();
    problems.append(&mut raw.problems);
    pool
}

fn lifecycle(raw: &mut Table) -> Lifecycle {
    let defaults = Lifecycle::default();
    Lifecycle {
        worker_ttl: raw.duration_or_never("worker_ttl"),
        worker_max_requests: raw.count("worker_max_requests"),
        worker_max_rss: raw.size("worker_max_rss"),
        recycle_jitter: raw.float("recycle_jitter").unwrap_or(defaults.recycle_jitter),
        max_concurrent_recycles: raw.count("max_concurrent_recycles").unwrap_or(defaults.max_concurrent_recycles),
        startup_batch_size: raw.count("startup_batch_size").unwrap_or(defaults.startup_batch_size),
        startup_batch_delay: raw.duration("startup_batch_delay").unwrap_or(defaults.startup_batch_delay),
        ping_interval: raw.duration("ping_interval").unwrap_or(defaults.ping_interval),
        max_missed_pings: raw.count("max_missed_pings").unwrap_or(defaults.max_missed_pings),
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

#[cfg(test)]
mod tests;
