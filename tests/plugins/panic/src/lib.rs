//! Hostile: panics in `route` for the tool `attack` (a trap in the host's
//! eyes); other tools are routed least-loaded.

use pitboss_guest::{Decision, PoolInfo, RequestView, Router, WorkerView};

struct Panics;

impl Router for Panics {
    fn init(_pool: PoolInfo) -> Result<Self, String> {
        Ok(Panics)
    }

    fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Decision {
        if request.tool != "attack" {
            return pitboss_guest::decide_least_loaded(workers);
        }

        panic!("test plugin panics on purpose (tool {})", request.tool);
    }
}

pitboss_guest::export_router!(Panics);
