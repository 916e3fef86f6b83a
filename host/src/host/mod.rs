//! [`Host`]: the running pitboss, embeddable in a Rust program. Starts every
//! configured pool behind its routing policy, runs calls, shuts down.
//!
//! Owns: the run directory (its lock, worker records, sockets), the policy
//! engine, the worker-spawning thread and the pools. Must not touch: the
//! network (the `api` module serves a Host) or command-line concerns.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

mod metrics;
mod preflight;
mod rules;
mod watch;

pub use preflight::preflight;
pub use rules::RulesKind;
pub use watch::WATCH_INTERVAL;

use std::sync::{Arc, Mutex};

use crate::config::{Config, PoolConfig};
use crate::policy::{
    swap_router, Candidate, PluginMeta, PolicyEngine, PolicySource, PolicyVersion, PoolInfo, Rollback, RouterInstance,
    RouterPolicy, RouterSlot, SwapOptions, SwapReport, BUILTIN_COMPAT_RULES, BUILTIN_CONFIG_RULES,
};
use crate::pool::{
    AdminError, CallError, CallOutput, CallRequest, CallStream, ErrorKind, Pool, PoolServices, PoolStatus,
};
use crate::worker::{Spawner, WorkerRecords, MAX_REQUEST_ID_BYTES, MAX_SESSION_BYTES};
pub use metrics::METRICS_CONTENT_TYPE;
use rules::{HostRules, RulesSlot};

/// A running pitboss: every pool of a [`Config`], each behind its routing
/// policy. Everything the CLI and the gRPC API do goes through one; the
/// crate's front page shows it embedded.
pub struct Host {
    config: Config,
    pools: BTreeMap<String, ServedPool>,
    engine: PolicyEngine,
    /// `router_watch` tasks, stopped at shutdown.
    watchers: Vec<tokio::task::JoinHandle<()>>,
    rules: Mutex<HostRules>,
    request_ids: RequestIds,
    metrics: metrics::CallMetrics,
    _lock: Flock<File>,
}

/// Request ids for calls that come without one: this host's prefix and a
/// counter, unique within the run and cheap to make.
struct RequestIds {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    fn new(run_id: &str) -> Self {
        // The run id is pid and start time: its hash tells two runs' ids apart.
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(run_id);
        RequestIds { prefix: format!("{:08x}", hash as u32), next: std::sync::atomic::AtomicU64::new(1) }
    }

    /// `request`'s id, made now if the caller gave none.
    fn assign(&self, request: &mut CallRequest) {
        if request.request_id.is_none() {
            let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            request.request_id = Some(format!("{}-{n}", self.prefix));
        }
    }
}

/// Which policy a history is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    /// A pool's router.
    Router,
    /// The host's config or compat rules.
    Rules(RulesKind),
}

/// One policy's versions: the live one and those live before it.
#[derive(Clone, Debug)]
pub struct PoolPolicies {
    /// The pool, for a router; empty for the host-wide rules.
    pub pool: String,
    pub kind: PolicyKind,
    /// Newest first: `history[0]` is live.
    pub history: Vec<PolicyVersion>,
    /// Whether there is a version to roll back to.
    pub can_roll_back: bool,
}

/// A running pool and the slot its live routing policy is read from.
struct ServedPool {
    pool: Pool,
    router: Arc<RouterSlot>,
}

