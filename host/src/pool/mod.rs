//! Pools: one dispatcher task per pool owns its queue, every worker's
//! in-flight count and the warm router instance, asks the router where each
//! request goes, and keeps the pool at its size.
//!
//! Owns: queueing, routing decisions, timeouts, the workers' lifecycle
//! (startup batches, liveness, recycling, restarts with backoff) and
//! shutdown of a pool. Must not touch: processes or sockets directly (the
//! `worker` module does), the config file, or other pools.

mod dispatcher;
mod lifecycle;

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::config::PoolConfig;
use crate::policy::{RouterInstance, RouterStatsSnapshot};
use crate::worker::{ContentType, Spawner, StartError, WorkerError, WorkerRecords};
pub use lifecycle::{usable_cpus, Reason, RecycleCounts};

/// One call to a tool.
#[derive(Clone, Debug)]
pub struct CallRequest {
    pub tool: String,
    pub payload: Bytes,
    pub content_type: ContentType,
    /// Session key, shown to the router.
    pub session: Option<String>,
    /// Caller metadata, shown to the router.
    pub metadata: Vec<(String, String)>,
    /// Worker-side time limit, at most the pool's `request_timeout`; `None`
    /// uses that.
    pub timeout: Option<Duration>,
}

impl CallRequest {
    /// A call with a JSON payload and no session, metadata or timeout.
    pub fn json(tool: &str, payload: impl Into<Bytes>) -> Self {
        CallRequest {
            tool: tool.to_owned(),
            payload: payload.into(),
            content_type: ContentType::Json,
            session: None,
            metadata: Vec::new(),
            timeout: None,
        }
    }
}

/// A successful call's answer.
#[derive(Clone, Debug)]
pub struct CallOutput {
    pub payload: Bytes,
    pub content_type: ContentType,
    /// The worker that served it.
    pub worker: u32,
    /// From dispatch to answer.
    pub duration: Duration,
}

/// Why a call failed. `kind` is stable and machine-readable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    pub kind: ErrorKind,
    pub message: String,
    /// The Python exception type, when the tool raised.
    pub python_type: Option<String>,
    pub traceback: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    UnknownPool,
    UnknownTool,
    BadArguments,
    BadPayload,
    BadResult,
    /// The tool raised.
    Exception,
    /// The worker did not answer within the request timeout.
    Timeout,
    /// The request waited in the queue past `queue_timeout`.
    QueueTimeout,
    /// The queue was full (`queue_limit`).
    Saturated,
    /// The routing policy rejected the request.
    Rejected,
    WorkerCrashed,
    ShuttingDown,
    Protocol,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::UnknownPool => "unknown_pool",
            ErrorKind::UnknownTool => "unknown_tool",
            ErrorKind::BadArguments => "bad_arguments",
            ErrorKind::BadPayload => "bad_payload",
            ErrorKind::BadResult => "bad_result",
            ErrorKind::Exception => "exception",
            ErrorKind::Timeout => "timeout",
            ErrorKind::QueueTimeout => "queue_timeout",
            ErrorKind::Saturated => "saturated",
            ErrorKind::Rejected => "rejected",
            ErrorKind::WorkerCrashed => "worker_crashed",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Protocol => "protocol",
        }
    }

    fn from_worker(kind: &str) -> ErrorKind {
        match kind {
            "unknown_tool" => ErrorKind::UnknownTool,
            "bad_arguments" => ErrorKind::BadArguments,
            "bad_payload" => ErrorKind::BadPayload,
            "bad_result" => ErrorKind::BadResult,
            "exception" => ErrorKind::Exception,
            "shutting_down" => ErrorKind::ShuttingDown,
            _ => ErrorKind::Protocol,
        }
    }
}

impl CallError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CallError { kind, message: message.into(), python_type: None, traceback: None }
    }

    fn from_worker(error: WorkerError) -> Self {
        CallError {
            kind: ErrorKind::from_worker(&error.kind),
            message: error.message,
            python_type: error.python_type,
            traceback: error.traceback,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.python_type {
            Some(python_type) => write!(f, "{}: {python_type}: {}", self.kind.as_str(), self.message),
            None => write!(f, "{}: {}", self.kind.as_str(), self.message),
        }
    }
}

impl std::error::Error for CallError {}

