//! Write pitboss policies in plain Rust: routers, config rules and
//! compatibility rules.
//!
//! A routing policy is a WebAssembly component that the pitboss host asks, for every
//! request, which Python worker should serve it. This crate hides the WIT
//! contract (`pitboss:policy@0.1.0`): implement [`Router`], call
//! [`export_router!`], and build with
//! `cargo build --release --target wasm32-wasip2`.
//!
//! ```no_run
//! use pitboss_guest::{Decision, PoolInfo, RequestView, Router, WorkerView};
//!
//! /// Sends each session to the same worker while it has room; everything
//! /// else goes to the least-loaded worker.
//! struct Sticky;
//!
//! impl Router for Sticky {
//!     fn init(_pool: PoolInfo) -> Result<Self, String> {
//!         Ok(Sticky)
//!     }
//!
//!     fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Decision {
//!         let preferred = request
//!             .session
//!             .as_deref()
//!             .and_then(|key| pitboss_guest::pick_by_key(key, workers));
//!         match preferred.or_else(|| pitboss_guest::least_loaded(workers)) {
//!             Some(worker) => Decision::Worker(worker.id),
//!             None => Decision::Queue,
//!         }
//!     }
//! }
//!
//! pitboss_guest::export_router!(Sticky);
//! ```
//!
//! A policy that wants to hear about finished calls also implements
//! [`CompletionHook`] and exports with `export_router!(Policy, with_completion)`;
//! the host calls `on_complete` only for plugins exported that way.
//!
//! The two other kinds of policy work the same way: implement
//! [`ConfigRules`] and call [`export_config_rules!`] for the rules a site's
//! configs must pass, or implement [`CompatRules`] and call
//! [`export_compat_rules!`] for which Python libraries are safe in which
//! profile.
//!
//! Sandbox: a policy has no filesystem, network, environment or arguments.
//! Each call runs under a deadline, a fuel budget and a memory cap; what it
//! prints goes to the host's log, rate-limited. A panic, a timeout or a
//! decision naming a worker that cannot take the request is a fault: the host
//! routes that request itself, rebuilds the instance (calling `init` again)
//! and counts the fault against the policy.

use core::cmp::Ordering;

#[doc(hidden)]
pub mod bindings {
    pub mod router {
        wit_bindgen::generate!({
            path: "../wit",
            world: "router",
            pub_export_macro: true,
            default_bindings_module: "pitboss_guest::bindings::router",
        });
    }
    pub mod completion_hook {
        wit_bindgen::generate!({
            path: "../wit",
            world: "completion-hook",
            pub_export_macro: true,
            default_bindings_module: "pitboss_guest::bindings::completion_hook",
        });
    }
    pub mod config_rules {
        wit_bindgen::generate!({
            path: "../wit",
            world: "config-rules",
            pub_export_macro: true,
            default_bindings_module: "pitboss_guest::bindings::config_rules",
            with: { "pitboss:policy/types@0.1.0": crate::bindings::router::pitboss::policy::types },
        });
    }
    pub mod compat_rules {
        wit_bindgen::generate!({
            path: "../wit",
            world: "compat-rules",
            pub_export_macro: true,
            default_bindings_module: "pitboss_guest::bindings::compat_rules",
            with: { "pitboss:policy/types@0.1.0": crate::bindings::router::pitboss::policy::types },
        });
    }
}

mod rules;
mod slots;
pub mod testing;

pub use slots::WorkerSlots;

pub use bindings::router::pitboss::policy::types::{Decision, PoolInfo, Profile, RequestView, WorkerState, WorkerView};
pub use rules::normalize_name;
pub use rules::{
    CompatRules, ConfigRules, Diagnostic, Enforcement, ExtraSetting, Finding, HostConfig, HostSettings, Level, Library,
    Machine, PoolSettings, PythonEnv, Recommendation, SettingValue, Severity,
};

/// A routing policy. One value lives per pool instance: `init` builds it,
/// `route` is then called for every request of that pool.
pub trait Router: Sized + 'static {
    /// Builds the policy for a pool. `pool.options` holds the pool's
    /// `router_options` from the host config. An error refuses the policy
    /// for this pool; say what is wrong and how to fix it.
    fn init(pool: PoolInfo) -> Result<Self, String>;

    /// Chooses where `request` goes. `workers` lists every worker of the
    /// pool in id order, including ones that cannot take work now.
    fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Decision;
}

