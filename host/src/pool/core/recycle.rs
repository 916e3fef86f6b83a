//! Recycling: a worker past a limit (age, calls, memory), asked to recycle,
//! overrunning or unresponsive takes no new calls; its replacement starts
//! (within `max_concurrent_recycles`) and it stops once the replacement is
//! ready and its own calls are done. Also the health round that finds such
//! workers, and what a worker's exit means.

use super::Caller;
use std::time::{Duration, Instant};

use super::{Core, Effect, Phase, Sample, StopSignal};
use crate::pool::call::AdminError;
use crate::pool::lifecycle::Reason;

/// How long a stopping worker gets after the shutdown frame, then after
/// SIGTERM, before the next step.
pub(super) const STOP_STEP: Duration = Duration::from_secs(2);

impl<R: Caller> Core<R> {
    /// Marks a worker due for recycling: it takes no new calls from now on,
    /// and drains once a recycle slot is free.
    pub(super) fn retire(&mut self, worker_id: u32, reason: Reason, now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        let Some(worker) = self.workers.iter_mut().find(|w| w.id == worker_id) else { return };
        let Phase::Ready { successor } = worker.phase else { return };
        tracing::info!(pool = %self.config.name, worker = worker_id, %reason, served = worker.served,
            rss_bytes = worker.rss_bytes, "recycling the worker");
        worker.phase = match successor {
            Some(replacement) => Phase::Draining { reason, replacement: Some(replacement) },
            None => Phase::Due { reason },
        };
        self.recycles.add(reason);
        self.advance_recycles(now);
    }

    /// Kills a worker at once (it overran or stopped answering); its exit
    /// starts the replacement unless one is already starting.
    pub(super) fn kill(&mut self, worker_id: u32, reason: Reason) {
        let Some(worker) = self.workers.iter_mut().find(|w| w.id == worker_id) else { return };
        let replaced = match worker.phase {
            Phase::Starting | Phase::Killed { .. } => return,
            Phase::Ready { successor } => successor.is_some(),
            Phase::Draining { replacement, .. } => replacement.is_some(),
            Phase::Due { .. } | Phase::Stopping { .. } | Phase::Unwanted => false,
        };
        tracing::warn!(pool = %self.config.name, worker = worker_id, pid = worker.pid, %reason, "killing the worker; a replacement starts");
        worker.phase = Phase::Killed { reason, replaced };
        self.effects.push(Effect::Kill { worker: worker_id });
        self.recycles.add(reason);
    }

    /// Moves retiring workers along: due ones start draining while recycle
    /// slots are free (their replacement starts), drained ones whose
    /// replacement is ready get the shutdown frame.
    pub(super) fn advance_recycles(&mut self, now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        let free_slots = self.free_recycle_slots();
        let due: Vec<u32> = self
            .workers
            .iter()
            .filter(|w| matches!(w.phase, Phase::Due { .. }))
            .map(|w| w.id)
            .take(free_slots as usize)
            .collect();
        for id in due {
            let replacement = self.start_replacement(now);
            if let Some(worker) = self.worker_mut(id) {
                if let Phase::Due { reason } = worker.phase {
                    worker.phase = Phase::Draining { reason, replacement: Some(replacement) };
                }
            }
        }
        let started: Vec<u32> = self.workers.iter().filter(|w| w.has_started()).map(|w| w.id).collect();
        for worker in &mut self.workers {
            let Phase::Draining { reason, replacement: Some(replacement) } = worker.phase else { continue };
            if worker.in_flight() == 0 && started.contains(&replacement) {
                self.effects.push(Effect::Stop { worker: worker.id });
                worker.phase = Phase::Stopping { reason, next: now + STOP_STEP, signals_sent: 0 };
            }
        }
    }

    /// Recycles may run side by side up to `max_concurrent_recycles`: a
    /// draining worker takes a slot, and so does one with a successor.
    fn free_recycle_slots(&self) -> u32 {
        let busy = self
            .workers
            .iter()
            .filter(|w| matches!(w.phase, Phase::Ready { successor: Some(_) } | Phase::Draining { .. }))
            .count() as u32;
        self.config.lifecycle.max_concurrent_recycles.saturating_sub(busy)
    }

    /// Starts the replacement of a worker that will soon reach a limit,
    /// when a recycle slot is free and workers are starting cleanly.
    pub(super) fn prestart_successor(&mut self, worker_id: u32, now: Instant) {
        if self.shutdown.is_some() || self.backoff.is_failing() || self.free_recycle_slots() == 0 {
            return;
        }
        if self.worker(worker_id).map(|w| w.phase) != Some(Phase::Ready { successor: None }) {
            return;
        }
        let successor = self.start_replacement(now);
        if let Some(worker) = self.worker_mut(worker_id) {
            worker.phase = Phase::Ready { successor: Some(successor) };
        }
    }

