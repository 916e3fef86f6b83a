//! The pool's status, built from the core's own counts.

use super::Caller;
use std::time::Instant;

use super::{Core, Worker};
use crate::pool::status::{PoolStatus, WorkerStatus};

impl<R: Caller> Core<R> {
    pub fn status(&self, now: Instant) -> PoolStatus {
        let threads = self.threads();
        let running = |w: &Worker| w.in_flight().min(threads);
        let count = |name: &str| self.workers.iter().filter(|w| w.state_name() == name).count() as u32;
        PoolStatus {
            name: self.config.name.clone(),
            profile: self.profile.to_string(),
            threads_per_worker: self.threads(),
            calls_in_reserve: self.reserve(),
            fallback: self.fallback.clone(),
            size: self.config.size,
            ready: self.workers.iter().filter(|w| w.is_serving()).count() as u32,
            starting: count("starting"),
            draining: count("draining"),
            in_flight: self.workers.iter().map(running).sum(),
            reserved: self.workers.iter().map(|w| w.in_flight() - running(w)).sum(),
            queued: self.queue.len() as u32,
            capacity: self.workers.iter().filter(|w| w.is_serving()).count() as u32 * self.threads(),
            served: self.served,
            failed: self.failed,
            errors: self.errors.clone(),
            crashes: self.crashes,
            restarts: self.restarts,
            recycles: self.recycles.clone(),
            degraded: self.backoff.degraded(!self.replacements_due.is_empty()),
            router: self.router.report(),
            facts: self.facts.clone(),
            workers: self
                .workers
                .iter()
                .map(|w| WorkerStatus {
                    id: w.id,
                    pid: w.pid,
                    state: w.state_name(),
                    ready: w.is_serving(),
                    in_flight: running(w),
                    reserved: w.in_flight() - running(w),
                    capacity: self.threads(),
                    served: w.served,
                    rss_bytes: w.rss_bytes,
                    threads: w.threads,
                    gil_enabled: w.gil_enabled,
                    last_error: w.last_error.clone(),
                    age: now.duration_since(w.spawned_at),
                })
                .collect(),
        }
    }
}
