//! `pitboss call [--addr ADDR] POOL TOOL [JSON]`: one call through a running
//! host's gRPC API. The result goes to stdout, errors to stderr; exit 1 for
//! a failed call, 2 for bad usage.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Result;

use super::client::with_host;
use crate::config::{parse_duration, DEFAULT_API_ADDRESS};
use crate::pool::CallRequest;
use crate::worker::ContentType;

#[derive(clap::Args)]
pub struct Args {
    /// The pool to call.
    pool: String,
    /// The tool to run.
    tool: String,
    /// Keyword arguments as a JSON object (default: none).
    #[arg(value_name = "JSON")]
    arguments: Option<String>,
    /// The host's API address.
    #[arg(long, default_value = DEFAULT_API_ADDRESS)]
    addr: SocketAddr,
    /// Worker-side time limit, e.g. "5s": at most the pool's request_timeout
    /// (the default).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<std::time::Duration>,
    /// Session key, for affinity-aware routing policies.
    #[arg(long)]
    session: Option<String>,
}

/// Exit status for bad usage, as clap uses.
const USAGE: u8 = 2;

pub fn run(args: &Args) -> Result<ExitCode> {
    let payload = match &args.arguments {
        None => "{}".to_owned(),
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(_)) => text.clone(),
            Ok(other) => {
                eprintln!("error: the arguments must be a JSON object of keyword arguments, like '{{\"a\": 1}}' (got {other})");
                return Ok(ExitCode::from(USAGE));
            }
            Err(err) => {
                eprintln!("error: the arguments are not valid JSON: {err}");
                return Ok(ExitCode::from(USAGE));
            }
        },
    };
    let request =
        CallRequest { session: args.session.clone(), timeout: args.timeout, ..CallRequest::json(&args.tool, payload) };
    let answer = with_host(args.addr, async |mut client| client.execute(&args.pool, request).await)?;
    match answer {
        Ok(output) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&output.payload)?;
            if output.content_type == ContentType::Json {
                out.write_all(b"\n")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("error: {error}");
            if let Some(traceback) = &error.traceback {
                eprintln!("{}", traceback.trim_end());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
