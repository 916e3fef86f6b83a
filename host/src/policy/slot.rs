//! The swappable slot a pool reads its live routing policy from, with what
//! a swap needs around it: the version it replaced (`last_good`), the
//! history of live versions, the pool's recent decisions for replay, and
//! the circuit breaker that rolls a faulting version back.
//!
//! Must not load or check candidates (`swap` does) or route (`router`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Result};
use arc_swap::ArcSwap;

use super::replay::DecisionLog;
use super::router::VersionUsage;
use super::{PluginMeta, RouterPolicy};

/// Live periods a slot remembers, newest last.
const HISTORY: usize = 32;

/// Holds one pool's live router version. Publishing is one atomic pointer
/// store; each [`super::RouterInstance`] compares pointers before every
/// decision and rebuilds itself on the new version, so no request ever sees
/// a half-installed policy.
pub struct RouterSlot {
    pool: String,
    live: ArcSwap<RouterPolicy>,
    decisions: DecisionLog,
    versions: Mutex<Versions>,
}

struct Versions {
    /// The version the live one replaced: where a rollback goes.
    last_good: Option<Arc<RouterPolicy>>,
    history: VecDeque<LivePeriod>,
    /// When the live version faulted, within the breaker's window.
    recent_faults: VecDeque<Instant>,
    /// Promotions and rollbacks since the host started (the history is
    /// trimmed; these are not).
    changes: PolicyChanges,
}

/// How often a pool's routing policy changed since the host started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyChanges {
    /// New versions made live (swaps).
    pub swaps: u64,
    /// Rollbacks, asked for or by the circuit breaker.
    pub rollbacks: u64,
}

/// One stretch of time a version was live.
struct LivePeriod {
    label: String,
    sha256: String,
    declared: Option<String>,
    loaded_at: SystemTime,
    live_since: SystemTime,
    promoted_by: String,
    usage: Arc<VersionUsage>,
    /// Its usage when it went live, so each period counts its own.
    usage_at_start: (u64, u64),
    ended: Option<(SystemTime, String, (u64, u64))>,
}

/// A version's live period as status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyVersion {
    /// `builtin:NAME`, the component path, or where its bytes came from.
    pub label: String,
    pub sha256: String,
    /// `name@version` from the plugin's metadata, if it has one.
    pub declared: Option<String>,
    pub loaded_at: SystemTime,
    pub live_since: SystemTime,
    /// `config`, `swap by …`, `rollback by …`, `circuit breaker: …`.
    pub promoted_by: String,
    /// Routing decisions and faults while live.
    pub decisions: u64,
    pub faults: u64,
    /// When and why it stopped being live; `None` for the live one.
    pub ended: Option<(SystemTime, String)>,
}

/// A version put back by a rollback, and the one it replaced.
pub struct Rollback {
    pub restored: Arc<RouterPolicy>,
    pub replaced: Arc<RouterPolicy>,
}

impl std::fmt::Debug for Rollback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rollback {{ restored: {}, replaced: {} }}", self.restored.label(), self.replaced.label())
    }
}

impl RouterSlot {
    /// A slot for `pool` whose first version came from the config.
    pub fn new(pool: &str, policy: Arc<RouterPolicy>) -> Arc<Self> {
        let mut history = VecDeque::new();
        history.push_back(LivePeriod::start(&policy, "config".to_owned()));
        Arc::new(RouterSlot {
            pool: pool.to_owned(),
            live: ArcSwap::new(policy),
            decisions: DecisionLog::default(),
            versions: Mutex::new(Versions {
                last_good: None,
                history,
                recent_faults: VecDeque::new(),
                changes: PolicyChanges::default(),
            }),
        })
    }

    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The version new decisions use.
    pub fn current(&self) -> Arc<RouterPolicy> {
        self.live.load_full()
    }

    pub(super) fn is_current(&self, policy: &Arc<RouterPolicy>) -> bool {
        Arc::ptr_eq(&self.live.load(), policy)
    }

    /// The pool's recent decisions, for replaying a candidate.
    pub fn decisions(&self) -> &DecisionLog {
        &self.decisions
    }

    /// Makes `policy` live for every later decision; the version it replaces
    /// becomes `last_good`. Returns that version.
    pub fn promote(&self, policy: Arc<RouterPolicy>, promoted_by: String) -> Arc<RouterPolicy> {
        let mut versions = self.lock();
        let replaced = self.live.swap(policy.clone());
        versions.end_live_period(&format!("replaced by {}", policy.label()));
        versions.history.push_back(LivePeriod::start(&policy, promoted_by));
        versions.trim();
        versions.last_good = Some(replaced.clone());
        versions.recent_faults.clear();
        versions.changes.swaps += 1;
        replaced
    }

