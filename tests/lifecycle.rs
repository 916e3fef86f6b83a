//! The worker lifecycle with real Python workers (tests/adapters/lifecycle.py):
//! recycling by calls, age and memory, draining with the replacement ready
//! first, liveness pings, manual recycling, startup batches, and process
//! groups taken down whole.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pitboss::pool::{AdminError, CallRequest, ErrorKind, PoolStatus, Reason};
use pitboss::Host;
use serde_json::{json, Value};
use support::{alive, config_for, eventually, json_call, start_ready};

const TOOLS: &str = "lifecycle:Tools";

async fn start(settings: &str) -> (tempfile::TempDir, Arc<Host>) {
    let dir = tempfile::tempdir().unwrap();
    let host = start_ready(config_for(dir.path(), TOOLS, settings)).await;
    (dir, Arc::new(host))
}

async fn pool_status(host: &Host) -> PoolStatus {
    host.stats().await.remove(0)
}

fn request(tool: &str, args: Value) -> CallRequest {
    CallRequest::json(tool, serde_json::to_vec(&args).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_recycles_under_load_without_a_failed_call_or_lost_capacity() {
    let (_dir, host) =
        start("size = 2\nworker_max_requests = 5\nrecycle_jitter = 0.0\nping_interval = \"100ms\"").await;

    // Watch the pool while callers keep it busy: ready workers never drop
    // below its size.
    let stop = Arc::new(AtomicBool::new(false));
    let lowest_ready = Arc::new(AtomicU32::new(u32::MAX));
    let watcher = {
        let (host, stop, lowest_ready) = (host.clone(), stop.clone(), lowest_ready.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                lowest_ready.fetch_min(pool_status(&host).await.ready, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move {
                let mut pids = Vec::new();
                for _ in 0..15 {
                    let output = host.execute("pool", request("sleep", json!({ "seconds": 0.01 }))).await;
                    let output = output.unwrap_or_else(|err| panic!("a call failed during recycling: {err}"));
                    pids.push(serde_json::from_slice::<u32>(&output.payload).unwrap());
                }
                pids
            })
        })
        .collect();
    let mut served_by: BTreeMap<u32, u32> = BTreeMap::new();
    for caller in callers {
        for pid in caller.await.unwrap() {
            *served_by.entry(pid).or_default() += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();

    assert!(served_by.values().all(|&served| served <= 5), "a worker served more than 5 calls: {served_by:?}");
    assert!(served_by.len() >= 12, "60 calls at 5 per worker need at least 12 workers: {served_by:?}");
    assert!(
        lowest_ready.load(Ordering::Relaxed) >= 2,
        "ready workers dropped to {}",
        lowest_ready.load(Ordering::Relaxed)
    );
    let status = pool_status(&host).await;
    assert_eq!((status.failed, status.crashes), (0, 0), "{status:#?}");
    assert!(status.recycles.get(Reason::MaxRequests) >= 10, "{status:#?}");
    // Recycled workers' processes are gone, not just forgotten.
    assert!(
        eventually(Duration::from_secs(10), async || {
            let live: Vec<u32> = pool_status(&host).await.workers.iter().map(|w| w.pid).collect();
            served_by.keys().all(|pid| live.contains(pid) || !alive(*pid))
        })
        .await
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_recycles_the_worker_on_time() {
    let started = Instant::now();
    let (_dir, host) = start("size = 1\nworker_ttl = \"2s\"\nrecycle_jitter = 0.0\nping_interval = \"100ms\"").await;
    let first: u32 = serde_json::from_value(json_call(&host, "pid", json!({})).await).unwrap();

    assert!(
        eventually(Duration::from_secs(6), async || pool_status(&host).await.recycles.get(Reason::Ttl) == 1).await,
        "no ttl recycle: {:#?}",
        pool_status(&host).await
    );
    let recycled_after = started.elapsed();
    assert!(recycled_after >= Duration::from_secs(2), "recycled before its ttl: {recycled_after:?}");
    assert!(eventually(Duration::from_secs(10), async || !alive(first)).await, "the old worker is gone");
    let second: u32 = serde_json::from_value(json_call(&host, "pid", json!({})).await).unwrap();
    assert_ne!(first, second);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_its_memory_limit_retires_after_the_call() {
    let (_dir, host) = start(
        "size = 1\nworker_max_rss = \"150MiB\"\nrecycle_jitter = 0.0\nping_interval = \"100ms\"\nmax_missed_pings = 20",
    )
    .await;
    let small: u32 = serde_json::from_value(json_call(&host, "allocate", json!({ "megabytes": 10 })).await).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pool_status(&host).await.recycles.get(Reason::MaxRss), 0, "10 MB stays under the limit");

    let big: u32 = serde_json::from_value(json_call(&host, "allocate", json!({ "megabytes": 200 })).await).unwrap();
    assert_eq!(small, big, "the call that crossed the limit still completed on its worker");
    assert!(
        eventually(Duration::from_secs(10), async || pool_status(&host).await.recycles.get(Reason::MaxRss) == 1).await,
        "{:#?}",
        pool_status(&host).await
    );
    assert!(eventually(Duration::from_secs(10), async || !alive(big)).await, "the big worker is gone");
    let next: u32 = serde_json::from_value(json_call(&host, "pid", json!({})).await).unwrap();
    assert_ne!(next, big);
    assert_eq!(pool_status(&host).await.crashes, 0);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stuck_with_the_gil_held_misses_pings_and_is_replaced() {
    let (_dir, host) =
        start("size = 1\nping_interval = \"200ms\"\nmax_missed_pings = 3\nrequest_timeout = \"60s\"").await;
    let stuck_pid = pool_status(&host).await.workers[0].pid;
    let started = Instant::now();
    let stuck = host.execute("pool", request("stuck", json!({ "seconds": 30 }))).await;
    let err = stuck.expect_err("the stuck call cannot succeed");
    assert_eq!(err.kind, ErrorKind::WorkerCrashed, "{err}");
    assert!(err.message.contains("SIGKILL"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "detected in {:?}", started.elapsed());
    assert!(!alive(stuck_pid));

    let status = pool_status(&host).await;
    assert_eq!(status.recycles.get(Reason::Unresponsive), 1, "{status:#?}");
    assert_eq!(status.crashes, 0, "an unresponsive worker is killed, not crashed: {status:#?}");
    let next: u32 = serde_json::from_value(json_call(&host, "pid", json!({})).await).unwrap();
    assert_ne!(next, stuck_pid);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_still_answers_pings() {
    let (_dir, host) = start("size = 1\nping_interval = \"100ms\"\nmax_missed_pings = 2").await;
    let burn = json_call(&host, "burn", json!({ "seconds": 1.5 })).await;
    assert!(burn["end"].as_f64().unwrap() - burn["start"].as_f64().unwrap() >= 1.5);
    assert_eq!(pool_status(&host).await.recycles.get(Reason::Unresponsive), 0);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_recycle_drains_and_takes_the_process_group_with_it() {
    let (_dir, host) = start("size = 1\nping_interval = \"100ms\"").await;
    let status = pool_status(&host).await;
    let (worker, pid) = (status.workers[0].id, status.workers[0].pid);
    let grandchild: u32 = serde_json::from_value(json_call(&host, "spawn_child", json!({})).await).unwrap();
    assert!(alive(grandchild));

    // A call in flight when the recycle is asked for finishes on the old worker.
    let in_flight = {
        let host = host.clone();
        tokio::spawn(async move { host.execute("pool", request("sleep", json!({ "seconds": 1.0 }))).await })
    };
    assert!(eventually(Duration::from_secs(5), async || pool_status(&host).await.in_flight == 1).await);
    host.recycle("pool", worker).await.expect("recycle accepted");
    let during = pool_status(&host).await;
    assert_eq!(during.workers.iter().find(|w| w.id == worker).unwrap().state, "draining", "{during:#?}");
    assert_eq!(
        host.recycle("pool", worker).await,
        Err(AdminError::Refused(format!("worker {worker} of pool `pool` is already being retired (manual)")))
    );
    let answer = in_flight.await.unwrap().expect("the call in flight finishes");
    assert_eq!(serde_json::from_slice::<u32>(&answer.payload).unwrap(), pid);

    assert!(
        eventually(Duration::from_secs(10), async || !alive(pid) && !alive(grandchild)).await,
        "worker and child gone"
    );
    let status = pool_status(&host).await;
    assert_eq!((status.recycles.get(Reason::Manual), status.failed, status.crashes), (1, 0, 0), "{status:#?}");
    assert!(matches!(host.recycle("pool", 999).await, Err(AdminError::NotFound(m)) if m.contains("no worker 999")));
    assert!(
        matches!(host.recycle("nope", 0).await, Err(AdminError::NotFound(m)) if m.contains("no pool named `nope`"))
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_pool_starts_in_batches_and_serves_from_its_first_worker() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path(), TOOLS, "size = 4\nstartup_batch_size = 2\nstartup_batch_delay = \"1s\"");
    let host = Host::start(config).await.expect("host starts");
    let early = pool_status(&host).await;
    assert!(early.ready >= 1 && early.ready < 4, "usable before every worker is up: {early:#?}");
    json_call(&host, "pid", json!({})).await;

    assert!(eventually(Duration::from_secs(30), async || pool_status(&host).await.ready == 4).await);
    let mut ages: Vec<(u32, Duration)> = pool_status(&host).await.workers.iter().map(|w| (w.id, w.age)).collect();
    ages.sort();
    assert!(ages[1].1 >= ages[2].1 + Duration::from_millis(900), "the second batch waited for the delay: {ages:?}");
    host.shutdown().await;
}
