//! Correct but slow: every decision burns about 300,000 iterations of
//! arithmetic (a few hundred microseconds), well inside the call deadline
//! and fuel but over a tight `decision_budget`, so a swap to it must be
//! refused at the replay gate's latency check.

use pitboss_guest::{Decision, PoolInfo, RequestView, Router, WorkerView};

struct Slow;

impl Router for Slow {
    fn init(_pool: PoolInfo) -> Result<Self, String> {
        Ok(Slow)
    }

    fn route(&mut self, _request: &RequestView, workers: &[WorkerView]) -> Decision {
        let mut x = 0u64;
        for i in 0..300_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        std::hint::black_box(x);
        pitboss_guest::decide_least_loaded(workers)
    }
}

pitboss_guest::export_router!(Slow);
