//! What a pool shows its router and what the router answers: plain host
//! types, and the [`Router`] trait the dispatcher calls for every request.
//!
//! Owns: the routing data model ([`RequestView`], [`WorkerView`],
//! [`WorkerState`], [`Decision`]) and the native least-loaded rule. Must
//! not touch: WebAssembly. `policy::contract` teaches wasmtime to pass these
//! types to a plugin; `policy::RouterInstance` implements [`Router`].

use std::time::Duration;

/// The lifecycle state of a worker as the router sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkerState {
    Starting,
    Ready,
    /// Retiring: finishes its calls, takes no new ones.
    Draining,
}

/// A snapshot of one worker, taken just before a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerView {
    pub id: u32,
    /// Calls it may hold at once: its threads, plus the pool's
    /// `calls_in_reserve`.
    pub capacity: u32,
    /// Calls it holds, running or in reserve.
    pub in_flight: u32,
    pub served: u64,
    pub age_ms: u64,
    pub rss_bytes: u64,
    pub state: WorkerState,
}

/// What the router learns about the request to place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestView {
    pub tool: String,
    pub session: Option<String>,
    pub payload_size: u64,
    pub metadata: Vec<(String, String)>,
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// To this worker, which must be ready and have room.
    Worker(u32),
    /// Wait until a worker frees up.
    Queue,
    /// Refuse it, saying why.
    Reject(String),
}

impl std::fmt::Display for Decision {
    /// `worker 3`, `queue`, `reject: why`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Worker(id) => write!(f, "worker {id}"),
            Decision::Queue => f.write_str("queue"),
            Decision::Reject(reason) => write!(f, "reject: {reason}"),
        }
    }
}

impl Decision {
    /// Reads back what [`Decision`]'s `Display` writes.
    pub fn parse(text: &str) -> Option<Decision> {
        match text {
            "queue" => Some(Decision::Queue),
            _ => match text.strip_prefix("worker ") {
                Some(id) => id.parse().ok().map(Decision::Worker),
                None => text.strip_prefix("reject: ").map(|reason| Decision::Reject(reason.to_owned())),
            },
        }
    }
}

/// Upper bounds, in nanoseconds, of the decision-latency buckets; one more
/// bucket holds everything slower.
pub const DECISION_BUCKETS_NS: [u64; 10] =
    [1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000, 1_000_000, 10_000_000];

/// How long a router's decisions took: a histogram over
/// [`DECISION_BUCKETS_NS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecisionLatency {
    /// Decisions per bucket (not cumulative); the last one counts those
    /// above every bound.
    pub counts: [u64; DECISION_BUCKETS_NS.len() + 1],
    pub sum_ns: u64,
}

/// What a pool knows about the policy that routes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterReport {
    /// `builtin:NAME` or the component path of the version routing now.
    pub policy: String,
    /// The live version's declared `name@version` and sha256 prefix.
    pub version: String,
    /// Routing calls answered (by the policy or its fallback).
    pub decisions: u64,
    /// Calls decided by the native fallback because the policy faulted.
    pub fallbacks: u64,
    /// Faults of every kind.
    pub faults: u64,
}

/// Decides where each request of one pool goes. Called by the pool's
/// dispatcher only, so it may keep state without locks; it must be cheap
/// and must always answer (a router that can fail falls back itself).
pub trait Router: Send {
    /// Chooses where `request` goes; `workers` lists every worker of the
    /// pool, including ones that cannot take work now.
    fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Decision;

    /// A call this router placed finished.
    fn on_complete(&mut self, worker: u32, tool: &str, ok: bool, latency: Duration);

    /// The policy's name and counters, for status.
    fn report(&self) -> RouterReport;
}

/// Whether `worker` can take one more call now.
pub fn has_room(worker: &WorkerView) -> bool {
    worker.state == WorkerState::Ready && worker.in_flight < worker.capacity
}

/// Same rule as `builtin:least-loaded` and the guest SDK's
/// `decide_least_loaded`: among ready workers with room, the lowest
/// `in_flight / capacity`, then the lowest id; `Queue` when none can take
/// the request.
pub fn least_loaded(workers: &[WorkerView]) -> Decision {
    workers
        .iter()
        .filter(|w| has_room(w))
        .min_by(|a, b| {
            let a_load = u64::from(a.in_flight) * u64::from(b.capacity);
            let b_load = u64::from(b.in_flight) * u64::from(a.capacity);
            a_load.cmp(&b_load).then(a.id.cmp(&b.id))
        })
        .map_or(Decision::Queue, |w| Decision::Worker(w.id))
}

