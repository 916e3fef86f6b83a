//! Swapping the host's config rules and compat rules while it runs. They
//! are host-wide and are not called per request, so their gate is not a
//! replay but a revalidation: the running config is checked under the
//! candidate (config rules: no error; compat rules: no thread pool that
//! `compat_enforce = "deny"` would refuse), and a candidate under which it
//! would be invalid is refused. The live version of each, the one it
//! replaced and the history of live versions are kept for `ListPolicies`
//! and rollback.

use std::collections::VecDeque;
use std::time::{Instant, SystemTime};

use anyhow::Result;

use super::preflight::check_thread_pools_with;
use crate::config::Config;
use crate::policy::{
    check_config_with, load_gate, Candidate, CompatRules, ConfigRules, PluginMeta, PolicyEngine, PolicySource,
    PolicyVersion, SwapOptions, SwapReport, SwapStage,
};

/// Live periods kept per kind, newest last.
const HISTORY: usize = 32;

/// The kinds of host-wide policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RulesKind {
    Config,
    Compat,
}

impl RulesKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RulesKind::Config => "config rules",
            RulesKind::Compat => "compat rules",
        }
    }
}

/// A loaded rules component of either kind, as history sees it.
#[derive(Clone)]
pub(super) struct RulesVersion {
    label: String,
    meta: PluginMeta,
    loaded_at: SystemTime,
}

/// The live version of one kind, the one it replaced, and their history.
pub(super) struct RulesSlot {
    live: RulesVersion,
    last_good: Option<RulesVersion>,
    history: VecDeque<PolicyVersion>,
}

impl RulesSlot {
    /// The slot of the rules the host started with.
    pub(super) fn started_with(label: &str, meta: &PluginMeta) -> Self {
        let live = RulesVersion { label: label.to_owned(), meta: meta.clone(), loaded_at: SystemTime::now() };
        let mut slot = RulesSlot { live: live.clone(), last_good: None, history: VecDeque::new() };
        slot.start(live, "config".to_owned());
        slot
    }

    fn start(&mut self, version: RulesVersion, promoted_by: String) {
        if let Some(current) = self.history.back_mut().filter(|period| period.ended.is_none()) {
            current.ended = Some((SystemTime::now(), format!("{promoted_by}: replaced by {}", version.label)));
        }
        self.history.push_back(PolicyVersion {
            label: version.label.clone(),
            sha256: version.meta.sha256.clone(),
            declared: version.meta.declared.clone(),
            loaded_at: version.loaded_at,
            live_since: SystemTime::now(),
            promoted_by,
            decisions: 0,
            faults: 0,
            ended: None,
        });
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        self.live = version;
    }

    fn promote(&mut self, version: RulesVersion, promoted_by: String) -> String {
        let replaced = self.live.clone();
        self.start(version, promoted_by);
        let label = replaced.label.clone();
        self.last_good = Some(replaced);
        label
    }

    /// Puts back the version the live one replaced; `(restored, replaced)`.
    pub(super) fn rollback(&mut self, kind: RulesKind, by: String) -> Result<(String, String), String> {
        let Some(restored) = self.last_good.take() else {
            return Err(format!(
                "the host has no earlier {} to roll back to: {} has been live since the host started or the last rollback",
                kind.as_str(),
                self.live.label
            ));
        };
        let replaced = self.live.label.clone();
        let label = restored.label.clone();
        self.start(restored, by);
        Ok((label, replaced))
    }

    /// Newest first: the first is live.
    pub(super) fn history(&self) -> Vec<PolicyVersion> {
        self.history.iter().rev().cloned().collect()
    }

    pub(super) fn can_roll_back(&self) -> bool {
        self.last_good.is_some()
    }
}

/// Loads `candidate` as `kind` rules and checks the running `config` under
/// it. Returns the report and, when every step passed, the version to
/// promote.
pub(super) fn check_candidate(
    engine: &PolicyEngine,
    config: &Config,
    kind: RulesKind,
    candidate: Candidate,
    options: &SwapOptions,
) -> (SwapReport, Option<RulesVersion>) {
    let started = Instant::now();
    let mut report = SwapReport::new("", &candidate);
    let meta = report.meta.clone();
    let outcome = (|| {
        load_gate(&candidate, &meta, options).map_err(|why| (SwapStage::Load, why))?;
        let source = PolicySource::Uploaded { label: candidate.label.clone(), wasm: candidate.wasm.into() };
        let check = |err: anyhow::Error| (SwapStage::Check, format!("{err:#}"));
        let revalidate = |err: anyhow::Error| (SwapStage::Revalidate, format!("{err:#}"));
        match kind {
            RulesKind::Config => {
                let rules = ConfigRules::from_source(engine, &source).map_err(check)?;
                let diagnostics = check_config_with(&rules, config).map_err(revalidate)?;
                let errors: Vec<String> =
                    diagnostics.iter().filter(|d| d.is_error()).map(ToString::to_string).collect();
                if !errors.is_empty() {
                    let why = format!(
                        "the running config {} would be invalid:\n  {}",
                        config.source.display(),
                        errors.join("\n  ")
                    );
                    return Err((SwapStage::Revalidate, why));
                }
            }
            RulesKind::Compat => {
                let rules = CompatRules::from_source(engine, &source).map_err(check)?;
                check_thread_pools_with(&rules, config).map_err(revalidate)?;
            }
        }
        Ok(RulesVersion { label: candidate.label, meta, loaded_at: SystemTime::now() })
    })();
    report.elapsed = started.elapsed();
    match outcome {
        Ok(version) => (report, Some(version)),
        Err((stage, why)) => {
            tracing::warn!(kind = kind.as_str(), candidate = %report.candidate, %stage, reason = %why, "rules candidate refused; the live rules stay");
            report.refused = Some((stage, why));
            (report, None)
        }
    }
}

/// Makes `version` the live `kind` rules of `slot`; fills in the report.
pub(super) fn promote(slot: &mut RulesSlot, kind: RulesKind, version: RulesVersion, report: &mut SwapReport, by: &str) {
    let label = version.label.clone();
    let plugin = version.meta.to_string();
    let replaced = slot.promote(version, format!("swap by {by}"));
    tracing::info!(kind = kind.as_str(), rules = %label, %plugin, previous = %replaced, by, "rules swapped");
    report.replaced = Some(replaced);
}

/// The live config rules and compat rules of a host.
pub(super) struct HostRules {
    pub(super) config: RulesSlot,
    pub(super) compat: RulesSlot,
}

impl HostRules {
    pub(super) fn slot(&mut self, kind: RulesKind) -> &mut RulesSlot {
        match kind {
            RulesKind::Config => &mut self.config,
            RulesKind::Compat => &mut self.compat,
        }
    }
}
