//! Hostile: recurses without bound for the tool `attack` (other tools are
//! routed least-loaded). The host's stack limit must stop it.

use pitboss_guest::{Decision, PoolInfo, RequestView, Router, WorkerView};

struct Recurse;

/// Not a tail call (the result is rotated after the call returns), so
/// every level keeps a frame on the WebAssembly stack.
#[inline(never)]
fn depth(n: u64) -> u64 {
    if n == u64::MAX {
        return 0;
    }
    depth(n + 1).rotate_left(3) + n
}

impl Router for Recurse {
    fn init(_pool: PoolInfo) -> Result<Self, String> {
        Ok(Recurse)
    }

    fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Decision {
        if request.tool != "attack" {
            return pitboss_guest::decide_least_loaded(workers);
        }

        Decision::Worker(depth(workers.len() as u64) as u32)
    }
}

pitboss_guest::export_router!(Recurse);
