//! What the checks of a config say about it ([`Diagnostic`]), and the keys
//! the host does not know, kept for site rules ([`ExtraSetting`]).
//!
//! Owns these plain data types. Must not know about plugins or WIT: `policy`
//! converts them at its boundary.

use std::fmt;

use serde::Serialize;

/// How serious a [`Diagnostic`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The host refuses to start with this config.
    Error,
    /// Allowed, but probably not what the operator wants.
    Warning,
    /// A note, such as a conversion the host made.
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding about a config: from parsing, from the config rules or from
/// the host's own limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Dotted path of the setting: `pool.hpc.size`, `host.run_dir`.
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(field: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Error, field: field.into(), message: message.into(), hint: None }
    }

    pub fn info(field: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Info, ..Diagnostic::error(field, message) }
    }

    pub fn with_hint(self, hint: impl Into<String>) -> Self {
        Diagnostic { hint: Some(hint.into()), ..self }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// `error: pool.hpc.size: must be ≥ 1 (got 0)`, then `  hint: ...` on its
/// own line when there is one.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.severity, self.field, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// A key the host does not know, as written: a typo, or a site-specific
/// setting for site config rules.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtraSetting {
    /// Relative to its table, dotted when nested (`router_limits.deadline`).
    pub key: String,
    pub value: SettingValue,
    /// The known key of that table closest to this one, when close enough
    /// to be a likely typo.
    pub closest_known: Option<String>,
}

/// The value of an [`ExtraSetting`].
#[derive(Clone, Debug, PartialEq)]
pub enum SettingValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// An array, table or date, as TOML text.
    Toml(String),
}

impl From<toml::Value> for SettingValue {
    fn from(value: toml::Value) -> Self {
        match value {
            toml::Value::String(text) => SettingValue::Text(text),
            toml::Value::Integer(n) => SettingValue::Integer(n),
            toml::Value::Float(x) => SettingValue::Float(x),
            toml::Value::Boolean(b) => SettingValue::Boolean(b),
            other => SettingValue::Toml(other.to_string()),
        }
    }
}
