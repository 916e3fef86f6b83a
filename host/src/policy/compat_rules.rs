//! Compatibility rules: the plugin that says which installed Python
//! libraries are safe in a profile, and which profile to advise.
//!
//! Owns the `compat-rules` bindings and the host's [`Finding`] types. Must
//! not run interpreters: `python` detects, this only judges.

use anyhow::Result;

use super::convert;
use super::engine::PolicyEngine;
use super::fault::{FaultKind, PolicyFault};
use super::meta::PluginMeta;
use super::rules::RulesComponent;
use super::source::{PolicySource, BUILTIN_COMPAT_RULES};
use crate::config::Profile;
use crate::python::{Distribution, PythonEnv};

pub(super) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "compat-rules",
        with: { "pitboss:policy/types": crate::policy::contract },
    });
}

use bindings::exports::pitboss::policy::compatibility::GuestIndices;

/// How safe a library is in a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Unsafe,
    /// Not in the rules' matrix: nothing is known.
    Unknown,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Unsafe => "unsafe",
            Level::Unknown => "unknown",
        }
    }
}

/// The verdict on one library.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub library: String,
    /// The installed version the verdict is about.
    pub version: String,
    pub level: Level,
    pub message: String,
    pub workaround: Option<String>,
}

/// The profile the rules advise, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recommendation {
    pub profile: Profile,
    pub reasons: Vec<String>,
}

/// A loaded compat-rules plugin.
pub struct CompatRules {
    component: RulesComponent<GuestIndices>,
}

impl CompatRules {
    /// Loads `spec` (`builtin:NAME` or a component path).
    pub fn load(engine: &PolicyEngine, spec: &str) -> Result<Self> {
        Self::from_source(engine, &PolicySource::parse_from(spec, BUILTIN_COMPAT_RULES)?)
    }

    /// Loads the rules at `source`, which may be uploaded bytes.
    pub fn from_source(engine: &PolicyEngine, source: &PolicySource) -> Result<Self> {
        let component = RulesComponent::load(
            engine,
            source,
            "compat rules",
            "export_compat_rules",
            GuestIndices::new,
            |indices, store, instance| indices.load(store, instance).map(drop),
        )?;
        Ok(CompatRules { component })
    }

    pub fn label(&self) -> &str {
        self.component.label()
    }

    pub fn meta(&self) -> &PluginMeta {
        self.component.meta()
    }

    /// One finding per library, in order, for a pool of `profile` on `env`.
    pub fn check(
        &self,
        env: &PythonEnv,
        profile: Profile,
        libraries: &[Distribution],
    ) -> Result<Vec<Finding>, PolicyFault> {
        let (wit_env, wit_libraries) = (convert::python_env(env), convert::libraries(libraries));
        let answer = self.component.call("check", |indices, store, instance| {
            indices.load(&mut *store, instance)?.call_check(&mut *store, &wit_env, profile.into(), &wit_libraries)
        })?;
        if answer.len() != libraries.len() {
            return Err(PolicyFault {
                kind: FaultKind::InvalidAnswer,
                detail: format!("answered {} findings for {} libraries", answer.len(), libraries.len()),
            });
        }
        Ok(answer.into_iter().zip(libraries).map(|(finding, library)| convert::finding(finding, library)).collect())
    }

    /// The profile the rules advise for `env` with `libraries`.
    pub fn recommend(&self, env: &PythonEnv, libraries: &[Distribution]) -> Result<Recommendation, PolicyFault> {
        let (wit_env, wit_libraries) = (convert::python_env(env), convert::libraries(libraries));
        let answer = self.component.call("recommend-profile", |indices, store, instance| {
            indices.load(&mut *store, instance)?.call_recommend_profile(&mut *store, &wit_env, &wit_libraries)
        })?;
        Recommendation::try_from(answer)
    }
}
