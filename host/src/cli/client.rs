//! How the client commands reach a running host: a one-thread runtime and
//! one [`Client`] to its API address (`call`, `status`), or one
//! [`AdminClient`] to its admin address (`recycle`, `policy`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;

use crate::api::{AdminClient, Client};
use crate::config::{default_admin_address, default_run_dir, AdminAddress, Config};

/// Connects to the host at `addr` and runs `request` with the client; a
/// host that cannot be reached is an error naming the address.
pub fn with_host<T>(addr: SocketAddr, request: impl AsyncFnOnce(Client) -> T) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async { Ok(request(Client::connect(addr).await?).await) })
}

/// Where an operator command finds the admin service.
#[derive(clap::Args)]
pub struct AdminSocket {
    /// The host's admin socket, or tcp://HOST:PORT where the host opted
    /// into TCP [default: host.admin_address of --config, or admin.sock in
    /// the default run directory when that file is absent].
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<AdminAddress>,
    /// The config the host runs with; read for host.admin_address.
    #[arg(long, short, value_name = "FILE", default_value = "pitboss.toml")]
    config: PathBuf,
}

impl AdminSocket {
    fn address(&self) -> Result<AdminAddress> {
        if let Some(address) = &self.admin_socket {
            return Ok(address.clone());
        }
        if self.config.exists() {
            return Ok(Config::load(&self.config)?.host.admin_address);
        }
        Ok(AdminAddress::Unix(default_admin_address(&default_run_dir())))
    }
}

/// Connects to the admin socket and runs `request` with the client.
pub fn with_admin<T>(socket: &AdminSocket, request: impl AsyncFnOnce(AdminClient) -> T) -> Result<T> {
    let address = socket.address()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async { Ok(request(AdminClient::connect(&address).await?).await) })
}
