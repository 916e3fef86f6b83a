//! The host's own least-loaded choice: the fallback whenever a plugin
//! faults, and the native baseline the routing benchmark compares with.

use super::{Decision, WorkerState, WorkerView};

/// Same rule as `builtin:least-loaded`: among ready workers with spare
/// capacity, the lowest `in_flight / capacity`, then the lowest id; `Queue`
/// when none can take the request.
pub fn least_loaded(workers: &[WorkerView]) -> Decision {
    workers
        .iter()
        .filter(|w| w.state == WorkerState::Ready && w.in_flight < w.capacity)
        .min_by(|a, b| {
            let a_load = u64::from(a.in_flight) * u64::from(b.capacity);
            let b_load = u64::from(b.in_flight) * u64::from(a.capacity);
            a_load.cmp(&b_load).then(a.id.cmp(&b.id))
        })
        .map_or(Decision::Queue, |w| Decision::Worker(w.id))
}
