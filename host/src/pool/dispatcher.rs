//! The task behind a [`super::Pool`]: the only owner of the pool's queue,
//! worker table and router instance, driven by events. It also runs each
//! worker's life: startup in batches, liveness pings, memory samples,
//! recycling by age, calls or memory, and replacement.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, MissedTickBehavior};

use super::lifecycle::{worker_env, Reason, RecycleCounts, Retirement, Stage, WorkerLimits};
use super::{
    CallError, CallOutput, CallRequest, ErrorKind, PoolFacts, PoolServices, PoolStatus, RecycleError, WorkerStatus,
};
use crate::config::{PoolConfig, Profile};
use crate::policy::{Decision, RequestView, RouterInstance, WorkerState, WorkerView};
use crate::worker::{self, CallOutcome, StartError, WorkerExit, WorkerHandle, WorkerSpec};

/// Replacement delays after consecutive crashes: none for the first, then
/// doubling from this, up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Consecutive crashes from which the pool calls itself degraded.
const DEGRADED_AFTER: u32 = 3;
/// During shutdown: how long workers get after the shutdown frame, then
/// after SIGTERM, before the next step.
const SHUTDOWN_STEP: Duration = Duration::from_secs(2);
/// Longest gap between two housekeeping rounds (memory samples, ttl,
/// retirement steps); pings may ask for shorter.
const MAX_HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(1);

pub(super) enum Event {
    Submit {
        request: CallRequest,
        reply: oneshot::Sender<Result<CallOutput, CallError>>,
    },
    Finished {
        worker: u32,
        request_id: u64,
        deadline: Instant,
        tool: String,
        ok: bool,
        latency: Duration,
        timed_out: bool,
    },
    Started {
        id: u32,
        outcome: Result<WorkerHandle, StartError>,
    },
    Exited(WorkerExit),
    Replace,
    NextStartupBatch,
    Recycle {
        worker: u32,
        reply: oneshot::Sender<Result<(), RecycleError>>,
    },
    Status(oneshot::Sender<PoolStatus>),
    Shutdown {
        grace: Duration,
        done: oneshot::Sender<()>,
    },
}

struct Worker {
    id: u32,
    /// `None` while starting.
    handle: Option<WorkerHandle>,
    in_flight: u32,
    /// Calls handed to it, answered or not.
    dispatched: u64,
    served: u64,
    spawned_at: Instant,
    limits: WorkerLimits,
    /// Resident memory at the last sample.
    rss_bytes: u64,
    /// Sequence number of the last PING sent.
    pings_sent: u64,
    /// A replacement started early, because this worker nears a limit it
    /// will certainly reach (calls or age), so that capacity does not dip
    /// while it starts.
    successor: Option<u32>,
    /// Set once the host decided to stop it: no new calls, and its exit is
    /// not a crash.
    retirement: Option<Retirement>,
}

impl Worker {
    fn state(&self) -> WorkerState {
        match (&self.handle, &self.retirement) {
            (_, Some(_)) => WorkerState::Draining,
            (None, None) => WorkerState::Starting,
            (Some(_), None) => WorkerState::Ready,
        }
    }

    /// Said hello and is neither stopping nor killed (a draining worker
    /// still counts: it finishes its calls).
    fn alive_and_ready(&self) -> bool {
        self.handle.is_some()
            && !matches!(self.retirement.map(|r| r.stage), Some(Stage::Stopping { .. } | Stage::Killed { .. }))
    }

    fn state_name(&self) -> &'static str {
        match (&self.handle, self.retirement.map(|r| r.stage)) {
            (None, _) => "starting",
            (Some(_), None) => "ready",
            (Some(_), Some(Stage::Waiting | Stage::Draining { .. })) => "draining",
            (Some(_), Some(Stage::Stopping { .. } | Stage::Killed { .. })) => "stopping",
        }
    }
}

struct Queued {
    request: CallRequest,
    reply: oneshot::Sender<Result<CallOutput, CallError>>,
    deadline: Instant,
}

enum Shutdown {
    /// Waiting for calls in flight, until the grace deadline.
    Draining { until: Instant },
    /// Workers told to stop; next escalation at `next`.
    Stopping { next: Instant, escalated: bool },
}