/// A point-in-time view of a pool.
#[derive(Clone, Debug)]
pub struct PoolStatus {
    pub name: String,
    /// The profile its workers run: the configured one, or `process` after
    /// a fallback.
    pub profile: String,
    /// Calls each worker serves at once.
    pub threads_per_worker: u32,
    /// Why a thread pool fell back to process workers.
    pub fallback: Option<String>,
    pub size: u32,
    /// Workers that said hello and are not being stopped (draining ones
    /// count: they finish their calls).
    pub ready: u32,
    pub starting: u32,
    /// Workers being recycled: no new calls, finishing their own.
    pub draining: u32,
    pub in_flight: u32,
    pub queued: u32,
    /// Calls answered (successfully or not) since the pool started.
    pub served: u64,
    pub failed: u64,
    /// Workers that exited without being asked to.
    pub crashes: u64,
    /// Workers started to replace others (recycles, crashes, timeouts,
    /// failed starts).
    pub restarts: u64,
    /// Recycles and restarts by reason.
    pub recycles: RecycleCounts,
    /// Crashing repeatedly: replacements are being delayed.
    pub degraded: bool,
    /// `builtin:NAME` or the component path.
    pub router: String,
    pub router_stats: RouterStatsSnapshot,
    /// What the newest worker said about its interpreter; `None` until one
    /// is ready.
    pub facts: Option<PoolFacts>,
    pub workers: Vec<WorkerStatus>,
}

/// A pool's interpreter as its workers see it after importing the adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolFacts {
    pub python_version: String,
    pub implementation: String,
    pub free_threaded_build: bool,
    pub gil_enabled: bool,
    /// The adapter's `thread_safe` declaration, `None` when it made none.
    pub thread_safe: Option<bool>,
    pub unsafe_modules: Vec<String>,
    pub threads_per_worker: u32,
}

#[derive(Clone, Debug)]
pub struct WorkerStatus {
    pub id: u32,
    /// 0 while starting.
    pub pid: u32,
    /// `starting`, `ready`, `draining` or `stopping`.
    pub state: &'static str,
    pub ready: bool,
    pub in_flight: u32,
    pub served: u64,
    /// At the last sample (about once a second).
    pub rss_bytes: u64,
    pub age: Duration,
}

/// Why a worker was not recycled on request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecycleError {
    /// No such pool or worker.
    #[error("{0}")]
    NotFound(String),
    /// The worker is starting or already retiring, or the pool is stopping.
    #[error("{0}")]
    Refused(String),
}

/// Shared services a pool needs from its host.
#[derive(Clone)]
pub struct PoolServices {
    pub spawner: Spawner,
    pub records: WorkerRecords,
    pub socket_dir: std::path::PathBuf,
}

/// The handle callers use; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    name: String,
    events: mpsc::UnboundedSender<dispatcher::Event>,
}

impl Pool {
    /// Starts the pool's dispatcher and its workers (in startup batches);
    /// returns as soon as the first worker said hello, or with the start
    /// failure of a worker when none is ready (the pool is then stopped
    /// again). The rest keep starting; [`Pool::status`] counts them.
    pub async fn start(
        config: PoolConfig,
        index: usize,
        router: RouterInstance,
        services: PoolServices,
    ) -> Result<Pool, StartError> {
        let name = config.name.clone();
        let (events, started) = dispatcher::spawn(config, index, router, services);
        let pool = Pool { name, events };
        match started.await {
            Ok(Ok(())) => Ok(pool),
            Ok(Err(err)) => {
                pool.shutdown(Duration::ZERO).await;
                Err(err)
            }
            Err(_) => unreachable!("the dispatcher reports its start before it can stop"),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn execute(&self, request: CallRequest) -> Result<CallOutput, CallError> {
        let (reply, answer) = oneshot::channel();
        if self.events.send(dispatcher::Event::Submit { request, reply }).is_err() {
            return Err(CallError::new(ErrorKind::ShuttingDown, format!("pool `{}` has stopped", self.name)));
        }
        answer.await.unwrap_or_else(|_| {
            Err(CallError::new(ErrorKind::ShuttingDown, format!("pool `{}` has stopped", self.name)))
        })
    }

    /// Recycles one worker the way the lifecycle limits do: it takes no new
    /// calls, its replacement starts, and it stops once that one is ready
    /// and its own calls are done.
    pub async fn recycle(&self, worker: u32) -> Result<(), RecycleError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || RecycleError::Refused(format!("pool `{}` has stopped", self.name));
        self.events.send(dispatcher::Event::Recycle { worker, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub async fn status(&self) -> Option<PoolStatus> {
        let (reply, answer) = oneshot::channel();
        self.events.send(dispatcher::Event::Status(reply)).ok()?;
        answer.await.ok()
    }

    /// Stops taking calls, lets calls in flight finish for up to `grace`,
    /// then stops every worker (shutdown frame, then TERM, then KILL).
    /// Returns when every worker process is gone.
    pub async fn shutdown(&self, grace: Duration) {
        let (done, finished) = oneshot::channel();
        if self.events.send(dispatcher::Event::Shutdown { grace, done }).is_ok() {
            let _ = finished.await;
        }
    }
}
