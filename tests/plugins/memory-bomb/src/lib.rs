//! Hostile: allocates without bound in `route` for the tool `attack`
//! (other tools are routed least-loaded). The memory cap must stop it.

use pitboss_guest::{Decision, PoolInfo, RequestView, Router, WorkerView};

struct Bomb {
    hoard: Vec<Vec<u8>>,
}

impl Router for Bomb {
    fn init(_pool: PoolInfo) -> Result<Self, String> {
        Ok(Bomb { hoard: Vec::new() })
    }

    fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Decision {
        if request.tool != "attack" {
            return pitboss_guest::decide_least_loaded(workers);
        }

        loop {
            self.hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}

pitboss_guest::export_router!(Bomb);