    /// Puts `last_good` back. There is then no `last_good` until the next
    /// promotion, so a breaker never rolls "back" onto the faulty version.
    pub fn rollback(&self, by: String) -> Result<Rollback> {
        let mut versions = self.lock();
        let Some(restored) = versions.last_good.take() else {
            bail!(
                "pool `{}` has no earlier routing policy to roll back to: {} has been live since the host started or \
                 the last rollback",
                self.pool,
                self.current().label()
            );
        };
        let replaced = self.live.swap(restored.clone());
        versions.end_live_period(&by);
        versions.history.push_back(LivePeriod::start(&restored, by));
        versions.trim();
        versions.recent_faults.clear();
        versions.changes.rollbacks += 1;
        Ok(Rollback { restored, replaced })
    }

    /// Counts a fault of `policy`; when the live version faults
    /// `rollback_after_faults` times within `rollback_window`, it is rolled
    /// back to `last_good`, if there is one.
    pub(super) fn note_fault(&self, policy: &Arc<RouterPolicy>, now: Instant) {
        let limits = policy.limits();
        if limits.rollback_after_faults == 0 || !self.is_current(policy) {
            return;
        }
        let tripped = {
            let mut versions = self.lock();
            versions.recent_faults.push_back(now);
            while versions.recent_faults.front().is_some_and(|at| now.duration_since(*at) > limits.rollback_window) {
                versions.recent_faults.pop_front();
            }
            versions.recent_faults.len() >= limits.rollback_after_faults as usize && versions.last_good.is_some()
        };
        if !tripped {
            return;
        }
        let reason = format!(
            "circuit breaker: {} faults within {:?} (router_limits.rollback_after_faults)",
            limits.rollback_after_faults, limits.rollback_window
        );
        if let Ok(rollback) = self.rollback(reason.clone()) {
            tracing::error!(
                pool = %self.pool,
                faulty = %rollback.replaced.label(),
                faulty_plugin = %rollback.replaced.meta(),
                restored = %rollback.restored.label(),
                restored_plugin = %rollback.restored.meta(),
                "{reason}: routing policy rolled back"
            );
        }
    }

    /// The live version first, then earlier live periods, newest first.
    pub fn history(&self) -> Vec<PolicyVersion> {
        self.lock().history.iter().rev().map(LivePeriod::show).collect()
    }

    /// Each version that has been live, once, labelled as status labels
    /// the live one (`name@version (sha256 …)`), with its usage over every
    /// stretch it was live.
    pub fn version_usage(&self) -> Vec<(String, Arc<VersionUsage>)> {
        let mut versions: Vec<(String, Arc<VersionUsage>)> = Vec::new();
        for period in &self.lock().history {
            if !versions.iter().any(|(_, usage)| Arc::ptr_eq(usage, &period.usage)) {
                let meta = PluginMeta { declared: period.declared.clone(), sha256: period.sha256.clone() };
                versions.push((meta.to_string(), period.usage.clone()));
            }
        }
        versions
    }

    pub fn changes(&self) -> PolicyChanges {
        self.lock().changes
    }

    /// Whether a rollback has somewhere to go.
    pub fn has_last_good(&self) -> bool {
        self.lock().last_good.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, Versions> {
        self.versions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Versions {
    fn end_live_period(&mut self, why: &str) {
        if let Some(live) = self.history.back_mut().filter(|period| period.ended.is_none()) {
            live.ended = Some((SystemTime::now(), why.to_owned(), usage_now(&live.usage)));
        }
    }

    fn trim(&mut self) {
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }
}

impl LivePeriod {
    fn start(policy: &RouterPolicy, promoted_by: String) -> Self {
        LivePeriod {
            label: policy.label().to_owned(),
            sha256: policy.meta().sha256.clone(),
            declared: policy.meta().declared.clone(),
            loaded_at: policy.loaded_at(),
            live_since: SystemTime::now(),
            promoted_by,
            usage: policy.usage().clone(),
            usage_at_start: usage_now(policy.usage()),
            ended: None,
        }
    }

    fn show(&self) -> PolicyVersion {
        let (decisions, faults) = self.ended.as_ref().map_or_else(|| usage_now(&self.usage), |(_, _, usage)| *usage);
        PolicyVersion {
            label: self.label.clone(),
            sha256: self.sha256.clone(),
            declared: self.declared.clone(),
            loaded_at: self.loaded_at,
            live_since: self.live_since,
            promoted_by: self.promoted_by.clone(),
            decisions: decisions - self.usage_at_start.0,
            faults: faults - self.usage_at_start.1,
            ended: self.ended.as_ref().map(|(at, why, _)| (*at, why.clone())),
        }
    }
}

fn usage_now(usage: &VersionUsage) -> (u64, u64) {
    (usage.decisions(), usage.faults())
}
