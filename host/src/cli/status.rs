//! `pitboss status`: an operator's view of a running host (`ListPools` or
//! `PoolStats` on the API address) as aligned tables with a utilisation
//! bar and advice, or as the JSON document docs/status.md describes;
//! `--watch` redraws it.
//!
//! Owns: the rendering and the advice. Must not touch: the host (it only
//! reads what the API reports).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::output::{print_json, Colour, Style};
use crate::api::Client;
use crate::config::{parse_duration, DEFAULT_API_ADDRESS};
use crate::pool::{ErrorKind, PoolStatus, Reason, WorkerStatus};

#[derive(clap::Args)]
pub struct Args {
    /// The host's API address.
    #[arg(long, default_value = DEFAULT_API_ADDRESS)]
    addr: SocketAddr,
    /// Show this pool only.
    #[arg(long, value_name = "POOL")]
    pool: Option<String>,
    /// Also show each worker: pid, state, load, memory, threads, GIL.
    #[arg(long)]
    workers: bool,
    /// Print one JSON document (docs/status.md describes it).
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// Redraw every INTERVAL (default 2s) until interrupted.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s", value_parser = parse_duration)]
    watch: Option<Duration>,
}

/// Utilisation at or above which a pool counts as saturated.
const SATURATED: f64 = 0.9;

pub fn run(args: &Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut client = Client::connect(args.addr).await?;
        let style = Style::for_stdout();
        loop {
            let pools = match &args.pool {
                Some(pool) => vec![client.pool(pool).await?],
                None => client.pools().await?,
            };
            if args.json {
                print_json(&StatusDocument::new(&pools))?;
                return Ok(ExitCode::SUCCESS);
            }
            let Some(interval) = args.watch else {
                print!("{}", render(&pools, args.workers, style));
                return Ok(ExitCode::SUCCESS);
            };
            // Clear the screen and home the cursor, as watch(1) does.
            print!("\x1b[2J\x1b[H{}", render(&pools, args.workers, style));
            println!("\n(every {interval:?}; Ctrl-C to stop)");
            tokio::time::sleep(interval).await;
        }
    })
}

/// The whole text view of `pools`.
fn render(pools: &[PoolStatus], workers: bool, style: Style) -> String {
    let mut pool_rows = vec![[
        "POOL",
        "PROFILE",
        "WORKERS",
        "UTILISATION",
        "IN FLIGHT",
        "QUEUED",
        "SERVED",
        "ERRORS",
        "RECYCLES",
        "POLICY",
    ]
    .map(str::to_owned)
    .to_vec()];
    for pool in pools {
        let degraded = if pool.degraded { " DEGRADED" } else { "" };
        pool_rows.push(vec![
            pool.name.clone(),
            plus_reserve(format!("{}×{}", pool.profile, pool.threads_per_worker), pool.calls_in_reserve),
            format!("{}/{} ready{degraded}", pool.ready, pool.size),
            format!("{} {:>3.0}%", bar(pool.utilisation(), 10), pool.utilisation() * 100.0),
            plus_reserve(format!("{}/{}", pool.in_flight, pool.capacity), pool.reserved),
            pool.queued.to_string(),
            pool.served.to_string(),
            pool.failed.to_string(),
            pool.recycles.all().map(|(_, n)| n).sum::<u64>().to_string(),
            policy_name(pool),
        ]);
    }
    let mut text = table(&pool_rows);
    if workers {
        let mut rows = vec![[
            "POOL",
            "WORKER",
            "PID",
            "STATE",
            "IN FLIGHT",
            "SERVED",
            "RSS",
            "THREADS",
            "GIL",
            "AGE",
            "LAST ERROR",
        ]
        .map(str::to_owned)
        .to_vec()];
        for pool in pools {
            for w in &pool.workers {
                rows.push(vec![
                    pool.name.clone(),
                    w.id.to_string(),
                    w.pid.to_string(),
                    w.state.to_owned(),
                    plus_reserve(format!("{}/{}", w.in_flight, w.capacity), w.reserved),
                    w.served.to_string(),
                    human_bytes(w.rss_bytes),
                    w.threads.to_string(),
                    if w.gil_enabled { "on" } else { "off" }.to_owned(),
                    human_age(w.age),
                    w.last_error.clone().unwrap_or_default(),
                ]);
            }
        }
        text.push('\n');
        text.push_str(&table(&rows));
    }
    for pool in pools {
        for advice in advise(pool) {
            text.push_str(&format!("\n{} {advice}", style.paint("advice:", Colour::Yellow)));
        }
        if let Some(fallback) = &pool.fallback {
            text.push_str(&format!(
                "\n{} pool `{}` fell back to process workers: {fallback}",
                style.paint("note:", Colour::Cyan),
                pool.name
            ));
        }
    }
    if pools.iter().any(|p| !advise(p).is_empty() || p.fallback.is_some()) {
        text.push('\n');
    }
    text
}

