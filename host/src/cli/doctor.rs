//! `pitboss doctor [--config FILE] [--json]`: for each pool's interpreter,
//! its version, build, GIL, the installed libraries the compat rules know
//! with their findings for the pool's profile, and the recommended profile
//! with reasons; plus whether the run directory is writable and every
//! plugin loads. Exit 1 when any of that fails.
//!
//! Starts no worker and changes nothing but a probe file in the run
//! directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use super::output::{self, Colour, ConfigReportArgs, Style};
use crate::config::{Config, Diagnostic, PoolConfig};
use crate::policy::{
    check_config, CompatRules, Finding, Level, PolicyEngine, PolicySource, Recommendation, RouterPolicy,
};
use crate::python::{self, PythonEnv};

/// `--config FILE` and `--json`.
pub type Args = ConfigReportArgs;

/// One thing doctor checked: a label, a value, and the failure if any.
#[derive(Serialize)]
struct Check {
    what: String,
    value: String,
    error: Option<String>,
}

#[derive(Serialize)]
struct PoolReport {
    name: String,
    profile: String,
    size: u32,
    interpreter: String,
    chosen_by: String,
    /// The interpreter's facts (its `distributions` left out).
    python: Option<PythonFacts>,
    /// Findings for the libraries the compat rules know.
    libraries: Vec<Finding>,
    /// Installed distributions the compat rules do not know.
    unknown_libraries: usize,
    recommended: Option<RecommendationReport>,
    checks: Vec<Check>,
}

#[derive(Serialize)]
struct PythonFacts {
    version: String,
    implementation: String,
    platform: String,
    free_threaded: bool,
    gil_enabled: bool,
}

