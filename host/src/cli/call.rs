//! `pitboss call [--addr ADDR] [--stream] POOL TOOL [JSON]`: one call
//! through a running host's gRPC API. The result (or each streamed chunk)
//! goes to stdout, errors to stderr; exit 1 for a failed call, 2 for bad
//! usage.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Result;

use super::client::with_host;
use crate::config::{parse_duration, DEFAULT_API_ADDRESS};
use crate::pool::{CallError, CallRequest, ErrorKind};
use crate::worker::ContentType;
use tokio_stream::StreamExt;

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
    /// Session key: routing policies see it (for affinity) and the tool
    /// reads it as `context.session`, with its `context.session_state`.
    #[arg(long)]
    session: Option<String>,
    /// The call's request id, shown in the host's log and to the tool
    /// (`context.request_id`) [default: the host makes one].
    #[arg(long)]
    request_id: Option<String>,
    /// Call a streaming tool (a generator): print each chunk as it arrives,
    /// one per line. Ctrl-C stops the generator.
    #[arg(long)]
    stream: bool,
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
    let request = CallRequest {
        session: args.session.clone(),
        timeout: args.timeout,
        request_id: args.request_id.clone(),
        ..CallRequest::json(&args.tool, payload)
    };
    let answer = if args.stream {
        with_host(args.addr, async |mut client| {
            let mut chunks = std::pin::pin!(client.execute_stream(&args.pool, request).await?);
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                print_payload(&chunk.payload, chunk.content_type).map_err(io_failure)?;
            }
            Ok(())
        })?
    } else {
        with_host(args.addr, async |mut client| {
            let output = client.execute(&args.pool, request).await?;
            print_payload(&output.payload, output.content_type).map_err(io_failure)
        })?
    };
    match answer {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => {
            eprintln!("error: {error}");
            if let Some(traceback) = &error.traceback {
                eprintln!("{}", traceback.trim_end());
            }
            if let Some(request_id) = &error.request_id {
                eprintln!("request id: {request_id}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Writes one answer or chunk to stdout: JSON on a line of its own, raw
/// bytes as they are; flushed, so a stream shows as it arrives.
fn print_payload(payload: &[u8], content_type: ContentType) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(payload)?;
    if content_type == ContentType::Json {
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// stdout closed under us (say, `| head`): ends the call like an error.
fn io_failure(err: std::io::Error) -> CallError {
    CallError::new(ErrorKind::Cancelled, format!("cannot write the answer: {err}"))
}