/// The live routing policy, by its declared name where it has one.
fn policy_name(pool: &PoolStatus) -> String {
    let router = &pool.router;
    if router.version.is_empty() {
        router.policy.clone()
    } else {
        router.version.split(" (").next().unwrap_or(&router.version).to_owned()
    }
}

/// What an operator could change about `pool`, from its figures alone:
/// what it does now, not what it once did (refusals since the start are
/// quoted, but do not trigger advice on their own).
fn advise(pool: &PoolStatus) -> Vec<String> {
    let mut advice = Vec::new();
    let refused = pool.errors_of(ErrorKind::Saturated) + pool.errors_of(ErrorKind::QueueTimeout);
    if pool.capacity > 0 && (pool.utilisation() >= SATURATED || pool.queued > 0) {
        advice.push(format!(
            "pool `{}` is saturated ({:.0}% busy, {} queued; {refused} refused or timed out in the queue since the \
             start): raise its `size`, or use `profile = \"thread\"` if its tools release the GIL",
            pool.name,
            pool.utilisation() * 100.0,
            pool.queued
        ));
    }
    if pool.recycles.get(Reason::MaxRss) == 0 && memory_grows_with_age(&pool.workers) {
        advice.push(format!(
            "the older workers of pool `{}` hold much more memory than the younger ones: set (or lower) \
             `worker_max_rss` (e.g. \"1GiB\") so a worker that grows is recycled",
            pool.name
        ));
    }
    advice
}

/// The oldest serving worker holds over 1.5× the memory of the youngest,
/// and both have served: memory that grows with use.
fn memory_grows_with_age(workers: &[WorkerStatus]) -> bool {
    let serving: Vec<&WorkerStatus> = workers.iter().filter(|w| w.ready && w.served > 0 && w.rss_bytes > 0).collect();
    let (Some(oldest), Some(youngest)) = (serving.iter().max_by_key(|w| w.age), serving.iter().min_by_key(|w| w.age))
    else {
        return false;
    };
    oldest.age > youngest.age && oldest.rss_bytes as f64 > 1.5 * youngest.rss_bytes as f64
}

/// `rows` with each column padded to its widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}", width = *width)).collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// `████░░░░░░` for 0.4 of `width` cells.
/// `cell`, then ` +N` for N calls in reserve (allowed or held), if any.
fn plus_reserve(cell: String, reserve: u32) -> String {
    match reserve {
        0 => cell,
        reserve => format!("{cell} +{reserve}"),
    }
}

