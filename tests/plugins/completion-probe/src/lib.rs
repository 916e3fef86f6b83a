//! Exports the optional completion hook and reports what it heard: the
//! tool `report` is rejected with `completions=N ok=K`. With the pool
//! option `refuse = "yes"`, `init` refuses the pool.

use pitboss_guest::{CompletionHook, Decision, PoolInfo, RequestView, Router, WorkerView};

struct Probe {
    completions: u64,
    ok: u64,
}

impl Router for Probe {
    fn init(pool: PoolInfo) -> Result<Self, String> {
        if pool.options.iter().any(|(key, value)| key == "refuse" && value == "yes") {
            return Err(format!("completion-probe refuses pool {}", pool.name));
        }
        Ok(Probe { completions: 0, ok: 0 })
    }

    fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Decision {
        if request.tool == "report" {
            return Decision::Reject(format!("completions={} ok={}", self.completions, self.ok));
        }
        pitboss_guest::least_loaded(workers).map_or(Decision::Queue, |w| Decision::Worker(w.id))
    }
}

impl CompletionHook for Probe {
    fn on_complete(&mut self, _worker: u32, _tool: &str, ok: bool, _latency_us: u64) {
        self.completions += 1;
        self.ok += u64::from(ok);
    }
}

pitboss_guest::export_router!(Probe, with_completion);