struct Dispatcher {
    config: PoolConfig,
    /// The profile workers start with: the configured one, or `process`
    /// once a thread pool fell back.
    profile: Profile,
    /// Why the pool fell back to the process profile.
    fallback: Option<String>,
    index: usize,
    router: RouterInstance,
    services: PoolServices,
    /// For the dispatcher's own tasks. Weak, so that dropping every
    /// [`super::Pool`] handle ends the pool.
    events: mpsc::WeakUnboundedSender<Event>,
    exits: mpsc::UnboundedSender<WorkerExit>,
    workers: Vec<Worker>,
    views: Vec<WorkerView>,
    queue: VecDeque<Queued>,
    /// Calls in flight by deadline: (deadline, request id, worker id).
    call_deadlines: BTreeSet<(Instant, u64, u32)>,
    /// Tools the workers announced, once one is ready.
    tools: Option<Vec<String>>,
    next_worker_id: u32,
    next_request_id: u64,
    /// Until the first worker is ready: where to report the pool's start.
    starting: Option<oneshot::Sender<Result<(), StartError>>>,
    /// Initial workers not started yet (startup batches).
    unstarted: u32,
    /// Workers of the current startup batch that have not reported.
    batch_pending: Vec<u32>,
    consecutive_crashes: u32,
    replacements_due: u32,
    served: u64,
    failed: u64,
    crashes: u64,
    restarts: u64,
    recycles: RecycleCounts,
    /// What the last worker that said hello reported.
    facts: Option<PoolFacts>,
    /// Warnings given once per pool, so a recycling pool does not repeat them.
    warned_gil: bool,
    warned_thread_safety: bool,
    next_ping: Instant,
    shutdown: Option<(Shutdown, Vec<oneshot::Sender<()>>)>,
}

/// Starts the dispatcher task and its initial workers. The receiver says
/// when every initial worker is ready, or why one did not start.
pub(super) fn spawn(
    config: PoolConfig,
    index: usize,
    router: RouterInstance,
    services: PoolServices,
) -> (mpsc::UnboundedSender<Event>, oneshot::Receiver<Result<(), StartError>>) {
    let (events, incoming) = mpsc::unbounded_channel();
    let (exits, exit_events) = mpsc::unbounded_channel();
    let (started, started_rx) = oneshot::channel();
    let mut dispatcher = Dispatcher {
        profile: config.profile,
        fallback: None,
        unstarted: config.size,
        batch_pending: Vec::new(),
        recycles: RecycleCounts::default(),
        facts: None,
        warned_gil: false,
        warned_thread_safety: false,
        next_ping: Instant::now() + config.lifecycle.ping_interval,
        config,
        index,
        router,
        services,
        events: events.downgrade(),
        exits,
        workers: Vec::new(),
        views: Vec::new(),
        queue: VecDeque::new(),
        call_deadlines: BTreeSet::new(),
        tools: None,
        next_worker_id: 0,
        next_request_id: 1,
        starting: Some(started),
        consecutive_crashes: 0,
        replacements_due: 0,
        served: 0,
        failed: 0,
        crashes: 0,
        restarts: 0,
        shutdown: None,
    };
    dispatcher.start_batch();
    tokio::spawn(dispatcher.run(incoming, exit_events));
    (events, started_rx)
}

impl Dispatcher {
    async fn run(
        mut self,
        mut incoming: mpsc::UnboundedReceiver<Event>,
        mut exits: mpsc::UnboundedReceiver<WorkerExit>,
    ) {
        let period = self.config.lifecycle.ping_interval.min(MAX_HOUSEKEEPING_PERIOD);
        let mut housekeeping = tokio::time::interval(period);
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let queue_deadline = self.queue.front().map(|q| q.deadline);
            let call_deadline = self.call_deadlines.first().map(|(deadline, _, _)| *deadline);
            let shutdown_deadline = match &self.shutdown {
                Some((Shutdown::Draining { until }, _)) => Some(*until),
                Some((Shutdown::Stopping { next, .. }, _)) => Some(*next),
                None => None,
            };
            let event = tokio::select! {
                event = incoming.recv() => match event {
                    Some(event) => event,
                    None => Event::Shutdown { grace: Duration::ZERO, done: oneshot::channel().0 },
                },
                Some(exit) = exits.recv() => Event::Exited(exit),
                _ = housekeeping.tick() => {
                    self.housekeeping();
                    continue;
                }
                _ = sleep_until(call_deadline.unwrap_or_else(far_future).into()), if call_deadline.is_some() => {
                    self.expire_calls();
                    continue;
                }
                _ = sleep_until(queue_deadline.unwrap_or_else(far_future).into()), if queue_deadline.is_some() => {
                    self.expire_queue();
                    continue;
                }
                _ = sleep_until(shutdown_deadline.unwrap_or_else(far_future).into()), if shutdown_deadline.is_some() => {
                    self.advance_shutdown(true);
                    if self.shutdown_finished() { break; }
                    continue;
                }
            };
            self.handle(event);
            if self.shutdown.is_some() {
                self.advance_shutdown(false);
                if self.shutdown_finished() {
                    break;
                }
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Submit { request, reply } => self.submit(request, reply),
            Event::Finished { worker, request_id, deadline, tool, ok, latency, timed_out } => {
                self.call_deadlines.remove(&(deadline, request_id, worker));
                self.finished(worker, &tool, ok, latency, timed_out);
            }
            Event::Started { id, outcome } => self.started(id, outcome),
            Event::Exited(exit) => self.exited(exit),
            Event::Replace => {
                self.replacements_due = self.replacements_due.saturating_sub(1);
                if self.shutdown.is_none() {
                    self.restarts += 1;
                    let id = self.start_worker();
                    // A draining worker whose replacement failed waits for this one.
                    if let Some(draining) = self
                        .workers
                        .iter_mut()
                        .find(|w| matches!(w.retirement.map(|r| r.stage), Some(Stage::Draining { replacement: None })))
                    {
                        draining.retirement.as_mut().expect("matched above").stage =
                            Stage::Draining { replacement: Some(id) };
                    }
                }
            }
            Event::NextStartupBatch => {
                if self.shutdown.is_none() {
                    self.start_batch();
                }
            }
            Event::Recycle { worker, reply } => {
                let _ = reply.send(self.recycle_on_request(worker));
            }
            Event::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Event::Shutdown { grace, done } => match &mut self.shutdown {
                Some((_, waiters)) => waiters.push(done),
                None => {
                    for queued in self.queue.drain(..) {
                        let _ = queued.reply.send(Err(shutting_down(&self.config.name)));
                    }
                    self.shutdown = Some((Shutdown::Draining { until: Instant::now() + grace }, vec![done]));
                }
            },
        }
    }

