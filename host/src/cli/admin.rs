//! `pitboss status` and `pitboss recycle`: an operator's view of a running
//! host and its one lever, through the gRPC API (`ListPools`,
//! `Admin.RecycleWorker`).

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Result;

use super::client::with_host;
use crate::api::proto::{self, admin_client::AdminClient, pitboss_client::PitbossClient};
use crate::config::DEFAULT_API_ADDRESS;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The host's API address.
    #[arg(long, default_value = DEFAULT_API_ADDRESS)]
    addr: SocketAddr,
}

#[derive(clap::Args)]
pub struct RecycleArgs {
    /// The pool of the worker.
    pool: String,
    /// The worker's id, as `pitboss status` shows it.
    worker: u32,
    /// The host's API address.
    #[arg(long, default_value = DEFAULT_API_ADDRESS)]
    addr: SocketAddr,
}

pub fn status(args: &StatusArgs) -> Result<ExitCode> {
    let pools = with_host(args.addr, async |channel| {
        PitbossClient::new(channel).list_pools(proto::ListPoolsRequest {}).await
    })??
    .into_inner()
    .pools;
    for pool in &pools {
        print_pool(pool);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_pool(pool: &proto::PoolStatus) {
    let health = if pool.degraded { "  DEGRADED" } else { "" };
    println!(
        "pool {}  {} × {} thread(s), {}/{} ready, {} starting, {} draining{health}",
        pool.name, pool.profile, pool.threads_per_worker, pool.ready, pool.size, pool.starting, pool.draining
    );
    if !pool.fallback.is_empty() {
        println!("  fell back to process workers: {}", pool.fallback);
    }
    if let Some(facts) = &pool.facts {
        let build = if facts.free_threaded_build { "free-threaded" } else { "GIL build" };
        let gil = if facts.gil_enabled { "on" } else { "off" };
        println!(
            "  python {} ({}, {build}), GIL {gil}, thread_safe {}",
            facts.python_version, facts.implementation, facts.thread_safe
        );
    }
    println!(
        "  {} in flight, {} queued, {} served, {} failed, {} crashes, router {}",
        pool.in_flight, pool.queued, pool.served, pool.failed, pool.crashes, pool.router
    );
    let recycles: Vec<String> = pool
        .recycles
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(reason, count)| format!("{reason} {count}"))
        .collect();
    if !recycles.is_empty() {
        println!("  recycles: {}", recycles.join(", "));
    }
    println!(
        "  {:>6} {:>8} {:<9} {:>9} {:>8} {:>9} {:>9}",
        "worker", "pid", "state", "in flight", "served", "rss MiB", "age s"
    );
    for worker in &pool.workers {
        println!(
            "  {:>6} {:>8} {:<9} {:>9} {:>8} {:>9.1} {:>9.1}",
            worker.id,
            worker.pid,
            worker.state,
            worker.in_flight,
            worker.served,
            worker.rss_bytes as f64 / (1 << 20) as f64,
            worker.age_ms as f64 / 1e3
        );
    }
}

pub fn recycle(args: &RecycleArgs) -> Result<ExitCode> {
    let request = proto::RecycleWorkerRequest { pool: args.pool.clone(), worker: args.worker };
    let answer = with_host(args.addr, async |channel| AdminClient::new(channel).recycle_worker(request).await)?;
    match answer {
        Ok(_) => {
            println!("worker {} of pool `{}` is draining; its replacement is starting", args.worker, args.pool);
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => {
            eprintln!("error: {}", status.message());
            Ok(ExitCode::FAILURE)
        }
    }
}
