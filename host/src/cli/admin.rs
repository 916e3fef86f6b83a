//! `pitboss status` and `pitboss recycle`: an operator's view of a running
//! host (`ListPools` on the API address) and its recycling lever
//! (`Admin.RecycleWorker` on the admin socket).

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Result;

use super::client::{with_admin, with_host, AdminSocket};
use crate::config::DEFAULT_API_ADDRESS;
use crate::pool::PoolStatus;

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
    #[command(flatten)]
    admin: AdminSocket,
}

pub fn status(args: &StatusArgs) -> Result<ExitCode> {
    let pools = with_host(args.addr, async |mut client| client.pools().await)??;
    for pool in &pools {
        print_pool(pool);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_pool(pool: &PoolStatus) {
    let health = if pool.degraded { "  DEGRADED" } else { "" };
    println!(
        "pool {}  {} × {} thread(s), {}/{} ready, {} starting, {} draining{health}",
        pool.name, pool.profile, pool.threads_per_worker, pool.ready, pool.size, pool.starting, pool.draining
    );
    if let Some(fallback) = &pool.fallback {
        println!("  fell back to process workers: {fallback}");
    }
    if let Some(facts) = &pool.facts {
        let build = if facts.free_threaded_build { "free-threaded" } else { "GIL build" };
        let gil = if facts.gil_enabled { "on" } else { "off" };
        let thread_safe = facts.thread_safe.map_or("undeclared", |safe| if safe { "true" } else { "false" });
        println!(
            "  python {} ({}, {build}), GIL {gil}, thread_safe {thread_safe}",
            facts.python_version, facts.implementation
        );
    }
    println!(
        "  {} in flight, {} queued, {} served, {} failed, {} crashes, router {}",
        pool.in_flight, pool.queued, pool.served, pool.failed, pool.crashes, pool.router.policy
    );
    let recycles: Vec<String> = pool
        .recycles
        .all()
        .filter(|(_, count)| *count > 0)
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
            worker.age.as_secs_f64()
        );
    }
}

pub fn recycle(args: &RecycleArgs) -> Result<ExitCode> {
    let answer = with_admin(&args.admin, async |mut admin| admin.recycle(&args.pool, args.worker).await)?;
    match answer {
        Ok(()) => {
            println!("worker {} of pool `{}` is draining; its replacement is starting", args.worker, args.pool);
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("error: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}
