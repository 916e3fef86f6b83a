//! What the host itself costs: its CPU time per 1,000 no-op calls, its
//! resident memory with 2, 16 and 64 workers (the target: at most 1 MiB
//! more per worker), and the time from `Host::start` to N ready workers
//! (N = 1, 2, 8), with an adapter that imports nothing and one that
//! imports numpy. CPU and memory are the host process's own, read from
//! /proc/self; the workers' are not counted.
//!
//! Run: `cargo bench -p pitboss --bench host_costs`. `PITBOSS_BENCH_SMOKE=1`
//! runs a short one (`scripts/test` does, in the debug build). Writes every
//! figure to `PITBOSS_BENCH_RESULTS` (see harness/mod.rs).

mod harness;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::{Figure, Results};
use pitboss::pool::CallRequest;
use pitboss::{resident_bytes, Host};

/// An adapter whose import takes what a numpy user's does.
const NUMPY_ADAPTER: &str =
    "import numpy\nfrom pitboss_worker import tool\n\n\nclass WithNumpy:\n    @tool\n    def noop(self):\n        return None\n";

fn main() {
    let smoke = std::env::var_os("PITBOSS_BENCH_SMOKE").is_some();
    let (calls, sizes, repetitions): (u32, &[u32], usize) =
        if smoke { (200, &[2, 4], 1) } else { (3000, &[2, 16, 64], 5) };
    let mut results = Results::new("host_costs");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cpu: Vec<f64> = repeated(repetitions, || cpu_per_thousand_calls(calls)).await;
        let figure = Figure { case: "host CPU per 1,000 no-op calls", system: "embedded", workers: 2, param: "" };
        for ms in &cpu {
            results.record(&figure, "ms", *ms);
        }
        println!(
            "host CPU per 1,000 no-op calls (2 workers, sequential, {calls} calls, {repetitions} runs): median {:.1} ms \
             ({:.1}–{:.1})",
            median(&cpu),
            min(&cpu),
            max(&cpu)
        );

        let mut rss = Vec::new();
        for &size in sizes {
            let bytes = host_rss_with(size).await;
            let figure = Figure { case: "host RSS, every worker ready", system: "pitboss", workers: size, param: "" };
            results.record(&figure, "MiB", mib(bytes));
            rss.push((size, bytes));
        }
        let line: Vec<String> = rss.iter().map(|(size, bytes)| format!("{size} workers {:.1} MiB", mib(*bytes))).collect();
        println!("host RSS with all workers ready: {}", line.join(", "));
        let ((few, few_rss), (many, many_rss)) = (rss[0], rss[rss.len() - 1]);
        let per_worker = (mib(many_rss) - mib(few_rss)) / f64::from(many - few);
        println!("host RSS per added worker ({few} → {many}): {per_worker:.2} MiB (target ≤ 1 MiB)");
        let param = format!("{few} → {many} workers");
        let figure = Figure { case: "host RSS per added worker", system: "pitboss", workers: many, param: &param };
        results.record(&figure, "MiB", per_worker);

        println!("time from Host::start to N ready workers, ms (median of {repetitions}, min–max):");
        for (label, adapter) in [("no imports", "adapter:Example"), ("imports numpy", "with_numpy:WithNumpy")] {
            let mut cells = Vec::new();
            for size in [1, 2, 8] {
                let times: Vec<f64> = repeated(repetitions, || time_to_ready(adapter, size)).await;
                let figure = Figure { case: "time to N ready workers", system: label, workers: size, param: "" };
                for ms in &times {
                    results.record(&figure, "ms", *ms);
                }
                cells.push(format!("N={size}: {:.0} ({:.0}–{:.0})", median(&times), min(&times), max(&times)));
            }
            println!("  {label:<14} {}", cells.join("   "));
        }
    });
}

/// `measure` run `times` times, one after the other.
async fn repeated<F: Future<Output = f64>>(times: usize, mut measure: impl FnMut() -> F) -> Vec<f64> {
    let mut figures = Vec::with_capacity(times);
    for _ in 0..times {
        figures.push(measure().await);
    }
    figures
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// A config for a pool of `size` workers in `dir`, all started at once.
fn config(dir: &Path, adapter: &str, size: u32) -> pitboss::Config {
    std::fs::write(dir.join("with_numpy.py"), NUMPY_ADAPTER).unwrap();
    let settings = format!("size = {size}\nstartup_batch_size = {size}\nstartup_timeout = \"120s\"");
    support::config_for(dir, adapter, &settings)
}

/// A started pool of `size` workers in `dir`, every worker ready.
async fn pool(dir: &Path, adapter: &str, size: u32) -> Host {
    support::start_ready(config(dir, adapter, size)).await
}

/// This process's CPU time (user and system), from /proc/self/stat.
fn own_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // utime and stime are fields 14 and 15, in clock ticks.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as u64;
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

async fn cpu_per_thousand_calls(calls: u32) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let host = pool(dir.path(), "adapter:Example", 2).await;
    for _ in 0..200 {
        host.execute("pool", CallRequest::json("noop", "{}")).await.unwrap();
    }
    let before = own_cpu_time();
    for _ in 0..calls {
        host.execute("pool", CallRequest::json("noop", "{}")).await.unwrap();
    }
    let spent = own_cpu_time() - before;
    host.shutdown().await;
    spent.as_secs_f64() * 1e3 * 1000.0 / f64::from(calls)
}

async fn host_rss_with(size: u32) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let host = pool(dir.path(), "adapter:Example", size).await;
    for _ in 0..size * 4 {
        host.execute("pool", CallRequest::json("noop", "{}")).await.unwrap();
    }
    let rss = resident_bytes(std::process::id()).unwrap();
    host.shutdown().await;
    rss
}

async fn time_to_ready(adapter: &str, size: u32) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), adapter, size);
    let started = Instant::now();
    let host = Host::start(config).await.expect("the pool starts");
    while host.stats().await[0].ready < size {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = started.elapsed();
    host.shutdown().await;
    took.as_secs_f64() * 1e3
}
