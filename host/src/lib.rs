//! pitboss: runs pools of Python worker processes for programs that are not
//! Python, and takes every scheduling decision through a WebAssembly policy
//! that a site can swap while the host runs.
//!
//! Modules, in the direction data flows:
//! - [`policy`]: the wasmtime engine, compiled policy components, their
//!   sandbox limits and the swappable slot each pool reads its policy from.
//! - [`cli`]: the `pitboss` command line, on top of the library.

pub mod cli;
pub mod policy;
