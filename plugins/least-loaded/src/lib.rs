//! `builtin:least-loaded`, pitboss's default router: the ready worker with
//! the lowest in-flight/capacity, the lowest id among equals (so light load
//! keeps the same workers warm); `queue` when every worker is full,
//! starting or draining.

use pitboss_guest::{Decision, PoolInfo, RequestView, Router, WorkerView};

struct LeastLoaded;

impl Router for LeastLoaded {
    fn init(_pool: PoolInfo) -> Result<Self, String> {
        Ok(LeastLoaded)
    }

    fn route(&mut self, _request: &RequestView, workers: &[WorkerView]) -> Decision {
        pitboss_guest::decide_least_loaded(workers)
    }
}

pitboss_guest::export_router!(LeastLoaded);
