//! The thread profile with real Python workers: N calls at once on one
//! process, exact in-flight counts, thread-safety declarations, and the GIL
//! as the workers report it (free-threaded 3.13t: tests/free_threaded.rs).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pitboss::pool::{ErrorKind, PoolStatus, Reason};
use pitboss::Host;
use serde_json::json;
use support::{config_for, eventually, json_call, probe_two_threads, spawn_json_call, start_ready, PARALLEL_CHANGES};

const TOOLS: &str = "lifecycle:Tools";

async fn pool_status(host: &Host) -> PoolStatus {
    host.stats().await.remove(0)
}

async fn start(settings: &str) -> (tempfile::TempDir, Arc<Host>) {
    let dir = tempfile::tempdir().unwrap();
    let host = start_ready(config_for(dir.path(), TOOLS, settings)).await;
    (dir, Arc::new(host))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_thread_worker_runs_eight_sleeps_at_once_and_queues_the_ninth() {
    let (_dir, host) = start("size = 1\nprofile = \"thread\"\nthreads_per_worker = 8").await;
    assert_eq!(pool_status(&host).await.threads_per_worker, 8);

    let started = Instant::now();
    let calls: Vec<_> = (0..8).map(|_| spawn_json_call(&host, "sleep", json!({ "seconds": 0.5 }))).collect();
    let mut pids = Vec::new();
    for call in calls {
        pids.push(call.await.unwrap().expect("sleep succeeds"));
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "8 × 0.5 s on 8 threads took {elapsed:?}");
    assert!(pids.windows(2).all(|pair| pair[0] == pair[1]), "one process served them all: {pids:?}");

    let started = Instant::now();
    let calls: Vec<_> = (0..9).map(|_| spawn_json_call(&host, "sleep", json!({ "seconds": 0.5 }))).collect();
    assert!(
        eventually(Duration::from_secs(5), async || {
            let status = pool_status(&host).await;
            status.in_flight == 8 && status.queued == 1
        })
        .await,
        "the ninth call waits: {:#?}",
        pool_status(&host).await
    );
    for call in calls {
        call.await.unwrap().expect("every call succeeds");
    }
    assert!(started.elapsed() >= Duration::from_millis(1000), "the ninth ran after a slot freed");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_counts_return_to_zero_after_every_kind_of_ending() {
    let (_dir, host) =
        start("size = 2\nprofile = \"thread\"\nthreads_per_worker = 4\nrequest_timeout = \"1s\"\nrecycle_jitter = 0.0")
            .await;
    let all_idle = async || {
        let status = pool_status(&host).await;
        status.in_flight == 0 && status.workers.iter().all(|w| w.in_flight == 0)
    };
    // Every worker replaced: the pool is back to its size with none
    // starting or draining.
    let settled = async |timeouts: u64, crashes: u64| {
        let status = pool_status(&host).await;
        status.recycles.get(Reason::Timeout) == timeouts
            && status.recycles.get(Reason::Crashed) == crashes
            && status.workers.iter().all(|w| w.state == "ready")
            && status.ready == 2
    };

    // Success and Python errors, many at once.
    let calls: Vec<_> = (0..24)
        .map(|i| {
            if i % 3 == 0 {
                spawn_json_call(&host, "fail", json!({}))
            } else {
                spawn_json_call(&host, "sleep", json!({ "seconds": 0.05 }))
            }
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let result = call.await.unwrap();
        assert_eq!(result.is_err(), i % 3 == 0, "{result:?}");
    }
    assert!(all_idle().await, "{:#?}", pool_status(&host).await);

    // A timeout: the worker drains (its other calls would finish), is
    // stopped and replaced.
    let err = spawn_json_call(&host, "sleep", json!({ "seconds": 10 })).await.unwrap().unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert!(eventually(Duration::from_secs(15), async || settled(1, 0).await).await, "{:#?}", pool_status(&host).await);
    assert!(all_idle().await, "{:#?}", pool_status(&host).await);

    // A crash with calls in flight on the crashed worker.
    let calls: Vec<_> = (0..3).map(|_| spawn_json_call(&host, "sleep", json!({ "seconds": 0.8 }))).collect();
    assert!(eventually(Duration::from_secs(5), async || pool_status(&host).await.in_flight == 3).await);
    let victim = pool_status(&host).await.workers.iter().find(|w| w.in_flight > 0).map(|w| w.pid).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    for call in calls {
        if let Err(err) = call.await.unwrap() {
            assert_eq!(err.kind, ErrorKind::WorkerCrashed, "{err}");
        }
    }
    assert!(eventually(Duration::from_secs(15), async || settled(1, 1).await).await, "{:#?}", pool_status(&host).await);
    assert!(all_idle().await, "{:#?}", pool_status(&host).await);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_that_is_not_thread_safe_cannot_start_a_thread_pool() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path(), "lifecycle:Unsafe", "size = 1\nprofile = \"thread\"\nthreads_per_worker = 4");
    let started = Instant::now();
    let err = format!("{:#}", Host::start(config).await.err().expect("the pool refuses to start"));
    assert!(err.contains("thread_safe"), "{err}");
    assert!(err.contains("lifecycle:Unsafe"), "{err}");
    assert!(err.contains("exited with status 3"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "failed fast");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_pool_can_fall_back_to_process_workers() {
    let dir = tempfile::tempdir().unwrap();
    let settings = "size = 2\nprofile = \"thread\"\nthreads_per_worker = 4\nfallback_profile = \"process\"";
    let host = start_ready(config_for(dir.path(), "lifecycle:Unsafe", settings)).await;
    let status = pool_status(&host).await;
    assert_eq!((status.profile.as_str(), status.threads_per_worker), ("process", 1), "{status:#?}");
    assert!(status.fallback.as_deref().is_some_and(|why| why.contains("thread_safe")), "{status:#?}");
    json_call(&host, "pid", json!({})).await;
    host.shutdown().await;
}

/// Captures the host's log lines for a test on a current-thread runtime
/// (every task of the host then runs on the test's thread).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_gil_and_a_missing_thread_safety_declaration_are_reported() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let settings = "size = 1\nprofile = \"thread\"\nthreads_per_worker = 2";
    let host = start_ready(config_for(dir.path(), "lifecycle:Undeclared", settings)).await;
    let facts = pool_status(&host).await.facts.expect("a ready worker reported its facts");
    assert!(facts.gil_enabled && !facts.free_threaded_build, "the stock interpreter has the GIL: {facts:?}");
    assert_eq!(facts.thread_safe, None);
    // The probe that shows parallel Python on 3.13t shows none here.
    let host = Arc::new(host);
    let (changes, _) = probe_two_threads(&host).await;
    assert!(changes < PARALLEL_CHANGES, "with the GIL the reader saw {changes} changes");
    host.shutdown().await;

    let text = log.text();
    assert!(text.contains("thread pool runs with the GIL enabled"), "{text}");
    assert!(text.contains("does not declare `thread_safe`"), "{text}");
}
