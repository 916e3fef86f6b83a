//! Hostile: traps in `init`, so it can never serve a pool; a swap to it
//! must be refused at the init gate.

use pitboss_guest::{Decision, PoolInfo, RequestView, Router, WorkerView};

struct InitTrap;

impl Router for InitTrap {
    fn init(pool: PoolInfo) -> Result<Self, String> {
        panic!("test plugin traps in init on purpose (pool {})", pool.name);
    }

    fn route(&mut self, _request: &RequestView, workers: &[WorkerView]) -> Decision {
        pitboss_guest::decide_least_loaded(workers)
    }
}

pitboss_guest::export_router!(InitTrap);