    fn submit(&mut self, request: CallRequest, reply: oneshot::Sender<Result<CallOutput, CallError>>) {
        if self.shutdown.is_some() {
            let _ = reply.send(Err(shutting_down(&self.config.name)));
            return;
        }
        if let Some(tools) = &self.tools {
            if !tools.contains(&request.tool) {
                let message = format!(
                    "pool `{}` has no tool `{}`; its tools are: {}",
                    self.config.name,
                    request.tool,
                    tools.join(", ")
                );
                let _ = reply.send(Err(CallError::new(ErrorKind::UnknownTool, message)));
                return;
            }
        }
        if self.queue.len() >= self.config.queue_limit && !self.queue.is_empty() {
            let _ = reply.send(Err(self.saturated()));
            return;
        }
        // Behind anything already waiting, so the queue stays in order; the
        // router places it now if it can.
        self.queue.push_back(Queued { request, reply, deadline: Instant::now() + self.config.queue_timeout });
        self.pump();
        if self.config.queue_limit == 0 {
            if let Some(unplaced) = self.queue.pop_back() {
                let _ = unplaced.reply.send(Err(self.saturated()));
            }
        }
    }

    fn saturated(&self) -> CallError {
        CallError::new(
            ErrorKind::Saturated,
            format!(
                "pool `{}` is saturated: every worker is busy and {} requests are queued (queue_limit)",
                self.config.name,
                self.queue.len()
            ),
        )
    }

    /// Places queued requests, oldest first, while the router finds workers.
    fn pump(&mut self) {
        while let Some(front) = self.queue.front() {
            let view = request_view(&front.request);
            match self.decide(&view) {
                Decision::Worker(id) => {
                    let queued = self.queue.pop_front().expect("front exists");
                    self.dispatch(id, queued);
                }
                Decision::Queue => break,
                Decision::Reject(reason) => {
                    let queued = self.queue.pop_front().expect("front exists");
                    let _ = queued.reply.send(Err(CallError::new(ErrorKind::Rejected, reason)));
                }
            }
        }
    }

    /// Asks the router where `request` goes, showing it every worker.
    fn decide(&mut self, request: &RequestView) -> Decision {
        let now = Instant::now();
        self.views.clear();
        let capacity = self.threads();
        self.views.extend(self.workers.iter().map(|w| WorkerView {
            id: w.id,
            capacity,
            in_flight: w.in_flight,
            served: w.served,
            age_ms: now.duration_since(w.spawned_at).as_millis() as u64,
            rss_bytes: w.rss_bytes,
            state: w.state(),
        }));
        self.router.route(request, &self.views).decision
    }

