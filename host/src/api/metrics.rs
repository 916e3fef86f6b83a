//! `/metrics` over plain HTTP/1.1 at `[host] metrics`, for Prometheus to
//! scrape: [`Host::metrics`] as the body, nothing else served.
//!
//! Owns: the metrics listener and its HTTP answers. Must not touch: what
//! the metrics are (the host's).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::host::METRICS_CONTENT_TYPE;
use crate::Host;

/// Binds the metrics address; done before any worker starts, so a taken
/// port fails fast.
pub async fn bind_metrics(address: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address} (host.metrics)"))
}

/// Answers scrapes on `listener` until `shutdown` resolves.
pub async fn serve_metrics(host: Arc<Host>, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, say: the next scrape may fare better.
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept a metrics connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let host = host.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let host = host.clone();
                async move { Ok::<_, Infallible>(answer(&host, request).await) }
            });
            if let Err(err) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(error = %err, "a metrics connection failed");
            }
        });
    }
}

async fn answer(host: &Host, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &str| {
        let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "pitboss serves its metrics at /metrics only");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics");
    }
    let mut response = Response::new(Full::new(Bytes::from(host.metrics().await)));
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, METRICS_CONTENT_TYPE.parse().expect("a valid header"));
    response
}
