//! The pool's decisions as a synchronous state machine. [`Core::on`] takes
//! one [`Input`] and the time it happened, updates the queue and the worker
//! table, and answers with the [`Effect`]s to carry out: start this worker,
//! send that call, signal, fail a caller. It never waits, reads a clock or
//! touches a process, so every rule below is unit-tested with a fake clock
//! and a fake router (`tests.rs`).
//!
//! The files, one rule each: `admission` (queue, routing, calls and their
//! deadlines), `startup` (batches, hello facts, profile fallback),
//! `recycle` (limits, health rounds, draining and replacing workers),
//! `backoff` (delays after crashes), `shutdown`, `report` (status).
//!
//! Owns: the queue, the worker table and every counter. Must not touch:
//! tokio, sockets or processes; `super::driver` carries the effects out.

mod admission;
mod backoff;
mod recycle;
mod report;
mod shutdown;
mod startup;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::call::{CallError, CallRequest, ErrorKind};
use super::lifecycle::{Reason, RecycleCounts, WorkerLimits};
use super::reply::Caller;
use super::routing::{Router, WorkerState, WorkerView};
use super::status::PoolFacts;
use crate::config::{PoolConfig, Profile};
use crate::worker::{Hello, StartError, WorkerSpec};
use backoff::CrashBackoff;
use shutdown::Shutdown;

/// What happened, as the driver tells the core. `R` is how a caller is
/// answered (a channel in the host, a plain value in tests).
pub(super) enum Input<R> {
    Submit {
        request: CallRequest,
        reply: R,
        /// A retry: keep it off this worker, where the last attempt failed.
        avoid: Option<u32>,
    },
    /// A call the core sent ([`Effect::Call`]) has its outcome.
    Finished(Completion),
    /// A worker the core started ([`Effect::Start`]) said hello, or failed.
    Started { id: u32, outcome: Result<WorkerReady, StartError> },
    /// A worker process is gone.
    Exited {
        id: u32,
        /// "exited with status 3", "killed by signal 9 (SIGKILL)", ...
        status: String,
    },
    /// The periodic health round: each live worker's memory and the last
    /// ping it answered.
    Health(Vec<Sample>),
    /// Time passed: deadlines up to now are due ([`Core::next_deadline`]).
    Tick,
    /// Stop taking calls; let calls in flight finish for up to `grace`.
    Shutdown { grace: Duration },
}

/// How a call the core sent ([`Effect::Call`]) ended.
#[derive(Clone, Debug)]
pub(super) struct Completion {
    pub worker: u32,
    pub request_id: u64,
    pub tool: String,
    /// `None` for a call that succeeded.
    pub error: Option<CallError>,
    pub latency: Duration,
    /// The call was abandoned at its deadline ([`Effect::Abandon`]).
    pub timed_out: bool,
    /// False when the worker died before it took the call (it waited in
    /// reserve): the call is placed again, and counts as neither served
    /// nor failed.
    pub started: bool,
}

/// A worker that said hello.
#[derive(Clone, Debug)]
pub(super) struct WorkerReady {
    pub pid: u32,
    pub hello: Hello,
    pub rss_bytes: u64,
    pub threads: u32,
}

/// One worker's figures for a health round.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sample {
    pub worker: u32,
    pub rss_bytes: u64,
    /// Threads of the process.
    pub threads: u32,
    /// Sequence number of the last PONG.
    pub last_pong: u64,
}

