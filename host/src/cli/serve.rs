//! `pitboss serve --config FILE`: run the host in the foreground until
//! SIGTERM or SIGINT, then shut down gracefully.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::api;
use crate::config::Config;
use crate::Host;

#[derive(clap::Args)]
pub struct Args {
    /// The config file.
    #[arg(long, short, value_name = "FILE", default_value = "pitboss.toml")]
    config: PathBuf,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(serve(config))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: Config) -> Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let address = config.host.api_address;
    let admin_address = config.host.admin_address.clone();
    let listener = api::bind(address).await?;
    let admin_listener = api::bind_admin(&admin_address).await?;
    let metrics_listener = match config.host.metrics_address {
        Some(address) => Some(api::bind_metrics(address).await?),
        None => None,
    };
    let host = Arc::new(Host::start(config).await?);
    let (stop, stopped) = watch::channel(());
    let stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.changed().await;
        }
    };
    let mut api_server = tokio::spawn(api::serve(host.clone(), listener, stopped()));
    let mut admin_server = tokio::spawn(api::serve_admin(host.clone(), admin_listener, stopped()));
    let metrics = metrics_listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| format!("http://{a}/metrics"));
    let mut metrics_server = match metrics_listener {
        Some(listener) => tokio::spawn(api::serve_metrics(host.clone(), listener, stopped())),
        None => tokio::spawn(async { std::future::pending::<Result<()>>().await }),
    };
    tracing::info!(
        %address,
        admin = %admin_address,
        metrics = metrics.as_deref().unwrap_or("off"),
        "pitboss is serving"
    );
    let failure = tokio::select! {
        _ = terminate.recv() => { tracing::info!("SIGTERM: shutting down"); None }
        _ = interrupt.recv() => { tracing::info!("SIGINT: shutting down"); None }
        ended = &mut api_server => Some(server_failure("API", ended)),
        ended = &mut admin_server => Some(server_failure("admin API", ended)),
        ended = &mut metrics_server => Some(server_failure("metrics", ended)),
    };
    let _ = stop.send(());
    host.shutdown().await;
    if let Some(failure) = failure {
        return Err(failure);
    }
    api_server.await??;
    admin_server.await??;
    metrics_server.abort();
    tracing::info!("all workers stopped");
    Ok(())
}

/// Why a server that should have run until shutdown ended.
fn server_failure(name: &str, ended: Result<Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match ended {
        Ok(Err(err)) => err,
        Ok(Ok(())) => anyhow!("the {name} server stopped unexpectedly"),
        Err(err) => anyhow!("the {name} server task failed: {err}"),
    }
}
