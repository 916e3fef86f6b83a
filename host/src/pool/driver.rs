//! The tokio task behind a [`super::Pool`]: turns what happens (requests,
//! answers, worker starts and exits, timers) into [`Input`]s for the pool's
//! [`Core`], and carries out the [`Effect`]s it answers with on real
//! workers. It decides nothing itself.
//!
//! Owns: the worker handles, the pool's channels and timers. Must not
//! touch: the queue or the worker table (the core's).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, MissedTickBehavior};

use super::call::{AdminError, CallError, CallOutput, CallRequest, ErrorKind};
use super::core::{Completion, Core, Effect, Input, Sample, StopSignal, WorkerReady};
use super::reply::{Caller, Reply};
use super::routing::Router;
use super::status::PoolStatus;
use super::PoolServices;
use crate::config::PoolConfig;
use crate::worker::{self, CallOutcome, ContentType, StartError, WorkerExit, WorkerHandle};

/// Longest gap between two health rounds (memory samples, ttl, stop steps);
/// pings may ask for shorter.
const MAX_HEALTH_PERIOD: Duration = Duration::from_secs(1);

pub(super) enum Event {
    Submit {
        request: CallRequest,
        reply: Reply,
    },
    /// A call sent again, kept off `failed_on`: an idempotent call whose
    /// worker crashed or timed out, or one its worker died before starting.
    Retry {
        request: CallRequest,
        reply: Reply,
        failed_on: u32,
    },
    Finished(Completion),
    Started {
        id: u32,
        outcome: Result<WorkerHandle, StartError>,
    },
    Recycle {
        worker: u32,
        reply: oneshot::Sender<Result<(), AdminError>>,
    },
    Status(oneshot::Sender<PoolStatus>),
    Shutdown {
        grace: Duration,
        done: oneshot::Sender<()>,
    },
}

/// Starts the pool's task and its first workers. The receiver says when
/// the first worker is ready, or why none started.
pub(super) fn spawn(
    config: PoolConfig,
    index: usize,
    router: Box<dyn Router>,
    services: PoolServices,
) -> (mpsc::UnboundedSender<Event>, oneshot::Receiver<Result<(), StartError>>) {
    let (events, incoming) = mpsc::unbounded_channel();
    let (exits, exit_events) = mpsc::unbounded_channel();
    let (started, started_rx) = oneshot::channel();
    let health_period = config.lifecycle.ping_interval.min(MAX_HEALTH_PERIOD);
    let pool: std::sync::Arc<str> = config.name.as_str().into();
    let mut core = Core::new(config, index, services.socket_dir.clone(), router, Instant::now());
    let mut effector = Effector {
        pool,
        handles: HashMap::new(),
        events: events.downgrade(),
        exits,
        services,
        start_report: Some(started),
        stopped: Vec::new(),
    };
    for effect in core.effects() {
        effector.apply(effect);
    }
    tokio::spawn(Driver { core, effector }.run(incoming, exit_events, health_period));
    (events, started_rx)
}

struct Driver {
    core: Core<Reply>,
    effector: Effector,
}

/// Carries out effects; everything the core must not hold.
struct Effector {
    /// The pool's name, for log lines.
    pool: std::sync::Arc<str>,
    handles: HashMap<u32, WorkerHandle>,
    /// For the pool's own tasks. Weak, so that dropping every
    /// [`super::Pool`] handle ends the pool.
    events: mpsc::WeakUnboundedSender<Event>,
    exits: mpsc::UnboundedSender<WorkerExit>,
    services: PoolServices,
    start_report: Option<oneshot::Sender<Result<(), StartError>>>,
    /// Who waits for the shutdown to finish.
    stopped: Vec<oneshot::Sender<()>>,
}

impl Driver {
    async fn run(
        mut self,
        mut incoming: mpsc::UnboundedReceiver<Event>,
        mut exits: mpsc::UnboundedReceiver<WorkerExit>,
        health_period: Duration,
    ) {
        let mut health = tokio::time::interval(health_period);
        health.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut handles_dropped = false;
        loop {
            let deadline = self.core.next_deadline();
            let input = tokio::select! {
                event = incoming.recv(), if !handles_dropped => match event {
                    Some(event) => match self.accept(event) {
                        Some(input) => input,
                        None => continue,
                    },
                    None => {
                        handles_dropped = true;
                        Input::Shutdown { grace: Duration::ZERO }
                    }
                },
                Some(exit) = exits.recv() => {
                    self.effector.handles.remove(&exit.id);
                    Input::Exited { id: exit.id, status: exit.status }
                }
                _ = health.tick() => Input::Health(self.effector.samples()),
                _ = sleep_until(deadline.unwrap_or_else(far_future).into()), if deadline.is_some() => Input::Tick,
            };
            for effect in self.core.on(input, Instant::now()) {
                self.effector.apply(effect);
            }
            if self.core.is_stopped() {
                for waiter in self.effector.stopped.drain(..) {
                    let _ = waiter.send(());
                }
                break;
            }
        }
    }

