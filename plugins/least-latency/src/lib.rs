//! `builtin:least-latency`: keeps an exponentially weighted moving average
//! of each worker's latency per tool (from the completion hook) and sends
//! each request to the faster of two workers with room picked at random
//! (power of two choices), so a slow or sick worker gets less traffic
//! without every request piling onto the single fastest one. A failed call
//! counts as `failure_penalty` times the worker's average, so a worker that
//! errors fast does not look fast. A worker with no figure for a tool yet
//! counts as fastest, so new workers are tried at once.
//!
//! Options (`[pool.router_options]`): `alpha` (weight of the newest
//! latency, 0 < alpha ≤ 1, default 0.3), `failure_penalty` (≥ 1, default 4).

use std::collections::HashMap;

use pitboss_guest::{has_spare_capacity, CompletionHook, Decision, PoolInfo, RequestView, Router, WorkerView};

struct LeastLatency {
    alpha: f64,
    failure_penalty: f64,
    /// Average latency in µs by worker id, then tool.
    averages: HashMap<u32, HashMap<String, f64>>,
    /// xorshift64 state: deterministic, so a replay decides the same way.
    random: u64,
}

impl Router for LeastLatency {
    fn init(pool: PoolInfo) -> Result<Self, String> {
        let option = |key: &str, default: f64| -> Result<f64, String> {
            match pool.options.iter().find(|(k, _)| k == key) {
                None => Ok(default),
                Some((_, value)) => value
                    .parse()
                    .map_err(|_| format!("router option `{key}` = `{value}` is not a number (pool {})", pool.name)),
            }
        };
        let alpha = option("alpha", 0.3)?;
        if !(alpha > 0.0 && alpha <= 1.0) {
            return Err(format!("router option `alpha` must be in (0, 1], got {alpha} (pool {})", pool.name));
        }
        let failure_penalty = option("failure_penalty", 4.0)?;
        if failure_penalty < 1.0 {
            return Err(format!(
                "router option `failure_penalty` must be ≥ 1, got {failure_penalty} (pool {})",
                pool.name
            ));
        }
        let seed =
            pool.name.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        Ok(LeastLatency { alpha, failure_penalty, averages: HashMap::new(), random: seed | 1 })
    }

    fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Decision {
        if self.averages.len() > workers.len() {
            self.averages.retain(|id, _| workers.binary_search_by_key(id, |w| w.id).is_ok());
        }
        let candidates: Vec<&WorkerView> = workers.iter().filter(|w| has_spare_capacity(w)).collect();
        let (first, second) = match candidates.len() {
            0 => return Decision::Queue,
            1 => return Decision::Worker(candidates[0].id),
            n => {
                let first = self.next_below(n);
                let second = (first + 1 + self.next_below(n - 1)) % n;
                (candidates[first], candidates[second])
            }
        };
        let cost = |w: &WorkerView| {
            let average = self.averages.get(&w.id).and_then(|tools| tools.get(&request.tool)).copied().unwrap_or(0.0);
            (average, w.in_flight * 1024 / w.capacity.max(1))
        };
        let (a, b) = (cost(first), cost(second));
        let faster = if a.0 < b.0 || (a.0 == b.0 && a.1 <= b.1) { first } else { second };
        Decision::Worker(faster.id)
    }
}

impl CompletionHook for LeastLatency {
    fn on_complete(&mut self, worker: u32, tool: &str, ok: bool, latency_us: u64) {
        let tools = self.averages.entry(worker).or_default();
        let previous = tools.get(tool).copied();
        let sample = latency_us as f64;
        let sample = if ok { sample } else { sample.max(previous.unwrap_or(sample)) * self.failure_penalty };
        let average = previous.map_or(sample, |avg| avg + self.alpha * (sample - avg));
        tools.insert(tool.to_owned(), average);
    }
}

impl LeastLatency {
    fn next_below(&mut self, n: usize) -> usize {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        (self.random % n as u64) as usize
    }
}

pitboss_guest::export_router!(LeastLatency, with_completion);

#[cfg(test)]
mod tests {
    use super::*;
    use pitboss_guest::testing::ready_workers as workers;

    fn pool(options: &[(&str, &str)]) -> PoolInfo {
        pitboss_guest::testing::pool(4, options)
    }

    fn request() -> RequestView {
        RequestView { tool: "embed".into(), session: None, payload_size: 0, metadata: Vec::new() }
    }

    #[test]
    fn a_slow_worker_gets_less_traffic() {
        let mut router = LeastLatency::init(pool(&[])).unwrap();
        let workers = workers(4);
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            let Decision::Worker(id) = router.route(&request(), &workers) else { panic!() };
            counts[id as usize] += 1;
            let latency = if id == 3 { 50_000 } else { 1_000 };
            router.on_complete(id, "embed", true, latency);
        }
        assert!(counts[3] < 4000 / 10, "the slow worker got {} of 4000: {counts:?}", counts[3]);
        assert!(counts[..3].iter().all(|n| *n > 900), "the fast ones share the rest: {counts:?}");
    }

    #[test]
    fn failures_count_against_a_worker() {
        let mut router = LeastLatency::init(pool(&[])).unwrap();
        router.on_complete(0, "embed", true, 1_000);
        router.on_complete(1, "embed", true, 1_000);
        router.on_complete(1, "embed", false, 10);
        let workers = workers(2);
        for _ in 0..20 {
            assert!(matches!(router.route(&request(), &workers), Decision::Worker(0)));
        }
    }

    #[test]
    fn bad_options_are_refused_with_the_value() {
        let error = LeastLatency::init(pool(&[("alpha", "fast")])).err().unwrap();
        assert!(error.contains("`alpha` = `fast` is not a number"), "{error}");
        let error = LeastLatency::init(pool(&[("alpha", "1.5")])).err().unwrap();
        assert!(error.contains("must be in (0, 1], got 1.5"), "{error}");
    }

    #[test]
    fn no_room_anywhere_queues() {
        let mut router = LeastLatency::init(pool(&[])).unwrap();
        let mut full = workers(2);
        full.iter_mut().for_each(|w| w.in_flight = 1);
        assert!(matches!(router.route(&request(), &full), Decision::Queue));
    }
}
