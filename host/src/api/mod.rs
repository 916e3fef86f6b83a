//! The gRPC API, served on top of a [`Host`]: `pitboss.v1.Pitboss` and the
//! standard health service for callers on the API address, and
//! `pitboss.v1.Admin` for operators on the admin socket (`admin`), out of
//! callers' reach, and `/metrics` for Prometheus (`metrics`). [`Client`]
//! and [`AdminClient`] are what the CLI uses.
//!
//! Owns: mapping between protobuf messages and the library's types, and
//! call errors to gRPC status codes. Must not touch: pools or workers other
//! than through the [`Host`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::pool::{CallError, CallRequest, ErrorKind, PoolStatus};
use crate::worker::ContentType;
use crate::Host;

mod admin;
mod admin_client;
mod client;
mod errors;
mod metrics;

pub use admin::{bind_admin, serve_admin, AdminListener};
pub use admin_client::{AdminClient, Component};
pub use client::Client;
pub use metrics::{bind_metrics, serve_metrics};

/// The generated protobuf and gRPC types of `pitboss.v1`.
mod proto {
    tonic::include_proto!("pitboss.v1");
}

use proto::pitboss_server::{Pitboss, PitbossServer};

/// Binds the API address; done before any worker starts, so a taken port
/// fails fast.
pub async fn bind(address: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address} (host.api_address)"))
}

/// Serves `host` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for calls in flight.
pub async fn serve(host: Arc<Host>, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<PitbossServer<Service>>().await;
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .add_service(health_service)
        .add_service(PitbossServer::new(Service { host }))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
        .context("the API server failed")
}

/// HTTP/2 flow-control windows of the API, server and [`Client`] alike.
/// At HTTP/2's default of 64 KiB a 1 MiB payload waits for sixteen window
/// updates, a round trip each; these let a call of up to 4 MiB (tonic's
/// default message limit) go in one flight, and several at once on one
/// connection.
pub(crate) const STREAM_WINDOW: u32 = 4 << 20;
pub(crate) const CONNECTION_WINDOW: u32 = 16 << 20;

struct Service {
    host: Arc<Host>,
}

/// The header a caller may name its request id in (when the message's
/// `request_id` field is empty); the answer carries it back.
const REQUEST_ID_HEADER: &str = "x-request-id";

type ChunkStream = std::pin::Pin<Box<dyn Stream<Item = Result<proto::StreamChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Pitboss for Service {
    async fn execute(
        &self,
        request: Request<proto::ExecuteRequest>,
    ) -> Result<Response<proto::ExecuteResponse>, Status> {
        let (pool, call) = call_request(request)?;
        let tool = call.tool.clone();
        match self.host.execute(&pool, call).await {
            Ok(output) => {
                let mut response = Response::new(proto::ExecuteResponse {
                    payload: output.payload,
                    content_type: content_type_to_proto(output.content_type) as i32,
                    worker: output.worker,
                    duration_us: output.duration.as_micros() as u64,
                    attempts: output.attempts,
                    queued_us: output.queued.as_micros() as u64,
                    request_id: output.request_id.clone().unwrap_or_default(),
                });
                if let Some(value) = output.request_id.and_then(|id| id.parse().ok()) {
                    response.metadata_mut().insert(REQUEST_ID_HEADER, value);
                }
                Ok(response)
            }
            Err(error) => Err(errors::status(&error, &pool, &tool)),
        }
    }

    type ExecuteStreamStream = ChunkStream;

    async fn execute_stream(&self, request: Request<proto::ExecuteRequest>) -> Result<Response<ChunkStream>, Status> {
        let (pool, call) = call_request(request)?;
        let tool = call.tool.clone();
        // Dropping this stream (the caller cancelled or went away) drops
        // the CallStream, which cancels the generator.
        let chunks = self.host.execute_stream(&pool, call);
        let request_id = chunks.request_id().and_then(|id| id.parse().ok());
        let chunks = chunks.map(move |chunk| match chunk {
            Ok(chunk) => Ok(proto::StreamChunk {
                payload: chunk.payload,
                content_type: content_type_to_proto(chunk.content_type) as i32,
                worker: chunk.worker,
            }),
            Err(error) => Err(errors::status(&error, &pool, &tool)),
        });
        let mut response = Response::new(Box::pin(chunks) as ChunkStream);
        if let Some(value) = request_id {
            response.metadata_mut().insert(REQUEST_ID_HEADER, value);
        }
        Ok(response)
    }

    async fn list_pools(
        &self,
        _request: Request<proto::ListPoolsRequest>,
    ) -> Result<Response<proto::ListPoolsResponse>, Status> {
        let pools = self.host.stats().await.into_iter().map(pool_status).collect();
        Ok(Response::new(proto::ListPoolsResponse { pools }))
    }

    async fn pool_stats(
        &self,
        request: Request<proto::PoolStatsRequest>,
    ) -> Result<Response<proto::PoolStatus>, Status> {
        let pool = request.into_inner().pool;
        let status = self.host.pool_stats(&pool).await.map_err(admin::admin_status)?;
        Ok(Response::new(pool_status(status)))
    }
}

