//! `builtin:weighted-tools`: pins tools to subsets of the pool's workers,
//! from a pattern list in `[pool.router_options]` — a small example of a
//! site-specific policy. Each option is `PATTERN = "SLOTS"`: a tool name, or
//! a prefix ending in `*`, and worker slots as `0-1`, `2` or `0,3`
//! ([`WorkerSlots`]: a recycled worker's replacement keeps its slot). The
//! longest matching pattern wins; its tool goes to the least-loaded worker
//! of those slots, and waits in the queue while they are all busy. A tool
//! no pattern matches may go to any worker.
//!
//! ```toml
//! [pool.router_options]
//! "embed*" = "0-1"   # the workers with the model loaded
//! "*" = "2-7"        # everything else stays off them
//! ```

use pitboss_guest::{decide_least_loaded, Decision, PoolInfo, RequestView, Router, WorkerSlots, WorkerView};

struct WeightedTools {
    slots: WorkerSlots,
    /// (pattern without its `*`, whether it is a prefix, slots), longest first.
    rules: Vec<(String, bool, Vec<usize>)>,
    /// Reused for the workers of the chosen slots.
    subset: Vec<WorkerView>,
}

impl Router for WeightedTools {
    fn init(pool: PoolInfo) -> Result<Self, String> {
        let slots = WorkerSlots::new(pool.size);
        let mut rules = Vec::new();
        for (pattern, spec) in &pool.options {
            let (stem, prefix) = match pattern.strip_suffix('*') {
                Some(stem) => (stem.to_owned(), true),
                None => (pattern.clone(), false),
            };
            let chosen = parse_slots(spec, slots.len())
                .map_err(|why| format!("router option `{pattern}` = `{spec}`: {why} (pool {})", pool.name))?;
            rules.push((stem, prefix, chosen));
        }
        if rules.is_empty() {
            return Err(format!(
                "pool {} gives weighted-tools no patterns: add [pool.router_options] such as \"embed*\" = \"0-1\"",
                pool.name
            ));
        }
        rules.sort_by_key(|(stem, prefix, _)| (std::cmp::Reverse(stem.len()), *prefix));
        Ok(WeightedTools { slots, rules, subset: Vec::new() })
    }

    fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Decision {
        self.slots.update(workers);
        let tool = request.tool.as_str();
        let matches = |(stem, prefix, _): &&(String, bool, Vec<usize>)| {
            if *prefix {
                tool.starts_with(stem.as_str())
            } else {
                tool == stem
            }
        };
        let Some((_, _, chosen)) = self.rules.iter().find(matches) else { return decide_least_loaded(workers) };
        self.subset.clear();
        self.subset.extend(chosen.iter().filter_map(|slot| self.slots.worker(*slot, workers)).cloned());
        decide_least_loaded(&self.subset)
    }
}

/// `0-1`, `2`, `0,3`, `0-1,4`: slot numbers below `count`.
fn parse_slots(spec: &str, count: usize) -> Result<Vec<usize>, String> {
    let mut chosen = Vec::new();
    for part in spec.split(',').map(str::trim) {
        let number = |text: &str| -> Result<usize, String> {
            let slot: usize = text.trim().parse().map_err(|_| format!("`{text}` is not a worker slot number"))?;
            if slot >= count {
                return Err(format!("slot {slot} does not exist: the pool has {count} workers, slots 0-{}", count - 1));
            }
            Ok(slot)
        };
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (number(from)?, number(to)?);
                if from > to {
                    return Err(format!("`{part}` is an empty range"));
                }
                chosen.extend(from..=to);
            }
            None => chosen.push(number(part)?),
        }
    }
    chosen.sort_unstable();
    chosen.dedup();
    Ok(chosen)
}

pitboss_guest::export_router!(WeightedTools);

#[cfg(test)]
mod tests {
    use super::*;
    use pitboss_guest::testing::ready_workers;

    fn pool(options: &[(&str, &str)]) -> PoolInfo {
        pitboss_guest::testing::pool(4, options)
    }

    fn workers() -> Vec<WorkerView> {
        ready_workers(4)
    }

    fn route(router: &mut WeightedTools, tool: &str, workers: &[WorkerView]) -> Decision {
        router.route(&RequestView { tool: tool.into(), session: None, payload_size: 0, metadata: Vec::new() }, workers)
    }

    #[test]
    fn tools_go_to_their_slots_and_wait_for_them() {
        let mut router = WeightedTools::init(pool(&[("embed*", "2-3"), ("embed_small", "1"), ("*", "0-1")])).unwrap();
        let mut workers = workers();
        assert!(matches!(route(&mut router, "embed_large", &workers), Decision::Worker(2)));
        assert!(matches!(route(&mut router, "embed_small", &workers), Decision::Worker(1)));
        assert!(matches!(route(&mut router, "add", &workers), Decision::Worker(0)));
        workers[2].in_flight = 1;
        assert!(matches!(route(&mut router, "embed_large", &workers), Decision::Worker(3)));
        workers[3].in_flight = 1;
        assert!(matches!(route(&mut router, "embed_large", &workers), Decision::Queue), "waits for its workers");
    }

    #[test]
    fn bad_patterns_are_refused_naming_the_option() {
        let error = WeightedTools::init(pool(&[("embed*", "0-9")])).err().unwrap();
        assert!(error.contains("`embed*` = `0-9`: slot 9 does not exist: the pool has 4 workers"), "{error}");
        let error = WeightedTools::init(pool(&[("embed*", "gpu")])).err().unwrap();
        assert!(error.contains("`gpu` is not a worker slot number"), "{error}");
        let error = WeightedTools::init(pool(&[])).err().unwrap();
        assert!(error.contains("no patterns"), "{error}");
    }
}
