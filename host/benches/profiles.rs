//! Thread profile against process profile, side by side in one run, with
//! real Python workers running examples/adapter.py:
//!
//! - I/O-bound `sleep(0.02)`: 1 thread worker × 16 threads vs 1 process worker;
//! - GIL-releasing numpy `matmul` (BLAS threads 1): 1 × 2 threads vs 1 process;
//! - CPU-bound pure-Python `fib` on free-threaded 3.13t: 1 × 2 threads vs 1
//!   and vs 2 process workers, with total RSS;
//! - memory: total RSS of 1 thread worker × 16 threads vs 16 process workers;
//! - recycling under load (`worker_max_requests`) vs the same load without.
//!
//! Prints throughput, p99 and the ratios against each issue-4 target; no
//! assertion (machines are shared and noisy).
//!
//! Run: `cargo bench -p pitboss --bench profiles` after
//! `scripts/python-env --free-threaded` (`.venv` with numpy, and `.venv-ft` on CPython 3.13t).
//! `PITBOSS_BENCH_SCALE` multiplies the calls per figure (default 1).

mod harness;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use harness::POOL;
use pitboss::pool::CallRequest;
use pitboss::Host;

fn interpreter(venv: &str) -> std::path::PathBuf {
    harness::venv_python(venv, "scripts/python-env --free-threaded")
}

/// A pool of examples/adapter.py with `settings`, started and fully ready.
async fn start_pool(python: &Path, settings: &str) -> (tempfile::TempDir, Arc<Host>) {
    harness::start_pool(python, "adapter:Example", &harness::root().join("examples"), settings).await
}

/// A load run's throughput and p99 (`harness::closed_loop`), and the calls
/// that failed.
struct Load {
    per_second: f64,
    p99_ms: f64,
    failed: usize,
}