    fn dispatch(&mut self, worker_id: u32, queued: Queued) {
        let Some(worker) = self.workers.iter_mut().find(|w| w.id == worker_id) else {
            unreachable!("the router's decision was checked against the pool's workers");
        };
        let handle = worker.handle.as_ref().expect("only ready workers are routed to");
        worker.in_flight += 1;
        worker.dispatched += 1;
        let used_up = worker.limits.calls_used_up(worker.dispatched);
        let nearly_used_up = worker.limits.calls_nearly_used_up(worker.dispatched);
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let Queued { request, reply, .. } = queued;
        // A caller may ask for less time than the pool allows, never more.
        let timeout =
            request.timeout.map_or(self.config.request_timeout, |asked| asked.min(self.config.request_timeout));
        let started = Instant::now();
        let deadline = started + timeout;
        self.call_deadlines.insert((deadline, request_id, worker_id));
        let events = self.events.clone();
        let tool = request.tool.clone();
        // Runs where the outcome is learnt: the connection's reader, the
        // worker's driver, or `expire_calls` (Abandoned).
        let on_answer = Box::new(move |outcome| {
            let duration = started.elapsed();
            let (result, timed_out) = match outcome {
                CallOutcome::Done { content_type, payload } => {
                    (Ok(CallOutput { payload, content_type, worker: worker_id, duration }), false)
                }
                CallOutcome::Failed(error) => (Err(CallError::from_worker(error)), false),
                CallOutcome::Crashed(how) => {
                    (Err(CallError::new(ErrorKind::WorkerCrashed, format!("the worker crashed: {how}"))), false)
                }
                CallOutcome::Abandoned => {
                    let message = format!("no answer within {timeout:?}; the worker was stopped and is being replaced");
                    (Err(CallError::new(ErrorKind::Timeout, message)), true)
                }
            };
            // The pool hears first, so a caller who asks for the pool's
            // status after its answer never sees its call still in flight.
            let ok = result.is_ok();
            notify(
                &events,
                Event::Finished { worker: worker_id, request_id, deadline, tool, ok, latency: duration, timed_out },
            );
            let _ = reply.send(result);
        });
        handle.call(request_id, &request.tool, request.content_type, request.payload, on_answer);
        if used_up {
            self.retire(worker_id, Reason::MaxRequests);
        } else if nearly_used_up {
            self.prestart_successor(worker_id);
        }
    }

    fn finished(&mut self, worker_id: u32, tool: &str, ok: bool, latency: Duration, timed_out: bool) {
        self.served += 1;
        if ok {
            self.consecutive_crashes = 0;
        } else {
            self.failed += 1;
        }
        if let Some(worker) = self.workers.iter_mut().find(|w| w.id == worker_id) {
            worker.in_flight -= 1;
            worker.served += 1;
        }
        // A worker that overran may still be computing the abandoned call
        // (its late answer is dropped: request ids are never reused). A
        // process worker is killed at once; a thread worker drains, so its
        // other calls finish, and the stop steps end the stuck one.
        if timed_out {
            match self.profile {
                Profile::Process => self.kill(worker_id, Reason::Timeout),
                Profile::Thread => self.retire(worker_id, Reason::Timeout),
            }
        }
        self.router.on_complete(worker_id, tool, ok, latency.as_micros() as u64);
        self.advance_recycles();
        self.pump();
    }

    fn threads(&self) -> u32 {
        match self.profile {
            Profile::Process => 1,
            Profile::Thread => self.config.threads_per_worker,
        }
    }

    /// Starts the next wave of initial workers; the one after it follows
    /// once this wave has reported, after `startup_batch_delay`.
    fn start_batch(&mut self) {
        let batch = self.unstarted.min(self.config.lifecycle.startup_batch_size);
        self.unstarted -= batch;
        self.batch_pending = (0..batch).map(|_| self.start_worker()).collect();
    }

