//! `pitboss check [--config FILE] [--json]`: parses the config and runs its
//! config rules; prints every diagnostic; exit 1 on any error.
//!
//! Holds no rule itself: the library's `check_config` does the work.

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use super::output::{self, ConfigReportArgs, Style};
use crate::config::{Config, Diagnostic};
use crate::policy::{check_config, PolicyEngine};

/// `--config FILE` and `--json`.
pub type Args = ConfigReportArgs;

#[derive(Serialize)]
struct Report<'a> {
    config: &'a std::path::Path,
    /// The config rules that ran; none when parsing failed.
    rules: Option<&'a str>,
    errors: usize,
    warnings: usize,
    diagnostics: &'a [Diagnostic],
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let (diagnostics, rules) = match Config::load(&args.config) {
        Err(err) => (err.problems, None),
        Ok(config) => {
            let engine = PolicyEngine::new(config.host.policy_cache.clone())?;
            (check_config(&engine, &config)?, Some(config.host.config_rules))
        }
    };
    let count = |severity| diagnostics.iter().filter(|d| d.severity == severity).count();
    let errors = count(crate::config::Severity::Error);
    if args.json {
        output::print_json(&Report {
            config: &args.config,
            rules: rules.as_deref(),
            errors,
            warnings: count(crate::config::Severity::Warning),
            diagnostics: &diagnostics,
        })?;
    } else {
        output::print_diagnostics(&diagnostics, Style::for_stdout(), "");
        let checked_by = rules.map_or_else(|| "parsing".to_owned(), |rules| format!("parsing and {rules}"));
        println!("{}: {} ({checked_by})", args.config.display(), output::summary(&diagnostics));
    }
    Ok(if errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