/// The native least-loaded rule as a [`Router`]: no plugin, no state.
#[derive(Debug, Default)]
pub struct LeastLoaded {
    decisions: u64,
}

impl Router for LeastLoaded {
    fn route(&mut self, _request: &RequestView, workers: &[WorkerView]) -> Decision {
        self.decisions += 1;
        least_loaded(workers)
    }

    fn on_complete(&mut self, _worker: u32, _tool: &str, _ok: bool, _latency: Duration) {}

    fn report(&self) -> RouterReport {
        RouterReport { policy: "native:least-loaded".to_owned(), decisions: self.decisions, ..RouterReport::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same worker table as the guest SDK sees it.
    fn guest_view(worker: &WorkerView) -> pitboss_guest::WorkerView {
        pitboss_guest::WorkerView {
            id: worker.id,
            capacity: worker.capacity,
            in_flight: worker.in_flight,
            served: worker.served,
            age_ms: worker.age_ms,
            rss_bytes: worker.rss_bytes,
            state: match worker.state {
                WorkerState::Starting => pitboss_guest::WorkerState::Starting,
                WorkerState::Ready => pitboss_guest::WorkerState::Ready,
                WorkerState::Draining => pitboss_guest::WorkerState::Draining,
            },
        }
    }

    fn host_decision(decision: pitboss_guest::Decision) -> Decision {
        match decision {
            pitboss_guest::Decision::Worker(id) => Decision::Worker(id),
            pitboss_guest::Decision::Queue => Decision::Queue,
            pitboss_guest::Decision::Reject(reason) => Decision::Reject(reason),
        }
    }

    fn worker(id: u32, capacity: u32, in_flight: u32, state: WorkerState) -> WorkerView {
        WorkerView { id, capacity, in_flight, served: u64::from(id) * 7, age_ms: 10, rss_bytes: 0, state }
    }

    /// The host's fallback and `builtin:least-loaded` (built on the SDK)
    /// must choose alike, or a plugin fault would change where calls go.
    #[test]
    fn native_least_loaded_agrees_with_the_guest_sdk() {
        use WorkerState::{Draining, Ready, Starting};
        let cases: Vec<(&str, Vec<WorkerView>, Decision)> = vec![
            ("empty pool", vec![], Decision::Queue),
            ("one idle", vec![worker(0, 1, 0, Ready)], Decision::Worker(0)),
            ("ties go to the lowest id", vec![worker(3, 1, 0, Ready), worker(1, 1, 0, Ready)], Decision::Worker(1)),
            ("lowest load", vec![worker(0, 4, 3, Ready), worker(1, 4, 1, Ready)], Decision::Worker(1)),
            ("load is a fraction", vec![worker(0, 2, 1, Ready), worker(1, 8, 3, Ready)], Decision::Worker(1)),
            ("equal fractions tie", vec![worker(5, 2, 1, Ready), worker(2, 4, 2, Ready)], Decision::Worker(2)),
            ("full workers wait", vec![worker(0, 1, 1, Ready), worker(1, 2, 2, Ready)], Decision::Queue),
            ("not starting", vec![worker(0, 1, 0, Starting), worker(1, 1, 0, Ready)], Decision::Worker(1)),
            ("not draining", vec![worker(0, 4, 0, Draining), worker(1, 4, 3, Ready)], Decision::Worker(1)),
            ("nobody ready", vec![worker(0, 1, 0, Starting), worker(1, 1, 0, Draining)], Decision::Queue),
            ("zero capacity", vec![worker(0, 0, 0, Ready)], Decision::Queue),
            (
                "huge counts",
                vec![worker(0, u32::MAX, u32::MAX - 1, Ready), worker(1, u32::MAX, u32::MAX - 2, Ready)],
                Decision::Worker(1),
            ),
        ];
        for (case, workers, expected) in cases {
            let guest: Vec<pitboss_guest::WorkerView> = workers.iter().map(guest_view).collect();
            assert_eq!(least_loaded(&workers), expected, "native: {case}");
            assert_eq!(host_decision(pitboss_guest::decide_least_loaded(&guest)), expected, "guest SDK: {case}");
        }
    }

    #[test]
    fn the_native_router_counts_its_decisions() {
        let mut router = LeastLoaded::default();
        let request = RequestView { tool: "t".into(), session: None, payload_size: 0, metadata: Vec::new() };
        assert_eq!(router.route(&request, &[worker(0, 1, 0, WorkerState::Ready)]), Decision::Worker(0));
        assert_eq!(router.report().decisions, 1);
    }
}
