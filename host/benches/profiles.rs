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
//! Run: `cargo bench -p pitboss --bench profiles` after `scripts/python-env`
//! (which makes `.venv`, with numpy, and `.venv-ft` on CPython 3.13t).
//! `PITBOSS_BENCH_SCALE` multiplies the calls per figure (default 1).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pitboss::config::Config;
use pitboss::pool::CallRequest;
use pitboss::Host;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn interpreter(venv: &str) -> PathBuf {
    let python = root().join(venv).join("bin/python");
    assert!(python.exists(), "{} is missing: run scripts/python-env first", python.display());
    python
}

/// A pool of examples/adapter.py with `settings`, started and fully ready.
async fn start_pool(python: &Path, settings: &str) -> (tempfile::TempDir, Arc<Host>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pitboss.toml");
    let text = format!(
        "[host]\npython = {python:?}\nrun_dir = {:?}\n\n[[pool]]\nname = \"bench\"\nadapter = \"adapter:Example\"\n\
         python_path = [{:?}]\nstartup_timeout = \"120s\"\n{settings}\n",
        dir.path().join("run"),
        root().join("examples"),
    );
    std::fs::write(&path, text).unwrap();
    let host = Host::start(Config::load(&path).unwrap()).await.expect("bench pool starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while host.status().await.iter().any(|p| p.ready < p.size) {
        assert!(Instant::now() < deadline, "bench pool did not get all its workers ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (dir, Arc::new(host))
}

struct Load {
    per_second: f64,
    p99_ms: f64,
    failed: usize,
}

/// `callers` callers each run `calls / callers` calls of `tool` back to back.
async fn load(host: &Arc<Host>, tool: &str, args: &str, callers: usize, calls: usize) -> Load {
    let started = Instant::now();
    let lanes: Vec<_> = (0..callers)
        .map(|_| {
            let (host, tool, args) = (host.clone(), tool.to_owned(), args.to_owned());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failed = 0;
                for _ in 0..calls / callers {
                    let call_started = Instant::now();
                    if let Err(err) = host.execute("bench", CallRequest::json(&tool, args.clone())).await {
                        eprintln!("failed call: {err}");
                        failed += 1;
                    }
                    latencies.push(call_started.elapsed().as_secs_f64() * 1e3);
                }
                (latencies, failed)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for lane in lanes {
        let (lane_latencies, lane_failed) = lane.await.unwrap();
        latencies.extend(lane_latencies);
        failed += lane_failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Load { per_second: latencies.len() as f64 / elapsed, p99_ms: latencies[(latencies.len() - 1) * 99 / 100], failed }
}

/// Total resident memory of the pool's worker processes now.
async fn total_rss(host: &Host) -> u64 {
    let page = 4096;
    host.status().await[0]
        .workers
        .iter()
        .filter_map(|w| std::fs::read_to_string(format!("/proc/{}/statm", w.pid)).ok())
        .filter_map(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page)
        .sum()
}

/// Starts a pool, warms it up, measures, and stops it. Returns the load's
/// figures, the workers' total RSS after it, and the workers started to
/// replace others during it.
async fn measure(python: &Path, settings: &str, tool: &str, args: &str, callers: usize, calls: usize) -> (Load, u64, u64) {
    let (_dir, host) = start_pool(python, settings).await;
    load(&host, tool, args, callers, callers * 2).await;
    let before = host.status().await[0].restarts;
    let figures = load(&host, tool, args, callers, calls).await;
    let rss = total_rss(&host).await;
    let replaced = host.status().await[0].restarts - before;
    host.shutdown().await;
    (figures, rss, replaced)
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
        let (thread, _, _) = measure(&stock, "size = 1\nprofile = \"thread\"\nthreads_per_worker = 16", "sleep", r#"{"seconds":0.02}"#, 16, 640 * scale).await;
        let (process, _, _) = measure(&stock, "size = 1", "sleep", r#"{"seconds":0.02}"#, 16, 64 * scale).await;
        row("1 thread worker × 16 threads", &thread, 0);
        row("1 process worker", &process, 0);
        ratio("thread / process throughput", thread.per_second / process.per_second, "≥ 12");

        println!("GIL-releasing numpy matmul(500), BLAS threads 1, 2 callers");
        let (thread, _, _) = measure(&stock, "size = 1\nprofile = \"thread\"\nthreads_per_worker = 2", "matmul", r#"{"n":500}"#, 2, 200 * scale).await;
        let (process, _, _) = measure(&stock, "size = 1", "matmul", r#"{"n":500}"#, 2, 200 * scale).await;
        row("1 thread worker × 2 threads", &thread, 0);
        row("1 process worker", &process, 0);
        ratio("thread / process throughput", thread.per_second / process.per_second, "≥ 1.6");

        println!("CPU-bound pure Python fib(22) on free-threaded CPython 3.13t, 2 callers");
        let (thread, thread_rss, _) = measure(&free_threaded, "size = 1\nprofile = \"thread\"\nthreads_per_worker = 2", "fib", r#"{"n":22}"#, 2, 100 * scale).await;
        let (one, _, _) = measure(&free_threaded, "size = 1", "fib", r#"{"n":22}"#, 2, 100 * scale).await;
        let (two, two_rss, _) = measure(&free_threaded, "size = 2", "fib", r#"{"n":22}"#, 2, 100 * scale).await;
        row("1 thread worker × 2 threads", &thread, thread_rss);
        row("1 process worker", &one, 0);
        row("2 process workers", &two, two_rss);
        ratio("thread / 1 process throughput", thread.per_second / one.per_second, "≥ 1.6");
        ratio("thread / 2 process throughput", thread.per_second / two.per_second, "≥ 0.85");
        ratio("thread / 2 process total RSS", thread_rss as f64 / two_rss as f64, "≤ 0.6");

        println!("Memory: same adapter, 16 calls in flight capacity, after warm-up");
        let (thread, thread_rss, _) = measure(&stock, "size = 1\nprofile = \"thread\"\nthreads_per_worker = 16", "noop", "{}", 16, 160).await;
        let (process, process_rss, _) = measure(&stock, "size = 16\nstartup_batch_size = 4", "noop", "{}", 16, 160).await;
        row("1 thread worker × 16 threads", &thread, thread_rss);
        row("16 process workers", &process, process_rss);
        ratio("thread / process total RSS", thread_rss as f64 / process_rss as f64, "≤ 0.2");

        println!("Recycling under load: 2 process workers, sleep(0.005), 4 callers");
        let calls = 2000 * scale;
        let (steady, _, _) = measure(&stock, "size = 2", "sleep", r#"{"seconds":0.005}"#, 4, calls).await;
        let (recycling, _, recycled) = measure(&stock, "size = 2\nworker_max_requests = 100", "sleep", r#"{"seconds":0.005}"#, 4, calls).await;
        row("no recycling", &steady, 0);
        row("worker_max_requests = 100", &recycling, 0);
        println!("  ({recycled} workers recycled during the measured load)");
        ratio("recycling / steady throughput", recycling.per_second / steady.per_second, "≥ 0.9, zero failures");
    });
}