fn bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// Bytes in binary units: `512 B`, `14.2 MiB`, `1.1 GiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `42s`, `3m12s`, `5h03m`, `2d04h`.
fn human_age(age: Duration) -> String {
    let s = age.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// `pitboss status --json`, as docs/status.md describes it.
#[derive(Serialize)]
struct StatusDocument {
    pools: Vec<PoolDocument>,
}

#[derive(Serialize)]
struct PoolDocument {
    name: String,
    profile: String,
    threads_per_worker: u32,
    calls_in_reserve: u32,
    size: u32,
    ready: u32,
    starting: u32,
    draining: u32,
    capacity: u32,
    in_flight: u32,
    reserved: u32,
    queued: u32,
    utilisation: f64,
    served: u64,
    failed: u64,
    errors: std::collections::BTreeMap<&'static str, u64>,
    queue_timeouts: u64,
    saturations: u64,
    crashes: u64,
    restarts: u64,
    recycles: std::collections::BTreeMap<&'static str, u64>,
    degraded: bool,
    fallback: Option<String>,
    policy: PolicyDocument,
    advice: Vec<String>,
    workers: Vec<WorkerDocument>,
}

#[derive(Serialize)]
struct PolicyDocument {
    source: String,
    version: String,
    decisions: u64,
    fallbacks: u64,
    faults: u64,
}

#[derive(Serialize)]
struct WorkerDocument {
    id: u32,
    pid: u32,
    state: &'static str,
    capacity: u32,
    in_flight: u32,
    reserved: u32,
    served: u64,
    rss_bytes: u64,
    threads: u32,
    gil_enabled: bool,
    age_s: f64,
    last_error: Option<String>,
}

impl StatusDocument {
    fn new(pools: &[PoolStatus]) -> Self {
        let pools = pools
            .iter()
            .map(|p| PoolDocument {
                name: p.name.clone(),
                profile: p.profile.clone(),
                threads_per_worker: p.threads_per_worker,
                calls_in_reserve: p.calls_in_reserve,
                size: p.size,
                ready: p.ready,
                starting: p.starting,
                draining: p.draining,
                capacity: p.capacity,
                in_flight: p.in_flight,
                reserved: p.reserved,
                queued: p.queued,
                utilisation: p.utilisation(),
                served: p.served,
                failed: p.failed,
                errors: p.errors.iter().map(|(kind, n)| (kind.as_str(), *n)).collect(),
                queue_timeouts: p.errors_of(ErrorKind::QueueTimeout),
                saturations: p.errors_of(ErrorKind::Saturated),
                crashes: p.crashes,
                restarts: p.restarts,
                recycles: p.recycles.all().map(|(reason, n)| (reason.as_str(), n)).collect(),
                degraded: p.degraded,
                fallback: p.fallback.clone(),
                policy: PolicyDocument {
                    source: p.router.policy.clone(),
                    version: p.router.version.clone(),
                    decisions: p.router.decisions,
                    fallbacks: p.router.fallbacks,
                    faults: p.router.faults,
                },
                advice: advise(p),
                workers: p
                    .workers
                    .iter()
                    .map(|w| WorkerDocument {
                        id: w.id,
                        pid: w.pid,
                        state: w.state,
                        capacity: w.capacity,
                        in_flight: w.in_flight,
                        reserved: w.reserved,
                        served: w.served,
                        rss_bytes: w.rss_bytes,
                        threads: w.threads,
                        gil_enabled: w.gil_enabled,
                        age_s: w.age.as_secs_f64(),
                        last_error: w.last_error.clone(),
                    })
                    .collect(),
            })
            .collect();
        StatusDocument { pools }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(14_900_000), "14.2 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_age(Duration::from_secs(192)), "3m12s");
        assert_eq!(human_age(Duration::from_secs(5 * 3600 + 180)), "5h03m");
    }

    #[test]
    fn the_bar_fills_with_utilisation() {
        assert_eq!(bar(0.75, 4), "███░");
        assert_eq!(bar(0.0, 3), "░░░");
        assert_eq!(bar(1.5, 2), "██", "never past full");
    }

    #[test]
    fn columns_align() {
        let rows = vec![vec!["A".to_owned(), "B".to_owned()], vec!["long".to_owned(), "x".to_owned()]];
        assert_eq!(table(&rows), "A     B\nlong  x\n");
    }
}
