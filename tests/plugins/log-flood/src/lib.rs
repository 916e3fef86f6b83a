//! Hostile: for the tool `attack`, prints in a tight loop and never
//! returns; other tools are routed least-loaded. The host must keep
//! its log readable (rate limit) and stop the call (deadline).

use pitboss_guest::{Decision, PoolInfo, RequestView, Router, WorkerView};

struct Flood;

impl Router for Flood {
    fn init(_pool: PoolInfo) -> Result<Self, String> {
        Ok(Flood)
    }

    fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Decision {
        if request.tool != "attack" {
            return pitboss_guest::decide_least_loaded(workers);
        }

        let mut line: u64 = 0;
        loop {
            println!("flooding the host log for {}: line {line}", request.tool);
            eprintln!("and stderr too: line {line}");
            line += 1;
        }
    }
}

pitboss_guest::export_router!(Flood);
