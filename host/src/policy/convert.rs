//! Conversions between the policy worlds' WIT types and the host's own
//! (`config`, `python`). `TryFrom` wherever a plugin's answer can break
//! the contract; failing it is an `invalid_answer` fault.
//!
//! No other file outside the bindings names a rules world's generated type.

use super::compat_rules::bindings::exports::pitboss::policy::compatibility as compat;
use super::compat_rules::{Finding, Level, Recommendation};
use super::config_rules::bindings::exports::pitboss::policy::config_validation as wit;
use super::contract;
use super::fault::{FaultKind, PolicyFault};
use crate::config::{self, Config, Diagnostic, Enforcement, ExtraSetting, PoolConfig, SettingValue, Severity};
use crate::python::{Distribution, PythonEnv};

impl From<config::Profile> for contract::Profile {
    fn from(profile: config::Profile) -> Self {
        match profile {
            config::Profile::Process => contract::Profile::Process,
            config::Profile::Thread => contract::Profile::Thread,
        }
    }
}

impl From<contract::Profile> for config::Profile {
    fn from(profile: contract::Profile) -> Self {
        match profile {
            contract::Profile::Process => config::Profile::Process,
            contract::Profile::Thread => config::Profile::Thread,
        }
    }
}

/// What a router's `init` learns about its pool.
impl From<&PoolConfig> for contract::PoolInfo {
    fn from(pool: &PoolConfig) -> Self {
        contract::PoolInfo {
            name: pool.name.clone(),
            profile: pool.profile.into(),
            size: pool.size,
            threads_per_worker: pool.threads_per_worker,
            options: pool.router_options.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The config as config rules see it, with the machine's CPUs and memory.
pub(super) fn host_config(config: &Config) -> wit::HostConfig {
    let host = &config.host;
    wit::HostConfig {
        source: config.source.display().to_string(),
        host: wit::HostSettings {
            run_dir: host.run_dir.display().to_string(),
            api_address: host.api_address.to_string(),
            shutdown_grace_ms: millis(host.shutdown_grace),
            config_rules: host.config_rules.clone(),
            compat_rules: host.compat_rules.clone(),
            compat_enforce: match host.compat_enforce {
                Enforcement::Warn => wit::Enforcement::Warn,
                Enforcement::Deny => wit::Enforcement::Deny,
            },
            extra: extras(&host.extra),
        },
        pools: config.pools.iter().map(pool_settings).collect(),
        extra: extras(&config.extra),
        machine: machine(),
    }
}

/// CPUs this process may use, and physical memory (0 when unknown).
fn machine() -> wit::Machine {
    let cpus = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let memory_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        let line = info.lines().find(|line| line.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    });
    wit::Machine { cpus, memory_bytes: memory_kib.unwrap_or(0).saturating_mul(1024) }
}

fn pool_settings(pool: &PoolConfig) -> wit::PoolSettings {
    let lifecycle = &pool.lifecycle;
    wit::PoolSettings {
        name: pool.name.clone(),
        profile: pool.profile.into(),
        size: pool.size,
        threads_per_worker: pool.threads_per_worker,
        adapter: pool.adapter.clone(),
        python: pool.python.path.display().to_string(),
        router: pool.router.clone(),
        env: pool.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        startup_timeout_ms: millis(pool.startup_timeout),
        request_timeout_ms: millis(pool.request_timeout),
        queue_limit: pool.queue_limit as u64,
        queue_timeout_ms: millis(pool.queue_timeout),
        fallback_profile: pool.fallback_profile.map(Into::into),
        thread_safety_checks: pool.thread_safety_checks,
        worker_ttl_ms: lifecycle.worker_ttl.map(millis),
        worker_max_requests: lifecycle.worker_max_requests,
        worker_max_rss_bytes: lifecycle.worker_max_rss,
        recycle_jitter: lifecycle.recycle_jitter,
        max_concurrent_recycles: lifecycle.max_concurrent_recycles,
        startup_batch_size: lifecycle.startup_batch_size,
        startup_batch_delay_ms: millis(lifecycle.startup_batch_delay),
        ping_interval_ms: millis(lifecycle.ping_interval),
        max_missed_pings: lifecycle.max_missed_pings,
        extra: extras(&pool.extra),
    }
}

fn extras(extra: &[ExtraSetting]) -> Vec<wit::ExtraSetting> {
    extra
        .iter()
        .map(|setting| wit::ExtraSetting {
            key: setting.key.clone(),
            value: match &setting.value {
                SettingValue::Text(text) => wit::SettingValue::Text(text.clone()),
                SettingValue::Integer(n) => wit::SettingValue::Integer(*n),
                SettingValue::Float(x) => wit::SettingValue::Float(*x),
                SettingValue::Boolean(b) => wit::SettingValue::Boolean(*b),
                SettingValue::Toml(text) => wit::SettingValue::Toml(text.clone()),
            },
            closest_known: setting.closest_known.clone(),
        })
        .collect()
}

fn invalid(detail: String) -> PolicyFault {
    PolicyFault { kind: FaultKind::InvalidAnswer, detail }
}

impl TryFrom<wit::Diagnostic> for Diagnostic {
    type Error = PolicyFault;

    fn try_from(answer: wit::Diagnostic) -> Result<Self, PolicyFault> {
        if answer.field.trim().is_empty() || answer.message.trim().is_empty() {
            return Err(invalid(format!("a diagnostic needs a field path and a message (got {answer:?})")));
        }
        let severity = match answer.severity {
            wit::Severity::Error => Severity::Error,
            wit::Severity::Warning => Severity::Warning,
            wit::Severity::Info => Severity::Info,
        };
        Ok(Diagnostic {
            severity,
            field: answer.field,
            message: answer.message,
            hint: answer.hint.filter(|h| !h.is_empty()),
        })
    }
}

pub(super) fn python_env(env: &PythonEnv) -> compat::PythonEnv {
    compat::PythonEnv {
        version: env.version.clone(),
        free_threaded: env.free_threaded,
        gil_enabled: env.gil_enabled,
        implementation: env.implementation.clone(),
        platform: env.platform.clone(),
    }
}

pub(super) fn libraries(libraries: &[Distribution]) -> Vec<compat::Library> {
    libraries.iter().map(|d| compat::Library { name: d.name.clone(), version: d.version.clone() }).collect()
}

/// The plugin's finding, about the library at the same position.
pub(super) fn finding(answer: compat::Finding, library: &Distribution) -> Finding {
    Finding {
        library: library.name.clone(),
        version: library.version.clone(),
        level: match answer.level {
            compat::Level::Ok => Level::Ok,
            compat::Level::Warning => Level::Warning,
            compat::Level::Unsafe => Level::Unsafe,
            compat::Level::Unknown => Level::Unknown,
        },
        message: answer.message,
        workaround: answer.workaround.filter(|w| !w.is_empty()),
    }
}

impl TryFrom<compat::Recommendation> for Recommendation {
    type Error = PolicyFault;

    fn try_from(answer: compat::Recommendation) -> Result<Self, PolicyFault> {
        if answer.reasons.iter().all(|r| r.trim().is_empty()) {
            return Err(invalid("a recommendation needs at least one reason".to_owned()));
        }
        Ok(Recommendation { profile: answer.profile.into(), reasons: answer.reasons })
    }
}
