//! Cost of one routing decision: the Wasm `builtin:least-loaded` through
//! the full host path (deadline and fuel re-armed, decision checked) against
//! the identical native rule, for pools of 16, 128 and 1024 workers.
//!
//! Run: `cargo bench -p pitboss --bench routing`. Prints figures; asserts
//! nothing (the machines are shared and noisy). `PITBOSS_BENCH_WORKERS=16`
//! (comma-separated) measures other pool sizes, e.g. under a profiler.

use std::hint::black_box;
use std::time::Instant;

use pitboss::policy::{
    native_least_loaded, PolicyEngine, PolicyLimits, PolicySource, PoolInfo, Profile, RequestView, RouterInstance,
    RouterPolicy, RouterSlot, WorkerState, WorkerView,
};

const BATCHES: usize = 21;

fn workers(count: u32) -> Vec<WorkerView> {
    (0..count)
        .map(|id| WorkerView {
            id,
            capacity: 4,
            in_flight: (id * 7 + 3) % 5,
            served: u64::from(id * 13 % 97),
            age_ms: 60_000,
            rss_bytes: 80 << 20,
            state: if id % 9 == 4 { WorkerState::Draining } else { WorkerState::Ready },
        })
        .collect()
}

/// Median nanoseconds per call over `BATCHES` timed batches.
fn per_call_ns(iterations: u32, mut call: impl FnMut()) -> f64 {
    for _ in 0..iterations {
        call();
    }
    let mut samples: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..iterations {
                call();
            }
            started.elapsed().as_nanos() as f64 / f64::from(iterations)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[BATCHES / 2]
}

fn main() {
    let engine = PolicyEngine::new(None).expect("engine");
    let source = PolicySource::parse("builtin:least-loaded").unwrap();
    let policy = RouterPolicy::load(&engine, &source, PolicyLimits::default()).expect("built-in loads");
    let request = RequestView { tool: "predict".into(), session: None, payload_size: 512, metadata: Vec::new() };

    println!("routing decision, builtin:least-loaded (Wasm) vs the same rule in native Rust");
    println!("{:>8} {:>12} {:>12} {:>8}", "workers", "wasm", "native", "ratio");
    let sizes: Vec<u32> = match std::env::var("PITBOSS_BENCH_WORKERS") {
        Ok(list) => {
            list.split(',').map(|n| n.trim().parse().expect("PITBOSS_BENCH_WORKERS: comma-separated counts")).collect()
        }
        Err(_) => vec![16, 128, 1024],
    };
    for count in sizes {
        let pool = PoolInfo {
            name: "bench".into(),
            profile: Profile::Thread,
            size: count,
            threads_per_worker: 4,
            options: Vec::new(),
        };
        let mut router = RouterInstance::new(RouterSlot::new("bench", policy.clone()), pool).expect("init");
        let workers = workers(count);
        assert_eq!(router.route(&request, &workers).decision, native_least_loaded(&workers), "same rule, same answer");

        let iterations = 200_000 / count;
        let wasm = per_call_ns(iterations, || {
            black_box(router.route(black_box(&request), black_box(&workers)));
        });
        let native = per_call_ns(iterations, || {
            black_box(native_least_loaded(black_box(&workers)));
        });
        assert_eq!(router.stats().snapshot().total_faults(), 0, "no fault while measuring");
        println!("{count:>8} {:>9.0} ns {:>9.0} ns {:>7.1}x", wasm, native, wasm / native);
    }
}
