//! `pitboss serve --config FILE`: run the host in the foreground until
//! SIGTERM or SIGINT, then shut down gracefully.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use tokio::signal::unix::{signal, SignalKind};

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
    let listener = crate::api::bind(address).await?;
    let host = Arc::new(Host::start(config).await?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(crate::api::serve(host.clone(), listener, async {
        let _ = stopped.await;
    }));
    tracing::info!(%address, "pitboss is serving");
    let failure = tokio::select! {
        _ = terminate.recv() => { tracing::info!("SIGTERM: shutting down"); None }
        _ = interrupt.recv() => { tracing::info!("SIGINT: shutting down"); None }
        ended = &mut server => Some(match ended {
            Ok(Err(err)) => err,
            Ok(Ok(())) => anyhow!("the API server stopped unexpectedly"),
            Err(err) => anyhow!("the API server task failed: {err}"),
        }),
    };
    let _ = stop.send(());
    host.shutdown().await;
    if let Some(failure) = failure {
        return Err(failure);
    }
    server.await??;
    tracing::info!("all workers stopped");
    Ok(())
}