    /// The core's input for `event`; `None` for queries answered here.
    fn accept(&mut self, event: Event) -> Option<Input<Reply>> {
        let now = Instant::now();
        Some(match event {
            Event::Submit { request, reply } => Input::Submit { request, reply, avoid: None },
            Event::Retry { request, reply, failed_on } => Input::Submit { request, reply, avoid: Some(failed_on) },
            Event::Finished(call) => Input::Finished(call),
            Event::Started { id, outcome } => {
                let outcome = outcome.map(|handle| {
                    let ready = WorkerReady {
                        pid: handle.pid,
                        hello: handle.hello.clone(),
                        rss_bytes: handle.rss_bytes().unwrap_or(0),
                        threads: worker::thread_count(handle.pid).unwrap_or(0),
                    };
                    self.effector.handles.insert(id, handle);
                    ready
                });
                Input::Started { id, outcome }
            }
            Event::Recycle { worker, reply } => {
                let _ = reply.send(self.core.recycle(worker, now));
                for effect in self.core.effects() {
                    self.effector.apply(effect);
                }
                return None;
            }
            Event::Status(reply) => {
                let _ = reply.send(self.core.status(now));
                return None;
            }
            Event::Shutdown { grace, done } => {
                self.effector.stopped.push(done);
                Input::Shutdown { grace }
            }
        })
    }
}

impl Effector {
    fn apply(&mut self, effect: Effect<Reply>) {
        match effect {
            Effect::Start(spec) => {
                let (services, exits, events) = (self.services.clone(), self.exits.clone(), self.events.clone());
                tokio::spawn(async move {
                    let id = spec.id;
                    let outcome = worker::start(&spec, &services.spawner, &services.records, exits).await;
                    notify(&events, Event::Started { id, outcome });
                });
            }
            Effect::Call { worker, request_id, request, reply, timeout, queued, retry } => {
                let handle = self.handles.get(&worker).expect("the core calls only workers that said hello");
                let call = worker::Call {
                    id: request_id,
                    tool: request.tool.clone(),
                    content_type: request.content_type,
                    stream: reply.streams(),
                    trace_id: request.request_id.clone().unwrap_or_default(),
                    session: request.session.clone(),
                    payload: request.payload.clone(),
                };
                let on_chunk = reply.chunk_sink(worker);
                reply.dispatched(handle.control(), request_id);
                let (events, pool) = (self.events.clone(), self.pool.clone());
                let started = Instant::now();
                // Runs where the outcome is learnt: the connection's reader,
                // the worker's driver, or an abandon (Abandoned).
                let on_answer = Box::new(move |outcome| {
                    let duration = started.elapsed();
                    let finished = |error, timed_out, started| {
                        let tool = request.tool.clone();
                        let completion =
                            Completion { worker, request_id, tool, error, latency: duration, timed_out, started };
                        notify(&events, Event::Finished(completion));
                    };
                    if let Some(why) = never_started(&outcome) {
                        tracing::info!(pool = %pool, request_id = request.request_id.as_deref().unwrap_or(""),
                            tool = %request.tool, worker, "the call did not start ({why}); placing it again");
                        finished(None, false, false);
                        notify(&events, Event::Retry { request, reply, failed_on: worker });
                        return;
                    }
                    let (result, timed_out) = answer(outcome, worker, duration, timeout, queued, reply.attempt());
                    // The pool hears first, so a caller who asks for the
                    // pool's status after its answer never sees its call
                    // still in flight.
                    log_outcome(&pool, &request, worker, duration, &result);
                    finished(result.as_ref().err().cloned(), timed_out, true);
                    match result {
                        Err(error) if retry && retryable(&error) && !reply.has_left() => {
                            tracing::warn!(pool = %pool, request_id = request.request_id.as_deref().unwrap_or(""),
                                tool = %request.tool, worker, attempt = reply.attempt(), error = %error,
                                "retrying an idempotent call on another worker");
                            notify(&events, Event::Retry { request, reply: reply.retried(), failed_on: worker });
                        }
                        result => reply.finish(result),
                    }
                });
                handle.call(call, on_chunk, on_answer);
            }
            Effect::Fail { reply, error } => {
                let request_id = reply.request_id().unwrap_or("");
                tracing::debug!(pool = %self.pool, request_id, error = %error, "call refused before a worker ran it");
                reply.finish(Err(error))
            }
            Effect::Abandon { worker, request_id } => {
                if let Some(handle) = self.handles.get(&worker) {
                    handle.abandon(request_id);
                }
            }
            Effect::Ping { worker, sequence } => self.with(worker, |handle| handle.ping(sequence)),
            Effect::Stop { worker } => self.with(worker, WorkerHandle::shutdown),
            Effect::Signal { worker, signal } => self.with(worker, |handle| {
                handle.signal(match signal {
                    StopSignal::Term => Signal::SIGTERM,
                    StopSignal::Kill => Signal::SIGKILL,
                })
            }),
            Effect::Kill { worker } => self.with(worker, WorkerHandle::kill),
            Effect::Started(result) => {
                if let Some(report) = self.start_report.take() {
                    let _ = report.send(result);
                }
            }
        }
    }