impl Host {
    /// Starts every pool and waits until each has a ready worker (the rest
    /// keep starting in the background; [`Host::stats`] counts them). Must
    /// run inside a tokio runtime. On any failure, whatever started is
    /// stopped again and the error says what failed.
    pub async fn start(config: Config) -> Result<Host> {
        let run_dir = &config.host.run_dir;
        fs::create_dir_all(run_dir)
            .with_context(|| format!("cannot create the run directory {}", run_dir.display()))?;
        let _ = fs::set_permissions(run_dir, fs::Permissions::from_mode(0o700));
        let lock = lock_run_dir(run_dir)?;

        let run_id =
            format!("{}-{}", std::process::id(), SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_nanos());
        let request_ids = RequestIds::new(&run_id);
        let records = WorkerRecords::open(run_dir, run_id)
            .with_context(|| format!("cannot use the run directory {}", run_dir.display()))?;
        let swept = records.sweep().context("sweeping workers of an earlier run")?;
        if swept > 0 {
            tracing::warn!(swept, "killed workers left behind by an earlier run of this run directory");
        }
        let socket_dir = run_dir.join("sockets");
        fs::create_dir_all(&socket_dir).with_context(|| format!("cannot create {}", socket_dir.display()))?;

        let engine = PolicyEngine::new(config.host.policy_cache.clone())?;
        preflight::preflight(&engine, &config)?;
        let started_with = |spec: &str, builtins| -> Result<RulesSlot> {
            let wasm = PolicySource::parse_from(spec, builtins)?.read()?;
            Ok(RulesSlot::started_with(spec, &PluginMeta::of(&wasm)))
        };
        let rules = Mutex::new(HostRules {
            config: started_with(&config.host.config_rules, BUILTIN_CONFIG_RULES)?,
            compat: started_with(&config.host.compat_rules, BUILTIN_COMPAT_RULES)?,
        });
        let services = PoolServices {
            spawner: Spawner::start(tokio::runtime::Handle::current()).context("cannot start the worker spawner")?,
            records,
            socket_dir,
        };

        let mut pools = BTreeMap::new();
        for (index, pool_config) in config.pools.iter().enumerate() {
            let started = async {
                let (router, instance) = start_router(&engine, pool_config)?;
                let pool = Pool::start(pool_config.clone(), index, Box::new(instance), services.clone()).await?;
                anyhow::Ok(ServedPool { pool, router })
            };
            match started.await {
                Ok(served) => {
                    tracing::info!(pool = %pool_config.name, size = pool_config.size, "pool serving; the rest of its workers keep starting");
                    pools.insert(pool_config.name.clone(), served);
                }
                Err(err) => {
                    for served in pools.values() {
                        served.pool.shutdown(Duration::ZERO).await;
                    }
                    return Err(err.context(format!("pool `{}` did not start", pool_config.name)));
                }
            }
        }
        let watchers = config
            .pools
            .iter()
            .filter(|pool| pool.router_watch)
            .filter_map(|pool| {
                let PolicySource::File(path) = PolicySource::parse(&pool.router).ok()? else { return None };
                let slot = pools.get(&pool.name)?.router.clone();
                let (info, limits) = (PoolInfo::from(pool), pool.router_limits.clone());
                Some(watch::spawn(path, engine.clone(), slot, info, limits))
            })
            .collect();
        Ok(Host { config, pools, engine, watchers, rules, request_ids, metrics: Default::default(), _lock: lock })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs one call on `pool`. The call gets a request id unless it has
    /// one (see [`CallRequest::request_id`]); a failure carries it.
    /// Dropping the future before the answer cancels the call: a queued
    /// call never runs, a running one is told (`context.cancelled()`).
    pub async fn execute(&self, pool: &str, mut request: CallRequest) -> Result<CallOutput, CallError> {
        let (started, tool) = (std::time::Instant::now(), request.tool.clone());
        let outcome = match self.admit(pool, &mut request) {
            Ok(served) => served.pool.execute(request).await,
            Err(error) => Err(error),
        };
        self.metrics.record(pool, &tool, &outcome, started.elapsed());
        outcome
    }

    /// Runs one call on `pool` whose answer streams: the chunks a generator
    /// tool yields, as it yields them. Reading the stream slowly slows the
    /// generator (16 chunks at most are in flight); dropping it before its
    /// end stops the generator.
    ///
    /// ```no_run
    /// # async fn run(host: &pitboss::Host) -> Result<(), pitboss::CallError> {
    /// let mut chunks = host.execute_stream("default", pitboss::CallRequest::json("ticks", r#"{"n": 3}"#));
    /// while let Some(chunk) = chunks.next().await {
    ///     println!("{}", String::from_utf8_lossy(&chunk?.payload));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn execute_stream(&self, pool: &str, mut request: CallRequest) -> CallStream {
        self.metrics.record_stream(pool, &request.tool, self.pools.contains_key(pool));
        match self.admit(pool, &mut request) {
            Ok(served) => served.pool.execute_stream(request),
            Err(error) => CallStream::failed(error),
        }
    }

    /// Gives `request` its id and finds its pool; a request the worker
    /// protocol cannot carry, or for a pool that does not exist, is refused
    /// here with an error that carries the id.
    fn admit(&self, pool: &str, request: &mut CallRequest) -> Result<&ServedPool, CallError> {
        self.request_ids.assign(request);
        let refused =
            |kind, message| CallError { request_id: request.request_id.clone(), ..CallError::new(kind, message) };
        let too_long = |what: &str, len: usize, max: usize| {
            refused(ErrorKind::BadArguments, format!("the {what} is {len} bytes long; at most {max} are allowed"))
        };
        if let Some(id) = request.request_id.as_deref().filter(|id| id.len() > MAX_REQUEST_ID_BYTES) {
            return Err(too_long("request id", id.len(), MAX_REQUEST_ID_BYTES));
        }
        if let Some(session) = request.session.as_deref().filter(|key| key.len() > MAX_SESSION_BYTES) {
            return Err(too_long("session key", session.len(), MAX_SESSION_BYTES));
        }
        self.pools.get(pool).ok_or_else(|| refused(ErrorKind::UnknownPool, self.unknown_pool(pool)))
    }