    fn startup_batch_reported(&mut self, worker_id: u32) {
        let before = self.batch_pending.len();
        self.batch_pending.retain(|&id| id != worker_id);
        if before > 0 && self.batch_pending.is_empty() && self.unstarted > 0 {
            let delay = self.config.lifecycle.startup_batch_delay;
            let events = self.events.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                notify(&events, Event::NextStartupBatch);
            });
        }
    }

    /// Marks a worker due for recycling: it takes no new calls from now on,
    /// and drains once a recycle slot is free.
    fn retire(&mut self, worker_id: u32, reason: Reason) {
        let Some(worker) = self.workers.iter_mut().find(|w| w.id == worker_id) else { return };
        if worker.retirement.is_some() || worker.handle.is_none() || self.shutdown.is_some() {
            return;
        }
        tracing::info!(pool = %self.config.name, worker = worker_id, %reason, served = worker.served,
            rss_bytes = worker.rss_bytes, "recycling the worker");
        let stage = match worker.successor.take() {
            Some(successor) => Stage::Draining { replacement: Some(successor) },
            None => Stage::Waiting,
        };
        worker.retirement = Some(Retirement { reason, stage });
        self.recycles.add(reason);
        self.advance_recycles();
    }

    /// Kills a worker at once (it overran or stopped answering); its exit
    /// starts the replacement.
    fn kill(&mut self, worker_id: u32, reason: Reason) {
        let Some(worker) = self.workers.iter_mut().find(|w| w.id == worker_id) else { return };
        let Some(handle) = &worker.handle else { return };
        if matches!(worker.retirement.map(|r| r.stage), Some(Stage::Killed { .. })) {
            return;
        }
        tracing::warn!(pool = %self.config.name, worker = worker_id, pid = handle.pid, %reason, "killing the worker; a replacement starts");
        handle.kill();
        // A replacement already started for it takes its place.
        let replaced = worker.successor.take().is_some()
            || matches!(worker.retirement.map(|r| r.stage), Some(Stage::Draining { replacement: Some(_) }));
        worker.retirement = Some(Retirement { reason, stage: Stage::Killed { replaced } });
        self.recycles.add(reason);
    }

    /// Moves retiring workers along: waiting ones start draining while
    /// recycle slots are free (their replacement starts), drained ones
    /// whose replacement is ready get the shutdown frame.
    fn advance_recycles(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        let free_slots = self.free_recycle_slots();
        let waiting: Vec<u32> = self
            .workers
            .iter()
            .filter(|w| matches!(w.retirement.map(|r| r.stage), Some(Stage::Waiting)))
            .map(|w| w.id)
            .take(free_slots as usize)
            .collect();
        for id in waiting {
            let replacement = self.start_worker();
            self.restarts += 1;
            if let Some(worker) = self.workers.iter_mut().find(|w| w.id == id) {
                worker.retirement.as_mut().expect("waiting workers are retiring").stage =
                    Stage::Draining { replacement: Some(replacement) };
            }
        }
        let ready: Vec<u32> = self.workers.iter().filter(|w| w.handle.is_some()).map(|w| w.id).collect();
        let now = Instant::now();
        for worker in &mut self.workers {
            let Some(retirement) = &mut worker.retirement else { continue };
            let Stage::Draining { replacement: Some(replacement) } = retirement.stage else { continue };
            if worker.in_flight == 0 && ready.contains(&replacement) {
                if let Some(handle) = &worker.handle {
                    handle.shutdown();
                }
                retirement.stage = Stage::Stopping { next: now + SHUTDOWN_STEP, signals_sent: 0 };
            }
        }
    }

    /// Recycles may run side by side up to `max_concurrent_recycles`: a
    /// draining worker takes a slot, and so does one with a successor.
    fn free_recycle_slots(&self) -> u32 {
        let busy = self
            .workers
            .iter()
            .filter(|w| w.successor.is_some() || matches!(w.retirement.map(|r| r.stage), Some(Stage::Draining { .. })))
            .count() as u32;
        self.config.lifecycle.max_concurrent_recycles.saturating_sub(busy)
    }

    /// Starts the replacement of a worker that will soon reach a limit,
    /// when a recycle slot is free and workers are starting cleanly.
    fn prestart_successor(&mut self, worker_id: u32) {
        if self.shutdown.is_some() || self.consecutive_crashes > 0 || self.free_recycle_slots() == 0 {
            return;
        }
        let Some(worker) = self.workers.iter().find(|w| w.id == worker_id) else { return };
        if worker.successor.is_some() || worker.retirement.is_some() || worker.handle.is_none() {
            return;
        }
        let successor = self.start_worker();
        self.restarts += 1;
        if let Some(worker) = self.workers.iter_mut().find(|w| w.id == worker_id) {
            worker.successor = Some(successor);
        }
    }

    fn recycle_on_request(&mut self, worker_id: u32) -> Result<(), RecycleError> {
        let pool = &self.config.name;
        if self.shutdown.is_some() {
            return Err(RecycleError::Refused(format!("pool `{pool}` is shutting down")));
        }
        let Some(worker) = self.workers.iter().find(|w| w.id == worker_id) else {
            let ids: Vec<String> = self.workers.iter().map(|w| w.id.to_string()).collect();
            let message = format!("pool `{pool}` has no worker {worker_id}; its workers are: {}", ids.join(", "));
            return Err(RecycleError::NotFound(message));
        };
        if let Some(retirement) = worker.retirement {
            let message =
                format!("worker {worker_id} of pool `{pool}` is already being retired ({})", retirement.reason);
            return Err(RecycleError::Refused(message));
        }
        if worker.handle.is_none() {
            return Err(RecycleError::Refused(format!("worker {worker_id} of pool `{pool}` is still starting")));
        }
        self.retire(worker_id, Reason::Manual);
        Ok(())
    }

    /// The periodic round: memory samples and age checks, liveness pings,
    /// and the stop steps of recycled workers.
    fn housekeeping(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        let now = Instant::now();
        let ping_round = now >= self.next_ping;
        if ping_round {
            self.next_ping = now + self.config.lifecycle.ping_interval;
        }
        let max_missed = u64::from(self.config.lifecycle.max_missed_pings);
        let mut due = Vec::new();
        let mut nearly_due = Vec::new();
        let mut unresponsive = Vec::new();
        for worker in &mut self.workers {
            let Some(handle) = &worker.handle else { continue };
            worker.rss_bytes = handle.rss_bytes().unwrap_or(0);
            match &mut worker.retirement {
                None => {
                    let age = now.duration_since(worker.spawned_at);
                    if let Some(reason) = worker.limits.passed(age, worker.rss_bytes) {
                        due.push((worker.id, reason));
                    } else if worker.limits.ttl_nearly_reached(age) {
                        nearly_due.push(worker.id);
                    }
                }
                Some(Retirement { stage: Stage::Stopping { next, signals_sent }, .. }) if now >= *next => {
                    handle.signal(if *signals_sent == 0 { Signal::SIGTERM } else { Signal::SIGKILL });
                    *signals_sent = signals_sent.saturating_add(1);
                    *next = now + SHUTDOWN_STEP;
                }
                Some(_) => {}
            }
            if ping_round && worker.alive_and_ready() {
                let missed = worker.pings_sent.saturating_sub(handle.last_pong());
                if missed >= max_missed {
                    unresponsive.push(worker.id);
                } else {
                    worker.pings_sent += 1;
                    handle.ping(worker.pings_sent);
                }
            }
        }
        for id in unresponsive {
            tracing::warn!(pool = %self.config.name, worker = id, missed = max_missed, "the worker stopped answering pings");
            self.kill(id, Reason::Unresponsive);
        }
        for id in nearly_due {
            self.prestart_successor(id);
        }
        for (id, reason) in due {
            self.retire(id, reason);
        }
    }

    /// Starts a new worker; returns its id.
    fn start_worker(&mut self) -> u32 {
        let id = self.next_worker_id;
        self.next_worker_id += 1;
        self.workers.push(Worker {
            id,
            handle: None,
            in_flight: 0,
            dispatched: 0,
            served: 0,
            spawned_at: Instant::now(),
            limits: WorkerLimits::jittered(&self.config.lifecycle),
            rss_bytes: 0,
            pings_sent: 0,
            successor: None,
            retirement: None,
        });
        let spec = self.spec(id);
        let services = self.services.clone();
        let exits = self.exits.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let outcome = worker::start(&spec, &services.spawner, &services.records, exits).await;
            notify(&events, Event::Started { id, outcome });
        });
        id
    }

    fn spec(&self, id: u32) -> WorkerSpec {
        WorkerSpec {
            pool: self.config.name.clone(),
            id,
            python: self.config.python.clone(),
            adapter: self.config.adapter.clone(),
            python_path: self.config.python_path.clone(),
            working_dir: self.config.working_dir.clone(),
            env: worker_env(self.profile, &self.config.env),
            args: self.config.args.clone(),
            socket_path: self.services.socket_dir.join(format!("p{}w{id}.sock", self.index)),
            startup_timeout: self.config.startup_timeout,
            threads: self.threads(),
            thread_safety_checks: self.config.thread_safety_checks && self.profile == Profile::Thread,
        }
    }

    fn started(&mut self, id: u32, outcome: Result<WorkerHandle, StartError>) {
        let Some(position) = self.workers.iter().position(|w| w.id == id) else {
            // Started for a table that moved on (a fallback restarted the pool).
            if let Ok(handle) = outcome {
                handle.kill();
            }
            return;
        };
        self.startup_batch_reported(id);
        match outcome {
            Ok(handle) => {
                tracing::info!(pool = %self.config.name, worker = id, pid = handle.pid,
                    python = %handle.hello.python_version, gil = handle.hello.gil_enabled, "worker ready");
                self.tools.get_or_insert_with(|| handle.hello.tools.clone());
                self.note_facts(&handle);
                self.workers[position].rss_bytes = handle.rss_bytes().unwrap_or(0);
                if self.shutdown.is_some() {
                    handle.shutdown();
                    // Told to stop; the shutdown's own steps signal it.
                    let stage = Stage::Stopping { next: Instant::now() + SHUTDOWN_STEP, signals_sent: 0 };
                    self.workers[position].retirement = Some(Retirement { reason: Reason::Manual, stage });
                }
                self.workers[position].handle = Some(handle);
                if let Some(report) = self.starting.take() {
                    let _ = report.send(Ok(()));
                }
                self.advance_recycles();
                self.pump();
            }
            Err(err) => {
                self.workers.remove(position);
                self.forget_replacement(id);
                if let Some(predecessor) = self.workers.iter_mut().find(|w| w.successor == Some(id)) {
                    // The worker it was to replace keeps serving; its own
                    // retirement starts a replacement the usual way.
                    predecessor.successor = None;
                    self.consecutive_crashes += 1;
                    tracing::error!(pool = %self.config.name, "{err}");
                    return;
                }
                if self.starting.is_some() && self.try_fallback(&err) {
                    return;
                }
                if let Some(report) = self.starting.take() {
                    let _ = report.send(Err(err));
                    return;
                }
                tracing::error!(pool = %self.config.name, "{err}");
                self.crashed();
            }
        }
    }

    /// A thread pool whose first workers cannot start restarts as a process
    /// pool when `fallback_profile = "process"`; returns whether it did.
    fn try_fallback(&mut self, err: &StartError) -> bool {
        if self.profile != Profile::Thread || self.config.fallback_profile != Some(Profile::Process) {
            return false;
        }
        let reason = err.to_string();
        tracing::warn!(pool = %self.config.name,
            "thread workers cannot start; starting process workers instead (fallback_profile = \"process\"): {reason}");
        self.profile = Profile::Process;
        self.fallback = Some(reason);
        for worker in self.workers.drain(..) {
            if let Some(handle) = worker.handle {
                handle.kill();
            }
        }
        self.unstarted = self.config.size;
        self.start_batch();
        true
    }

    /// Keeps what the newest worker said about itself and warns, once per
    /// pool, about a thread pool that will not run its calls in parallel
    /// or whose adapter made no thread-safety promise.
    fn note_facts(&mut self, handle: &WorkerHandle) {
        let hello = &handle.hello;
        if self.profile == Profile::Thread {
            if hello.gil_enabled && !self.warned_gil {
                self.warned_gil = true;
                let build = if hello.free_threaded_build {
                    "a free-threaded build with the GIL turned back on by an import"
                } else {
                    "not a free-threaded build"
                };
                tracing::warn!(pool = %self.config.name, python = %hello.python_version,
                    "thread pool runs with the GIL enabled ({build}): its calls overlap only while they wait on I/O \
                     or run native code that releases the GIL; use a free-threaded Python (3.13t) for CPU-bound Python code");
            }
            if !self.warned_thread_safety {
                self.warned_thread_safety = true;
                if hello.thread_safe.is_none() {
                    tracing::warn!(pool = %self.config.name, adapter = %hello.adapter,
                        "the adapter does not declare `thread_safe`; a thread pool runs its tools on several threads at once: \
                         declare `thread_safe = True` once it is safe (or use profile = \"process\")");
                }
                if !hello.unsafe_modules.is_empty() {
                    tracing::warn!(pool = %self.config.name, modules = ?hello.unsafe_modules,
                        "the workers loaded modules known to be unsafe to share across threads");
                }
            }
        }
        self.facts = Some(PoolFacts {
            python_version: hello.python_version.clone(),
            implementation: hello.implementation.clone(),
            free_threaded_build: hello.free_threaded_build,
            gil_enabled: hello.gil_enabled,
            thread_safe: hello.thread_safe,
            unsafe_modules: hello.unsafe_modules.clone(),
            threads_per_worker: hello.threads,
        });
    }

    /// A replacement that is gone leaves the worker it was to replace
    /// waiting for the next attempt ([`Event::Replace`]).
    fn forget_replacement(&mut self, gone: u32) {
        for worker in &mut self.workers {
            if worker.successor == Some(gone) {
                worker.successor = None;
            }
            if let Some(Retirement { stage: stage @ Stage::Draining { .. }, .. }) = &mut worker.retirement {
                if *stage == (Stage::Draining { replacement: Some(gone) }) {
                    *stage = Stage::Draining { replacement: None };
                }
            }
        }
    }

    fn exited(&mut self, exit: WorkerExit) {
        let Some(position) = self.workers.iter().position(|w| w.id == exit.id) else { return };
        let worker = self.workers.remove(position);
        self.forget_replacement(exit.id);
        if self.shutdown.is_some() {
            return;
        }
        let pool = &self.config.name;
        match worker.retirement {
            Some(Retirement { reason, stage: Stage::Stopping { .. } | Stage::Killed { replaced: true } }) => {
                tracing::info!(pool = %pool, worker = exit.id, %reason, "recycled worker {}", exit.status);
            }
            Some(Retirement { reason, stage: Stage::Killed { replaced: false } }) => {
                tracing::info!(pool = %pool, worker = exit.id, %reason, "worker {}; starting its replacement", exit.status);
                self.restarts += 1;
                self.start_worker();
            }
            Some(Retirement { stage: Stage::Draining { .. }, .. }) => {
                // Its replacement is already starting.
                self.crashes += 1;
                self.recycles.add(Reason::Crashed);
                tracing::warn!(pool = %pool, worker = exit.id, "draining worker {} unexpectedly", exit.status);
            }
            None | Some(Retirement { stage: Stage::Waiting, .. }) => {
                self.crashes += 1;
                self.recycles.add(Reason::Crashed);
                tracing::warn!(pool = %pool, worker = exit.id, "worker {} unexpectedly", exit.status);
                if worker.successor.is_none() {
                    self.crashed();
                }
            }
        }
        self.advance_recycles();
    }

    /// Schedules a replacement for a crashed or unstartable worker: at once
    /// for the first crash in a row, then with doubling delays.
    fn crashed(&mut self) {
        self.consecutive_crashes += 1;
        let delay = match self.consecutive_crashes {
            1 => Duration::ZERO,
            n => FIRST_BACKOFF.saturating_mul(1 << (n - 2).min(16)).min(MAX_BACKOFF),
        };
        if self.consecutive_crashes >= DEGRADED_AFTER {
            tracing::error!(pool = %self.config.name, crashes = self.consecutive_crashes, ?delay,
                "pool degraded: workers keep crashing; delaying the replacement");
        }
        self.replacements_due += 1;
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            notify(&events, Event::Replace);
        });
    }

    /// Gives up on calls past their request timeout: each caller gets a
    /// timeout error, and the `Finished` event that follows retires the
    /// worker. A call that ended meanwhile is left alone.
    fn expire_calls(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, request_id, worker_id)) = self.call_deadlines.first() {
            if deadline > now {
                break;
            }
            self.call_deadlines.pop_first();
            if let Some(handle) = self.workers.iter().find(|w| w.id == worker_id).and_then(|w| w.handle.as_ref()) {
                handle.abandon(request_id);
            }
        }
    }

    fn expire_queue(&mut self) {
        let now = Instant::now();
        while self.queue.front().is_some_and(|q| q.deadline <= now) {
            let queued = self.queue.pop_front().expect("front exists");
            let message = format!(
                "no worker of pool `{}` took the request within {:?} (queue_timeout)",
                self.config.name, self.config.queue_timeout
            );
            let _ = queued.reply.send(Err(CallError::new(ErrorKind::QueueTimeout, message)));
        }
    }

    /// Moves the shutdown along: drain, then the shutdown frame, then TERM,
    /// then KILL.
    fn advance_shutdown(&mut self, deadline_passed: bool) {
        let Some((state, _)) = &mut self.shutdown else { return };
        match state {
            Shutdown::Draining { .. } => {
                let idle = self.workers.iter().all(|w| w.in_flight == 0);
                if idle || deadline_passed {
                    for worker in &mut self.workers {
                        if let Some(handle) = &worker.handle {
                            handle.shutdown();
                        }
                    }
                    *state = Shutdown::Stopping { next: Instant::now() + SHUTDOWN_STEP, escalated: false };
                }
            }
            Shutdown::Stopping { next, escalated } if deadline_passed => {
                let signal = if *escalated { Signal::SIGKILL } else { Signal::SIGTERM };
                for worker in &self.workers {
                    if let Some(handle) = &worker.handle {
                        handle.signal(signal);
                    }
                }
                *escalated = true;
                *next = Instant::now() + SHUTDOWN_STEP;
            }
            Shutdown::Stopping { .. } => {}
        }
    }

    /// True (and everyone told) once every worker process is gone.
    fn shutdown_finished(&mut self) -> bool {
        let stopping = matches!(self.shutdown, Some((Shutdown::Stopping { .. }, _)));
        if !stopping || !self.workers.is_empty() {
            return false;
        }
        if let Some((_, waiters)) = self.shutdown.take() {
            for waiter in waiters {
                let _ = waiter.send(());
            }
        }
        true
    }

    fn status(&self) -> PoolStatus {
        let now = Instant::now();
        let count = |name: &str| self.workers.iter().filter(|w| w.state_name() == name).count() as u32;
        PoolStatus {
            name: self.config.name.clone(),
            profile: self.profile.to_string(),
            threads_per_worker: self.threads(),
            fallback: self.fallback.clone(),
            size: self.config.size,
            ready: self.workers.iter().filter(|w| w.alive_and_ready()).count() as u32,
            starting: count("starting"),
            draining: count("draining"),
            in_flight: self.workers.iter().map(|w| w.in_flight).sum(),
            queued: self.queue.len() as u32,
            served: self.served,
            failed: self.failed,
            crashes: self.crashes,
            restarts: self.restarts,
            recycles: self.recycles.clone(),
            degraded: self.consecutive_crashes >= DEGRADED_AFTER
                || self.replacements_due > 0 && self.consecutive_crashes > 1,
            router: self.router.policy().label().to_owned(),
            router_stats: self.router.stats().snapshot(),
            facts: self.facts.clone(),
            workers: self
                .workers
                .iter()
                .map(|w| WorkerStatus {
                    id: w.id,
                    pid: w.handle.as_ref().map_or(0, |h| h.pid),
                    state: w.state_name(),
                    ready: w.alive_and_ready(),
                    in_flight: w.in_flight,
                    served: w.served,
                    rss_bytes: w.rss_bytes,
                    age: now.duration_since(w.spawned_at),
                })
                .collect(),
        }
    }
}

fn request_view(request: &CallRequest) -> RequestView {
    RequestView {
        tool: request.tool.clone(),
        session: request.session.clone(),
        payload_size: request.payload.len() as u64,
        metadata: request.metadata.clone(),
    }
}

fn notify(events: &mpsc::WeakUnboundedSender<Event>, event: Event) {
    if let Some(events) = events.upgrade() {
        let _ = events.send(event);
    }
}

fn shutting_down(pool: &str) -> CallError {
    CallError::new(ErrorKind::ShuttingDown, format!("pool `{pool}` is shutting down"))
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
