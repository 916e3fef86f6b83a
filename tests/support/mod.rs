//! Shared set-up for the integration tests: the project's virtualenv, the
//! example adapter, throwaway config files and the test plugins.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pitboss::config::Config;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The virtualenv interpreter with pitboss_worker installed.
pub fn python() -> PathBuf {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: create the virtualenv with `scripts/python-env` (the README's test command does)",
        python.display()
    );
    python
}

/// A test plugin built by `scripts/build-test-plugins` (the README's test
/// command runs it).
pub fn test_plugin(name: &str) -> PathBuf {
    let path = root()
        .join("target/plugins/wasm32-wasip2/plugin")
        .join(format!("pitboss_test_{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "test plugin {} is missing: build the test plugins with `scripts/build-test-plugins`",
        path.display()
    );
    path
}

/// A config file in `dir` with one pool named `pool` running the example
/// adapter, plus `pool_settings` in its table.
pub fn config(dir: &Path, pool_settings: &str) -> Config {
    config_for(dir, "adapter:Example", pool_settings)
}

/// The free-threaded CPython 3.13t virtualenv's interpreter (made by
/// `scripts/python-env --free-threaded`).
pub fn free_threaded_python() -> PathBuf {
    let python = root().join(".venv-ft/bin/python");
    assert!(
        python.exists(),
        "{} is missing: `scripts/python-env --free-threaded` makes it from ../shared/tools/free-threaded-python \
         (the README's test command runs it)",
        python.display()
    );
    python
}

/// A config file in `dir` with one pool named `pool` running `adapter`,
/// importable from examples/, tests/adapters/ or `dir` itself.
pub fn config_for(dir: &Path, adapter: &str, pool_settings: &str) -> Config {
    config_with_python(dir, &python(), adapter, pool_settings)
}

/// [`config_for`] with another interpreter.
pub fn config_with_python(dir: &Path, python: &Path, adapter: &str, pool_settings: &str) -> Config {
    let path = write_config(dir, python, adapter, "", pool_settings);
    Config::load(&path).unwrap_or_else(|err| panic!("{err}\n{}", std::fs::read_to_string(&path).unwrap()))
}

/// [`config_for`]'s file, with `host_settings` added to `[host]`: for a
/// host run as its own process (`pitboss serve --config`).
pub fn config_file_with_host(dir: &Path, adapter: &str, host_settings: &str, pool_settings: &str) -> PathBuf {
    write_config(dir, &python(), adapter, host_settings, pool_settings)
}

fn write_config(dir: &Path, python: &Path, adapter: &str, host_settings: &str, pool_settings: &str) -> PathBuf {
    let text = format!(
        "[host]\npython = {python:?}\nrun_dir = {run:?}\npolicy_cache = {cache:?}\n{host_settings}\n\n\
         [[pool]]\nname = \"pool\"\nadapter = {adapter:?}\npython_path = [{examples:?}, {adapters:?}, {dir:?}]\n{pool_settings}\n",
        run = dir.join("run"),
        cache = root().join("target/test-policy-cache"),
        examples = root().join("examples"),
        adapters = root().join("tests/adapters"),
    );
    let path = dir.join("pitboss.toml");
    std::fs::write(&path, &text).unwrap();
    path
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; only a running process counts.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Starts a host and waits until every pool has all its workers ready
/// (`Host::start` returns once each pool can serve).
pub async fn start_ready(config: Config) -> pitboss::Host {
    let host = pitboss::Host::start(config).await.expect("host starts");
    let all_ready = eventually(Duration::from_secs(60), async || {
        host.stats().await.iter().all(|pool| pool.ready == pool.size && pool.starting == 0)
    })
    .await;
    assert!(all_ready, "workers did not all start: {:#?}", host.stats().await);
    host
}

/// Calls `tool` on the pool `pool` with JSON `args`; panics on failure.
pub async fn json_call(host: &pitboss::Host, tool: &str, args: serde_json::Value) -> serde_json::Value {
    let request = pitboss::pool::CallRequest::json(tool, serde_json::to_vec(&args).unwrap());
    let output = host.execute("pool", request).await.unwrap_or_else(|err| panic!("{tool}: {err}"));
    serde_json::from_slice(&output.payload).unwrap()
}

/// Starts a call of `tool` on the pool `pool` in the background; the
/// answer is its decoded JSON.
pub fn spawn_json_call(
    host: &std::sync::Arc<pitboss::Host>,
    tool: &str,
    args: serde_json::Value,
) -> tokio::task::JoinHandle<Result<serde_json::Value, pitboss::pool::CallError>> {
    let host = host.clone();
    let request = pitboss::pool::CallRequest::json(tool, serde_json::to_vec(&args).unwrap());
    tokio::spawn(async move {
        let output = host.execute("pool", request).await?;
        Ok(serde_json::from_slice(&output.payload).unwrap())
    })
}

/// Changes the probe's reader must see to show two threads running Python
/// at once: far above what GIL hand-offs allow (about 200 per second).
pub const PARALLEL_CHANGES: u64 = 10_000;

/// Runs the adapter's `probe` writer and reader at once on one worker with
/// two threads; returns the changes the reader saw and how long, in
/// seconds, the two calls overlapped (times recorded inside the tool).
pub async fn probe_two_threads(host: &std::sync::Arc<pitboss::Host>) -> (u64, f64) {
    let writer = spawn_json_call(host, "probe", serde_json::json!({ "role": "writer", "seconds": 2.0 }));
    let reader = spawn_json_call(host, "probe", serde_json::json!({ "role": "reader", "seconds": 2.0 }));
    let writer = writer.await.unwrap().expect("the writer succeeds");
    let reader = reader.await.unwrap().expect("the reader succeeds");
    assert_eq!(writer["pid"], reader["pid"], "both ran in one worker process");
    let time = |span: &serde_json::Value, key: &str| span[key].as_f64().unwrap();
    let overlap = time(&writer, "end").min(time(&reader, "end")) - time(&writer, "start").max(time(&reader, "start"));
    (reader["changes"].as_u64().unwrap(), overlap)
}