    /// Recycles worker `worker` of `pool` the way the lifecycle limits do:
    /// it takes no new calls, its replacement starts, and it stops once the
    /// replacement is ready and its own calls are done.
    pub async fn recycle(&self, pool: &str, worker: u32) -> Result<(), AdminError> {
        match self.pools.get(pool) {
            Some(served) => served.pool.recycle(worker).await,
            None => Err(AdminError::NotFound(self.unknown_pool(pool))),
        }
    }

    /// Runs `candidate` through the swap pipeline for `pool`'s router
    /// ([`crate::policy::swap_router`]: checks, `init`, replay of the pool's
    /// recent decisions) on a blocking thread, never on a dispatcher, and
    /// unless it is refused or a dry run, makes it live in one atomic step;
    /// the pool routes with it from its next decision on. Calls in flight
    /// and queued are not disturbed. A refusal is in the report, and leaves
    /// the live version in place.
    ///
    /// ```no_run
    /// use pitboss::policy::{Candidate, SwapOptions};
    ///
    /// # async fn run(host: &pitboss::Host) -> anyhow::Result<()> {
    /// let wasm = std::fs::read("my_router.wasm")?;
    /// let candidate = Candidate { label: "my_router.wasm".to_owned(), wasm };
    /// let report = host.swap_router("default", candidate, SwapOptions::default()).await?;
    /// match report.refused {
    ///     Some((stage, why)) => eprintln!("refused at {stage:?}: {why}"),
    ///     None => println!("live after {:?}", report.elapsed),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn swap_router(
        &self,
        pool: &str,
        candidate: Candidate,
        options: SwapOptions,
    ) -> Result<SwapReport, AdminError> {
        let served = self.pools.get(pool).ok_or_else(|| AdminError::NotFound(self.unknown_pool(pool)))?;
        let config = self.pool_config(pool);
        let (limits, info) = (config.router_limits.clone(), PoolInfo::from(config));
        let (engine, slot) = (self.engine.clone(), served.router.clone());
        tokio::task::spawn_blocking(move || swap_router(&engine, &slot, &info, limits, candidate, &options))
            .await
            .map_err(|err| AdminError::Refused(format!("the swap stopped: {err}")))
    }

    /// Puts back the routing policy `pool`'s live one replaced; `by` names
    /// who asked, for the history.
    pub fn rollback_router(&self, pool: &str, by: &str) -> Result<Rollback, AdminError> {
        let served = self.pools.get(pool).ok_or_else(|| AdminError::NotFound(self.unknown_pool(pool)))?;
        let rollback =
            served.router.rollback(format!("rollback by {by}")).map_err(|err| AdminError::Refused(err.to_string()))?;
        tracing::warn!(
            pool,
            restored = %rollback.restored.label(),
            restored_plugin = %rollback.restored.meta(),
            replaced = %rollback.replaced.label(),
            replaced_plugin = %rollback.replaced.meta(),
            by,
            "routing policy rolled back"
        );
        Ok(rollback)
    }

    /// Each pool's routing policy history, live version first, in pool
    /// name order.
    pub fn router_policies(&self) -> Vec<PoolPolicies> {
        self.pools
            .iter()
            .map(|(name, served)| PoolPolicies {
                pool: name.clone(),
                kind: PolicyKind::Router,
                history: served.router.history(),
                can_roll_back: served.router.has_last_good(),
            })
            .collect()
    }

    /// Every policy's history: each pool's router, then the host-wide
    /// config rules and compat rules (with an empty `pool`).
    pub fn policies(&self) -> Vec<PoolPolicies> {
        let mut all = self.router_policies();
        let mut rules = self.lock_rules();
        for kind in [RulesKind::Config, RulesKind::Compat] {
            let slot = rules.slot(kind);
            all.push(PoolPolicies {
                pool: String::new(),
                kind: PolicyKind::Rules(kind),
                history: slot.history(),
                can_roll_back: slot.can_roll_back(),
            });
        }
        all
    }

    /// Checks `candidate` as the host's `kind` rules: loaded and
    /// statically checked like a router, then the running config is checked
    /// under it, and a candidate under which it would be invalid is
    /// refused. Unless refused or a dry run, it becomes the live version.
    pub async fn swap_rules(
        &self,
        kind: RulesKind,
        candidate: Candidate,
        options: SwapOptions,
    ) -> Result<SwapReport, AdminError> {
        let (engine, config, check_options) = (self.engine.clone(), self.config.clone(), options.clone());
        let checked = tokio::task::spawn_blocking(move || {
            rules::check_candidate(&engine, &config, kind, candidate, &check_options)
        })
        .await;
        let (mut report, version) =
            checked.map_err(|err| AdminError::Refused(format!("the rules check stopped: {err}")))?;
        if let (Some(version), false) = (version, options.dry_run) {
            rules::promote(self.lock_rules().slot(kind), kind, version, &mut report, &options.requested_by);
        }
        Ok(report)
    }

    /// Puts back the `kind` rules the live ones replaced; returns the
    /// labels of the restored and the replaced versions.
    pub fn rollback_rules(&self, kind: RulesKind, by: &str) -> Result<(String, String), AdminError> {
        let rolled = self.lock_rules().slot(kind).rollback(kind, format!("rollback by {by}"));
        let (restored, replaced) = rolled.map_err(AdminError::Refused)?;
        tracing::warn!(kind = kind.as_str(), %restored, %replaced, by, "rules rolled back");
        Ok((restored, replaced))
    }

    fn lock_rules(&self) -> std::sync::MutexGuard<'_, HostRules> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pool_config(&self, pool: &str) -> &PoolConfig {
        self.config.pools.iter().find(|p| p.name == pool).expect("every served pool is configured")
    }

    fn unknown_pool(&self, pool: &str) -> String {
        let known: Vec<&str> = self.pools.keys().map(String::as_str).collect();
        format!("no pool named `{pool}`; the pools are: {}", known.join(", "))
    }

    /// Every pool's state, in name order.
    pub async fn stats(&self) -> Vec<PoolStatus> {
        let mut all = Vec::new();
        for served in self.pools.values() {
            all.extend(served.pool.status().await);
        }
        all
    }

    /// Every metric in the Prometheus text exposition format (content type
    /// [`METRICS_CONTENT_TYPE`]), as `[host] metrics` serves it; for a
    /// program that embeds the host and serves its own `/metrics`.
    pub async fn metrics(&self) -> String {
        let policies = self
            .pools
            .iter()
            .map(|(name, served)| metrics::PoolPolicyUsage {
                pool: name.clone(),
                changes: served.router.changes(),
                versions: served.router.version_usage(),
            })
            .collect();
        self.metrics.encode(metrics::Snapshot { pools: self.stats().await, policies })
    }

    /// One pool's state.
    pub async fn pool_stats(&self, pool: &str) -> Result<PoolStatus, AdminError> {
        let served = self.pools.get(pool).ok_or_else(|| AdminError::NotFound(self.unknown_pool(pool)))?;
        served.pool.status().await.ok_or_else(|| AdminError::Refused(format!("pool `{pool}` has stopped")))
    }

    /// Stops taking calls, lets calls in flight finish within the
    /// configured grace period, then stops every worker. Returns when no
    /// worker process is left.
    pub async fn shutdown(&self) {
        for watcher in &self.watchers {
            watcher.abort();
        }
        let grace = self.config.host.shutdown_grace;
        let stops: Vec<_> = self.pools.values().map(|served| served.pool.shutdown(grace)).collect();
        for stop in stops {
            stop.await;
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for watcher in &self.watchers {
            watcher.abort();
        }
    }
}

/// Loads a pool's configured router into the slot the pool reads it from,
/// and the pool's warm instance of it.
fn start_router(engine: &PolicyEngine, pool: &PoolConfig) -> Result<(Arc<RouterSlot>, RouterInstance)> {
    let source = PolicySource::parse(&pool.router).with_context(|| format!("pool.{}.router", pool.name))?;
    let slot = RouterSlot::new(&pool.name, RouterPolicy::load(engine, &source, pool.router_limits.clone())?);
    let instance = RouterInstance::new(slot.clone(), PoolInfo::from(pool))
        .map_err(|fault| anyhow!("routing policy {source} refused pool `{}`: {fault}", pool.name))?;
    Ok((slot, instance))
}

/// One host per run directory: a second one would sweep the first one's
/// workers.
fn lock_run_dir(run_dir: &std::path::Path) -> Result<Flock<File>> {
    let path = run_dir.join("host.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            let _ = fs::write(&path, format!("{}\n", std::process::id()));
            Ok(lock)
        }
        Err((_, _)) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "the run directory {} is in use by another pitboss (pid {}); stop it or set a different host.run_dir",
                run_dir.display(),
                holder.trim()
            )
        }
    }
}