/// The pool and call an Execute or ExecuteStream request asks for.
fn call_request(request: Request<proto::ExecuteRequest>) -> Result<(String, CallRequest), Status> {
    let header_id = request.metadata().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let request = request.into_inner();
    let content_type = match proto::ContentType::try_from(request.content_type) {
        Ok(content_type) => content_type_from_proto(content_type),
        Err(_) => {
            let error = CallError::new(
                ErrorKind::BadPayload,
                format!("unknown content type {}; use JSON (0) or RAW (1)", request.content_type),
            );
            return Err(errors::status(&error, &request.pool, &request.tool));
        }
    };
    let mut metadata: Vec<(String, String)> = request.metadata.into_iter().collect();
    metadata.sort();
    let call = CallRequest {
        tool: request.tool,
        payload: request.payload,
        content_type,
        session: Some(request.session).filter(|s| !s.is_empty()),
        metadata,
        timeout: (request.timeout_ms > 0).then(|| Duration::from_millis(request.timeout_ms)),
        request_id: Some(request.request_id).filter(|id| !id.is_empty()).or(header_id),
    };
    Ok((request.pool, call))
}

fn pool_status(p: PoolStatus) -> proto::PoolStatus {
    let utilisation = p.utilisation();
    let (queue_timeouts, saturations) = (p.errors_of(ErrorKind::QueueTimeout), p.errors_of(ErrorKind::Saturated));
    proto::PoolStatus {
        name: p.name,
        profile: p.profile,
        size: p.size,
        ready: p.ready,
        starting: p.starting,
        in_flight: p.in_flight,
        reserved: p.reserved,
        queued: p.queued,
        served: p.served,
        failed: p.failed,
        crashes: p.crashes,
        degraded: p.degraded,
        router_version: p.router.version,
        capacity: p.capacity,
        utilisation,
        queue_timeouts,
        saturations,
        errors: p.errors.iter().map(|(kind, count)| (kind.as_str().to_owned(), *count)).collect(),
        router: p.router.policy,
        router_decisions: p.router.decisions,
        router_fallbacks: p.router.fallbacks,
        router_faults: p.router.faults,
        threads_per_worker: p.threads_per_worker,
        calls_in_reserve: p.calls_in_reserve,
        fallback: p.fallback.unwrap_or_default(),
        draining: p.draining,
        restarts: p.restarts,
        recycles: p.recycles.all().map(|(reason, count)| (reason.as_str().to_owned(), count)).collect(),
        facts: p.facts.map(|f| proto::PoolFacts {
            python_version: f.python_version,
            implementation: f.implementation,
            free_threaded_build: f.free_threaded_build,
            gil_enabled: f.gil_enabled,
            thread_safe: match f.thread_safe {
                Some(true) => "true",
                Some(false) => "false",
                None => "undeclared",
            }
            .to_owned(),
            unsafe_modules: f.unsafe_modules,
            threads_per_worker: f.threads_per_worker,
        }),
        workers: p
            .workers
            .into_iter()
            .map(|w| proto::WorkerStatus {
                id: w.id,
                pid: w.pid,
                state: w.state.to_owned(),
                in_flight: w.in_flight,
                reserved: w.reserved,
                served: w.served,
                rss_bytes: w.rss_bytes,
                age_ms: w.age.as_millis() as u64,
                capacity: w.capacity,
                threads: w.threads,
                gil_enabled: w.gil_enabled,
                last_error: w.last_error.unwrap_or_default(),
            })
            .collect(),
    }
}

fn content_type_from_proto(content_type: proto::ContentType) -> ContentType {
    match content_type {
        proto::ContentType::Json => ContentType::Json,
        proto::ContentType::Raw => ContentType::Raw,
    }
}

fn content_type_to_proto(content_type: ContentType) -> proto::ContentType {
    match content_type {
        ContentType::Json => proto::ContentType::Json,
        ContentType::Raw => proto::ContentType::Raw,
    }
}
