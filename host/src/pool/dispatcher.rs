//! The task behind a [`super::Pool`]: the only owner of the pool's queue,
//! worker table and router instance, driven by events.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;

use super::{CallError, CallOutput, CallRequest, ErrorKind, PoolServices, PoolStatus, WorkerStatus};
use crate::config::PoolConfig;
use crate::policy::{Decision, RequestView, RouterInstance, WorkerState, WorkerView};
use crate::worker::{self, CallOutcome, StartError, WorkerExit, WorkerHandle, WorkerSpec};

/// Thread-pool variables set to 1 for process workers: N processes × M
/// native threads would oversubscribe the CPUs. The pool's `env` wins.
const THREAD_LIMIT_VARS: [&str; 5] =
    ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"];

/// Replacement delays after consecutive crashes: none for the first, then
/// doubling from this, up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Consecutive crashes from which the pool calls itself degraded.
const DEGRADED_AFTER: u32 = 3;
/// During shutdown: how long workers get after the shutdown frame, then
/// after SIGTERM, before the next step.
const SHUTDOWN_STEP: Duration = Duration::from_secs(2);

pub(super) enum Event {
    Submit { request: CallRequest, reply: oneshot::Sender<Result<CallOutput, CallError>> },
    Finished { worker: u32, tool: String, ok: bool, latency: Duration, timed_out: bool },
    Started { id: u32, outcome: Result<WorkerHandle, StartError> },
    Exited(WorkerExit),
    Replace,
    Status(oneshot::Sender<PoolStatus>),
    Shutdown { grace: Duration, done: oneshot::Sender<()> },
}

struct Worker {
    id: u32,
    /// `None` while starting.
    handle: Option<WorkerHandle>,
    in_flight: u32,
    served: u64,
    spawned_at: Instant,
    /// Set once the host decided to stop it: no new calls, and its exit is
    /// not a crash.
    retiring: bool,
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
    /// Tools the workers announced, once one is ready.
    tools: Option<Vec<String>>,
    next_worker_id: u32,
    next_request_id: u64,
    /// Until every initial worker is up: where to report the pool's start.
    starting: Option<(usize, oneshot::Sender<Result<(), StartError>>)>,
    consecutive_crashes: u32,
    replacements_due: u32,
    served: u64,
    failed: u64,
    crashes: u64,
    restarts: u64,
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
    let size = config.size as usize;
    let mut dispatcher = Dispatcher {
        config,
        index,
        router,
        services,
        events: events.downgrade(),
        exits,
        workers: Vec::new(),
        views: Vec::new(),
        queue: VecDeque::new(),
        tools: None,
        next_worker_id: 0,
        next_request_id: 1,
        starting: Some((size, started)),
        consecutive_crashes: 0,
        replacements_due: 0,
        served: 0,
        failed: 0,
        crashes: 0,
        restarts: 0,
        shutdown: None,
    };
    for _ in 0..size {
        dispatcher.start_worker();
    }
    tokio::spawn(dispatcher.run(incoming, exit_events));
    (events, started_rx)
}

