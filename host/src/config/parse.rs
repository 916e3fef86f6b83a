//! Turning the TOML text into a [`Config`]: the `[host]` table, each
//! `[[pool]]` (or the legacy single-pool form), defaults, and each pool's
//! interpreter. Every problem is collected; none stops the reading.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::read::Table;
use super::{
    default_policy_cache, AdminAddress, Config, ConfigError, Diagnostic, Enforcement, HostConfig, Interpreter,
    Lifecycle, PolicyLimits, PoolConfig, Profile, DEFAULT_API_ADDRESS, DEFAULT_COMPAT_RULES, DEFAULT_CONFIG_RULES,
    DEFAULT_ROUTER, LEGACY_POOL,
};

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
    let run_dir = raw.string("run_dir").map(|dir| base.join(dir)).unwrap_or_else(default_run_dir);
    HostConfig {
        admin_address: admin_address(raw, base, &run_dir, api_address),
        run_dir,
        api_address,
        policy_cache: raw.string("policy_cache").map(|dir| base.join(dir)).or_else(default_policy_cache),
        metrics_address: raw.string("metrics").and_then(|text| match text.parse() {
            Ok(address) => Some(address),
            Err(_) => {
                raw.problem("metrics", format!("`{text}` is not an address; write e.g. \"127.0.0.1:9464\""));
                None
            }
        }),
        shutdown_grace: raw.duration("shutdown_grace").unwrap_or(Duration::from_secs(10)),
        config_rules: raw
            .string("config_rules")
            .map_or_else(|| DEFAULT_CONFIG_RULES.to_owned(), |p| policy_ref(p, base)),
        compat_rules: raw
            .string("compat_rules")
            .map_or_else(|| DEFAULT_COMPAT_RULES.to_owned(), |p| policy_ref(p, base)),
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
        decision_budget: limits.duration("decision_budget").unwrap_or(defaults.decision_budget),
        rollback_after_faults: limits.count("rollback_after_faults").unwrap_or(defaults.rollback_after_faults),
        rollback_window: limits.duration("rollback_window").unwrap_or(defaults.rollback_window),
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
        router: raw.string("router").map_or_else(|| DEFAULT_ROUTER.to_owned(), |p| policy_ref(p, base)),
        router_options: raw.string_map("router_options"),
        router_watch: raw.boolean("router_watch").unwrap_or(false),
        router_limits,
        env: raw.string_map("env"),
        args: raw.strings("args"),
        startup_timeout: raw.duration("startup_timeout").unwrap_or(Duration::from_secs(30)),
        request_timeout: raw.duration("request_timeout").unwrap_or(Duration::from_secs(60)),
        queue_limit: raw.count::<u64>("queue_limit").map_or(1000, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        queue_timeout: raw.duration("queue_timeout").unwrap_or(Duration::from_secs(30)),
        retries: raw.count("retries").unwrap_or(0),
        session_idle: raw.duration("session_idle").unwrap_or(Duration::from_secs(30 * 60)),
        threads_per_worker,
        calls_in_reserve: raw.count("calls_in_reserve").unwrap_or(0),
        fallback_profile: raw.choice("fallback_profile", "a profile", &Profile::CHOICES),
        thread_safety_checks: raw.boolean("thread_safety_checks").unwrap_or(false),
        lifecycle: lifecycle(&mut raw),
        extra: Vec::new(),
    };
    if pool.router_watch && pool.router.starts_with("builtin:") {
        let message = format!(
            "watches a component file, but the router is `{}`, compiled into pitboss; name a .wasm file as the router or drop router_watch",
            pool.router
        );
        raw.problem("router_watch", message);
    }
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

/// A policy reference with a relative component path resolved against the
/// config's folder, like every other path in the file; `builtin:NAME` and
/// an empty value (refused when the policy loads) stay as written.
fn policy_ref(written: String, base: &Path) -> String {
    if written.is_empty() || written.starts_with("builtin:") {
        return written;
    }
    base.join(written).display().to_string()
}

/// `admin_address`: a socket path, or a TCP address that
/// `admin_allow_tcp = true` accepts and that is not the callers' address.
fn admin_address(raw: &mut Table, base: &Path, run_dir: &Path, api_address: SocketAddr) -> AdminAddress {
    let allow_tcp = raw.boolean("admin_allow_tcp").unwrap_or(false);
    let default = || AdminAddress::Unix(default_admin_address(run_dir));
    let Some(text) = raw.string("admin_address") else {
        return default();
    };
    match AdminAddress::parse(&text, base) {
        Ok(AdminAddress::Tcp(address)) if address == api_address => {
            raw.problem(
                "admin_address",
                format!(
                    "`{text}` is the api_address: callers must not reach the Admin service; give it its own address"
                ),
            );
            default()
        }
        Ok(AdminAddress::Tcp(_)) if !allow_tcp => {
            raw.problem(
                "admin_address",
                format!(
                    "`{text}` is a TCP address, and anyone who can reach it can recycle workers and swap policies; \
                     set `admin_allow_tcp = true` in [host] to accept that, or give a Unix socket path (the \
                     default is RUN_DIR/admin.sock)"
                ),
            );
            default()
        }
        Ok(address) => address,
        Err(message) => {
            raw.problem("admin_address", message);
            default()
        }
    }
}

/// Where a host's admin socket is when `admin_address` is not set.
pub fn default_admin_address(run_dir: &Path) -> PathBuf {
    run_dir.join("admin.sock")
}

/// The run directory when `run_dir` is not set.
pub fn default_run_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => Path::new(&dir).join("pitboss"),
        None => std::env::temp_dir().join(format!("pitboss-{}", nix::unistd::getuid())),
    }
}
