//! Config rules: the plugin that judges a parsed [`Config`], and
//! [`check_config`], which adds what parsing noted and the host's hard
//! limits to its verdict.
//!
//! Owns the `config-rules` bindings. Must not parse TOML (that is `config`)
//! or start anything.

use anyhow::Result;

use super::convert;
use super::engine::PolicyEngine;
use super::fault::PolicyFault;
use super::meta::PluginMeta;
use super::rules::RulesComponent;
use super::source::{PolicySource, BUILTIN_CONFIG_RULES};
use crate::config::{Config, Diagnostic};

pub(super) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "config-rules",
        with: { "pitboss:policy/types": crate::policy::contract },
    });
}

use bindings::exports::pitboss::policy::config_validation::GuestIndices;

/// A loaded config-rules plugin.
pub struct ConfigRules {
    component: RulesComponent<GuestIndices>,
}

impl ConfigRules {
    /// Loads `spec` (`builtin:NAME` or a component path).
    pub fn load(engine: &PolicyEngine, spec: &str) -> Result<Self> {
        Self::from_source(engine, &PolicySource::parse_from(spec, BUILTIN_CONFIG_RULES)?)
    }

    /// Loads the rules at `source`, which may be uploaded bytes.
    pub fn from_source(engine: &PolicyEngine, source: &PolicySource) -> Result<Self> {
        let component = RulesComponent::load(
            engine,
            source,
            "config rules",
            "export_config_rules",
            GuestIndices::new,
            |indices, store, instance| indices.load(store, instance).map(drop),
        )?;
        Ok(ConfigRules { component })
    }

    /// Where the rules came from: `builtin:NAME` or the component path.
    pub fn label(&self) -> &str {
        self.component.label()
    }

    pub fn meta(&self) -> &PluginMeta {
        self.component.meta()
    }

    /// The plugin's diagnostics for `config`, in its order.
    pub fn validate(&self, config: &Config) -> Result<Vec<Diagnostic>, PolicyFault> {
        let input = convert::host_config(config);
        let answer = self.component.call("validate", |indices, store, instance| {
            indices.load(&mut *store, instance)?.call_validate(&mut *store, &input)
        })?;
        answer.into_iter().map(Diagnostic::try_from).collect()
    }
}

/// Everything there is to say about `config`: what parsing noted, the
/// verdict of its config rules (`host.config_rules`), then any hard limit
/// of the host the rules left unflagged. An error means the host must not
/// start it. Fails only when the rules cannot be loaded or fault.
pub fn check_config(engine: &PolicyEngine, config: &Config) -> Result<Vec<Diagnostic>> {
    check_config_with(&ConfigRules::load(engine, &config.host.config_rules)?, config)
}

/// [`check_config`] with `rules` in place of the config's own.
pub fn check_config_with(rules: &ConfigRules, config: &Config) -> Result<Vec<Diagnostic>> {
    let verdict = rules
        .validate(config)
        .map_err(|fault| anyhow::anyhow!("config rules {} ({}) failed: {fault}", rules.label(), rules.meta()))?;
    let mut all = config.notes.clone();
    all.extend(verdict);
    let hard: Vec<Diagnostic> = config
        .hard_limits()
        .into_iter()
        .filter(|limit| !all.iter().any(|d| d.is_error() && d.field == limit.field))
        .collect();
    all.extend(hard);
    Ok(all)
}
