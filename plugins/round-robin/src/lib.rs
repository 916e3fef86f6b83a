//! `builtin:round-robin`: hands requests to the workers in turn, skipping
//! any that cannot take one now; `queue` when none can.

use pitboss_guest::{has_spare_capacity, Decision, PoolInfo, RequestView, Router, WorkerView};

struct RoundRobin {
    /// Id of the worker after the last one chosen: ids survive recycling
    /// while positions in the list do not.
    next_id: u32,
}

impl Router for RoundRobin {
    fn init(_pool: PoolInfo) -> Result<Self, String> {
        Ok(RoundRobin { next_id: 0 })
    }

    fn route(&mut self, _request: &RequestView, workers: &[WorkerView]) -> Decision {
        let start = workers.partition_point(|w| w.id < self.next_id);
        let (before, after) = workers.split_at(start);
        match after.iter().chain(before).find(|w| has_spare_capacity(w)) {
            Some(worker) => {
                self.next_id = worker.id.wrapping_add(1);
                Decision::Worker(worker.id)
            }
            None => Decision::Queue,
        }
    }
}

pitboss_guest::export_router!(RoundRobin);