#[derive(Serialize)]
struct RecommendationReport {
    profile: String,
    reasons: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    config: PathBuf,
    host: Vec<Check>,
    diagnostics: Vec<Diagnostic>,
    pools: Vec<PoolReport>,
    problems: usize,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let engine = PolicyEngine::new(config.host.policy_cache.clone())?;
    let mut host = vec![run_dir_check(&config.host.run_dir)];
    let diagnostics = match check_config(&engine, &config) {
        Ok(diagnostics) => {
            host.push(Check { what: "config rules".into(), value: config.host.config_rules.clone(), error: None });
            diagnostics
        }
        Err(err) => {
            host.push(Check {
                what: "config rules".into(),
                value: config.host.config_rules.clone(),
                error: Some(format!("{err:#}")),
            });
            Vec::new()
        }
    };
    let compat = CompatRules::load(&engine, &config.host.compat_rules);
    host.push(Check {
        what: "compat rules".into(),
        value: match &compat {
            Ok(rules) => format!("{} ({})", rules.label(), rules.meta()),
            Err(_) => config.host.compat_rules.clone(),
        },
        error: compat.as_ref().err().map(|err| format!("{err:#}")),
    });
    let pools: Vec<PoolReport> = config
        .pools
        .iter()
        .map(|pool| pool_report(pool, &engine, compat.as_ref().ok(), &config.host.python_cache()))
        .collect();
    let failed = |checks: &[Check]| checks.iter().filter(|c| c.error.is_some()).count();
    let problems = failed(&host)
        + pools.iter().map(|p| failed(&p.checks)).sum::<usize>()
        + diagnostics.iter().filter(|d| d.is_error()).count();
    let report = Report { config: args.config.clone(), host, diagnostics, pools, problems };
    if args.json {
        output::print_json(&report)?;
    } else {
        print_report(&report, Style::for_stdout());
    }
    Ok(if problems > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Creates the run directory if needed and writes a file into it.
fn run_dir_check(run_dir: &Path) -> Check {
    let probe = run_dir.join(format!(".doctor-{}", std::process::id()));
    let written = std::fs::create_dir_all(run_dir)
        .and_then(|()| std::fs::write(&probe, b""))
        .and_then(|()| std::fs::remove_file(&probe));
    Check {
        what: "run directory".into(),
        value: run_dir.display().to_string(),
        error: written
            .err()
            .map(|err| format!("not writable: {err}; set host.run_dir to a folder this user can write")),
    }
}

fn pool_report(pool: &PoolConfig, engine: &PolicyEngine, compat: Option<&CompatRules>, cache: &Path) -> PoolReport {
    let router = PolicySource::parse(&pool.router)
        .and_then(|source| RouterPolicy::load(engine, &source, pool.router_limits.clone()));
    let mut report = PoolReport {
        name: pool.name.clone(),
        profile: pool.profile.to_string(),
        size: pool.size,
        interpreter: pool.python.path.display().to_string(),
        chosen_by: pool.python.chosen_by.clone(),
        python: None,
        libraries: Vec::new(),
        unknown_libraries: 0,
        recommended: None,
        checks: vec![Check {
            what: "router".into(),
            value: match &router {
                Ok(policy) => format!("{} ({})", policy.label(), policy.meta()),
                Err(_) => pool.router.clone(),
            },
            error: router.err().map(|err| format!("{err:#}")),
        }],
    };
    let env = match python::detect(&pool.python, Some(cache)) {
        Ok(env) => env,
        Err(err) => {
            report.checks.push(Check {
                what: "interpreter".into(),
                value: report.interpreter.clone(),
                error: Some(err.to_string()),
            });
            return report;
        }
    };
    report.python = Some(PythonFacts {
        version: env.version.clone(),
        implementation: env.implementation.clone(),
        platform: env.platform.clone(),
        free_threaded: env.free_threaded,
        gil_enabled: env.gil_enabled,
    });
    if let Some(compat) = compat {
        compat_report(&mut report, compat, pool, &env);
    }
    report
}

fn compat_report(report: &mut PoolReport, compat: &CompatRules, pool: &PoolConfig, env: &PythonEnv) {
    let fault = |fault: crate::policy::PolicyFault| Check {
        what: "compat rules".into(),
        value: compat.label().to_owned(),
        error: Some(fault.to_string()),
    };
    match compat.check(env, pool.profile, &env.distributions) {
        Ok(findings) => {
            let (unknown, known): (Vec<Finding>, Vec<Finding>) =
                findings.into_iter().partition(|f| f.level == Level::Unknown);
            report.unknown_libraries = unknown.len();
            report.libraries = known;
        }
        Err(err) => report.checks.push(fault(err)),
    }
    match compat.recommend(env, &env.distributions) {
        Ok(Recommendation { profile, reasons }) => {
            report.recommended = Some(RecommendationReport { profile: profile.to_string(), reasons });
        }
        Err(err) => report.checks.push(fault(err)),
    }
}

fn print_report(report: &Report, style: Style) {
    let verdict = |check: &Check| match &check.error {
        None => style.paint("ok", Colour::Green),
        Some(err) => format!("{}: {err}", style.paint("failed", Colour::Red)),
    };
    let row = |label: &str, value: &str| println!("  {label:<14} {value}");
    println!("{}", style.paint(&format!("host ({})", report.config.display()), Colour::Bold));
    for check in &report.host {
        row(&check.what, &format!("{}  {}", check.value, verdict(check)));
    }
    if !report.diagnostics.is_empty() {
        row("config", &output::summary(&report.diagnostics));
        output::print_diagnostics(&report.diagnostics, style, "    ");
    }
    for pool in &report.pools {
        println!(
            "\n{}",
            style.paint(&format!("pool {} ({}, {} workers)", pool.name, pool.profile, pool.size), Colour::Bold)
        );
        row("interpreter", &format!("{} (from {})", pool.interpreter, pool.chosen_by));
        if let Some(python) = &pool.python {
            row("python", &format!("{} {} on {}", python.implementation, python.version, python.platform));
            row("build", if python.free_threaded { "free-threaded (Py_GIL_DISABLED)" } else { "with the GIL" });
            row("GIL", if python.gil_enabled { "enabled" } else { "disabled" });
        }
        for check in &pool.checks {
            row(&check.what, &format!("{}  {}", check.value, verdict(check)));
        }
        print_libraries(pool, style);
        if let Some(recommended) = &pool.recommended {
            row("recommended", &style.paint(&recommended.profile, Colour::Bold));
            for reason in &recommended.reasons {
                println!("  {:<14} - {reason}", "");
            }
        }
    }
    let problems = match report.problems {
        0 => style.paint("no problems", Colour::Green),
        n => style.paint(&format!("{n} problem{}", if n == 1 { "" } else { "s" }), Colour::Red),
    };
    println!("\n{problems}");
}

fn print_libraries(pool: &PoolReport, style: Style) {
    let width = pool.libraries.iter().map(|f| f.library.len() + f.version.len() + 1).max().unwrap_or(0);
    for (index, finding) in pool.libraries.iter().enumerate() {
        // The findings are for the pool's profile, shown in its heading.
        let label = if index == 0 { "libraries" } else { "" };
        let colour = match finding.level {
            Level::Ok => Colour::Green,
            Level::Warning => Colour::Yellow,
            Level::Unsafe => Colour::Red,
            Level::Unknown => Colour::Cyan,
        };
        let name = format!("{} {}", finding.library, finding.version);
        let level = style.paint(&format!("{:<7}", finding.level.as_str()), colour);
        println!("  {label:<14} {name:<width$}  {level}  {}", finding.message);
        if let Some(workaround) = &finding.workaround {
            println!("  {:<14} {:<width$}  {:<7}  workaround: {workaround}", "", "", "");
        }
    }
    if pool.python.is_some() {
        let label = if pool.libraries.is_empty() { "libraries" } else { "" };
        println!("  {label:<14} {} other installed distributions are not in the compat rules", pool.unknown_libraries);
    }
}