/// What the driver must do.
#[derive(Debug)]
pub(super) enum Effect<R> {
    /// Start a worker process; report with [`Input::Started`].
    Start(WorkerSpec),
    /// Send a call; report with [`Input::Finished`].
    Call {
        worker: u32,
        request_id: u64,
        request: CallRequest,
        reply: R,
        timeout: Duration,
        /// How long it waited in the queue.
        queued: Duration,
        /// An idempotent call with retries left: a crash or timeout sends
        /// it back ([`Input::Submit`] with `avoid`) instead of failing.
        retry: bool,
    },
    /// Answer a caller with an error.
    Fail {
        reply: R,
        error: CallError,
    },
    /// Stop waiting for a call: it ends as timed out.
    Abandon {
        worker: u32,
        request_id: u64,
    },
    Ping {
        worker: u32,
        sequence: u64,
    },
    /// Send the shutdown frame: finish and exit.
    Stop {
        worker: u32,
    },
    /// Signal the worker's process group.
    Signal {
        worker: u32,
        signal: StopSignal,
    },
    /// Kill the worker at once.
    Kill {
        worker: u32,
    },
    /// How the pool's start went: its first worker is ready, or failed.
    Started(Result<(), StartError>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StopSignal {
    Term,
    Kill,
}

/// Where a worker is in its life. One meaning per state: only `Ready`
/// takes calls; every state after it carries why the worker is retiring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Spawned; has not said hello.
    Starting,
    /// Takes calls. `successor`: a replacement started early because this
    /// worker nears a limit it will certainly reach (calls or age), so that
    /// capacity does not dip while the replacement starts.
    Ready { successor: Option<u32> },
    /// Due for recycling, waiting for a free recycle slot
    /// (`max_concurrent_recycles`). Takes no new calls.
    Due { reason: Reason },
    /// Its replacement is starting (`None` after the replacement failed to
    /// start, until the next attempt); it finishes its calls.
    Draining { reason: Reason, replacement: Option<u32> },
    /// Told to stop: the shutdown frame, then TERM, then KILL at `next`.
    Stopping { reason: Reason, next: Instant, signals_sent: u8 },
    /// Killed at once (it overran or stopped answering). Unless a
    /// replacement was already starting for it, its exit starts one.
    Killed { reason: Reason, replaced: bool },
    /// Said hello while the pool was shutting down; the shutdown's own
    /// steps stop it.
    Unwanted,
}

struct Worker {
    id: u32,
    phase: Phase,
    /// 0 while starting.
    pid: u32,
    /// Calls sent to it and not ended, oldest first: its `threads` oldest
    /// may be running, the rest wait in reserve (`calls_in_reserve`).
    sent: VecDeque<Sent>,
    /// Calls handed to it, answered or not.
    dispatched: u64,
    served: u64,
    spawned_at: Instant,
    limits: WorkerLimits,
    /// Resident memory at the last sample.
    rss_bytes: u64,
    /// Threads of the process at the last sample.
    threads: u32,
    /// Whether the GIL is on, as its hello said.
    gil_enabled: bool,
    /// The last call that failed on it: "kind: message".
    last_error: Option<String>,
    /// Sequence number of the last PING sent.
    pings_sent: u64,
    /// A call on it ended `worker_crashed`: its connection is gone, so it
    /// takes no new call (each would fail at once, without running) while
    /// its exit is awaited.
    lost: bool,
}

/// A call on a worker.
struct Sent {
    request_id: u64,
    timeout: Duration,
    /// When it is abandoned. Set once the call may have started: a call in
    /// reserve waits behind others, and its time does not run yet.
    deadline: Option<Instant>,
}

impl Worker {
    /// Calls on it, running or in reserve.
    fn in_flight(&self) -> u32 {
        self.sent.len() as u32
    }

    fn has_started(&self) -> bool {
        self.phase != Phase::Starting
    }

    /// Said hello and is not being stopped: it serves calls, or finishes
    /// the ones it has.
    fn is_serving(&self) -> bool {
        !self.lost && matches!(self.phase, Phase::Ready { .. } | Phase::Due { .. } | Phase::Draining { .. })
    }

    fn router_state(&self) -> WorkerState {
        match self.phase {
            Phase::Starting => WorkerState::Starting,
            Phase::Ready { .. } if !self.lost => WorkerState::Ready,
            _ => WorkerState::Draining,
        }
    }

    fn state_name(&self) -> &'static str {
        match self.phase {
            _ if self.lost => "stopping",
            Phase::Starting => "starting",
            Phase::Ready { .. } => "ready",
            Phase::Due { .. } | Phase::Draining { .. } => "draining",
            Phase::Stopping { .. } | Phase::Killed { .. } | Phase::Unwanted => "stopping",
        }
    }
}

struct Queued<R> {
    request: CallRequest,
    reply: R,
    deadline: Instant,
    enqueued_at: Instant,
    /// A worker not to place it on (where its last attempt failed).
    avoid: Option<u32>,
}

/// One pool's state. See the module doc.
pub(super) struct Core<R> {
    config: PoolConfig,
    /// The profile workers start with: the configured one, or `process`
    /// once a thread pool fell back.
    profile: Profile,
    /// Why the pool fell back to the process profile.
    fallback: Option<String>,
    /// The pool's position in the config, which names its sockets.
    index: usize,
    socket_dir: PathBuf,
    router: Box<dyn Router>,
    workers: Vec<Worker>,
    /// Reused for every decision.
    views: Vec<WorkerView>,
    queue: VecDeque<Queued<R>>,
    /// Calls in flight by deadline: (deadline, request id, worker id).
    call_deadlines: BTreeSet<(Instant, u64, u32)>,
    /// Tools the workers announced, once one is ready.
    tools: Option<Vec<String>>,
    /// Tools the workers declared idempotent: retried after a crash.
    idempotent: Vec<String>,
    next_worker_id: u32,
    next_request_id: u64,
    /// The pool's start is not reported yet (no worker was ready).
    start_unreported: bool,
    /// Initial workers not started yet (startup batches).
    unstarted: u32,
    /// Workers of the current startup batch that have not reported.
    batch_pending: Vec<u32>,
    next_batch_at: Option<Instant>,
    backoff: CrashBackoff,
    /// When each delayed replacement of a crashed worker is due.
    replacements_due: Vec<Instant>,
    served: u64,
    failed: u64,
    /// Failed calls by kind, whether a worker or the pool failed them.
    errors: BTreeMap<ErrorKind, u64>,
    crashes: u64,
    restarts: u64,
    recycles: RecycleCounts,
    /// What the last worker that said hello reported.
    facts: Option<PoolFacts>,
    /// Warnings given once per pool, so a recycling pool does not repeat them.
    warned_gil: bool,
    warned_thread_safety: bool,
    next_ping: Instant,
    shutdown: Option<Shutdown>,
    effects: Vec<Effect<R>>,
}

