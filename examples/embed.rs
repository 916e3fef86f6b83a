//! pitboss embedded in a plain tokio program: no `pitboss serve`, no gRPC.
//! The program owns a [`Host`], calls a Python tool through it, reads a
//! streaming tool chunk by chunk, recycles a worker, and prints the pool's
//! figures and a few metric lines.
//!
//! From the repository root, once `scripts/python-env` has made `.venv`:
//!
//! ```sh
//! cargo run -p pitboss --example embed
//! ```

use std::path::Path;

use anyhow::{Context, Result};
use pitboss::{CallRequest, Config, Host};
use serde_json::json;

/// The pool: two workers serving examples/adapter.py. Paths are relative
/// to examples/; the run directory is this example's own, so it runs
/// beside `scripts/demo`.
const CONFIG: &str = r#"
[host]
python = "../.venv/bin/python"
run_dir = "../target/embed-run"

[[pool]]
name = "tools"
size = 2
adapter = "adapter:Example"
python_path = ["."]
"#;

#[tokio::main]
async fn main() -> Result<()> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let config = Config::parse(CONFIG, &examples.join("embed.toml"))?;
    let host = Host::start(config).await.context("the pool did not start (has `scripts/python-env` run?)")?;

    let sum = host.execute("tools", CallRequest::json("add", json!({"a": 2, "b": 40}).to_string())).await?;
    println!("add(2, 40) = {} (worker {}, {:?})", String::from_utf8_lossy(&sum.payload), sum.worker, sum.duration);

    let mut ticks = host.execute_stream("tools", CallRequest::json("ticks", json!({"n": 3}).to_string()));
    while let Some(chunk) = ticks.next().await {
        println!("ticks chunk: {}", String::from_utf8_lossy(&chunk?.payload));
    }

    match host.execute("tools", CallRequest::json("fail", json!({"message": "nope"}).to_string())).await {
        Ok(_) => anyhow::bail!("`fail` answered"),
        Err(error) => println!("fail: {} (request {})", error, error.request_id.as_deref().unwrap_or("?")),
    }

    let pool = host.pool_stats("tools").await?;
    println!(
        "pool `{}`: {}/{} ready, {} served, {} failed, {:.0}% busy",
        pool.name,
        pool.ready,
        pool.size,
        pool.served,
        pool.failed,
        pool.utilisation() * 100.0
    );
    // The worker drains, and a replacement takes its place. (A worker
    // still starting cannot be recycled: the pool serves from its first.)
    let serving = pool.workers.iter().find(|w| w.state == "ready").context("no worker is ready")?;
    host.recycle("tools", serving.id).await?;
    println!("recycling worker {}", serving.id);

    let metrics = host.metrics().await;
    for line in metrics.lines().filter(|line| line.starts_with("pitboss_requests_total")) {
        println!("{line}");
    }

    host.shutdown().await;
    Ok(())
}
