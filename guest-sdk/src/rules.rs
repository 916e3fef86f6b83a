//! Config rules and compatibility rules: the traits a plugin implements,
//! the export macros, and small constructors for their answers.
//!
//! Owns the guest side of the `config-rules` and `compat-rules` worlds.
//! Must not hold any rule itself: the rules live in the plugins.

pub use crate::bindings::compat_rules::exports::pitboss::policy::compatibility::{
    Finding, Level, Library, PythonEnv, Recommendation,
};
pub use crate::bindings::config_rules::exports::pitboss::policy::config_validation::{
    Diagnostic, Enforcement, ExtraSetting, HostConfig, HostSettings, Machine, PoolSettings, SettingValue, Severity,
};
use crate::Profile;

/// The rules a site's configs must pass. Stateless: the host builds a fresh
/// instance for every config it checks.
///
/// ```no_run
/// use pitboss_guest::{ConfigRules, Diagnostic, HostConfig};
///
/// struct SmallPools;
///
/// impl ConfigRules for SmallPools {
///     fn validate(config: &HostConfig) -> Vec<Diagnostic> {
///         config
///             .pools
///             .iter()
///             .filter(|pool| pool.size > 4)
///             .map(|pool| Diagnostic::error(pool.field("size"), format!("must be ≤ 4 on this machine (got {})", pool.size)))
///             .collect()
///     }
/// }
///
/// pitboss_guest::export_config_rules!(SmallPools);
/// ```
pub trait ConfigRules {
    /// Every problem with `config` at once; an `error` refuses it.
    fn validate(config: &HostConfig) -> Vec<Diagnostic>;
}

/// Which Python libraries are safe in which profile, and which profile to
/// advise. Stateless, like [`ConfigRules`].
pub trait CompatRules {
    /// One finding per library, in order, for a pool of `profile`.
    fn check(env: &PythonEnv, profile: Profile, libraries: &[Library]) -> Vec<Finding>;

    /// The profile to advise for `env` with `libraries`, with reasons.
    fn recommend_profile(env: &PythonEnv, libraries: &[Library]) -> Recommendation;
}

impl Diagnostic {
    /// An error: the host refuses the config.
    pub fn error(field: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic::new(Severity::Error, field, message)
    }

    /// A warning: logged at start, shown by `pitboss check`.
    pub fn warning(field: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic::new(Severity::Warning, field, message)
    }

    /// A note.
    pub fn info(field: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic::new(Severity::Info, field, message)
    }

    /// The same diagnostic with a hint on how to fix it.
    pub fn hint(self, hint: impl Into<String>) -> Self {
        Diagnostic { hint: Some(hint.into()), ..self }
    }

    fn new(severity: Severity, field: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic { severity, field: field.into(), message: message.into(), hint: None }
    }
}

impl PoolSettings {
    /// The field path of one of this pool's keys: `pool.NAME.KEY`.
    pub fn field(&self, key: &str) -> String {
        format!("pool.{}.{key}", self.name)
    }

    /// Calls the pool can serve at once: `size × threads_per_worker`.
    pub fn concurrency(&self) -> u64 {
        u64::from(self.size) * u64::from(self.threads_per_worker)
    }
}

impl Finding {
    /// A finding about `library`.
    pub fn new(library: &Library, level: Level, message: impl Into<String>) -> Self {
        Finding { library: library.name.clone(), level, message: message.into(), workaround: None }
    }

    /// The same finding with a workaround.
    pub fn workaround(self, workaround: impl Into<String>) -> Self {
        Finding { workaround: Some(workaround.into()), ..self }
    }
}

/// PEP 503 normalisation of a distribution name: lowercase, and each run of
/// `-`, `_` and `.` becomes one `-` (`Scikit_Learn` is `scikit-learn`).
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Exports a [`ConfigRules`] type as the component's config rules.
#[macro_export]
macro_rules! export_config_rules {
    ($rules:ty) => {
        const _: () = {
            $crate::__plugin_section!();

            struct PitbossConfigRulesExport;

            impl $crate::bindings::config_rules::exports::pitboss::policy::config_validation::Guest
                for PitbossConfigRulesExport
            {
                fn validate(config: $crate::HostConfig) -> $crate::__private::Vec<$crate::Diagnostic> {
                    <$rules as $crate::ConfigRules>::validate(&config)
                }
            }

            $crate::__export_config_rules_impl!(PitbossConfigRulesExport);
        };
    };
}

/// Exports a [`CompatRules`] type as the component's compatibility rules.
#[macro_export]
macro_rules! export_compat_rules {
    ($rules:ty) => {
        const _: () = {
            $crate::__plugin_section!();

            struct PitbossCompatRulesExport;

            impl $crate::bindings::compat_rules::exports::pitboss::policy::compatibility::Guest
                for PitbossCompatRulesExport
            {
                fn check(
                    env: $crate::PythonEnv,
                    profile: $crate::Profile,
                    libraries: $crate::__private::Vec<$crate::Library>,
                ) -> $crate::__private::Vec<$crate::Finding> {
                    <$rules as $crate::CompatRules>::check(&env, profile, &libraries)
                }

                fn recommend_profile(
                    env: $crate::PythonEnv,
                    libraries: $crate::__private::Vec<$crate::Library>,
                ) -> $crate::Recommendation {
                    <$rules as $crate::CompatRules>::recommend_profile(&env, &libraries)
                }
            }

            $crate::__export_compat_rules_impl!(PitbossCompatRulesExport);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_as_pep_503_says() {
        assert_eq!(normalize_name("Scikit_Learn"), "scikit-learn");
        assert_eq!(normalize_name("opencv-python-headless"), "opencv-python-headless");
        assert_eq!(normalize_name("zope..interface"), "zope-interface");
        assert_eq!(normalize_name("Pillow"), "pillow");
    }

    #[test]
    fn pool_fields_and_concurrency() {
        let pool = PoolSettings {
            name: "hpc".into(),
            profile: Profile::Thread,
            size: 3,
            threads_per_worker: 8,
            adapter: "m".into(),
            python: "python3".into(),
            router: "builtin:least-loaded".into(),
            env: Vec::new(),
            startup_timeout_ms: 1,
            request_timeout_ms: 1,
            queue_limit: 0,
            queue_timeout_ms: 1,
            fallback_profile: None,
            thread_safety_checks: false,
            worker_ttl_ms: None,
            worker_max_requests: None,
            worker_max_rss_bytes: None,
            recycle_jitter: 0.0,
            max_concurrent_recycles: 1,
            startup_batch_size: 1,
            startup_batch_delay_ms: 0,
            ping_interval_ms: 1,
            max_missed_pings: 1,
            extra: Vec::new(),
        };
        assert_eq!(pool.field("size"), "pool.hpc.size");
        assert_eq!(pool.concurrency(), 24);
        let d = Diagnostic::warning(pool.field("size"), "big").hint("smaller");
        assert_eq!((d.severity, d.hint.as_deref()), (Severity::Warning, Some("smaller")));
    }
}
