//! Saturation throughput: the calls per second a pool completes when it is
//! never short of work, with 1, 2 and 4 workers and 1×, 4× and 16× callers
//! per worker (closed loop through the embedded `Host::execute`), for three
//! kinds of work from benches/workloads.py:
//!
//! - `spin(1)`: 1 ms of pure-Python CPU work, holding the GIL;
//! - `matmul(350)`: a numpy matrix product, which releases the GIL (about
//!   1 ms with BLAS on one thread, as pitboss pins it in its workers);
//! - `sleep(10)`: 10 ms of waiting, as I/O does.
//!
//! Each runs on a process pool (`.venv`) and on a thread pool of 16 threads
//! per worker: on free-threaded CPython 3.13t (`.venv-ft`) for spin and
//! sleep, on `.venv` for matmul (numpy is not in `.venv-ft`). The baselines
//! run the same functions with every call submitted at once, through
//! `ProcessPoolExecutor.map` and `multiprocessing.Pool.imap_unordered`
//! (chunksize 1, benches/saturation_baseline.py). Prints a table of calls/s
//! per work and the target of the benchmarks issue: pitboss's process pool
//! on spin with 2 workers, at its best number of callers, ≥ 0.95×
//! `ProcessPoolExecutor.map` (the host must not take CPU the workers need);
//! no assertion on it (machines are shared and noisy). Every call must succeed: a failed call fails the run, after
//! the tables. Writes every figure to `PITBOSS_BENCH_RESULTS` (see
//! harness/mod.rs).
//!
//! Run: `cargo bench -p pitboss --bench saturation` after
//! `scripts/python-env --free-threaded` (`.venv` with numpy, and `.venv-ft`
//! on CPython 3.13t); about 0.75 s per figure, a minute in all on 2 cores.
//! `PITBOSS_BENCH_PEERS_PYTHON` is the interpreter for the baselines
//! (default `.venv`'s). `PITBOSS_BENCH_SMOKE=1` runs 1 worker with 1× and 4×
//! callers and a few calls per figure (the target then at 1 worker), only
//! to show the harness works.

mod harness;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use harness::{closed_loop, root, Figure, Load, Results, POOL};
use pitboss::config::Profile;
use pitboss::pool::CallRequest;
use serde_json::Value;

const THREADS_PER_WORKER: usize = 16;
/// The worker count of the CPU target.
const TARGET_WORKERS: u32 = 2;
const TARGET_RATIO: f64 = 0.95;
const PPE_MAP: &str = "ProcessPoolExecutor map";
const MP_POOL: &str = "multiprocessing.Pool";
const ALL_SUBMITTED: &str = "all submitted";

/// One function of workloads.py with the argument it is called with.
struct Work {
    case: &'static str,
    tool: &'static str,
    /// Its one argument: the keyword, and the value as JSON.
    argument: (&'static str, &'static str),
    /// About how long one call takes on an idle core, to size the runs.
    expected_ms: f64,
    /// Whether a call keeps a core busy all along (not so a sleep).
    needs_a_core: bool,
}

const SPIN: Work =
    Work { case: "spin 1 ms", tool: "spin", argument: ("ms", "1.0"), expected_ms: 1.0, needs_a_core: true };
const MATMUL: Work =
    Work { case: "numpy matmul", tool: "matmul", argument: ("n", "350"), expected_ms: 1.0, needs_a_core: true };
const SLEEP: Work =
    Work { case: "sleep 10 ms", tool: "sleep", argument: ("ms", "10.0"), expected_ms: 10.0, needs_a_core: false };
const WORKS: [&Work; 3] = [&SPIN, &MATMUL, &SLEEP];

impl Work {
    fn payload(&self) -> String {
        let (keyword, value) = self.argument;
        format!("{{\"{keyword}\":{value}}}")
    }

