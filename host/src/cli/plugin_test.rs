//! `pitboss plugin test`: the plugin author's local runner. Prints what
//! [`crate::policy::simulate`] finds.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use crate::policy::{simulate, PolicyEngine, PolicyLimits, PolicySource, Simulation, SimulationReport};

#[derive(clap::Args)]
pub struct Args {
    /// The plugin: `builtin:NAME` or a path to a .wasm component.
    plugin: String,
    /// Workers in each synthetic pool.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    workers: u32,
    /// Routing calls per scenario.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Wall-clock budget of one call, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 20)]
    call_deadline_ms: u64,
    /// Instruction budget (fuel) of one call.
    #[arg(long, default_value_t = PolicyLimits::default().fuel_per_call)]
    fuel: u64,
    /// Memory cap of the plugin, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    max_memory_mib: usize,
    /// A router option, as a pool's `[pool.router_options]` would give it
    /// (`--option 'embed*=0-1'`); repeat for more. A key given twice keeps
    /// its last value.
    #[arg(long = "option", value_name = "KEY=VALUE", value_parser = router_option)]
    options: Vec<(String, String)>,
}

/// `KEY=VALUE`, split at the first `=`.
fn router_option(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE: write a router option as `--option 'embed*=0-1'`")),
    }
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let source = PolicySource::parse(&args.plugin)?;
    let limits = PolicyLimits {
        call_deadline: Duration::from_millis(args.call_deadline_ms),
        fuel_per_call: args.fuel,
        max_memory_bytes: args.max_memory_mib << 20,
        ..PolicyLimits::default()
    };
    let engine = PolicyEngine::new(crate::config::default_policy_cache())?;
    // In key order, one value a key, as the config's router_options table.
    let options: BTreeMap<String, String> = args.options.iter().cloned().collect();
    let simulation =
        Simulation { workers: args.workers, requests: args.requests, options: options.into_iter().collect() };
    let report = simulate(&engine, &source, limits, simulation)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report, args);
    }
    Ok(if report.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_table(report: &SimulationReport, args: &Args) {
    println!("plugin     {}", report.plugin);
    println!("identity   {}", report.identity);
    println!(
        "loaded     {:.1} ms ({}), completion hook: {}",
        report.load_ms,
        if report.compiled_from_cache { "from cache" } else { "compiled" },
        if report.completion_hook { "yes" } else { "no" },
    );
    println!("pools      {} workers, {} requests per scenario\n", args.workers, args.requests);
    println!(
        "{:<12} {:>9} {:>8} {:>7} {:>7} {:>8} {:>9} {:>7} {:>10} {:>10}",
        "scenario", "decisions", "worker", "queue", "reject", "workers", "fallback", "faults", "p50", "p99"
    );
    for s in &report.scenarios {
        let faults: u64 = s.faults.values().sum();
        println!(
            "{:<12} {:>9} {:>8} {:>7} {:>7} {:>8} {:>9} {:>7} {:>10} {:>10}",
            s.name,
            s.decisions,
            s.to_worker,
            s.queued,
            s.rejected,
            s.workers_used,
            s.fallbacks,
            faults,
            format_ns(s.p50_ns),
            format_ns(s.p99_ns)
        );
    }
    for s in report.scenarios.iter().filter(|s| !s.faults.is_empty()) {
        let kinds: Vec<String> = s.faults.iter().map(|(kind, n)| format!("{kind} ×{n}")).collect();
        println!("\n{}: faults {}", s.name, kinds.join(", "));
        if let Some(first) = &s.first_fault {
            println!("  first: {first}");
        }
    }
    println!("\nresult     {}", if report.passed { "PASS" } else { "FAIL: the plugin faulted (see above)" });
}

fn format_ns(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{:.2} µs", ns as f64 / 1e3)
    } else {
        format!("{ns} ns")
    }
}
