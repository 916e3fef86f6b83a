//! Free-threaded CPython 3.13t for real: a thread worker keeps the GIL off
//! after its adapter's imports, and two CPU-bound pure-Python calls run in
//! parallel on one worker. In a test binary of its own, so that no other
//! test competes for the machine's two cores while it measures.

mod support;

use std::sync::Arc;

use support::{config_with_python, free_threaded_python, probe_two_threads, start_ready, PARALLEL_CHANGES};

const TOOLS: &str = "lifecycle:Tools";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_threaded_python_runs_two_cpu_bound_calls_at_once_on_one_worker() {
    let dir = tempfile::tempdir().unwrap();
    let settings = "size = 1\nprofile = \"thread\"\nthreads_per_worker = 2";
    let host = start_ready(config_with_python(dir.path(), &free_threaded_python(), TOOLS, settings)).await;
    let host = Arc::new(host);
    let facts = host.stats().await[0].facts.clone().expect("facts");
    assert!(facts.free_threaded_build && !facts.gil_enabled, "3.13t keeps the GIL off after the imports: {facts:?}");
    assert_eq!(facts.thread_safe, Some(true));

    // Seeing it once proves it: other load on the machine can keep the two
    // threads off the two cores at the same time for a while, so up to three
    // tries. With the GIL no try ever gets near the threshold.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (changes, overlap) = probe_two_threads(&host).await;
        assert!(overlap > 0.5, "the two CPU-bound calls overlapped by only {overlap:.3} s");
        seen.push(changes);
        if changes >= PARALLEL_CHANGES {
            break;
        }
    }
    assert!(
        seen.iter().any(|&changes| changes >= PARALLEL_CHANGES),
        "the reader saw the writer run beside it only {seen:?} times (this needs two idle cores: was the machine busy?)"
    );
    host.shutdown().await;
}
