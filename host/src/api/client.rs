//! [`Client`]: a running host's callers' API as plain library types, for
//! the command line and for Rust programs that reach a host over the
//! network. Protobuf stays inside `api`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::Status;

use super::errors::call_error;
use super::proto::{self, pitboss_client::PitbossClient};
use super::{content_type_from_proto, content_type_to_proto};
use crate::pool::{
    CallError, CallOutput, CallRequest, ErrorKind, PoolFacts, PoolStatus, Reason, RecycleCounts, RouterReport,
    StreamChunk, WorkerStatus,
};

/// One connection to a host's API address; cheap to clone.
#[derive(Clone)]
pub struct Client {
    pitboss: PitbossClient<Channel>,
}

impl Client {
    /// Connects to the host at `address`; a host that cannot be reached is
    /// an error naming the address.
    pub async fn connect(address: SocketAddr) -> Result<Client> {
        let channel = Channel::from_shared(format!("http://{address}"))?
            .initial_stream_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            .connect()
            .await
            .with_context(|| format!("cannot reach pitboss at {address} (is `pitboss serve` running?)"))?;
        Ok(Client { pitboss: PitbossClient::new(channel) })
    }

    /// Runs one call on `pool`, as [`crate::Host::execute`] would.
    pub async fn execute(&mut self, pool: &str, request: CallRequest) -> Result<CallOutput, CallError> {
        match self.pitboss.execute(execute_request(pool, request)).await {
            Ok(response) => {
                let response = response.into_inner();
                let content_type = proto::ContentType::try_from(response.content_type).map_err(|_| {
                    unexpected(&Status::internal(format!("unknown content type {}", response.content_type)))
                })?;
                Ok(CallOutput {
                    payload: response.payload,
                    content_type: content_type_from_proto(content_type),
                    worker: response.worker,
                    duration: Duration::from_micros(response.duration_us),
                    queued: Duration::from_micros(response.queued_us),
                    attempts: response.attempts,
                    request_id: Some(response.request_id).filter(|id| !id.is_empty()),
                })
            }
            Err(status) => Err(failure(&status)),
        }
    }

    /// Runs one call of a streaming tool on `pool`, as
    /// [`crate::Host::execute_stream`] would: the chunks as the worker
    /// yields them, then `None`, or an error after the chunks already
    /// sent. Dropping the stream cancels the call.
    pub async fn execute_stream(
        &mut self,
        pool: &str,
        request: CallRequest,
    ) -> Result<impl Stream<Item = Result<StreamChunk, CallError>>, CallError> {
        let chunks = self.pitboss.execute_stream(execute_request(pool, request)).await.map_err(|s| failure(&s))?;
        Ok(chunks.into_inner().map(|chunk| {
            let chunk = chunk.map_err(|status| failure(&status))?;
            let content_type = proto::ContentType::try_from(chunk.content_type)
                .map_err(|_| unexpected(&Status::internal(format!("unknown content type {}", chunk.content_type))))?;
            Ok(StreamChunk {
                payload: chunk.payload,
                content_type: content_type_from_proto(content_type),
                worker: chunk.worker,
            })
        }))
    }

    /// One pool's state; an unknown pool is an error naming it.
    pub async fn pool(&mut self, pool: &str) -> Result<PoolStatus> {
        let status = self
            .pitboss
            .pool_stats(proto::PoolStatsRequest { pool: pool.to_owned() })
            .await
            .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
        Ok(pool_status(status.into_inner()))
    }

    /// Every pool's state, in name order.
    pub async fn pools(&mut self) -> Result<Vec<PoolStatus>> {
        let pools = self.pitboss.list_pools(proto::ListPoolsRequest {}).await.context("ListPools failed")?;
        Ok(pools.into_inner().pools.into_iter().map(pool_status).collect())
    }
}

fn execute_request(pool: &str, request: CallRequest) -> proto::ExecuteRequest {
    proto::ExecuteRequest {
        pool: pool.to_owned(),
        tool: request.tool,
        payload: request.payload,
        content_type: content_type_to_proto(request.content_type) as i32,
        session: request.session.unwrap_or_default(),
        timeout_ms: request.timeout.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)),
        metadata: request.metadata.into_iter().collect(),
        request_id: request.request_id.unwrap_or_default(),
    }
}

fn failure(status: &Status) -> CallError {
    call_error(status).unwrap_or_else(|| unexpected(status))
}

/// A failure that carries no [`proto::CallError`]: the host (or something
/// in between) refused the call itself.
fn unexpected(status: &Status) -> CallError {
    CallError::new(ErrorKind::Protocol, format!("the host answered {:?}: {}", status.code(), status.message()))
}

fn pool_status(p: proto::PoolStatus) -> PoolStatus {
    let mut recycles = RecycleCounts::default();
    for (reason, count) in &p.recycles {
        if let Some(reason) = Reason::parse(reason) {
            recycles.add_many(reason, *count);
        }
    }
    PoolStatus {
        name: p.name,
        profile: p.profile,
        threads_per_worker: p.threads_per_worker,
        calls_in_reserve: p.calls_in_reserve,
        fallback: Some(p.fallback).filter(|f| !f.is_empty()),
        size: p.size,
        ready: p.ready,
        starting: p.starting,
        draining: p.draining,
        in_flight: p.in_flight,
        reserved: p.reserved,
        queued: p.queued,
        capacity: p.capacity,
        errors: p.errors.iter().filter_map(|(kind, count)| Some((ErrorKind::parse(kind)?, *count))).collect(),
        served: p.served,
        failed: p.failed,
        crashes: p.crashes,
        restarts: p.restarts,
        recycles,
        degraded: p.degraded,
        router: RouterReport {
            policy: p.router,
            version: p.router_version,
            decisions: p.router_decisions,
            fallbacks: p.router_fallbacks,
            faults: p.router_faults,
        },
        facts: p.facts.map(|f| PoolFacts {
            python_version: f.python_version,
            implementation: f.implementation,
            free_threaded_build: f.free_threaded_build,
            gil_enabled: f.gil_enabled,
            thread_safe: match f.thread_safe.as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            unsafe_modules: f.unsafe_modules,
            threads_per_worker: f.threads_per_worker,
        }),
        workers: p
            .workers
            .into_iter()
            .map(|w| {
                let state = WorkerStatus::state_named(&w.state);
                WorkerStatus {
                    id: w.id,
                    pid: w.pid,
                    ready: matches!(state, "ready" | "draining"),
                    state,
                    in_flight: w.in_flight,
                    reserved: w.reserved,
                    served: w.served,
                    rss_bytes: w.rss_bytes,
                    age: Duration::from_millis(w.age_ms),
                    capacity: w.capacity,
                    threads: w.threads,
                    gil_enabled: w.gil_enabled,
                    last_error: Some(w.last_error).filter(|e| !e.is_empty()),
                }
            })
            .collect(),
    }
}
