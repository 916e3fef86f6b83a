//! The one wasmtime engine of a pitboss process: its configuration, the
//! epoch ticker that enforces call deadlines, the WASI linker with no
//! capabilities, and the on-disk cache of compiled components.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::guest_log::{GuestLog, LogCounters};
use super::{nonblocking_io, router};
use crate::config::PolicyLimits;

/// How often the epoch advances: the resolution of call deadlines.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Shared handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct PolicyEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: Engine,
    linker: Linker<PolicyState>,
    cache_dir: Option<PathBuf>,
    compilations: AtomicU64,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// A compiled component, ready to link.
pub struct CompiledComponent {
    pub component: Component,
    /// True when it came from the disk cache rather than the compiler.
    pub from_cache: bool,
}

impl PolicyEngine {
    /// Builds the engine. Compiled components are cached under `cache_dir`
    /// (created if missing); `None` compiles every load.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true).consume_fuel(true);
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        nonblocking_io::add_to_linker(&mut linker)?;
        router::add_to_linker(&mut linker)?;

        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the policy cache directory {}", dir.display()))?;
        }

        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), ticker_stop.clone())?;

        Ok(PolicyEngine {
            inner: Arc::new(EngineInner { engine, linker, cache_dir, compilations: AtomicU64::new(0), ticker_stop }),
        })
    }

    pub(super) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(super) fn linker(&self) -> &Linker<PolicyState> {
        &self.inner.linker
    }

    /// How many times this engine ran the compiler (cache hits excluded).
    pub fn compilations(&self) -> u64 {
        self.inner.compilations.load(Ordering::Relaxed)
    }

    /// Compiles `wasm`, or loads it from the cache, keyed by the bytes'
    /// `sha256` (hex, as [`super::PluginMeta`] has it) and the engine's
    /// compatibility hash (so a wasmtime upgrade or a config change never
    /// loads a stale artifact).
    pub fn compile(&self, wasm: &[u8], sha256: &str) -> Result<CompiledComponent> {
        let Some(path) = self.cache_path(sha256) else {
            return self.compile_fresh(wasm).map(|component| CompiledComponent { component, from_cache: false });
        };
        if path.exists() {
            // SAFETY: the cache directory holds only artifacts this engine
            // configuration serialised, under a name derived from their source
            // and the engine's compatibility hash. A corrupt or foreign file
            // is rejected by wasmtime's header checks and recompiled below.
            #[allow(unsafe_code)]
            let cached = unsafe { Component::deserialize_file(&self.inner.engine, &path) };
            match cached {
                Ok(component) => return Ok(CompiledComponent { component, from_cache: true }),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "discarding unreadable cached component")
                }
            }
        }
        let component = self.compile_fresh(wasm)?;
        if let Err(err) = write_atomically(&path, &component.serialize()?) {
            tracing::warn!(path = %path.display(), error = %err, "cannot cache compiled component; it will be recompiled next start");
        }
        Ok(CompiledComponent { component, from_cache: false })
    }

    fn compile_fresh(&self, wasm: &[u8]) -> Result<Component> {
        self.inner.compilations.fetch_add(1, Ordering::Relaxed);
        Component::new(&self.inner.engine, wasm)
            .map_err(|err| anyhow::Error::from(err).context("not a valid WebAssembly component"))
    }

    fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.inner.cache_dir.as_ref()?;
        let mut engine_hash = DefaultHasher::new();
        self.inner.engine.precompile_compatibility_hash().hash(&mut engine_hash);
        let name = format!("{sha256}-{:016x}.cwasm", engine_hash.finish());
        Some(dir.join(name))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn spawn_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) -> Result<()> {
    thread::Builder::new()
        .name("pitboss-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .context("cannot start the policy deadline thread")?;
    Ok(())
}

/// What a store's clocks and random numbers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sandbox {
    /// The real clocks and random numbers.
    Live,
    /// Clocks that start at zero and tick 1 µs per reading, and a fixed
    /// byte cycle for every random source: a replay decides the same way
    /// each time it runs.
    Replay,
}

/// Per-store host state: an empty WASI context (no files, network,
/// environment or arguments; output goes to the host log) and the memory
/// limiter.
pub(super) struct PolicyState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) memory: MemoryCap,
}

impl PolicyState {
    pub(super) fn new(
        policy_label: &str,
        limits: &PolicyLimits,
        log_counters: Arc<LogCounters>,
        sandbox: Sandbox,
    ) -> Self {
        let log = GuestLog::new(policy_label, limits.log_lines_per_second, log_counters);
        let mut wasi = WasiCtx::builder();
        wasi.stdout(log.stream("stdout"))
            .stderr(log.stream("stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if sandbox == Sandbox::Replay {
            let bytes: Vec<u8> = (0..=u8::MAX).map(|b| b.wrapping_mul(167).wrapping_add(13)).collect();
            wasi.wall_clock(TickingClock::default())
                .monotonic_clock(TickingClock::default())
                .secure_random(wasmtime_wasi::Deterministic::new(bytes.clone()))
                .insecure_random(wasmtime_wasi::Deterministic::new(bytes))
                .insecure_random_seed(0x5eed);
        }
        let wasi = wasi.build();
        PolicyState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap { max_bytes: limits.max_memory_bytes, refused: false },
        }
    }
}

/// A clock for replays: zero at first, 1 µs later at every reading.
#[derive(Default)]
struct TickingClock {
    readings: AtomicU64,
}

impl TickingClock {
    fn tick(&self) -> u64 {
        self.readings.fetch_add(1, Ordering::Relaxed) * 1_000
    }
}

impl wasmtime_wasi::HostWallClock for TickingClock {
    fn resolution(&self) -> Duration {
        Duration::from_micros(1)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.tick())
    }
}

impl wasmtime_wasi::HostMonotonicClock for TickingClock {
    fn resolution(&self) -> u64 {
        1_000
    }

    fn now(&self) -> u64 {
        self.tick()
    }
}

impl PolicyState {
    pub(super) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for PolicyState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Caps each linear memory and remembers a refusal, so an allocation
/// failure (which Rust guests turn into a plain trap) is reported as
/// out-of-memory.
pub(super) struct MemoryCap {
    max_bytes: usize,
    pub(super) refused: bool,
}

/// Tables and instances a routing policy could need, with a wide margin.
const MAX_TABLE_ELEMENTS: usize = 100_000;
const MAX_INSTANCES: usize = 64;
const MAX_MEMORIES: usize = 16;

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_bytes;
        self.refused |= !allowed;
        Ok(allowed)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}
