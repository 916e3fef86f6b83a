//! Delays between replacements of workers that keep crashing, so a broken
//! adapter does not spin the machine, and the pool's "degraded" flag.

use super::Caller;
use std::time::{Duration, Instant};

use super::{Core, Phase};

/// Replacement delays after consecutive crashes: none for the first, then
/// doubling from this, up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Consecutive crashes from which the pool calls itself degraded.
const DEGRADED_AFTER: u32 = 3;

/// Consecutive crashes or failed starts, reset by a successful call.
#[derive(Debug, Default)]
pub(super) struct CrashBackoff {
    consecutive: u32,
}

impl CrashBackoff {
    /// Counts one more failure that needs no replacement of its own.
    pub fn note_failure(&mut self) {
        self.consecutive += 1;
    }

    /// Counts one more crash; returns how long to wait before replacing it.
    pub fn crashed(&mut self) -> Duration {
        self.note_failure();
        match self.consecutive {
            1 => Duration::ZERO,
            n => FIRST_BACKOFF.saturating_mul(1 << (n - 2).min(16)).min(MAX_BACKOFF),
        }
    }

    pub fn reset(&mut self) {
        self.consecutive = 0;
    }

    /// Whether workers are failing lately (no successful call since).
    pub fn is_failing(&self) -> bool {
        self.consecutive > 0
    }

    /// Crashing repeatedly, or waiting out a delay after a second crash.
    pub fn degraded(&self, replacements_waiting: bool) -> bool {
        self.consecutive >= DEGRADED_AFTER || replacements_waiting && self.consecutive > 1
    }
}

impl<R: Caller> Core<R> {
    /// Schedules a replacement for a crashed or unstartable worker: at once
    /// for the first crash in a row, then with doubling delays.
    pub(super) fn crashed(&mut self, now: Instant) {
        let delay = self.backoff.crashed();
        if self.backoff.degraded(false) {
            tracing::error!(pool = %self.config.name, crashes = self.backoff.consecutive, ?delay,
                "pool degraded: workers keep crashing; delaying the replacement");
        }
        self.replacements_due.push(now + delay);
    }

    /// Starts the replacements whose delay is over. A draining worker whose
    /// replacement failed to start waits for the next one.
    pub(super) fn start_due_replacements(&mut self, now: Instant) {
        let before = self.replacements_due.len();
        self.replacements_due.retain(|due| *due > now);
        for _ in self.replacements_due.len()..before {
            if self.shutdown.is_some() {
                continue;
            }
            let id = self.start_replacement(now);
            let waiting = self.workers.iter_mut().find_map(|w| match &mut w.phase {
                Phase::Draining { replacement: waiting @ None, .. } => Some(waiting),
                _ => None,
            });
            if let Some(waiting) = waiting {
                *waiting = Some(id);
            }
        }
    }
}
