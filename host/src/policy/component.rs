//! What every kind of policy component shares: compiling and linking it
//! against the sandbox, and stores with the limits armed. Routers keep one
//! warm instance (`router.rs`); rules get a fresh one per call (`rules.rs`).
//!
//! Must not bind any world's exports or decide what a fault means: each
//! kind does that itself.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use wasmtime::component::InstancePre;
use wasmtime::Store;

use super::engine::{PolicyEngine, PolicyState, Sandbox, EPOCH_TICK};
use super::guest_log::LogCounters;
use super::meta::PluginMeta;
use super::vetting::{self, CONTRACT_PACKAGE, CONTRACT_VERSION};
use crate::config::PolicyLimits;

/// A compiled component linked against the sandbox, exports not yet bound.
pub(super) struct Linked {
    pub(super) meta: PluginMeta,
    pub(super) pre: InstancePre<PolicyState>,
    pub(super) from_cache: bool,
}

/// Checks `wasm` ([`vetting`]), compiles it (or takes it from the cache),
/// checks its memory needs against `limits`, and links it: it may import
/// only WASI 0.2 and the shared pitboss types.
pub(super) fn link(engine: &PolicyEngine, wasm: &[u8], limits: &PolicyLimits) -> Result<Linked> {
    vetting::check_component(wasm)?;
    let meta = PluginMeta::of(wasm);
    let compiled = engine.compile(wasm, &meta.sha256)?;
    vetting::check_resources(&compiled.component, limits)?;
    let pre = engine.linker().instantiate_pre(&compiled.component).map_err(|err| {
        anyhow!(
            "{err:#}\nA policy may import only WASI 0.2 and {CONTRACT_PACKAGE}@{CONTRACT_VERSION}; build it with pitboss-guest"
        )
    })?;
    Ok(Linked { meta, pre, from_cache: compiled.from_cache })
}

/// A fresh store under `limits`, armed for instantiation (the init
/// deadline); its output goes to the host log as `label`.
pub(super) fn store(
    engine: &PolicyEngine,
    label: &str,
    limits: &PolicyLimits,
    log: Arc<LogCounters>,
    sandbox: Sandbox,
) -> Store<PolicyState> {
    let mut store = Store::new(engine.engine(), PolicyState::new(label, limits, log, sandbox));
    store.limiter(|state| &mut state.memory);
    arm(&mut store, limits.init_deadline, limits.fuel_per_call);
    store
}

/// Re-arms the per-call limits: a store's epoch deadline and fuel are
/// consumed by each call, and a fresh store's deadline is already due.
pub(super) fn arm(store: &mut Store<PolicyState>, deadline: Duration, fuel: u64) {
    let ticks = deadline.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) + 1;
    store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
    store.set_fuel(fuel).expect("fuel metering is enabled on the policy engine");
    store.data_mut().memory.refused = false;
}
