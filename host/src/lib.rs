//! pitboss: runs pools of Python worker processes for programs that are not
//! Python, and takes every scheduling decision through a WebAssembly policy
//! that a site can swap while the host runs.
//!
//! Modules, in the direction data flows:
//! - [`config`]: the TOML file, turned into a typed, checked [`config::Config`].
//! - [`policy`]: the wasmtime engine, compiled policy components, their
//!   sandbox limits and the swappable slot each pool reads its policy from.
//! - [`python`]: what each pool's interpreter is and has installed; feeds
//!   the compat rules in [`policy`].
//! - [`pool`]: one dispatcher per pool: queue, routing, timeouts, restarts.
//! - [`worker`]: Python processes, the framed protocol, their lifecycle.
//! - [`host`]: [`Host`], which starts all of the above and runs calls; a Rust
//!   program can embed it.
//! - [`api`] and [`cli`]: the gRPC service and the command line, on top of
//!   a [`Host`].

pub mod api;
pub mod cli;
pub mod config;
pub mod host;
pub mod policy;
pub mod pool;
pub mod python;
pub mod worker;

pub use host::Host;
