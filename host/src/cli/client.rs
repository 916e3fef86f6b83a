//! How the client commands (`call`, `status`, `recycle`) reach a running
//! host: a one-thread runtime and one [`Client`] to its API address.

use std::net::SocketAddr;

use anyhow::Result;

use crate::api::Client;

/// Connects to the host at `addr` and runs `request` with the client; a
/// host that cannot be reached is an error naming the address.
pub fn with_host<T>(addr: SocketAddr, request: impl AsyncFnOnce(Client) -> T) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async { Ok(request(Client::connect(addr).await?).await) })
}
