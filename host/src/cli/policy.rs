//! `pitboss policy list|swap|rollback`: a running host's policies (each
//! pool's router, the host's config and compat rules) through its admin
//! socket. `swap` reads the component here and sends its bytes, so the
//! host needs no access to the file. Rules are host-wide: their POOL is
//! written `-`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result};

use super::client::{with_admin, AdminSocket};
use crate::api::Component;
use crate::host::{PolicyKind, RulesKind};
use crate::policy::{PolicyVersion, SwapOptions, SwapReport};

/// What POOL is for the host-wide rules.
const HOST_WIDE: &str = "-";

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    Router,
    ConfigRules,
    CompatRules,
}

impl Kind {
    /// The library's kind and pool name for `pool` as given; rules take `-`.
    fn target(self, pool: &str) -> Result<(PolicyKind, String)> {
        let kind = match self {
            Kind::Router => return Ok((PolicyKind::Router, pool.to_owned())),
            Kind::ConfigRules => RulesKind::Config,
            Kind::CompatRules => RulesKind::Compat,
        };
        anyhow::ensure!(
            pool == HOST_WIDE,
            "{} are host-wide: write `{HOST_WIDE}` for POOL (got `{pool}`)",
            kind.as_str()
        );
        Ok((PolicyKind::Rules(kind), String::new()))
    }
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Each policy's live version and the versions live before it.
    List {
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Check a component (static checks, then for a router init and a replay
    /// of the pool's recent decisions, for rules the running config under
    /// it) and make it live; exit 1 if refused.
    Swap(SwapArgs),
    /// Put back the version the live one replaced; exit 1 if there is none.
    Rollback {
        /// The pool, or `-` for the host-wide rules.
        pool: String,
        /// The kind of policy.
        #[arg(long, value_enum, default_value = "router")]
        kind: Kind,
        #[command(flatten)]
        admin: AdminSocket,
    },
}

#[derive(clap::Args)]
pub struct SwapArgs {
    /// The pool whose router to swap, or `-` for the host-wide rules.
    pool: String,
    /// The component file (built for wasm32-wasip2 with pitboss-guest).
    file: PathBuf,
    /// The kind of policy.
    #[arg(long, value_enum, default_value = "router")]
    kind: Kind,
    /// Stop after the replay and print the report; promote nothing.
    #[arg(long)]
    dry_run: bool,
    /// Refuse the component unless its sha256 (hex) is this.
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// A router option for the candidate's init (repeat for more); given
    /// any, they replace the pool's router_options.
    #[arg(long = "option", value_name = "KEY=VALUE", value_parser = parse_option)]
    options: Vec<(String, String)>,
    #[command(flatten)]
    admin: AdminSocket,
}

pub fn run(command: &Command) -> Result<ExitCode> {
    match command {
        Command::List { admin } => {
            let policies = with_admin(admin, async |mut admin| admin.policies().await)??;
            for policy in policies {
                let what = match policy.kind {
                    PolicyKind::Router => format!("pool {}  router", policy.pool),
                    PolicyKind::Rules(kind) => format!("host  {}", kind.as_str()),
                };
                print_policy(&what, &policy.history, policy.can_roll_back);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Swap(args) => swap(args),
        Command::Rollback { pool, kind, admin } => {
            let (kind, target) = kind.target(pool)?;
            match with_admin(admin, async |mut admin| admin.rollback(kind, &target, &requester()).await)? {
                Ok((restored, replaced)) => {
                    println!("{} is {restored} again, replacing {replaced}", subject(kind, &target));
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

fn swap(args: &SwapArgs) -> Result<ExitCode> {
    let (kind, target) = args.kind.target(&args.pool)?;
    let wasm = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let component = Component::Bytes { label: args.file.display().to_string(), wasm };
    let options = SwapOptions {
        expected_sha256: args.sha256.clone(),
        dry_run: args.dry_run,
        requested_by: requester(),
        router_options: (!args.options.is_empty()).then(|| args.options.clone()),
    };
    match with_admin(&args.admin, async |mut admin| admin.swap(kind, &target, component, options).await)? {
        Ok(report) => {
            print_swap(&report, &subject(kind, &target), args.dry_run);
            Ok(if report.refused.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Err(error) => {
            eprintln!("error: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn parse_option(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

/// "the router of pool `hpc`", "the host's config rules".
fn subject(kind: PolicyKind, pool: &str) -> String {
    match kind {
        PolicyKind::Router => format!("the router of pool `{pool}`"),
        PolicyKind::Rules(kind) => format!("the host's {}", kind.as_str()),
    }
}

/// Who asks, for the host's policy history.
fn requester() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "an unknown user".to_owned());
    format!("{user} (pitboss policy)")
}

fn print_swap(report: &SwapReport, subject: &str, dry_run: bool) {
    let compiled = if report.compiled_from_cache { "compiled artifact from the cache" } else { "compiled fresh" };
    println!("candidate {} ({}), {compiled}", report.candidate, report.meta);
    if let Some(replay) = &report.replay {
        println!(
            "replay: {} recent decisions, {} differ from the live policy's; per call p50 {:?}, p99 {:?} (budget {:?})",
            replay.decisions, replay.differing, replay.p50, replay.p99, replay.budget
        );
        for example in &replay.examples {
            let session = example.session.as_deref().map(|s| format!(" session {s}")).unwrap_or_default();
            println!("  tool `{}`{session}: live {}, candidate {}", example.tool, example.live, example.candidate);
        }
    }
    match (&report.refused, &report.replaced) {
        (Some((stage, why)), _) => {
            eprintln!("refused at {stage}: {why}");
            eprintln!("{subject} stays as it was");
        }
        (None, Some(replaced)) => println!("live as {subject} after {:?}, replacing {replaced}", report.elapsed),
        (None, None) if dry_run => println!("dry run: every check passed; nothing was promoted"),
        (None, None) => println!("not promoted"),
    }
}

fn print_policy(what: &str, history: &[PolicyVersion], can_roll_back: bool) {
    let Some((live, earlier)) = history.split_first() else { return };
    println!("{what} {}", describe(live));
    for version in earlier {
        println!("  before: {}", describe(version));
    }
    println!("  rollback: {}", if can_roll_back { "possible" } else { "nothing to roll back to" });
}

fn describe(version: &PolicyVersion) -> String {
    let plugin = version.declared.as_deref().map(|d| format!("{d}, ")).unwrap_or_default();
    let short_hash = &version.sha256[..version.sha256.len().min(12)];
    let ended = match &version.ended {
        None => format!("live for {}", ago(version.live_since)),
        Some((at, why)) => format!("went live {} ago, ended {} ago: {why}", ago(version.live_since), ago(*at)),
    };
    format!(
        "{} ({plugin}sha256 {short_hash}), {ended}; {}; {} decisions, {} faults",
        version.label, version.promoted_by, version.decisions, version.faults
    )
}

/// "3.2s" since `then`.
fn ago(then: SystemTime) -> String {
    let elapsed = SystemTime::now().duration_since(then).unwrap_or_default();
    format!("{:.1}s", elapsed.as_secs_f64())
}
