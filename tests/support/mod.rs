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

/// A config file in `dir` with one pool named `pool` running `adapter`,
/// importable from examples/ or from `dir` itself.
pub fn config_for(dir: &Path, adapter: &str, pool_settings: &str) -> Config {
    let text = format!(
        "[host]\npython = {python:?}\nrun_dir = {run:?}\npolicy_cache = {cache:?}\n\n\
         [[pool]]\nname = \"pool\"\nadapter = {adapter:?}\npython_path = [{examples:?}, {dir:?}]\n{pool_settings}\n",
        python = python(),
        run = dir.join("run"),
        cache = root().join("target/test-policy-cache"),
        examples = root().join("examples"),
    );
    let path = dir.join("pitboss.toml");
    std::fs::write(&path, &text).unwrap();
    Config::load(&path).unwrap_or_else(|err| panic!("{err}\n{text}"))
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
