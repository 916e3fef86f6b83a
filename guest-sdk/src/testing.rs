//! Inputs for a plugin's own unit tests, which run natively (`cargo test`
//! on the host target) against the same types the host passes.

use crate::{PoolInfo, Profile, WorkerState, WorkerView};

/// A process pool named `p` of `size` workers with these router options.
pub fn pool(size: u32, options: &[(&str, &str)]) -> PoolInfo {
    PoolInfo {
        name: "p".into(),
        profile: Profile::Process,
        size,
        threads_per_worker: 1,
        options: options.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect(),
    }
}

/// A worker with nothing in flight, of capacity 1.
pub fn worker(id: u32, state: WorkerState) -> WorkerView {
    WorkerView { id, capacity: 1, in_flight: 0, served: 0, age_ms: 0, rss_bytes: 0, state }
}

/// Workers `0..n`, all ready and idle.
pub fn ready_workers(n: u32) -> Vec<WorkerView> {
    (0..n).map(|id| worker(id, WorkerState::Ready)).collect()
}