    /// Calls that last about `seconds` with `callers` callers on a pool
    /// that runs `slots` calls at once on `cores` cores; at least two per
    /// caller.
    fn calls(&self, seconds: f64, callers: usize, slots: usize, cores: usize) -> usize {
        let running = callers.min(slots);
        let running = if self.needs_a_core { running.min(cores) } else { running };
        ((seconds * running as f64 * 1e3 / self.expected_ms) as usize).max(2 * callers)
    }
}

/// A pitboss pool measured: its profile on one interpreter, and the works
/// it runs.
struct System {
    name: String,
    python: PathBuf,
    profile: Profile,
    works: &'static [&'static Work],
}

impl System {
    fn new(profile: Profile, python: &Path, works: &'static [&'static Work]) -> System {
        let name = format!("pitboss {profile} ({})", interpreter(python));
        System { name, python: python.to_owned(), profile, works }
    }

    fn settings(&self, workers: u32) -> String {
        match self.profile {
            Profile::Process => format!("size = {workers}\n"),
            Profile::Thread => {
                format!("size = {workers}\nprofile = \"thread\"\nthreads_per_worker = {THREADS_PER_WORKER}\n")
            }
        }
    }

    /// Calls the pool runs at once.
    fn slots(&self, workers: u32) -> usize {
        workers as usize
            * match self.profile {
                Profile::Process => 1,
                Profile::Thread => THREADS_PER_WORKER,
            }
    }
}

