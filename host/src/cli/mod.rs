//! The `pitboss` command line: argument parsing, output and exit codes.
//! Commands call into the library; none of them holds logic the library
//! lacks.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod admin;
mod call;
mod check;
mod client;
mod doctor;
mod output;
mod plugin_test;
mod policy;
mod serve;
mod status;

#[derive(Parser)]
#[command(name = "pitboss", version, about = "Runs pools of Python workers behind WebAssembly scheduling policies")]
struct Cli {
    /// How log lines (on stderr) look: `text` for people, `json` (one
    /// object per line) for log collectors. Filter with PITBOSS_LOG or
    /// RUST_LOG, e.g. `info,pitboss::worker=warn`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host in the foreground: every pool in the config, and the
    /// gRPC API.
    Serve(serve::Args),
    /// Call a tool through a running host; prints the result.
    Call(call::Args),
    /// Show a running host's pools and workers.
    Status(status::Args),
    /// Recycle one worker of a running host: it drains, and a replacement
    /// takes its place.
    Recycle(admin::RecycleArgs),
    /// Check a config: parsing and its config rules; exit 1 on any error.
    Check(check::Args),
    /// Check the machine for a config: interpreters, libraries against the
    /// compat rules, the recommended profile, the run directory, plugins.
    Doctor(doctor::Args),
    /// Work with policy plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// See, swap and roll back the routing policies of a running host.
    #[command(subcommand)]
    Policy(policy::Command),
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
    let log_format = cli.log_format;
    let outcome = match cli.command {
        Command::Serve(args) => {
            init_logging("info", log_format);
            serve::run(&args)
        }
        Command::Call(args) => {
            init_logging("warn", log_format);
            call::run(&args)
        }
        Command::Status(args) => {
            init_logging("warn", log_format);
            status::run(&args)
        }
        Command::Recycle(args) => {
            init_logging("warn", log_format);
            admin::recycle(&args)
        }
        Command::Check(args) => {
            init_logging("warn", log_format);
            check::run(&args)
        }
        Command::Doctor(args) => {
            init_logging("warn", log_format);
            doctor::run(&args)
        }
        Command::Plugin(PluginCommand::Test(args)) => {
            init_logging("warn", log_format);
            plugin_test::run(&args)
        }
        Command::Policy(command) => {
            init_logging("warn", log_format);
            policy::run(&command)
        }
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
/// such as `info` or `pitboss::plugin=debug`; `default` applies otherwise.
fn init_logging(default: &str, format: LogFormat) {
    let spec = std::env::var("PITBOSS_LOG").or_else(|_| std::env::var("RUST_LOG")).ok();
    let filter = match spec.as_deref().map(EnvFilter::try_new) {
        Some(Ok(filter)) => filter,
        Some(Err(err)) => {
            eprintln!("warning: ignoring the log filter {:?} ({err}); using `{default}`", spec.unwrap_or_default());
            EnvFilter::new(default)
        }
        None => EnvFilter::new(default),
    };
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}