/// `callers` callers share `calls` calls of `tool`, each back to back.
async fn load(host: &Arc<Host>, tool: &str, args: &str, callers: usize, calls: usize) -> Load {
    let failed = Arc::new(AtomicUsize::new(0));
    let call = {
        let (host, failed, request) = (host.clone(), failed.clone(), CallRequest::json(tool, args.to_owned()));
        move || {
            let (host, failed, request) = (host.clone(), failed.clone(), request.clone());
            async move {
                if let Err(err) = host.execute(POOL, request).await {
                    eprintln!("failed call: {err}");
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    let run = harness::closed_loop(callers, calls, call).await;
    Load { per_second: run.per_second, p99_ms: run.latencies.us(0.99) / 1e3, failed: failed.load(Ordering::Relaxed) }
}

/// Total resident memory of the pool's worker processes now.
async fn total_rss(host: &Host) -> u64 {
    host.stats().await[0].workers.iter().filter_map(|w| pitboss::resident_bytes(w.pid)).sum()
}

/// One tool called by a fixed number of callers, each back to back.
struct Workload<'a> {
    python: &'a Path,
    tool: &'a str,
    args: &'a str,
    callers: usize,
}

/// A workload's figures on one pool.
struct Measured {
    load: Load,
    /// The workers' total RSS after the load.
    rss: u64,
    /// Workers started to replace others during the load.
    replaced: u64,
}

impl Workload<'_> {
    /// Starts a pool with `settings`, warms it up, runs `calls` calls, and
    /// stops it.
    async fn measure(&self, settings: &str, calls: usize) -> Measured {
        let (_dir, host) = start_pool(self.python, settings).await;
        load(&host, self.tool, self.args, self.callers, self.callers * 2).await;
        let before = host.stats().await[0].restarts;
        let figures = load(&host, self.tool, self.args, self.callers, calls).await;
        let rss = total_rss(&host).await;
        let replaced = host.stats().await[0].restarts - before;
        host.shutdown().await;
        Measured { load: figures, rss, replaced }
    }

    /// One thread worker with `threads` threads against one process worker.
    async fn thread_against_process(&self, threads: usize, thread_calls: usize, process_calls: usize, target: &str) {
        let thread = self
            .measure(&format!("size = 1\nprofile = \"thread\"\nthreads_per_worker = {threads}"), thread_calls)
            .await;
        let process = self.measure("size = 1", process_calls).await;
        row(&format!("1 thread worker × {threads} threads"), &thread.load, 0);
        row("1 process worker", &process.load, 0);
        ratio("thread / process throughput", thread.load.per_second / process.load.per_second, target);
    }
}

fn row(label: &str, load: &Load, rss: u64) {
    println!(
        "  {label:<34} {:>9.1} calls/s   p99 {:>8.1} ms   RSS {:>7.1} MiB   failed {}",
        load.per_second,
        load.p99_ms,
        rss as f64 / (1 << 20) as f64,
        load.failed
    );
}

fn ratio(what: &str, value: f64, target: &str) {
    println!("  → {what} = {value:.2} (target {target})\n");
}

fn main() {
    let scale: usize = std::env::var("PITBOSS_BENCH_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let stock = interpreter(".venv");
    let free_threaded = interpreter(".venv-ft");
    let numpy = std::process::Command::new(&stock).args(["-c", "import numpy"]).status().unwrap();
    assert!(numpy.success(), "numpy is missing from .venv: run scripts/python-env (it installs numpy)");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        println!("I/O-bound sleep(0.02), 16 callers");
        let io = Workload { python: &stock, tool: "sleep", args: r#"{"seconds":0.02}"#, callers: 16 };
        io.thread_against_process(16, 640 * scale, 64 * scale, "≥ 12").await;

        println!("GIL-releasing numpy matmul(500), BLAS threads 1, 2 callers");
        let numpy = Workload { python: &stock, tool: "matmul", args: r#"{"n":500}"#, callers: 2 };
        numpy.thread_against_process(2, 200 * scale, 200 * scale, "≥ 1.6").await;

        println!("CPU-bound pure Python fib(22) on free-threaded CPython 3.13t, 2 callers");
        let cpu = Workload { python: &free_threaded, tool: "fib", args: r#"{"n":22}"#, callers: 2 };
        let thread = cpu.measure("size = 1\nprofile = \"thread\"\nthreads_per_worker = 2", 100 * scale).await;
        let one = cpu.measure("size = 1", 100 * scale).await;
        let two = cpu.measure("size = 2", 100 * scale).await;
        row("1 thread worker × 2 threads", &thread.load, thread.rss);
        row("1 process worker", &one.load, 0);
        row("2 process workers", &two.load, two.rss);
        ratio("thread / 1 process throughput", thread.load.per_second / one.load.per_second, "≥ 1.6");
        ratio("thread / 2 process throughput", thread.load.per_second / two.load.per_second, "≥ 0.85");
        ratio("thread / 2 process total RSS", thread.rss as f64 / two.rss as f64, "≤ 0.6");

        println!("Memory: same adapter, 16 calls in flight capacity, after warm-up");
        let idle = Workload { python: &stock, tool: "noop", args: "{}", callers: 16 };
        let thread = idle.measure("size = 1\nprofile = \"thread\"\nthreads_per_worker = 16", 160).await;
        let process = idle.measure("size = 16\nstartup_batch_size = 4", 160).await;
        row("1 thread worker × 16 threads", &thread.load, thread.rss);
        row("16 process workers", &process.load, process.rss);
        ratio("thread / process total RSS", thread.rss as f64 / process.rss as f64, "≤ 0.2");

        println!("Recycling under load: 2 process workers, sleep(0.005), 4 callers");
        let busy = Workload { python: &stock, tool: "sleep", args: r#"{"seconds":0.005}"#, callers: 4 };
        let steady = busy.measure("size = 2", 2000 * scale).await;
        let recycling = busy.measure("size = 2\nworker_max_requests = 100", 2000 * scale).await;
        row("no recycling", &steady.load, 0);
        row("worker_max_requests = 100", &recycling.load, 0);
        println!("  ({} workers recycled during the measured load)", recycling.replaced);
        ratio(
            "recycling / steady throughput",
            recycling.load.per_second / steady.load.per_second,
            "≥ 0.9, zero failures",
        );
    });
}