/// The optional completion hook: exported only with
/// `export_router!(Policy, with_completion)`.
pub trait CompletionHook: Router {
    /// A call this pool routed to `worker` finished; `ok` is false for any
    /// failure; `latency_us` is measured by the host.
    fn on_complete(&mut self, worker: u32, tool: &str, ok: bool, latency_us: u64);
}

/// True when `worker` is ready and has room for one more call.
#[inline]
pub fn has_spare_capacity(worker: &WorkerView) -> bool {
    worker.state == WorkerState::Ready && worker.in_flight < worker.capacity
}

/// Orders workers by load (`in_flight / capacity`), exactly and without
/// floating point.
#[inline]
pub fn compare_load(a: &WorkerView, b: &WorkerView) -> Ordering {
    let a_load = u64::from(a.in_flight) * u64::from(b.capacity);
    let b_load = u64::from(b.in_flight) * u64::from(a.capacity);
    a_load.cmp(&b_load)
}

/// The worker with spare capacity and the lowest load; among equally loaded
/// workers the lowest id. Under light load the same few workers then stay
/// warm (awake, with hot caches) while the rest sleep, instead of every
/// call waking a worker that idled since its last turn. `None` when every
/// worker is busy, starting or draining.
pub fn least_loaded(workers: &[WorkerView]) -> Option<&WorkerView> {
    workers.iter().filter(|w| has_spare_capacity(w)).min_by(|a, b| compare_load(a, b).then(a.id.cmp(&b.id)))
}

/// The least-loaded rule as a decision: `Worker` for [`least_loaded`]'s
/// choice, `Queue` when no worker can take the request. What
/// `builtin:least-loaded` answers, and a sensible fallback for any policy.
pub fn decide_least_loaded(workers: &[WorkerView]) -> Decision {
    least_loaded(workers).map_or(Decision::Queue, |worker| Decision::Worker(worker.id))
}

