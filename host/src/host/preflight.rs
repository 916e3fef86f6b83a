//! The checks [`crate::Host`] runs on a config before it starts any pool:
//! the config rules (errors refuse the config, warnings are logged) and,
//! for thread pools, the compat rules on the pool's interpreter (with
//! `compat_enforce = "deny"`, an unsafe library refuses the pool).
//!
//! Lives beside [`crate::Host`], not in `policy`, because it runs Python
//! (interpreter detection) as well as policies. Must not start or stop
//! pools: it only says whether the host may.

use anyhow::{bail, Context, Result};

use crate::config::{Config, Enforcement, Profile, Severity};
use crate::policy::{check_config, CompatRules, Level, PolicyEngine};
use crate::python;

/// Runs the config rules and, for thread pools, the compat rules; logs
/// what they say and fails when the host must not start `config`.
pub fn preflight(engine: &PolicyEngine, config: &Config) -> Result<()> {
    let diagnostics = check_config(engine, config)?;
    for diagnostic in &diagnostics {
        let hint = diagnostic.hint.as_deref().unwrap_or("");
        match diagnostic.severity {
            Severity::Error => {}
            Severity::Warning => tracing::warn!(field = %diagnostic.field, hint, "config: {}", diagnostic.message),
            Severity::Info => tracing::info!(field = %diagnostic.field, hint, "config: {}", diagnostic.message),
        }
    }
    let errors: Vec<String> =
        diagnostics.iter().filter(|d| d.is_error()).map(|d| d.to_string().replace('\n', "\n    ")).collect();
    if !errors.is_empty() {
        bail!(
            "config {} is refused by its rules ({}):\n  {}\n(`pitboss check --config {0}` lists every diagnostic)",
            config.source.display(),
            config.host.config_rules,
            errors.join("\n  ")
        );
    }
    check_thread_pools(engine, config)
}

fn check_thread_pools(engine: &PolicyEngine, config: &Config) -> Result<()> {
    if !config.pools.iter().any(|pool| pool.profile == Profile::Thread) {
        return Ok(());
    }
    check_thread_pools_with(&CompatRules::load(engine, &config.host.compat_rules)?, config)
}

/// The compat check of every thread pool of `config` under `rules`.
pub(super) fn check_thread_pools_with(rules: &CompatRules, config: &Config) -> Result<()> {
    let thread_pools: Vec<_> = config.pools.iter().filter(|pool| pool.profile == Profile::Thread).collect();
    let deny = config.host.compat_enforce == Enforcement::Deny;
    let cache = config.host.python_cache();
    let mut refused = Vec::new();
    for pool in thread_pools {
        let env = match python::detect(&pool.python, Some(&cache)) {
            Ok(env) => env,
            Err(err) if deny => {
                return Err(err).with_context(|| format!("pool `{}`: cannot check its libraries", pool.name))
            }
            Err(err) => {
                tracing::warn!(pool = %pool.name, "cannot check the libraries of a thread pool: {err}");
                continue;
            }
        };
        let findings = rules
            .check(&env, pool.profile, &env.distributions)
            .map_err(|fault| anyhow::anyhow!("compat rules {} ({}) failed: {fault}", rules.label(), rules.meta()))?;
        for finding in findings.iter().filter(|f| matches!(f.level, Level::Warning | Level::Unsafe)) {
            tracing::warn!(
                pool = %pool.name,
                library = %finding.library,
                version = %finding.version,
                level = finding.level.as_str(),
                workaround = finding.workaround.as_deref().unwrap_or(""),
                "compat: {}",
                finding.message
            );
            if finding.level == Level::Unsafe {
                refused.push(format!(
                    "pool `{}`: {} {}: {}",
                    pool.name, finding.library, finding.version, finding.message
                ));
            }
        }
    }
    if deny && !refused.is_empty() {
        bail!(
            "host.compat_enforce = \"deny\": thread pools use libraries that are unsafe in threads:\n  {}\nuse profile = \"process\" for these pools, upgrade the libraries, or set compat_enforce = \"warn\"",
            refused.join("\n  ")
        );
    }
    Ok(())
}
