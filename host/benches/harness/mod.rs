//! What every benchmark harness shares: where the repository and its
//! virtualenvs are, the load generator (closed loop at a fixed number in
//! flight, and open loop at a fixed arrival rate), latency in HDR histograms,
//! and the results file that `scripts/bench` turns into docs/benchmarks.md.
//!
//! It measures from outside the workers, as a caller sees a call; it knows
//! nothing of the host beyond the closure it is given.

#![allow(dead_code)] // each harness uses the part it needs

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pitboss::config::Config;
use pitboss::Host;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The interpreter of the virtualenv `venv` at the repository root; panics
/// with the command that makes it when it is missing.
pub fn venv_python(venv: &str, made_by: &str) -> PathBuf {
    let python = root().join(venv).join("bin/python");
    assert!(python.exists(), "{} is missing: run {made_by} first", python.display());
    python
}

/// The name of the one pool of [`start_pool`]'s host.
pub const POOL: &str = "bench";

/// A host with one pool, [`POOL`], serving `adapter` (`module:Class`, found
/// on `python_path`) on `python`, with `settings` added to the pool's
/// table; returned once every worker is ready. The folder holds the
/// config and the run directory: keep it while the host runs.
pub async fn start_pool(
    python: &Path,
    adapter: &str,
    python_path: &Path,
    settings: &str,
) -> (tempfile::TempDir, Arc<Host>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pitboss.toml");
    let text = format!(
        "[host]\npython = {python:?}\nrun_dir = {:?}\n\n[[pool]]\nname = \"{POOL}\"\nadapter = \"{adapter}\"\n\
         python_path = [{python_path:?}]\nstartup_timeout = \"120s\"\n{settings}\n",
        dir.path().join("run"),
    );
    std::fs::write(&path, text).unwrap();
    let host = Host::start(Config::load(&path).unwrap()).await.expect("bench pool starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while host.stats().await.iter().any(|pool| pool.ready < pool.size) {
        assert!(Instant::now() < deadline, "bench pool did not get all its workers ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (dir, Arc::new(host))
}

/// `PITBOSS_BENCH_SMOKE` is set: one short repetition, only to show the
/// harness still works.
pub fn smoke() -> bool {
    std::env::var_os("PITBOSS_BENCH_SMOKE").is_some()
}

/// `PITBOSS_BENCH_CALLS`, or `full` (`smoke_calls` in a smoke run).
pub fn calls(full: usize, smoke_calls: usize) -> usize {
    let default = if smoke() { smoke_calls } else { full };
    std::env::var("PITBOSS_BENCH_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Latencies of one measurement, in nanoseconds, up to 10 minutes at 3
/// significant digits (a lowest bound of 1 ns: a higher one would widen the
/// buckets of the microsecond range that matters here).
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies(Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        self.0.saturating_record(latency.as_nanos().min(u128::from(u64::MAX)) as u64);
    }

    /// The latency at `quantile` (0.5, 0.99, 0.999), in microseconds.
    pub fn us(&self, quantile: f64) -> f64 {
        self.0.value_at_quantile(quantile) as f64 / 1e3
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    fn merge(&mut self, other: &Latencies) {
        self.0.add(&other.0).expect("histograms with the same bounds");
    }
}

/// Calls one after another, after `warm_up` calls that are not counted.
pub async fn sequential<F, Fut>(warm_up: usize, calls: usize, call: F) -> Latencies
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..warm_up {
        call().await;
    }
    timed(calls, call).await
}

/// `calls` calls of `call` back to back, each timed.
async fn timed<F, Fut>(calls: usize, call: F) -> Latencies
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut latencies = Latencies::default();
    for _ in 0..calls {
        let started = Instant::now();
        call().await;
        latencies.record(started.elapsed());
    }
    latencies
}

/// What a load run gives: completed calls per second and their latencies.
pub struct Load {
    pub per_second: f64,
    pub latencies: Latencies,
}

/// `in_flight` callers, each making its share of `calls` back to back: the
/// closed loop, where a slow answer delays the next call.
pub async fn closed_loop<F, Fut>(in_flight: usize, calls: usize, call: F) -> Load
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let started = Instant::now();
    let callers: Vec<_> = (0..in_flight)
        .map(|caller| {
            let call = call.clone();
            let share = calls / in_flight + usize::from(caller < calls % in_flight);
            tokio::spawn(timed(share, call))
        })
        .collect();
    let mut latencies = Latencies::default();
    for caller in callers {
        latencies.merge(&caller.await.unwrap());
    }
    Load { per_second: calls as f64 / started.elapsed().as_secs_f64(), latencies }
}

/// `calls` calls started at a fixed `rate` per second whatever the answers
/// do: the open loop. Each latency counts from when its call was due, not
/// from when it was sent, so a stall shows in every call it delayed
/// (correcting for coordinated omission). The calls are paced by a thread
/// of their own sleeping to each due time (tokio's timer ticks in whole
/// milliseconds, too coarse for calls that take tens of microseconds); how
/// late the pacer sent them is in `send_lag`, and is part of each latency.
pub async fn open_loop<F, Fut>(rate: f64, calls: usize, call: F) -> OpenLoad
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let pacer = std::thread::spawn(move || {
        let started = Instant::now();
        let mut send_lag = Latencies::default();
        let pending: Vec<_> = (0..calls)
            .map(|n| {
                let due = started + interval.mul_f64(n as f64);
                if let Some(early) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(early);
                }
                send_lag.record(due.elapsed());
                let call = call();
                runtime.spawn(async move {
                    call.await;
                    due.elapsed()
                })
            })
            .collect();
        (started, pending, send_lag)
    });
    let (started, pending, send_lag) = tokio::task::spawn_blocking(move || pacer.join().unwrap()).await.unwrap();
    let mut latencies = Latencies::default();
    for call in pending {
        latencies.record(call.await.unwrap());
    }
    let load = Load { per_second: calls as f64 / started.elapsed().as_secs_f64(), latencies };
    OpenLoad { load, send_lag }
}

