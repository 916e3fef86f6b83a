//! Policy runtime: compiles WebAssembly policy components, sandboxes them,
//! and runs their calls with a native fallback.
//!
//! Owns: the one wasmtime [`PolicyEngine`] (epoch ticker, on-disk compile
//! cache, WASI linker with no capabilities), loaded [`RouterPolicy`]
//! versions, the per-pool [`RouterSlot`] a new version is published
//! through (with its history, `last_good` and circuit breaker), the gated
//! swap pipeline ([`swap_router`]: checks, `init`, replay of the pool's
//! recent decisions, promotion), and [`RouterInstance`], the warm instance a
//! pool's dispatcher owns and calls for every request. Also the two stateless kinds:
//! [`ConfigRules`] (which configs a site accepts; [`check_config`]) and
//! [`CompatRules`] (which Python libraries are safe in which profile).
//!
//! Must not touch: worker processes, queues or sockets. A pool hands in
//! snapshots ([`WorkerView`], [`RequestView`]) and gets a [`Decision`] back;
//! what happens next is the pool's business.

mod compat_rules;
mod component;
mod config_rules;
pub mod contract;
mod convert;
mod engine;
mod fault;
mod guest_log;
mod meta;
mod nonblocking_io;
mod replay;
mod router;
mod rules;
mod simulate;
mod slot;
mod source;
mod swap;
mod vetting;

pub use crate::config::PolicyLimits;
pub use crate::pool::least_loaded as native_least_loaded;
pub use compat_rules::{CompatRules, Finding, Level, Recommendation};
pub use config_rules::{check_config, check_config_with, ConfigRules};
pub use contract::{Decision, PoolInfo, Profile, RequestView, WorkerState, WorkerView};
pub use engine::{CompiledComponent, PolicyEngine};
pub use fault::{FaultKind, PolicyFault};
pub use meta::PluginMeta;
pub use replay::{DecisionLog, DecisionRecord, Divergence, ReplayReport, DECISION_LOG_CAPACITY};
pub use router::{Routed, RouterInstance, RouterPolicy, RouterStats, RouterStatsSnapshot, VersionUsage};
pub use rules::RULES_LIMITS;
pub use simulate::{simulate, ScenarioReport, Simulation, SimulationReport};
pub use slot::{PolicyChanges, PolicyVersion, Rollback, RouterSlot};
pub use source::{PolicySource, BUILTIN_COMPAT_RULES, BUILTIN_CONFIG_RULES, BUILTIN_ROUTERS};
pub use swap::{load_gate, swap_router, Candidate, SwapOptions, SwapReport, SwapStage};
pub use vetting::{CONTRACT_PACKAGE, CONTRACT_VERSION, MAX_COMPONENT_BYTES};
