//! A pool's recent routing decisions, and replaying them through a
//! candidate policy before it goes live.
//!
//! The live router records each decision it acts on (the request view, the
//! worker snapshot it saw, the decision) in a bounded ring. A candidate is
//! run over those records in a deterministic sandbox (fixed clocks and
//! random bytes, so two replays of one log agree) and gated: no fault,
//! every decision valid for its snapshot, per-call p99 within the budget.
//!
//! Must not touch the live instance or the slot: replay builds its own.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::contract::PoolInfo;
use super::fault::PolicyFault;
use super::router::{check_decision, RouterPolicy};
use crate::pool::{Decision, RequestView, WorkerView};

/// Records a pool keeps for replay.
pub const DECISION_LOG_CAPACITY: usize = 512;

/// Divergent decisions a report shows as examples.
const EXAMPLES: usize = 5;

/// One decision as the live policy took it.
#[derive(Clone, Debug)]
pub struct DecisionRecord {
    pub request: RequestView,
    pub workers: Vec<WorkerView>,
    pub decision: Decision,
}

/// The last [`DECISION_LOG_CAPACITY`] decisions of one pool.
#[derive(Default)]
pub struct DecisionLog {
    records: Mutex<VecDeque<DecisionRecord>>,
}

impl DecisionLog {
    /// Adds a decision, dropping the oldest when full. Skipped rather than
    /// waited for while a replay copies the log: the router's hot path
    /// never blocks on it.
    pub(super) fn record(&self, request: &RequestView, workers: &[WorkerView], decision: &Decision) {
        let Ok(mut records) = self.records.try_lock() else { return };
        let reused = if records.len() == DECISION_LOG_CAPACITY { records.pop_front() } else { None };
        let mut record = reused.unwrap_or_else(|| DecisionRecord {
            request: request.clone(),
            workers: Vec::with_capacity(workers.len()),
            decision: decision.clone(),
        });
        record.request.clone_from(request);
        record.workers.clear();
        record.workers.extend_from_slice(workers);
        record.decision.clone_from(decision);
        records.push_back(record);
    }

    /// A copy of the records, oldest first.
    pub fn recent(&self) -> Vec<DecisionRecord> {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }
}

/// What replaying a candidate over a pool's recent decisions showed.
#[derive(Clone, Debug, Default)]
pub struct ReplayReport {
    /// Decisions replayed.
    pub decisions: usize,
    /// How many differ from what the live policy decided.
    pub differing: usize,
    /// A few of those, oldest first.
    pub examples: Vec<Divergence>,
    pub p50: Duration,
    pub p99: Duration,
    /// The per-call p99 the candidate had to stay within.
    pub budget: Duration,
    /// Why the candidate failed a gate; `None` when it passed them all.
    pub refusal: Option<String>,
}

/// One decision where the candidate and the live policy disagree.
#[derive(Clone, Debug)]
pub struct Divergence {
    pub tool: String,
    pub session: Option<String>,
    pub live: Decision,
    pub candidate: Decision,
}

impl ReplayReport {
    pub fn passed(&self) -> bool {
        self.refusal.is_none()
    }
}

/// Runs `candidate` over `records` for `pool` in a deterministic sandbox
/// and applies the replay gates.
pub fn replay(candidate: &RouterPolicy, pool: &PoolInfo, records: &[DecisionRecord]) -> ReplayReport {
    let budget = candidate.limits().decision_budget;
    let mut report = ReplayReport { budget, ..ReplayReport::default() };
    let mut instance = match candidate.replay_instance(pool) {
        Ok(instance) => instance,
        Err(fault) => {
            report.refusal = Some(format!("it faulted at init in the replay sandbox: {fault}"));
            return report;
        }
    };
    let mut timings = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        let started = Instant::now();
        let decided = instance.route(&record.request, &record.workers);
        timings.push(started.elapsed());
        let decision = match decided.and_then(|d| check_decision(&d, &record.workers).map(|()| d)) {
            Ok(decision) => decision,
            Err(PolicyFault { kind, detail }) => {
                report.refusal = Some(format!(
                    "on recorded decision {} of {} (tool `{}`): {kind}: {detail}",
                    index + 1,
                    records.len(),
                    record.request.tool
                ));
                break;
            }
        };
        report.decisions += 1;
        if decision != record.decision {
            report.differing += 1;
            if report.examples.len() < EXAMPLES {
                report.examples.push(Divergence {
                    tool: record.request.tool.clone(),
                    session: record.request.session.clone(),
                    live: record.decision.clone(),
                    candidate: decision,
                });
            }
        }
    }
    timings.sort();
    let percentile =
        |pct: usize| timings.get((timings.len().saturating_sub(1)) * pct / 100).copied().unwrap_or_default();
    report.p50 = percentile(50);
    report.p99 = percentile(99);
    if report.refusal.is_none() && report.p99 > budget {
        report.refusal = Some(format!(
            "its per-call p99 over {} replayed decisions is {:?}, over the budget of {budget:?} \
             (router_limits.decision_budget)",
            report.decisions, report.p99
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::WorkerState;

    fn request(tool: &str) -> RequestView {
        RequestView { tool: tool.to_owned(), session: None, payload_size: 2, metadata: Vec::new() }
    }

    fn worker(id: u32) -> WorkerView {
        WorkerView { id, capacity: 1, in_flight: 0, served: 0, age_ms: 0, rss_bytes: 0, state: WorkerState::Ready }
    }

    #[test]
    fn the_log_keeps_the_newest_records_up_to_its_capacity() {
        let log = DecisionLog::default();
        for n in 0..DECISION_LOG_CAPACITY + 3 {
            log.record(&request(&format!("t{n}")), &[worker(n as u32)], &Decision::Worker(n as u32));
        }
        let recent = log.recent();
        assert_eq!(recent.len(), DECISION_LOG_CAPACITY);
        assert_eq!(recent[0].request.tool, "t3");
        assert_eq!(recent[0].workers, [worker(3)]);
        assert_eq!(recent.last().unwrap().decision, Decision::Worker(DECISION_LOG_CAPACITY as u32 + 2));
    }
}