/// An open-loop run's figures, and how late its calls left.
pub struct OpenLoad {
    pub load: Load,
    pub send_lag: Latencies,
}

/// Where a harness writes its figures for `scripts/bench`: JSON lines
/// appended to `PITBOSS_BENCH_RESULTS` when it is set (nothing otherwise;
/// the harness prints its own table either way). One line per figure:
/// `{"kind": "value", "bench", "case", "system", "workers", "param",
/// "metric", "value"}`, or `"kind": "note"` with a `"note"` sentence; the
/// report takes the median and range over the runs of each figure.
pub struct Results {
    bench: &'static str,
    file: Option<std::fs::File>,
}

/// Which figure a value is: the case, the system measured, its worker count
/// and one more parameter (calls in flight, a payload size), as text.
pub struct Figure<'a> {
    pub case: &'a str,
    pub system: &'a str,
    pub workers: u32,
    pub param: &'a str,
}

impl Results {
    pub fn new(bench: &'static str) -> Self {
        let file = std::env::var_os("PITBOSS_BENCH_RESULTS").map(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(Path::new(&path))
                .unwrap_or_else(|err| panic!("cannot open PITBOSS_BENCH_RESULTS {path:?}: {err}"))
        });
        Results { bench, file }
    }

    /// A value that is not finite (a ratio over zero, a time never
    /// reached) is written as a note saying so: JSON has no NaN.
    pub fn record(&mut self, figure: &Figure, metric: &str, value: f64) {
        if value.is_finite() {
            self.write(figure, "value", serde_json::json!({ "metric": metric, "value": value }));
        } else {
            self.note(figure, &format!("{metric}: no value ({value})"));
        }
    }

    /// A sentence the report prints beside the figure's table, such as why
    /// a system could not be measured.
    pub fn note(&mut self, figure: &Figure, text: &str) {
        self.write(figure, "note", serde_json::json!({ "note": text }));
    }

    fn write(&mut self, figure: &Figure, kind: &str, mut line: serde_json::Value) {
        let Some(file) = &mut self.file else { return };
        line["kind"] = kind.into();
        line["bench"] = self.bench.into();
        line["case"] = figure.case.into();
        line["system"] = figure.system.into();
        line["workers"] = figure.workers.into();
        line["param"] = figure.param.into();
        writeln!(file, "{line}").expect("the results file takes a line");
    }

    /// p50, p99 and p99.9 of `latencies`, in µs.
    pub fn latencies(&mut self, figure: &Figure, latencies: &Latencies) {
        for (metric, quantile) in [("p50_us", 0.5), ("p99_us", 0.99), ("p999_us", 0.999)] {
            self.record(figure, metric, latencies.us(quantile));
        }
    }
}
