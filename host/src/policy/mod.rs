//! Policy runtime: compiles WebAssembly policy components, sandboxes them,
//! and runs their calls with a native fallback.
//!
//! Owns: the one wasmtime [`PolicyEngine`] (epoch ticker, on-disk compile
//! cache, WASI linker with no capabilities), loaded [`RouterPolicy`]
//! versions, the per-pool [`RouterSlot`] a new version is published
//! through, and [`RouterInstance`], the warm instance a pool's dispatcher
//! owns and calls for every request.
//!
//! Must not touch: worker processes, queues or sockets. A pool hands in
//! snapshots ([`WorkerView`], [`RequestView`]) and gets a [`Decision`] back;
//! what happens next is the pool's business.

pub mod contract;
mod engine;
mod guest_log;
mod limits;
mod meta;
mod native;
mod router;
mod slot;
mod source;

pub use engine::{CompiledComponent, PolicyEngine};
pub use limits::PolicyLimits;
pub use meta::PluginMeta;
pub use native::least_loaded as native_least_loaded;
pub use contract::{Decision, PoolInfo, Profile, RequestView, WorkerState, WorkerView};
pub use router::{
    FaultKind, PolicyFault, Routed, RouterInstance, RouterPolicy, RouterStats, RouterStatsSnapshot,
};
pub use slot::RouterSlot;
pub use source::{PolicySource, BUILTIN_ROUTERS};