/// `3.11`, or `3.13t` for a free-threaded build.
fn interpreter(python: &Path) -> String {
    let script = "import sys, sysconfig\n\
                  print(f'{sys.version_info[0]}.{sys.version_info[1]}', end='')\n\
                  print('t' if sysconfig.get_config_var('Py_GIL_DISABLED') else '')";
    let output = std::process::Command::new(python).args(["-c", script]).output().expect("the interpreter runs");
    assert!(output.status.success(), "{} -c failed: {}", python.display(), String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn main() {
    let started = Instant::now();
    let smoke = harness::smoke();
    let (workers, callers_per_worker, seconds): (&[u32], &[usize], f64) =
        if smoke { (&[1], &[1, 4], 0.05) } else { (&[1, 2, 4], &[1, 4, 16], 0.75) };
    let stock = harness::venv_python(".venv", "scripts/python-env");
    let free_threaded = harness::venv_python(".venv-ft", "scripts/python-env --free-threaded");
    let peers = std::env::var_os("PITBOSS_BENCH_PEERS_PYTHON").map_or_else(|| stock.clone(), PathBuf::from);
    let numpy = std::process::Command::new(&stock).args(["-c", "import numpy"]).status().unwrap();
    assert!(numpy.success(), "numpy is missing from .venv: run scripts/python-env (it installs numpy)");
    let process = System::new(Profile::Process, &stock, &[&SPIN, &MATMUL, &SLEEP]);
    let free_threads = System::new(Profile::Thread, &free_threaded, &[&SPIN, &SLEEP]);
    let numpy_threads = System::new(Profile::Thread, &stock, &[&MATMUL]);
    let mut bench = Bench {
        seconds,
        callers_per_worker,
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        results: Results::new("saturation"),
        table: Table::default(),
        failures: Arc::default(),
    };

    println!("saturation throughput, about {seconds} s per figure on {} cores", bench.cores);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for &count in workers {
        for system in [&process, &free_threads, &numpy_threads] {
            runtime.block_on(bench.measure(system, count));
        }
    }
    let peers_interpreter = bench.baselines(&peers, workers);

    let mut columns: Vec<String> = callers_per_worker.iter().map(|per_worker| format!("{per_worker}×")).collect();
    columns.push(ALL_SUBMITTED.to_owned());
    for work in WORKS {
        println!(
            "\n{}: calls/s by callers per worker (baselines on {peers_interpreter}: every call submitted at once)",
            work.case
        );
        bench.table.print(work.case, &columns);
    }
    println!();
    bench.target(&process.name, TARGET_WORKERS.min(*workers.last().unwrap()));
    println!("wall time {:.0} s", started.elapsed().as_secs_f64());
    bench.failures.check();
}

/// What a run measures with, and what it has measured.
struct Bench {
    seconds: f64,
    callers_per_worker: &'static [usize],
    cores: usize,
    results: Results,
    table: Table,
    failures: Arc<Failures>,
}

impl Bench {
    /// Starts `system`'s pool of `workers` and measures each of its works at
    /// each number of callers per worker, after a warm-up of two calls per
    /// caller.
    async fn measure(&mut self, system: &System, workers: u32) {
        let workloads = root().join("host/benches");
        let (_dir, host) =
            harness::start_pool(&system.python, "workloads:Workloads", &workloads, &system.settings(workers)).await;
        for work in system.works {
            let call = {
                let (host, failures, payload) = (host.clone(), self.failures.clone(), work.payload());
                move || {
                    let (host, failures, payload) = (host.clone(), failures.clone(), payload.clone());
                    async move {
                        if let Err(err) = host.execute(POOL, CallRequest::json(work.tool, payload)).await {
                            failures.record(format!("{} {}: {err}", work.tool, work.payload()));
                        }
                    }
                }
            };
            for &per_worker in self.callers_per_worker {
                let callers = workers as usize * per_worker;
                closed_loop(callers, 2 * callers, call.clone()).await;
                let calls = work.calls(self.seconds, callers, system.slots(workers), self.cores);
                let failed_before = self.failures.count();
                let load = closed_loop(callers, calls, call.clone()).await;
                let param = format!("callers={callers}");
                let figure = Figure { case: work.case, system: &system.name, workers, param: &param };
                self.results.record(&figure, "per_second", load.per_second);
                self.results.latencies(&figure, &load.latencies);
                self.table.add(work.case, &system.name, workers, format!("{per_worker}×"), load.per_second);
                print_figure(&figure, &load, self.failures.count() - failed_before);
            }
        }
        host.shutdown().await;
    }

    /// Runs saturation_baseline.py with `python` for every work and pool
    /// size and records its figures; gives the interpreter it ran on.
    fn baselines(&mut self, python: &Path, workers: &[u32]) -> String {
        let spec: Vec<Value> = workers
            .iter()
            .flat_map(|&count| {
                WORKS.map(|work| {
                    serde_json::json!({
                        "tool": work.tool,
                        "arg": serde_json::from_str::<Value>(work.argument.1).unwrap(),
                        "workers": count,
                        "calls": work.calls(self.seconds, count as usize, count as usize, self.cores),
                    })
                })
            })
            .collect();
        let output = std::process::Command::new(python)
            .arg(root().join("host/benches/saturation_baseline.py"))
            .arg(Value::from(spec).to_string())
            .output()
            .unwrap_or_else(|err| panic!("{} does not run: {err}", python.display()));
        assert!(output.status.success(), "saturation_baseline.py failed: {}", String::from_utf8_lossy(&output.stderr));
        let mut interpreter = String::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let figures: Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("saturation_baseline.py printed {line:?}: {err}"));
            let field = |key: &str| figures[key].clone();
            let work = WORKS.into_iter().find(|work| field("tool") == work.tool).expect("a tool the bench asked for");
            let workers = field("workers").as_u64().and_then(|n| u32::try_from(n).ok()).expect("a worker count");
            interpreter = field("python").as_str().expect("the baseline's interpreter").to_owned();
            for (system, key) in [(PPE_MAP, "ppe_map"), (MP_POOL, "mp_pool")] {
                let per_second = field(key).as_f64().unwrap_or_else(|| panic!("saturation_baseline.py printed {line}"));
                let figure = Figure { case: work.case, system, workers, param: ALL_SUBMITTED };
                self.results.record(&figure, "per_second", per_second);
                self.table.add(work.case, system, workers, ALL_SUBMITTED.to_owned(), per_second);
                println!(
                    "{:<13} {system:<24} workers {workers}, {ALL_SUBMITTED:<13} {per_second:>7.0} calls/s",
                    work.case
                );
            }
        }
        interpreter
    }

    /// Prints and records the CPU target: `system` on spin with `workers`,
    /// at its best number of callers, against `ProcessPoolExecutor.map`.
    fn target(&mut self, system: &str, workers: u32) {
        let row = |system| self.table.row(SPIN.case, system, workers).expect("the target's figures were measured");
        let (callers, best) =
            row(system).per_second.iter().max_by(|a, b| a.1.total_cmp(&b.1)).expect("a figure per caller count");
        let (_, ppe) = &row(PPE_MAP).per_second[0];
        let ratio = best / ppe;
        let verdict = if ratio >= TARGET_RATIO { "met" } else { "missed" };
        println!(
            "target: {system}, {workers}-worker pool, {}, at its best callers ({callers} per worker): {best:.0} calls/s \
             / {PPE_MAP}, {workers}-worker pool: {ppe:.0} calls/s = {ratio:.2} (target ≥ {TARGET_RATIO}: {verdict})",
            SPIN.case
        );
        let param = format!("≥ {TARGET_RATIO}");
        let name = format!("{system} best / {PPE_MAP}, {}", SPIN.case);
        self.results.record(&Figure { case: "targets", system: &name, workers, param: &param }, "ratio", ratio);
    }
}

