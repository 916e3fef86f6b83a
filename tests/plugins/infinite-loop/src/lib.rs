//! Hostile: never returns from `route` for the tool `attack` (other tools
//! are routed least-loaded). The host's deadline or fuel must stop it.

use pitboss_guest::{Decision, PoolInfo, RequestView, Router, WorkerView};

struct Spin;

impl Router for Spin {
    fn init(_pool: PoolInfo) -> Result<Self, String> {
        Ok(Spin)
    }

    fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Decision {
        if request.tool != "attack" {
            return pitboss_guest::decide_least_loaded(workers);
        }

        let mut counter: u64 = 0;
        loop {
            counter = std::hint::black_box(counter.wrapping_add(workers.len() as u64));
        }
    }
}

pitboss_guest::export_router!(Spin);
