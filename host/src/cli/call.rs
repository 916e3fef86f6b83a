//! `pitboss call [--addr ADDR] POOL TOOL [JSON]`: one call through a running
//! host's gRPC API. The result goes to stdout, errors to stderr; exit 1 for
//! a failed call, 2 for bad usage.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Result;

use super::client::with_host;
use crate::api::proto::{pitboss_client::PitbossClient, ContentType, ExecuteRequest};
use crate::config::{parse_duration, DEFAULT_API_ADDRESS};

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
        None => b"{}".to_vec(),
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(_)) => text.as_bytes().to_vec(),
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
    let request = ExecuteRequest {
        pool: args.pool.clone(),
        tool: args.tool.clone(),
        payload,
        content_type: ContentType::Json as i32,
        session: args.session.clone().unwrap_or_default(),
        timeout_ms: args.timeout.map_or(0, |t| t.as_millis().max(1) as u64),
        metadata: Default::default(),
    };
    let answer = with_host(args.addr, async |channel| PitbossClient::new(channel).execute(request).await)?;
    match answer {
        Ok(response) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&response.get_ref().payload)?;
            if response.get_ref().content_type == ContentType::Json as i32 {
                out.write_all(b"\n")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => {
            match crate::api::call_error(&status) {
                Some(error) => {
                    let python =
                        if error.python_type.is_empty() { String::new() } else { format!("{}: ", error.python_type) };
                    eprintln!("error: {}: {python}{}", error.kind, error.message);
                    if !error.traceback.is_empty() {
                        eprintln!("{}", error.traceback.trim_end());
                    }
                }
                None => eprintln!("error: {}: {}", status.code(), status.message()),
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
