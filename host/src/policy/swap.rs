//! The gated swap pipeline: a candidate router goes live only after every
//! step passes. Load (size, sha256) → static checks (contract version,
//! imports, memory; `vetting`) and compile → `init` for the pool → replay
//! over the pool's recent decisions (`replay`) → promote into the slot.
//! A dry run stops before promoting. Any refusal leaves the live version in
//! place and says which step refused and why.
//!
//! Runs synchronously and may compile for a while: callers run it on a
//! blocking thread, never on a dispatcher.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::contract::PoolInfo;
use super::engine::PolicyEngine;
use super::meta::PluginMeta;
use super::replay::{replay, ReplayReport};
use super::router::RouterPolicy;
use super::slot::RouterSlot;
use super::vetting::MAX_COMPONENT_BYTES;
use crate::config::PolicyLimits;

/// A router to try: its bytes and what to call it.
pub struct Candidate {
    /// Shown in status and logs: a path, or where the bytes came from.
    pub label: String,
    pub wasm: Vec<u8>,
}

/// How to swap.
#[derive(Clone, Debug, Default)]
pub struct SwapOptions {
    /// Refuse the candidate unless its sha256 (hex) is this.
    pub expected_sha256: Option<String>,
    /// Stop after the replay and report; promote nothing.
    pub dry_run: bool,
    /// Who or what asked, for the policy history.
    pub requested_by: String,
    /// Options for the candidate's `init` in place of the pool's
    /// `router_options`; `None` keeps those.
    pub router_options: Option<Vec<(String, String)>>,
}

/// The pipeline's steps, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapStage {
    Load,
    Check,
    Init,
    Replay,
    /// Rules only: the running config checked under the candidate.
    Revalidate,
}

impl SwapStage {
    pub const ALL: [SwapStage; 5] =
        [SwapStage::Load, SwapStage::Check, SwapStage::Init, SwapStage::Replay, SwapStage::Revalidate];

    pub fn as_str(self) -> &'static str {
        match self {
            SwapStage::Load => "load",
            SwapStage::Check => "static checks",
            SwapStage::Init => "init",
            SwapStage::Replay => "replay",
            SwapStage::Revalidate => "revalidation of the running config",
        }
    }

    pub fn parse(text: &str) -> Option<SwapStage> {
        SwapStage::ALL.into_iter().find(|stage| stage.as_str() == text)
    }
}

impl fmt::Display for SwapStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the pipeline did with a candidate.
#[derive(Clone, Debug)]
pub struct SwapReport {
    pub pool: String,
    pub candidate: String,
    pub meta: PluginMeta,
    /// Whether compilation was skipped thanks to the artifact cache.
    pub compiled_from_cache: bool,
    /// The replay, when the pipeline got that far.
    pub replay: Option<ReplayReport>,
    /// The step that refused the candidate, and why; `None` when it passed.
    pub refused: Option<(SwapStage, String)>,
    /// The label of the version it replaced, when it went live.
    pub replaced: Option<String>,
    /// Time from the request to the candidate being live (or refused).
    pub elapsed: Duration,
}

impl SwapReport {
    /// The report of a candidate not checked yet.
    pub fn new(pool: &str, candidate: &Candidate) -> Self {
        SwapReport {
            pool: pool.to_owned(),
            candidate: candidate.label.clone(),
            meta: PluginMeta::of(&candidate.wasm),
            compiled_from_cache: false,
            replay: None,
            refused: None,
            replaced: None,
            elapsed: Duration::ZERO,
        }
    }

    pub fn promoted(&self) -> bool {
        self.replaced.is_some()
    }
}

/// Runs `candidate` through every gate for the pool behind `slot` and, if
/// it passes and this is no dry run, makes it live.
pub fn swap_router(
    engine: &PolicyEngine,
    slot: &RouterSlot,
    pool: &PoolInfo,
    limits: PolicyLimits,
    candidate: Candidate,
    options: &SwapOptions,
) -> SwapReport {
    let started = Instant::now();
    let mut report = SwapReport::new(&pool.name, &candidate);
    let meta = report.meta.clone();
    let refuse = |mut report: SwapReport, stage, reason: String| {
        tracing::warn!(pool = %report.pool, candidate = %report.candidate, plugin = %report.meta, %stage, %reason, "routing policy candidate refused; the live one keeps serving");
        report.refused = Some((stage, reason));
        report.elapsed = started.elapsed();
        report
    };

    if let Err(reason) = load_gate(&candidate, &meta, options) {
        return refuse(report, SwapStage::Load, reason);
    }
    let policy = match RouterPolicy::from_bytes(
        engine,
        candidate.label,
        &candidate.wasm,
        limits,
        options.router_options.clone(),
    ) {
        Ok(policy) => policy,
        Err(err) => return refuse(report, SwapStage::Check, format!("{err:#}")),
    };
    report.compiled_from_cache = policy.compiled_from_cache();
    if let Err(fault) = policy.check_init(pool) {
        return refuse(report, SwapStage::Init, fault.to_string());
    }
    let replayed = replay(&policy, pool, &slot.decisions().recent());
    let refusal = replayed.refusal.clone();
    report.replay = Some(replayed);
    if let Some(reason) = refusal {
        return refuse(report, SwapStage::Replay, reason);
    }
    if options.dry_run {
        report.elapsed = started.elapsed();
        return report;
    }
    let replaced = promote(slot, policy, options);
    report.replaced = Some(replaced.label().to_owned());
    report.elapsed = started.elapsed();
    report
}

/// The load step of every kind of swap: the size limit and the expected
/// sha256.
pub fn load_gate(candidate: &Candidate, meta: &PluginMeta, options: &SwapOptions) -> Result<(), String> {
    if candidate.wasm.len() > MAX_COMPONENT_BYTES {
        return Err(format!("it is {} bytes, over the limit of {MAX_COMPONENT_BYTES} bytes", candidate.wasm.len()));
    }
    match &options.expected_sha256 {
        Some(expected) if !expected.eq_ignore_ascii_case(&meta.sha256) => {
            Err(format!("its sha256 is {}, not the expected {expected}", meta.sha256))
        }
        _ => Ok(()),
    }
}

fn promote(slot: &RouterSlot, policy: Arc<RouterPolicy>, options: &SwapOptions) -> Arc<RouterPolicy> {
    let label = policy.label().to_owned();
    let plugin = policy.meta().to_string();
    let replaced = slot.promote(policy, format!("swap by {}", options.requested_by));
    tracing::info!(
        pool = %slot.pool(),
        policy = %label,
        %plugin,
        previous = %replaced.label(),
        previous_plugin = %replaced.meta(),
        by = %options.requested_by,
        "routing policy swapped",
    );
    replaced
}
