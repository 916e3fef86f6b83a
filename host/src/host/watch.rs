//! `router_watch = true`: a pool's router component file is checked every
//! [`WATCH_INTERVAL`]; a changed file goes through the same swap pipeline
//! as `pitboss policy swap`. A candidate that fails a gate (a half-written
//! file, garbage) leaves the live version serving; the refusal is logged
//! and the next change is tried again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::config::PolicyLimits;
use crate::policy::{swap_router, Candidate, PluginMeta, PolicyEngine, PoolInfo, RouterSlot, SwapOptions};

/// How often a watched router file is looked at.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What a file looked like when last seen: modification time and length.
type Fingerprint = Option<(SystemTime, u64)>;

fn fingerprint(path: &PathBuf) -> Fingerprint {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Watches `path`, the router file of the pool behind `slot`, until the
/// returned task is aborted.
pub(super) fn spawn(
    path: PathBuf,
    engine: PolicyEngine,
    slot: Arc<RouterSlot>,
    info: PoolInfo,
    limits: PolicyLimits,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = fingerprint(&path);
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let now = fingerprint(&path);
            if now == seen || now.is_none() {
                continue;
            }
            seen = now;
            let wasm = match std::fs::read(&path) {
                Ok(wasm) => wasm,
                Err(err) => {
                    tracing::warn!(pool = %info.name, path = %path.display(), error = %err, "cannot read the watched router file");
                    continue;
                }
            };
            if PluginMeta::of(&wasm).sha256 == slot.current().meta().sha256 {
                continue;
            }
            let candidate = Candidate { label: path.display().to_string(), wasm };
            let options = SwapOptions { requested_by: "router_watch".to_owned(), ..SwapOptions::default() };
            let (engine, slot, info, limits) = (engine.clone(), slot.clone(), info.clone(), limits.clone());
            // The pipeline logs the outcome, refusals included.
            let _ =
                tokio::task::spawn_blocking(move || swap_router(&engine, &slot, &info, limits, candidate, &options))
                    .await;
        }
    })
}