    fn with(&self, worker: u32, act: impl FnOnce(&WorkerHandle)) {
        if let Some(handle) = self.handles.get(&worker) {
            act(handle);
        }
    }

    fn samples(&self) -> Vec<Sample> {
        self.handles
            .iter()
            .map(|(&worker, handle)| Sample {
                worker,
                rss_bytes: handle.rss_bytes().unwrap_or(0),
                threads: worker::thread_count(handle.pid).unwrap_or(0),
                last_pong: handle.last_pong(),
            })
            .collect()
    }
}

/// A call's outcome as its caller sees it, and whether it timed out.
fn answer(
    outcome: CallOutcome,
    worker: u32,
    duration: Duration,
    timeout: Duration,
    queued: Duration,
    attempts: u32,
) -> (Result<CallOutput, CallError>, bool) {
    let output = |payload, content_type| {
        Ok(CallOutput { payload, content_type, worker, duration, queued, attempts, request_id: None })
    };
    match outcome {
        CallOutcome::Done { content_type, payload } => (output(payload, content_type), false),
        CallOutcome::Ended => (output(bytes::Bytes::new(), ContentType::Json), false),
        CallOutcome::Failed(error) => (Err(CallError::from_worker(error)), false),
        CallOutcome::Crashed(how) | CallOutcome::NotStarted(how) => {
            (Err(CallError::new(ErrorKind::WorkerCrashed, format!("the worker crashed: {how}"))), false)
        }
        CallOutcome::Abandoned => {
            let message = format!("no answer within {timeout:?}; the worker was stopped and is being replaced");
            (Err(CallError::new(ErrorKind::Timeout, message)), true)
        }
    }
}

/// One line per call, with its request id: at debug level, or warn when
/// the worker rather than the tool failed it.
fn log_outcome(pool: &str, request: &CallRequest, worker: u32, took: Duration, result: &Result<CallOutput, CallError>) {
    let request_id = request.request_id.as_deref().unwrap_or("");
    match result {
        Ok(_) => tracing::debug!(pool, request_id, tool = %request.tool, worker, ?took, "call answered"),
        Err(error) if matches!(error.kind, ErrorKind::WorkerCrashed | ErrorKind::Timeout | ErrorKind::Protocol) => {
            tracing::warn!(pool, request_id, tool = %request.tool, worker, ?took, error = %error, "call failed")
        }
        Err(error) => {
            tracing::debug!(pool, request_id, tool = %request.tool, worker, ?took, error = %error, "call failed")
        }
    }
}

/// Why a call never ran, when its outcome says so: its worker died before
/// taking it, or refused it as it began to shut down (a worker sent SIGTERM
/// refuses the calls it holds but has not started). Such a call runs on
/// another worker, idempotent or not.
fn never_started(outcome: &CallOutcome) -> Option<String> {
    match outcome {
        CallOutcome::NotStarted(how) => Some(how.clone()),
        CallOutcome::Failed(error) if error.kind == ErrorKind::ShuttingDown.as_str() => {
            Some("the worker is shutting down".to_owned())
        }
        _ => None,
    }
}

/// Failures after which an idempotent call may run again elsewhere.
fn retryable(error: &CallError) -> bool {
    matches!(error.kind, ErrorKind::WorkerCrashed | ErrorKind::Timeout)
}

fn notify(events: &mpsc::WeakUnboundedSender<Event>, event: Event) {
    if let Some(events) = events.upgrade() {
        let _ = events.send(event);
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
