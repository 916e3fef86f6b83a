//! The swappable slot a pool reads its live routing policy from.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::RouterPolicy;

/// Holds one pool's live router version. Publishing is one atomic pointer
/// store; each [`super::RouterInstance`] compares pointers before every
/// decision and rebuilds itself on the new version, so no request ever sees
/// a half-installed policy.
pub struct RouterSlot {
    live: ArcSwap<RouterPolicy>,
}

impl RouterSlot {
    pub fn new(policy: Arc<RouterPolicy>) -> Arc<Self> {
        Arc::new(RouterSlot { live: ArcSwap::new(policy) })
    }

    /// The version new decisions use.
    pub fn current(&self) -> Arc<RouterPolicy> {
        self.live.load_full()
    }

    /// Makes `policy` live for every later decision; returns the version it
    /// replaced.
    pub fn publish(&self, policy: Arc<RouterPolicy>) -> Arc<RouterPolicy> {
        self.live.swap(policy)
    }

    pub(super) fn is_current(&self, policy: &Arc<RouterPolicy>) -> bool {
        Arc::ptr_eq(&self.live.load(), policy)
    }
}
