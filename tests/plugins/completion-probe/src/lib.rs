//! Exports the optional completion hook and reports what it heard: the
//! tool `report` is rejected with `completions=N ok=K`, and the tool
//! `describe` with every field of every worker view it was given, so tests
//! can check what crossed into the guest. With the pool option
//! `refuse = "yes"`, `init` refuses the pool.

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
        if request.tool == "describe" {
            let views: Vec<String> = workers
                .iter()
                .map(|w| {
                    format!(
                        "{}:{}/{} served={} age={} rss={} {:?}",
                        w.id, w.in_flight, w.capacity, w.served, w.age_ms, w.rss_bytes, w.state
                    )
                })
                .collect();
            return Decision::Reject(views.join("; "));
        }
        pitboss_guest::decide_least_loaded(workers)
    }
}

impl CompletionHook for Probe {
    fn on_complete(&mut self, _worker: u32, _tool: &str, ok: bool, _latency_us: u64) {
        self.completions += 1;
        self.ok += u64::from(ok);
    }
}

pitboss_guest::export_router!(Probe, with_completion);
