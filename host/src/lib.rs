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
//! - [`pool`]: each pool's state machine (queue, routing, timeouts,
//!   recycling, restarts) and the plain types a [`pool::Router`] sees;
//!   [`policy`] builds on these, not the other way round.
//! - `worker`: Python processes, the framed protocol, their lifecycle.
//! - [`host`]: [`Host`], which starts all of the above and runs calls; a Rust
//!   program can embed it.
//! - [`api`] and [`cli`]: the gRPC service and the command line, on top of
//!   a [`Host`].
//!
//! # Embedding
//!
//! A Rust program can run the pools itself, with no gRPC in between
//! (`examples/embed.rs` is a complete one):
//!
//! ```no_run
//! use pitboss::{CallRequest, Config, Host};
//!
//! # async fn run() -> anyhow::Result<()> {
//! let host = Host::start(Config::load("pitboss.toml".as_ref())?).await?;
//! let answer = host.execute("default", CallRequest::json("add", r#"{"a": 2, "b": 3}"#)).await?;
//! assert_eq!(&answer.payload[..], b"5");
//! for pool in host.stats().await {
//!     println!("{}: {}/{} ready, {:.0}% busy", pool.name, pool.ready, pool.size, pool.utilisation() * 100.0);
//! }
//! host.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod api;
#[doc(hidden)]
pub mod cli;
pub mod config;
pub mod host;
pub mod policy;
pub mod pool;
pub mod python;
mod worker;

pub use api::Client;
pub use config::Config;
pub use host::{Host, METRICS_CONTENT_TYPE};
pub use pool::{
    AdminError, CallError, CallOutput, CallRequest, CallStream, ErrorKind, PoolStatus, StreamChunk, WorkerStatus,
};
pub use worker::ContentType;
/// What /proc says about a worker process, for programs that watch a host's
/// workers (its tests check for orphans and memory with these).
pub use worker::{process_start_time, resident_bytes};