fn print_figure(figure: &Figure, load: &Load, failed: usize) {
    println!(
        "{:<13} {:<24} workers {}, {:<13} {:>7.0} calls/s, p50 {:>6.2} ms, p99 {:>6.2} ms, {} calls, {failed} failed",
        figure.case,
        figure.system,
        figure.workers,
        figure.param,
        load.per_second,
        load.latencies.us(0.5) / 1e3,
        load.latencies.us(0.99) / 1e3,
        load.latencies.len(),
    );
}

/// Calls that failed, and the first one's error.
#[derive(Default)]
struct Failures {
    count: AtomicUsize,
    first: Mutex<Option<String>>,
}

impl Failures {
    fn record(&self, error: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.first.lock().unwrap().get_or_insert(error);
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Panics when any call failed.
    fn check(&self) {
        let count = self.count();
        println!("failed calls: {count}");
        if let Some(first) = &*self.first.lock().unwrap() {
            panic!("{count} calls failed; the first: {first}");
        }
    }
}

/// Calls per second by system, pool size and column, in the order measured.
#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

struct Row {
    case: &'static str,
    system: String,
    workers: u32,
    /// Calls per second by column.
    per_second: Vec<(String, f64)>,
}

impl Table {
    fn add(&mut self, case: &'static str, system: &str, workers: u32, column: String, per_second: f64) {
        let index = match self
            .rows
            .iter()
            .position(|row| (row.case, row.system.as_str(), row.workers) == (case, system, workers))
        {
            Some(index) => index,
            None => {
                self.rows.push(Row { case, system: system.to_owned(), workers, per_second: Vec::new() });
                self.rows.len() - 1
            }
        };
        self.rows[index].per_second.push((column, per_second));
    }

    fn row(&self, case: &str, system: &str, workers: u32) -> Option<&Row> {
        self.rows.iter().find(|row| (row.case, row.system.as_str(), row.workers) == (case, system, workers))
    }

    /// `case`'s rows, system by system in the order first measured, then by
    /// pool size; a cell with no figure is `-`.
    fn print(&self, case: &str, columns: &[String]) {
        let mut header = format!("{:<24} {:>7}", "system", "workers");
        for column in columns {
            header += &format!(" {column:>13}");
        }
        println!("{header}");
        let rows: Vec<&Row> = self.rows.iter().filter(|row| row.case == case).collect();
        let mut systems: Vec<&str> = Vec::new();
        for row in &rows {
            if !systems.contains(&row.system.as_str()) {
                systems.push(&row.system);
            }
        }
        for system in systems {
            for row in rows.iter().filter(|row| row.system == system) {
                let mut line = format!("{system:<24} {:>7}", row.workers);
                for column in columns {
                    match row.per_second.iter().find(|(name, _)| name == column) {
                        Some((_, per_second)) => line += &format!(" {per_second:>13.0}"),
                        None => line += &format!(" {:>13}", "-"),
                    }
                }
                println!("{line}");
            }
        }
    }
}
