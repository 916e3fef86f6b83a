//! The gRPC API, served on top of a [`Host`]: `pitboss.v1.Pitboss` and the
//! standard health service for callers on the API address, and
//! `pitboss.v1.Admin` for operators on the admin socket (`admin`), out of
//! callers' reach. [`Client`] and [`AdminClient`] are what the CLI uses.
//!
//! Owns: mapping between protobuf messages and the library's types, and
//! call errors to gRPC status codes. Must not touch: pools or workers other
//! than through the [`Host`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::pool::{CallError, CallRequest, ErrorKind, PoolStatus};
use crate::worker::ContentType;
use crate::Host;

mod admin;
mod admin_client;
mod client;
mod errors;

pub use admin::{bind_admin, serve_admin};
pub use admin_client::{AdminClient, Component};
pub use client::Client;

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
        .add_service(health_service)
        .add_service(PitbossServer::new(Service { host }))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
        .context("the API server failed")
}

struct Service {
    host: Arc<Host>,
}

#[tonic::async_trait]
impl Pitboss for Service {
    async fn execute(
        &self,
        request: Request<proto::ExecuteRequest>,
    ) -> Result<Response<proto::ExecuteResponse>, Status> {
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
            payload: Bytes::from(request.payload),
            content_type,
            session: Some(request.session).filter(|s| !s.is_empty()),
            metadata,
            timeout: (request.timeout_ms > 0).then(|| Duration::from_millis(request.timeout_ms)),
        };
        let (pool, tool) = (request.pool, call.tool.clone());
        match self.host.execute(&pool, call).await {
            Ok(output) => Ok(Response::new(proto::ExecuteResponse {
                payload: output.payload.to_vec(),
                content_type: content_type_to_proto(output.content_type) as i32,
                worker: output.worker,
                duration_us: output.duration.as_micros() as u64,
            })),
            Err(error) => Err(errors::status(&error, &pool, &tool)),
        }
    }

    async fn list_pools(
        &self,
        _request: Request<proto::ListPoolsRequest>,
    ) -> Result<Response<proto::ListPoolsResponse>, Status> {
        let pools = self.host.status().await.into_iter().map(pool_status).collect();
        Ok(Response::new(proto::ListPoolsResponse { pools }))
    }
}

fn pool_status(p: PoolStatus) -> proto::PoolStatus {
    proto::PoolStatus {
        name: p.name,
        profile: p.profile,
        size: p.size,
        ready: p.ready,
        starting: p.starting,
        in_flight: p.in_flight,
        queued: p.queued,
        served: p.served,
        failed: p.failed,
        crashes: p.crashes,
        degraded: p.degraded,
        router: p.router.policy,
        router_decisions: p.router.decisions,
        router_fallbacks: p.router.fallbacks,
        router_faults: p.router.faults,
        threads_per_worker: p.threads_per_worker,
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
                served: w.served,
                rss_bytes: w.rss_bytes,
                age_ms: w.age.as_millis() as u64,
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
