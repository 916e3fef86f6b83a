//! Where a policy's WebAssembly comes from: a built-in compiled into the
//! binary (`builtin:NAME`) or a component file on disk.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

/// A policy shipped inside the `pitboss` binary.
pub struct BuiltinPlugin {
    pub name: &'static str,
    pub summary: &'static str,
    pub wasm: &'static [u8],
}

/// The built-in routers, built from `plugins/` by `host/build.rs`.
pub static BUILTIN_ROUTERS: &[BuiltinPlugin] = &[
    BuiltinPlugin {
        name: "least-loaded",
        summary: "ready worker with the lowest in-flight/capacity (the default)",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/pitboss_plugin_least_loaded.wasm")),
    },
    BuiltinPlugin {
        name: "round-robin",
        summary: "workers in turn, skipping those that cannot take a call",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/pitboss_plugin_round_robin.wasm")),
    },
    BuiltinPlugin {
        name: "session-affinity",
        summary: "the same session key to the same worker while it has room; its replacement inherits them",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/pitboss_plugin_session_affinity.wasm")),
    },
    BuiltinPlugin {
        name: "least-latency",
        summary: "the faster of two workers with room, by each worker's moving average latency per tool",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/pitboss_plugin_least_latency.wasm")),
    },
    BuiltinPlugin {
        name: "weighted-tools",
        summary: "tools pinned to worker slots by patterns in router_options (\"embed*\" = \"0-1\")",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/pitboss_plugin_weighted_tools.wasm")),
    },
];

/// The built-in config rules.
pub static BUILTIN_CONFIG_RULES: &[BuiltinPlugin] = &[BuiltinPlugin {
    name: "pool-rules",
    summary: "every semantic rule of a pitboss config (the default)",
    wasm: include_bytes!(concat!(env!("OUT_DIR"), "/pitboss_plugin_pool_rules.wasm")),
}];

/// The built-in compatibility rules.
pub static BUILTIN_COMPAT_RULES: &[BuiltinPlugin] = &[BuiltinPlugin {
    name: "compat-rules",
    summary: "the thread-safety matrix of common Python libraries (the default)",
    wasm: include_bytes!(concat!(env!("OUT_DIR"), "/pitboss_plugin_compat_rules.wasm")),
}];

const BUILTIN_PREFIX: &str = "builtin:";

/// A policy reference as written in config or on the command line, or
/// bytes handed to a swap.
#[derive(Clone)]
pub enum PolicySource {
    Builtin(&'static BuiltinPlugin),
    File(PathBuf),
    Uploaded { label: String, wasm: Arc<[u8]> },
}

impl PolicySource {
    /// Parses a router reference: `builtin:NAME` or a path to a `.wasm`
    /// component.
    pub fn parse(spec: &str) -> Result<Self> {
        Self::parse_from(spec, BUILTIN_ROUTERS)
    }

    /// Parses `builtin:NAME`, one of `builtins`, or a path to a `.wasm`
    /// component.
    pub fn parse_from(spec: &str, builtins: &'static [BuiltinPlugin]) -> Result<Self> {
        let Some(name) = spec.strip_prefix(BUILTIN_PREFIX) else {
            if spec.is_empty() {
                bail!("empty policy reference: give `builtin:NAME` or a path to a .wasm component");
            }
            return Ok(PolicySource::File(PathBuf::from(spec)));
        };
        match builtins.iter().find(|b| b.name == name) {
            Some(builtin) => Ok(PolicySource::Builtin(builtin)),
            None => {
                let known: Vec<String> = builtins.iter().map(|b| format!("{BUILTIN_PREFIX}{}", b.name)).collect();
                bail!("unknown built-in policy `{spec}`: the built-ins are {}", known.join(", "))
            }
        }
    }

    /// The component's bytes.
    pub fn read(&self) -> Result<Cow<'static, [u8]>> {
        match self {
            PolicySource::Builtin(builtin) => Ok(Cow::Borrowed(builtin.wasm)),
            PolicySource::File(path) => std::fs::read(path)
                .map(Cow::Owned)
                .with_context(|| format!("cannot read policy component {}", path.display())),
            PolicySource::Uploaded { wasm, .. } => Ok(Cow::Owned(wasm.to_vec())),
        }
    }
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySource::Builtin(builtin) => write!(f, "{BUILTIN_PREFIX}{}", builtin.name),
            PolicySource::File(path) => write!(f, "{}", path.display()),
            PolicySource::Uploaded { label, .. } => f.write_str(label),
        }
    }
}

impl fmt::Debug for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
