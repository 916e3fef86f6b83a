//! The stateless policy kinds (config rules, compat rules): a component
//! loaded once and instantiated afresh for every call, so no call sees
//! what an earlier one left behind and a fault leaves nothing to clean up.
//!
//! Owns the instance-per-call lifecycle and [`RULES_LIMITS`]. Must not know
//! a world's types: `config_rules.rs` and `compat_rules.rs` bind them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use wasmtime::component::{Instance, InstancePre};
use wasmtime::Store;

use super::component::{self, arm};
use super::engine::{PolicyEngine, PolicyState, Sandbox};
use super::fault::PolicyFault;
use super::guest_log::LogCounters;
use super::meta::PluginMeta;
use super::source::PolicySource;
use super::vetting::{CONTRACT_PACKAGE, CONTRACT_VERSION};
use crate::config::PolicyLimits;

/// Limits of every rules call: rules run once per config or pool, not per
/// request, so the deadlines are generous; fuel and memory still bound a
/// runaway plugin.
pub const RULES_LIMITS: PolicyLimits = PolicyLimits {
    call_deadline: Duration::from_secs(2),
    init_deadline: Duration::from_secs(2),
    fuel_per_call: 2_000_000_000,
    max_memory_bytes: 64 << 20,
    log_lines_per_second: 20,
    // Rules are never replayed or rolled back by a breaker.
    decision_budget: Duration::from_secs(2),
    rollback_after_faults: 0,
    rollback_window: Duration::ZERO,
};

/// A loaded rules component whose exports are reached through `I`, the
/// bindings' `GuestIndices` of its world.
pub(super) struct RulesComponent<I> {
    label: String,
    meta: PluginMeta,
    engine: PolicyEngine,
    pre: InstancePre<PolicyState>,
    indices: I,
    log: Arc<LogCounters>,
}

impl<I> RulesComponent<I> {
    /// Loads `source` as a `kind` ("config rules"): links it, finds its
    /// exports with `indices` (else says to use `export_macro`), and
    /// instantiates it once with `bind` to prove the exports' types.
    pub(super) fn load(
        engine: &PolicyEngine,
        source: &PolicySource,
        kind: &str,
        export_macro: &str,
        indices: impl FnOnce(&InstancePre<PolicyState>) -> wasmtime::Result<I>,
        bind: impl FnOnce(&I, &mut Store<PolicyState>, &Instance) -> wasmtime::Result<()>,
    ) -> Result<Self> {
        let wasm = source.read()?;
        let loaded = (|| {
            let linked = component::link(engine, &wasm, &RULES_LIMITS)?;
            let indices = indices(&linked.pre).map_err(|err| {
                anyhow!("{err:#}\nThe component is not {kind}: export it with `pitboss_guest::{export_macro}!`")
            })?;
            let component = RulesComponent {
                label: source.to_string(),
                meta: linked.meta,
                engine: engine.clone(),
                pre: linked.pre,
                indices,
                log: Arc::default(),
            };
            component.call("instantiate", bind).map_err(|fault| {
                anyhow!("the component does not instantiate as {CONTRACT_PACKAGE}@{CONTRACT_VERSION} {kind}: {fault}")
            })?;
            Ok::<_, anyhow::Error>(component)
        })();
        loaded.with_context(|| format!("cannot load {kind} {source}"))
    }

    /// Where it came from: `builtin:NAME` or the component path.
    pub(super) fn label(&self) -> &str {
        &self.label
    }

    pub(super) fn meta(&self) -> &PluginMeta {
        &self.meta
    }

    /// Runs `call` on a fresh instance under [`RULES_LIMITS`]; a trap,
    /// timeout or memory overrun comes back as a fault.
    pub(super) fn call<R>(
        &self,
        during: &str,
        call: impl FnOnce(&I, &mut Store<PolicyState>, &Instance) -> wasmtime::Result<R>,
    ) -> Result<R, PolicyFault> {
        let limits = &RULES_LIMITS;
        let mut store = component::store(&self.engine, &self.label, limits, self.log.clone(), Sandbox::Live);
        let instance =
            self.pre.instantiate(&mut store).map_err(|err| PolicyFault::from_call(&err, &store, "instantiate"))?;
        arm(&mut store, limits.call_deadline, limits.fuel_per_call);
        call(&self.indices, &mut store, &instance).map_err(|err| PolicyFault::from_call(&err, &store, during))
    }
}
