//! How the client commands (`call`, `status`, `recycle`) reach a running
//! host: a one-thread runtime and one gRPC channel to its API address.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tonic::transport::Channel;

/// Connects to the host at `addr` and runs `request` on the channel; a
/// host that cannot be reached is an error naming the address.
pub fn with_host<T>(addr: SocketAddr, request: impl AsyncFnOnce(Channel) -> T) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .with_context(|| format!("cannot reach pitboss at {addr} (is `pitboss serve` running?)"))?;
        Ok(request(channel).await)
    })
}
