//! Hot swap of a pool's router on a real 2-worker process pool:
//! - swap latency, from `Host::swap_router` to the first call routed by the
//!   new version, with the compiled artifact cached and from fresh wasm
//!   (a built-in-sized component, made unique with a custom section so the
//!   cache misses);
//! - throughput of 4 callers during 20 swaps against the same load without
//!   swaps, measured in the same run.
//!
//! Run: `cargo bench -p pitboss --bench swap` (after scripts/python-env).
//! `PITBOSS_BENCH_SECONDS` sets each throughput run's length (default 3).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pitboss::config::Config;
use pitboss::policy::{Candidate, SwapOptions, BUILTIN_ROUTERS};
use pitboss::{CallRequest, Host};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn builtin(name: &str) -> Vec<u8> {
    BUILTIN_ROUTERS.iter().find(|b| b.name == name).expect("a built-in router").wasm.to_vec()
}

/// `wasm` with a custom section appended: the same component to wasmtime,
/// another sha256 to the artifact cache.
fn unique(wasm: &[u8], n: u64) -> Vec<u8> {
    let name = b"pitboss-bench";
    let payload = n.to_le_bytes();
    let size = 1 + name.len() + payload.len();
    let mut out = wasm.to_vec();
    out.extend([0, size as u8, name.len() as u8]);
    out.extend(name);
    out.extend(payload);
    out
}

async fn call(host: &Host) {
    host.execute("bench", CallRequest::json("noop", "{}")).await.expect("noop succeeds");
}

/// Milliseconds from the swap request to the answer of the first call
/// after it (so the new version's first decision is included).
async fn swap_to_first_call(host: &Host, wasm: Vec<u8>) -> (f64, bool) {
    let started = Instant::now();
    let options = SwapOptions { requested_by: "the swap bench".into(), ..SwapOptions::default() };
    let report = host.swap_router("bench", Candidate { label: "bench".into(), wasm }, options).await.unwrap();
    assert!(report.promoted(), "{:?}", report.refused);
    call(host).await;
    (started.elapsed().as_secs_f64() * 1e3, report.compiled_from_cache)
}

/// Calls per second of 4 callers for `length`; `swaps` swaps spread over it.
async fn throughput(host: &Arc<Host>, length: Duration, swaps: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (host, stop, served) = (host.clone(), stop.clone(), served.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    call(&host).await;
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    for n in 0..swaps {
        tokio::time::sleep(length / (swaps as u32 + 1)).await;
        let name = if n % 2 == 0 { "round-robin" } else { "least-loaded" };
        let options = SwapOptions { requested_by: "the swap bench".into(), ..SwapOptions::default() };
        let candidate = Candidate { label: format!("builtin:{name}"), wasm: builtin(name) };
        assert!(host.swap_router("bench", candidate, options).await.unwrap().promoted());
    }
    tokio::time::sleep(length.saturating_sub(started.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    served.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let seconds: u64 = std::env::var("PITBOSS_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/python-env first", python.display());
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("pitboss.toml");
    std::fs::write(
        &config_path,
        format!(
            "[host]\npython = {python:?}\nrun_dir = {:?}\npolicy_cache = {:?}\n\n\
             [[pool]]\nname = \"bench\"\nadapter = \"adapter:Example\"\npython_path = [{:?}]\nsize = 2\n",
            dir.path().join("run"),
            dir.path().join("cache"),
            root().join("examples"),
        ),
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let host = Arc::new(Host::start(Config::load(&config_path).unwrap()).await.expect("bench pool starts"));
        while host.stats().await[0].ready < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..600 {
            call(&host).await;
        }
        let rr = builtin("round-robin");
        println!(
            "router swap on a 2-worker pool ({} KiB component, replay of the last 512 decisions)",
            rr.len() / 1024
        );
        let mut fresh = Vec::new();
        let mut cached = Vec::new();
        for n in 0..5 {
            let (ms, from_cache) = swap_to_first_call(&host, unique(&rr, n)).await;
            assert!(!from_cache);
            fresh.push(ms);
            let (ms, from_cache) = swap_to_first_call(&host, builtin("least-loaded")).await;
            assert!(from_cache || n == 0);
            if from_cache {
                cached.push(ms);
            }
            // The same unique bytes again: now a cache hit.
            let (ms, from_cache) = swap_to_first_call(&host, unique(&rr, n)).await;
            assert!(from_cache);
            cached.push(ms);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!("swap → first call, cached artifact: median {:>7.2} ms (target ≤ 5 ms)", median(&mut cached));
        println!("swap → first call, fresh wasm:      median {:>7.2} ms (target ≤ 250 ms)", median(&mut fresh));

        let length = Duration::from_secs(seconds);
        let without = throughput(&host, length, 0).await;
        let with = throughput(&host, length, 20).await;
        println!("4 callers for {seconds} s: {without:.0} calls/s without swaps, {with:.0} calls/s during 20 swaps");
        println!("ratio during/without = {:.2} (target ≥ 0.95)", with / without);
        host.shutdown().await;
    });
}