    /// Recycles one worker on an operator's request.
    pub fn recycle(&mut self, worker_id: u32, now: Instant) -> Result<(), AdminError> {
        let pool = &self.config.name;
        if self.shutdown.is_some() {
            return Err(AdminError::Refused(format!("pool `{pool}` is shutting down")));
        }
        let Some(worker) = self.worker(worker_id) else {
            let ids: Vec<String> = self.workers.iter().map(|w| w.id.to_string()).collect();
            let message = format!("pool `{pool}` has no worker {worker_id}; its workers are: {}", ids.join(", "));
            return Err(AdminError::NotFound(message));
        };
        match worker.phase {
            Phase::Starting => {
                Err(AdminError::Refused(format!("worker {worker_id} of pool `{pool}` is still starting")))
            }
            Phase::Ready { .. } => {
                self.retire(worker_id, Reason::Manual, now);
                Ok(())
            }
            Phase::Due { reason }
            | Phase::Draining { reason, .. }
            | Phase::Stopping { reason, .. }
            | Phase::Killed { reason, .. } => Err(AdminError::Refused(format!(
                "worker {worker_id} of pool `{pool}` is already being retired ({reason})"
            ))),
            Phase::Unwanted => Err(AdminError::Refused(format!("pool `{pool}` is shutting down"))),
        }
    }

    /// The periodic round: memory samples and age checks, liveness pings,
    /// and the stop steps of recycled workers.
    pub(super) fn health_round(&mut self, samples: &[Sample], now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        let ping_round = now >= self.next_ping;
        if ping_round {
            // On the schedule, not from this round: rounds come from a
            // timer of the same period, and a round a hair late pushing the
            // next ping back made every other round skip its ping (pings
            // twice the interval apart).
            self.next_ping = (self.next_ping + self.config.lifecycle.ping_interval).max(now);
        }
        let max_missed = u64::from(self.config.lifecycle.max_missed_pings);
        let mut due = Vec::new();
        let mut nearly_due = Vec::new();
        let mut unresponsive = Vec::new();
        for sample in samples {
            let Some(worker) = self.workers.iter_mut().find(|w| w.id == sample.worker && w.has_started()) else {
                continue;
            };
            worker.rss_bytes = sample.rss_bytes;
            worker.threads = sample.threads;
            match &mut worker.phase {
                Phase::Ready { .. } => {
                    let age = now.duration_since(worker.spawned_at);
                    if let Some(reason) = worker.limits.passed(age, worker.rss_bytes) {
                        due.push((worker.id, reason));
                    } else if worker.limits.ttl_nearly_reached(age) {
                        nearly_due.push(worker.id);
                    }
                }
                Phase::Stopping { next, signals_sent, .. } if now >= *next => {
                    let signal = if *signals_sent == 0 { StopSignal::Term } else { StopSignal::Kill };
                    self.effects.push(Effect::Signal { worker: worker.id, signal });
                    *signals_sent = signals_sent.saturating_add(1);
                    *next = now + STOP_STEP;
                }
                _ => {}
            }
            if ping_round && worker.is_serving() {
                let missed = worker.pings_sent.saturating_sub(sample.last_pong);
                if missed >= max_missed {
                    unresponsive.push(worker.id);
                } else {
                    worker.pings_sent += 1;
                    self.effects.push(Effect::Ping { worker: worker.id, sequence: worker.pings_sent });
                }
            }
        }
        for id in unresponsive {
            tracing::warn!(pool = %self.config.name, worker = id, missed = max_missed, "the worker stopped answering pings");
            self.kill(id, Reason::Unresponsive);
        }
        for id in nearly_due {
            self.prestart_successor(id, now);
        }
        for (id, reason) in due {
            self.retire(id, reason, now);
        }
    }

    /// A worker process is gone: recycled as planned, killed, or crashed.
    pub(super) fn exited(&mut self, id: u32, status: &str, now: Instant) {
        let Some(position) = self.workers.iter().position(|w| w.id == id) else { return };
        let worker = self.workers.remove(position);
        self.forget_calls(&worker);
        self.forget_replacement(id);
        if self.shutdown.is_some() {
            return;
        }
        let pool = &self.config.name;
        let replacement_starting = match worker.phase {
            Phase::Stopping { reason, .. } | Phase::Killed { reason, replaced: true } => {
                tracing::info!(pool = %pool, worker = id, %reason, "recycled worker {status}");
                None
            }
            Phase::Killed { reason, replaced: false } => {
                tracing::info!(pool = %pool, worker = id, %reason, "worker {status}; starting its replacement");
                self.start_replacement(now);
                None
            }
            Phase::Draining { .. } | Phase::Ready { successor: Some(_) } => Some(true),
            Phase::Starting | Phase::Ready { successor: None } | Phase::Due { .. } | Phase::Unwanted => Some(false),
        };
        if let Some(replacement_starting) = replacement_starting {
            self.crashes += 1;
            self.recycles.add(Reason::Crashed);
            tracing::warn!(pool = %self.config.name, worker = id, state = worker.state_name(), "worker {status} unexpectedly");
            if !replacement_starting {
                self.crashed(now);
            }
        }
        self.advance_recycles(now);
    }

    /// A replacement that is gone leaves the worker it was to replace
    /// waiting for the next attempt.
    pub(super) fn forget_replacement(&mut self, gone: u32) {
        for worker in &mut self.workers {
            match &mut worker.phase {
                Phase::Ready { successor } if *successor == Some(gone) => *successor = None,
                Phase::Draining { replacement, .. } if *replacement == Some(gone) => *replacement = None,
                _ => {}
            }
        }
    }
}