impl Dispatcher {
    async fn run(mut self, mut incoming: mpsc::UnboundedReceiver<Event>, mut exits: mpsc::UnboundedReceiver<WorkerExit>) {
        loop {
            let queue_deadline = self.queue.front().map(|q| q.deadline);
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
            Event::Finished { worker, tool, ok, latency, timed_out } => self.finished(worker, &tool, ok, latency, timed_out),
            Event::Started { id, outcome } => self.started(id, outcome),
            Event::Exited(exit) => self.exited(exit),
            Event::Replace => {
                self.replacements_due = self.replacements_due.saturating_sub(1);
                if self.shutdown.is_none() {
                    self.restarts += 1;
                    self.start_worker();
                }
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
        self.views.extend(self.workers.iter().map(|w| WorkerView {
            id: w.id,
            capacity: 1,
            in_flight: w.in_flight,
            served: w.served,
            age_ms: now.duration_since(w.spawned_at).as_millis() as u64,
            rss_bytes: 0,
            state: match (&w.handle, w.retiring) {
                (_, true) => WorkerState::Draining,
                (None, false) => WorkerState::Starting,
                (Some(_), false) => WorkerState::Ready,
            },
        }));
        self.router.route(request, &self.views).decision
    }

    fn dispatch(&mut self, worker_id: u32, queued: Queued) {
        let Some(worker) = self.workers.iter_mut().find(|w| w.id == worker_id) else {
            unreachable!("the router's decision was checked against the pool's workers");
        };
        let handle = worker.handle.as_ref().expect("only ready workers are routed to");
        worker.in_flight += 1;
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let Queued { request, reply, .. } = queued;
        let (answer_tx, answer) = oneshot::channel();
        handle.call(request_id, &request.tool, request.content_type, request.payload, answer_tx);

        let timeout = request.timeout.unwrap_or(self.config.request_timeout);
        let events = self.events.clone();
        let tool = request.tool;
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = tokio::time::timeout(timeout, answer).await;
            let duration = started.elapsed();
            let (result, timed_out) = match outcome {
                Ok(Ok(CallOutcome::Done { content_type, payload })) => {
                    (Ok(CallOutput { payload, content_type, worker: worker_id, duration }), false)
                }
                Ok(Ok(CallOutcome::Failed(error))) => (Err(CallError::from_worker(error)), false),
                Ok(Ok(CallOutcome::Crashed(how))) => {
                    (Err(CallError::new(ErrorKind::WorkerCrashed, format!("the worker crashed: {how}"))), false)
                }
                Ok(Err(_)) => (Err(CallError::new(ErrorKind::WorkerCrashed, "the worker went away")), false),
                Err(_) => {
                    let message = format!("no answer within {timeout:?}; the worker was stopped and is being replaced");
                    (Err(CallError::new(ErrorKind::Timeout, message)), true)
                }
            };
            // The pool hears first, so a caller who asks for the pool's
            // status after its answer never sees its call still in flight.
            notify(&events, Event::Finished { worker: worker_id, tool, ok: result.is_ok(), latency: duration, timed_out });
            let _ = reply.send(result);
        });
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
            if timed_out {
                // It may still be computing the abandoned call: a process
                // worker is stopped, so its late answer reaches no one.
                worker.retiring = true;
                if let Some(handle) = &worker.handle {
                    tracing::warn!(pool = %self.config.name, worker = worker_id, "call timed out; replacing the worker");
                    handle.kill();
                }
            }
        }
        self.router.on_complete(worker_id, tool, ok, latency.as_micros() as u64);
        self.pump();
    }

    fn start_worker(&mut self) {
        let id = self.next_worker_id;
        self.next_worker_id += 1;
        self.workers.push(Worker { id, handle: None, in_flight: 0, served: 0, spawned_at: Instant::now(), retiring: false });
        let spec = self.spec(id);
        let services = self.services.clone();
        let exits = self.exits.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let outcome = worker::start(&spec, &services.spawner, &services.records, exits).await;
            notify(&events, Event::Started { id, outcome });
        });
    }

    fn spec(&self, id: u32) -> WorkerSpec {
        let mut env: BTreeMap<String, String> = THREAD_LIMIT_VARS.iter().map(|v| (v.to_string(), "1".to_owned())).collect();
        env.insert("PYTHONUNBUFFERED".into(), "1".into());
        env.extend(self.config.env.clone());
        WorkerSpec {
            pool: self.config.name.clone(),
            id,
            python: self.config.python.clone(),
            adapter: self.config.adapter.clone(),
            python_path: self.config.python_path.clone(),
            working_dir: self.config.working_dir.clone(),
            env,
            args: self.config.args.clone(),
            socket_path: self.services.socket_dir.join(format!("p{}w{id}.sock", self.index)),
            startup_timeout: self.config.startup_timeout,
        }
    }

    fn started(&mut self, id: u32, outcome: Result<WorkerHandle, StartError>) {
        match outcome {
            Ok(handle) => {
                tracing::info!(pool = %self.config.name, worker = id, pid = handle.pid,
                    python = %handle.hello.python_version, "worker ready");
                self.tools.get_or_insert_with(|| handle.hello.tools.clone());
                let stopping = self.shutdown.is_some();
                if stopping {
                    handle.shutdown();
                }
                match self.workers.iter_mut().find(|w| w.id == id) {
                    Some(worker) => {
                        worker.handle = Some(handle);
                        worker.retiring = stopping;
                    }
                    None => handle.kill(),
                }
                if let Some((remaining, _)) = &mut self.starting {
                    *remaining -= 1;
                    if *remaining == 0 {
                        let (_, report) = self.starting.take().expect("checked above");
                        let _ = report.send(Ok(()));
                    }
                }
                self.pump();
            }
            Err(err) => {
                self.workers.retain(|w| w.id != id);
                if let Some((_, report)) = self.starting.take() {
                    let _ = report.send(Err(err));
                    return;
                }
                tracing::error!(pool = %self.config.name, "{err}");
                self.crashed();
            }
        }
    }

    fn exited(&mut self, exit: WorkerExit) {
        let Some(position) = self.workers.iter().position(|w| w.id == exit.id) else { return };
        let worker = self.workers.remove(position);
        if self.shutdown.is_some() {
            return;
        }
        if worker.retiring {
            tracing::info!(pool = %self.config.name, worker = exit.id, "worker {}; starting its replacement", exit.status);
            self.restarts += 1;
            self.start_worker();
        } else {
            self.crashes += 1;
            tracing::warn!(pool = %self.config.name, worker = exit.id, "worker {} unexpectedly", exit.status);
            self.crashed();
        }
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
                        worker.retiring = true;
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
                        let _ = killpg(Pid::from_raw(handle.pid as i32), signal);
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
        let ready = self.workers.iter().filter(|w| w.handle.is_some() && !w.retiring).count() as u32;
        PoolStatus {
            name: self.config.name.clone(),
            profile: self.config.profile.to_string(),
            size: self.config.size,
            ready,
            starting: self.workers.iter().filter(|w| w.handle.is_none()).count() as u32,
            in_flight: self.workers.iter().map(|w| w.in_flight).sum(),
            queued: self.queue.len() as u32,
            served: self.served,
            failed: self.failed,
            crashes: self.crashes,
            restarts: self.restarts,
            degraded: self.consecutive_crashes >= DEGRADED_AFTER || self.replacements_due > 0 && self.consecutive_crashes > 1,
            router: self.router.policy().label().to_owned(),
            router_stats: self.router.stats().snapshot(),
            workers: self
                .workers
                .iter()
                .map(|w| WorkerStatus {
                    id: w.id,
                    pid: w.handle.as_ref().map_or(0, |h| h.pid),
                    ready: w.handle.is_some() && !w.retiring,
                    in_flight: w.in_flight,
                    served: w.served,
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
