//! Hostile: names a worker that cannot take the request. The request's tool
//! picks the mistake: `unknown` (an id not in the pool), `draining`,
//! `starting` or `full` (the first such worker); `ordinary` is routed
//! least-loaded, and any other tool gets an id not in the pool.

use pitboss_guest::{Decision, PoolInfo, RequestView, Router, WorkerState, WorkerView};

struct BadDecision;

impl Router for BadDecision {
    fn init(_pool: PoolInfo) -> Result<Self, String> {
        Ok(BadDecision)
    }

    fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Decision {
        let target = match request.tool.as_str() {
            "draining" => workers.iter().find(|w| w.state == WorkerState::Draining),
            "starting" => workers.iter().find(|w| w.state == WorkerState::Starting),
            "full" => workers.iter().find(|w| w.in_flight >= w.capacity),
            "ordinary" => return pitboss_guest::decide_least_loaded(workers),
            _ => None,
        };
        Decision::Worker(target.map_or(u32::MAX, |w| w.id))
    }
}

pitboss_guest::export_router!(BadDecision);