/// A stable 64-bit hash (FNV-1a) of a key: the same on every host, run and
/// policy version, unlike `core::hash`'s randomised hashers.
pub fn stable_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The worker a key maps to by rendezvous hashing over the workers with
/// spare capacity: a key keeps its worker while that worker can take work,
/// and only the keys of a worker that leaves move elsewhere.
pub fn pick_by_key<'w>(key: &str, workers: &'w [WorkerView]) -> Option<&'w WorkerView> {
    let key_hash = stable_hash(key);
    workers
        .iter()
        .filter(|w| has_spare_capacity(w))
        .max_by_key(|w| mix(key_hash ^ u64::from(w.id).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// A strong 64-bit finaliser (splitmix64), so neighbouring worker ids give
/// unrelated rendezvous scores.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[doc(hidden)]
pub mod __private {
    use core::cell::RefCell;

    pub use std::string::String;
    pub use std::vec::Vec;

    /// Holds the one policy value of a component instance. Components are
    /// single-threaded, so the `Sync` promise holds.
    pub struct PolicyCell<P>(RefCell<Option<P>>);

    #[allow(unsafe_code)]
    unsafe impl<P> Sync for PolicyCell<P> {}

    // Only ever a `static`, built by the const `new`.
    #[allow(clippy::new_without_default)]
    impl<P> PolicyCell<P> {
        pub const fn new() -> Self {
            PolicyCell(RefCell::new(None))
        }

        pub fn set(&self, policy: P) {
            *self.0.borrow_mut() = Some(policy);
        }

        /// Runs `f` on the policy; `None` when `init` has not succeeded.
        pub fn with<R>(&self, f: impl FnOnce(&mut P) -> R) -> Option<R> {
            self.0.borrow_mut().as_mut().map(f)
        }
    }

    /// Copies a string into a fixed-size array, for the metadata section.
    pub const fn bytes<const N: usize>(text: &str) -> [u8; N] {
        let source = text.as_bytes();
        let mut out = [0u8; N];
        let mut i = 0;
        while i < N {
            out[i] = source[i];
            i += 1;
        }
        out
    }
}

/// Exports a [`Router`] as the component's routing policy.
///
/// `export_router!(Policy)` exports `init` and `route`;
/// `export_router!(Policy, with_completion)` also exports the completion
/// hook, for a `Policy` that implements [`CompletionHook`]. Use it once per
/// crate. It also records the crate's name and version in a
/// `pitboss-plugin` custom section, which the host shows in its logs.
#[macro_export]
macro_rules! export_router {
    ($policy:ty) => {
        const _: () = {
            $crate::__export_router_common!($policy);
            $crate::__export_router_impl!(PitbossRouterExport);
        };
    };
    ($policy:ty, with_completion) => {
        const _: () = {
            $crate::__export_router_common!($policy);

            impl $crate::bindings::completion_hook::exports::pitboss::policy::completion::Guest
                for PitbossRouterExport
            {
                fn on_complete(worker: u32, tool: $crate::__private::String, ok: bool, latency_us: u64) {
                    POLICY.with(|policy| {
                        <$policy as $crate::CompletionHook>::on_complete(policy, worker, &tool, ok, latency_us)
                    });
                }
            }

            $crate::__export_router_impl!(PitbossRouterExport);
            $crate::__export_completion_hook_impl!(PitbossRouterExport);
        };
    };
}

/// Records the crate's name and version in the `pitboss-plugin` custom
/// section, which the host shows in its logs. Every export macro uses it.
#[doc(hidden)]
#[macro_export]
macro_rules! __plugin_section {
    () => {
        const PLUGIN_ID: &str = concat!(env!("CARGO_PKG_NAME"), "@", env!("CARGO_PKG_VERSION"));
        #[used]
        #[allow(unsafe_code)]
        #[unsafe(link_section = "pitboss-plugin")]
        static PLUGIN_SECTION: [u8; PLUGIN_ID.len()] = $crate::__private::bytes(PLUGIN_ID);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_router_common {
    ($policy:ty) => {
        struct PitbossRouterExport;

        static POLICY: $crate::__private::PolicyCell<$policy> = $crate::__private::PolicyCell::new();

        $crate::__plugin_section!();

        impl $crate::bindings::router::exports::pitboss::policy::routing::Guest for PitbossRouterExport {
            fn init(pool: $crate::PoolInfo) -> Result<(), $crate::__private::String> {
                POLICY.set(<$policy as $crate::Router>::init(pool)?);
                Ok(())
            }

            fn route(
                request: $crate::RequestView,
                workers: $crate::__private::Vec<$crate::WorkerView>,
            ) -> $crate::Decision {
                POLICY
                    .with(|policy| <$policy as $crate::Router>::route(policy, &request, &workers))
                    .unwrap_or_else(|| $crate::Decision::Reject("policy used before init".into()))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: u32, in_flight: u32, capacity: u32, served: u64, state: WorkerState) -> WorkerView {
        WorkerView { id, capacity, in_flight, served, age_ms: 0, rss_bytes: 0, state }
    }

    #[test]
    fn least_loaded_compares_fractions_then_id() {
        let workers = [
            worker(0, 1, 2, 0, WorkerState::Ready),    // 1/2
            worker(1, 2, 8, 3, WorkerState::Ready),    // 1/4, served 3
            worker(2, 1, 4, 9, WorkerState::Ready),    // 1/4, served 9
            worker(3, 0, 1, 0, WorkerState::Draining), // idle but draining
            worker(4, 0, 1, 0, WorkerState::Starting), // idle but starting
        ];
        assert_eq!(least_loaded(&workers).map(|w| w.id), Some(1));

        let tied = [worker(6, 0, 1, 0, WorkerState::Ready), worker(5, 0, 1, 40, WorkerState::Ready)];
        assert_eq!(least_loaded(&tied).map(|w| w.id), Some(5), "served calls do not matter");
    }

    #[test]
    fn nothing_is_chosen_when_every_worker_is_full_or_unready() {
        let workers = [worker(0, 1, 1, 0, WorkerState::Ready), worker(1, 0, 1, 0, WorkerState::Draining)];
        assert!(least_loaded(&workers).is_none());
        assert!(pick_by_key("session", &workers).is_none());
    }

    #[test]
    fn stable_hash_is_fnv1a() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_key_keeps_its_worker_when_another_worker_leaves() {
        let all: Vec<WorkerView> = (0..8).map(|id| worker(id, 0, 1, 0, WorkerState::Ready)).collect();
        for key in ["alice", "bob", "carol", "dave", "erin"] {
            let home = pick_by_key(key, &all).unwrap().id;
            let mut others = all.clone();
            let leaving = (home + 1) % 8;
            others[leaving as usize].state = WorkerState::Draining;
            assert_eq!(pick_by_key(key, &others).unwrap().id, home, "{key}");
        }
    }

    #[test]
    fn keys_spread_over_workers() {
        let all: Vec<WorkerView> = (0..4).map(|id| worker(id, 0, 1, 0, WorkerState::Ready)).collect();
        let mut hits = [0u32; 4];
        for n in 0..400 {
            hits[pick_by_key(&format!("user-{n}"), &all).unwrap().id as usize] += 1;
        }
        assert!(hits.iter().all(|&h| h > 50), "{hits:?}");
    }
}