impl<R: Caller> Core<R> {
    /// A pool whose first startup batch is starting: drain the effects.
    pub fn new(config: PoolConfig, index: usize, socket_dir: PathBuf, router: Box<dyn Router>, now: Instant) -> Self {
        let mut core = Core {
            profile: config.profile,
            fallback: None,
            index,
            socket_dir,
            router,
            workers: Vec::new(),
            views: Vec::new(),
            queue: VecDeque::new(),
            call_deadlines: BTreeSet::new(),
            tools: None,
            idempotent: Vec::new(),
            next_worker_id: 0,
            next_request_id: 1,
            start_unreported: true,
            unstarted: config.size,
            batch_pending: Vec::new(),
            next_batch_at: None,
            backoff: CrashBackoff::default(),
            replacements_due: Vec::new(),
            served: 0,
            failed: 0,
            errors: BTreeMap::new(),
            crashes: 0,
            restarts: 0,
            recycles: RecycleCounts::default(),
            facts: None,
            warned_gil: false,
            warned_thread_safety: false,
            next_ping: now + config.lifecycle.ping_interval,
            shutdown: None,
            effects: Vec::new(),
            config,
        };
        core.start_batch(now);
        core
    }

    /// Takes `input`, which happened at `now`; returns what to do.
    pub fn on(&mut self, input: Input<R>, now: Instant) -> std::vec::Drain<'_, Effect<R>> {
        match input {
            Input::Submit { request, reply, avoid } => self.submit(request, reply, avoid, now),
            Input::Finished(call) => self.finished(call, now),
            Input::Started { id, outcome } => self.started(id, outcome, now),
            Input::Exited { id, status } => self.exited(id, &status, now),
            Input::Health(samples) => self.health_round(&samples, now),
            Input::Tick => {}
            Input::Shutdown { grace } => self.begin_shutdown(grace, now),
        }
        self.run_due(now);
        self.effects.drain(..)
    }

    /// Effects left by [`Core::new`] or [`Core::recycle`].
    pub fn effects(&mut self) -> std::vec::Drain<'_, Effect<R>> {
        self.effects.drain(..)
    }

    /// The earliest moment at which an [`Input::Tick`] has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.queue.front().map(|q| q.deadline),
            self.call_deadlines.first().map(|(deadline, _, _)| *deadline),
            self.replacements_due.iter().min().copied(),
            self.next_batch_at,
            self.shutdown.as_ref().map(Shutdown::deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// True once the pool has shut down and no worker process is left.
    pub fn is_stopped(&self) -> bool {
        self.shutdown.as_ref().is_some_and(Shutdown::is_stopping) && self.workers.is_empty()
    }

    /// Whatever is due by `now`: expired queue entries and calls, delayed
    /// replacements, the next startup batch, the shutdown's next step.
    fn run_due(&mut self, now: Instant) {
        self.expire_queue(now);
        self.expire_calls(now);
        self.start_due_replacements(now);
        if self.next_batch_at.is_some_and(|at| at <= now) {
            self.next_batch_at = None;
            if self.shutdown.is_none() {
                self.start_batch(now);
            }
        }
        self.advance_shutdown(now);
    }

    fn worker(&self, id: u32) -> Option<&Worker> {
        self.workers.iter().find(|w| w.id == id)
    }

    fn worker_mut(&mut self, id: u32) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|w| w.id == id)
    }

    /// Calls each worker serves at once.
    fn threads(&self) -> u32 {
        match self.profile {
            Profile::Process => 1,
            Profile::Thread => self.config.threads_per_worker,
        }
    }

    /// Calls each worker may hold beyond those it runs. Only process
    /// workers hold calls in reserve: their one thread takes calls in the
    /// order sent, so the core knows which has started.
    fn reserve(&self) -> u32 {
        match self.profile {
            Profile::Process => self.config.calls_in_reserve,
            Profile::Thread => 0,
        }
    }
}
