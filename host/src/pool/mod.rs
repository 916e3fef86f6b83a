//! Pools: each pool's dispatcher owns its queue, every worker's in-flight
//! count and its [`Router`], asks the router where each request goes, and
//! keeps the pool at its size.
//!
//! The dispatcher is two parts: `core`, a synchronous state machine that
//! takes every decision (admission, routing, deadlines, recycling, backoff,
//! shutdown, status), and `driver`, the tokio task that feeds it events and
//! carries out its effects on real workers.
//!
//! Owns: queueing, routing decisions, timeouts, the workers' lifecycle
//! (startup batches, liveness, recycling, restarts with backoff), shutdown
//! of a pool, and the plain types a router sees ([`routing`]). Must not
//! touch: processes or sockets directly (the `worker` module does), the
//! config file, WebAssembly (a plugin router comes in as a [`Router`]), or
//! other pools.

mod call;
mod core;
mod driver;
mod lifecycle;
mod reply;
mod routing;
mod status;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use call::{AdminError, CallError, CallOutput, CallRequest, ErrorKind};
pub use lifecycle::{usable_cpus, Reason, RecycleCounts};
pub use reply::{CallStream, StreamChunk};
pub use routing::{
    has_room, least_loaded, Decision, DecisionLatency, LeastLoaded, RequestView, Router, RouterReport, WorkerState,
    WorkerView, DECISION_BUCKETS_NS,
};
pub use status::{PoolFacts, PoolStatus, WorkerStatus};

use crate::config::PoolConfig;
use crate::worker::{Spawner, StartError, WorkerRecords};

/// Shared services a pool needs from its host.
#[derive(Clone)]
pub(crate) struct PoolServices {
    pub(crate) spawner: Spawner,
    pub(crate) records: WorkerRecords,
    pub(crate) socket_dir: std::path::PathBuf,
}

/// The handle callers use; cheap to clone.
#[derive(Clone)]
pub(crate) struct Pool {
    name: String,
    events: mpsc::UnboundedSender<driver::Event>,
}

impl Pool {
    /// Starts the pool's dispatcher and its workers (in startup batches);
    /// returns as soon as the first worker said hello, or with the start
    /// failure of a worker when none is ready (the pool is then stopped
    /// again). The rest keep starting; [`Pool::status`] counts them.
    pub async fn start(
        config: PoolConfig,
        index: usize,
        router: Box<dyn Router>,
        services: PoolServices,
    ) -> Result<Pool, StartError> {
        let name = config.name.clone();
        let (events, started) = driver::spawn(config, index, router, services);
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

    /// Runs one call. Dropping the future before it is answered cancels
    /// the call (see [`CallStream`] for what that does to the worker).
    pub async fn execute(&self, request: CallRequest) -> Result<CallOutput, CallError> {
        let request_id = request.request_id.clone();
        let (reply, waiter) = reply::Reply::single(request.request_id.clone());
        self.submit(request, reply);
        waiter.answer().await.unwrap_or_else(|| Err(self.stopped(request_id)))
    }

    /// Runs one call whose answer streams.
    pub fn execute_stream(&self, request: CallRequest) -> CallStream {
        let (reply, stream) = reply::Reply::stream(request.request_id.clone());
        self.submit(request, reply);
        stream
    }

    fn submit(&self, request: CallRequest, reply: reply::Reply) {
        if let Err(mpsc::error::SendError(driver::Event::Submit { reply, .. })) =
            self.events.send(driver::Event::Submit { request, reply })
        {
            reply.finish(Err(self.stopped(None)));
        }
    }

    fn stopped(&self, request_id: Option<String>) -> CallError {
        CallError { request_id, ..CallError::new(ErrorKind::ShuttingDown, format!("pool `{}` has stopped", self.name)) }
    }

    /// Recycles one worker the way the lifecycle limits do: it takes no new
    /// calls, its replacement starts, and it stops once that one is ready
    /// and its own calls are done.
    pub async fn recycle(&self, worker: u32) -> Result<(), AdminError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || AdminError::Refused(format!("pool `{}` has stopped", self.name));
        self.events.send(driver::Event::Recycle { worker, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub async fn status(&self) -> Option<PoolStatus> {
        let (reply, answer) = oneshot::channel();
        self.events.send(driver::Event::Status(reply)).ok()?;
        answer.await.ok()
    }

    /// Stops taking calls, lets calls in flight finish for up to `grace`,
    /// then stops every worker (shutdown frame, then TERM, then KILL).
    /// Returns when every worker process is gone.
    pub async fn shutdown(&self, grace: Duration) {
        let (done, finished) = oneshot::channel();
        if self.events.send(driver::Event::Shutdown { grace, done }).is_ok() {
            let _ = finished.await;
        }
    }
}
