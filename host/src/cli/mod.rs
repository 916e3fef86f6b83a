//! The `pitboss` command line: argument parsing, output and exit codes.
//! Commands call into the library; none of them holds logic the library
//! lacks.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod plugin_test;

#[derive(Parser)]
#[command(name = "pitboss", version, about = "Runs pools of Python workers behind WebAssembly scheduling policies")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with policy plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Load a routing plugin exactly as the host would and run it against
    /// synthetic pools; exit 1 if it faults or decides something invalid.
    Test(plugin_test::Args),
}

/// Runs the command line; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let outcome = match cli.command {
        Command::Plugin(PluginCommand::Test(args)) => plugin_test::run(&args),
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr. `PITBOSS_LOG` (or `RUST_LOG`) takes a tracing filter
/// such as `info` or `pitboss::plugin=debug`; the default shows warnings.
fn init_logging() {
    let spec = std::env::var("PITBOSS_LOG").or_else(|_| std::env::var("RUST_LOG")).ok();
    let filter = match spec.as_deref().map(EnvFilter::try_new) {
        Some(Ok(filter)) => filter,
        Some(Err(err)) => {
            eprintln!("warning: ignoring the log filter {:?} ({err}); using `warn`", spec.unwrap_or_default());
            EnvFilter::new("warn")
        }
        None => EnvFilter::new("warn"),
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
