//! Shutting a pool down: no new calls, calls in flight get the grace period,
//! then every worker gets the shutdown frame, then TERM, then KILL.

use super::Caller;
use std::time::{Duration, Instant};

use super::recycle::STOP_STEP;
use super::{Core, Effect, StopSignal};

pub(super) enum Shutdown {
    /// Waiting for calls in flight, until the grace deadline.
    Draining { until: Instant },
    /// Workers told to stop; the next signal goes out at `next`.
    Stopping { next: Instant, escalated: bool },
}

impl Shutdown {
    pub fn deadline(&self) -> Instant {
        match *self {
            Shutdown::Draining { until } => until,
            Shutdown::Stopping { next, .. } => next,
        }
    }

    pub fn is_stopping(&self) -> bool {
        matches!(self, Shutdown::Stopping { .. })
    }
}

impl<R: Caller> Core<R> {
    pub(super) fn begin_shutdown(&mut self, grace: Duration, now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        for queued in std::mem::take(&mut self.queue) {
            self.fail(queued.reply, self.shutting_down());
        }
        self.shutdown = Some(Shutdown::Draining { until: now + grace });
    }

    /// Moves the shutdown along once its calls are done or its current
    /// step's time is up.
    pub(super) fn advance_shutdown(&mut self, now: Instant) {
        let started = || self.workers.iter().filter(|w| w.has_started()).map(|w| w.id);
        let effects: Vec<Effect<R>> = match &mut self.shutdown {
            None => return,
            Some(Shutdown::Draining { until }) => {
                if *until > now && self.workers.iter().any(|w| w.in_flight() > 0) {
                    return;
                }
                self.shutdown = Some(Shutdown::Stopping { next: now + STOP_STEP, escalated: false });
                started().map(|worker| Effect::Stop { worker }).collect()
            }
            Some(Shutdown::Stopping { next, escalated }) if *next <= now => {
                let signal = if *escalated { StopSignal::Kill } else { StopSignal::Term };
                *escalated = true;
                *next = now + STOP_STEP;
                started().map(|worker| Effect::Signal { worker, signal }).collect()
            }
            Some(Shutdown::Stopping { .. }) => return,
        };
        self.effects.extend(effects);
    }
}
