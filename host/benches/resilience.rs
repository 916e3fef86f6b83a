//! The resilience run: calls from many callers while a chaos loop kills a
//! random worker with SIGKILL every 300 ms, then a host killed with SIGKILL
//! under load. Each call echoes a unique nonce, so a call that got another
//! call's answer is caught. Prints a table of figures and a line per check;
//! exits 1 when a check fails.
//!
//! - An idempotent tool on a pool with `retries = 3`: every call answered.
//! - A tool that is not idempotent: calls fail only with `worker_crashed`,
//!   and only the one running on the killed worker (no call is sent to a
//!   worker whose connection is gone).
//! - The same tool on a pool whose workers hold 2 calls in reserve
//!   (`calls_in_reserve`): still only the running call fails with its
//!   worker; the calls in reserve behind it run on other workers.
//! - All: no call hangs (30 s each at most), none gets another's answer,
//!   the pool is back to its size at the end, and the host's RSS at the end
//!   is within 10% of its RSS after the warm-up.
//! - `pitboss serve` killed with SIGKILL mid-load: no worker left after
//!   3 s; a host restarted on the same run directory finds nothing to
//!   sweep and serves.
//! - A worker stopped with SIGSTOP (hung: even its protocol thread) is
//!   taken out of service within `max_missed_pings` + 2 ping intervals
//!   (the first ping can come an interval late, the last miss is known an
//!   interval after it was sent), and replaced.
//!
//! Run: `cargo bench -p pitboss --bench resilience` (20,000 calls a case,
//! 16 callers; a few minutes). `PITBOSS_BENCH_SMOKE=1` runs a short one
//! (`scripts/test` does, in the debug build, so the harness cannot rot).
//! Writes every figure to `PITBOSS_BENCH_RESULTS` (see harness/mod.rs).

mod harness;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{Figure, Results};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pitboss::api::Client;
use pitboss::pool::CallRequest;
use pitboss::{resident_bytes, Host};
use serde_json::{json, Value};
use support::{alive, eventually};

const PITBOSS: &str = env!("CARGO_BIN_EXE_pitboss");
const POOL_SIZE: u32 = 4;
const CHAOS_EVERY: Duration = Duration::from_millis(300);
/// Longer than any call can take, even queued behind restarts.
const HUNG_AFTER: Duration = Duration::from_secs(30);

struct Scale {
    calls: usize,
    callers: usize,
}

/// What one chaos run saw.
struct Outcome {
    label: &'static str,
    calls: usize,
    answered: usize,
    failures: BTreeMap<String, usize>,
    wrong_answers: usize,
    hung: usize,
    kills: usize,
    /// From a kill to the pool back at its size, where that came before
    /// the next kill.
    replacements: Vec<Duration>,
    back_to_size: bool,
    rss_after_warm_up: u64,
    rss_at_end: u64,
    took: Duration,
}

impl Outcome {
    fn failed(&self) -> usize {
        self.failures.values().sum()
    }

    fn record(&self, results: &mut Results) {
        let figure = Figure { case: "chaos", system: self.label, workers: POOL_SIZE, param: "" };
        let mut figures = vec![
            ("calls", self.calls as f64),
            ("answered", self.answered as f64),
            ("failed", self.failed() as f64),
            ("wrong answer", self.wrong_answers as f64),
            ("hung", self.hung as f64),
            ("kills", self.kills as f64),
            ("host RSS after warm-up, MiB", self.rss_after_warm_up as f64 / f64::from(1 << 20)),
            ("host RSS at the end, MiB", self.rss_at_end as f64 / f64::from(1 << 20)),
        ];
        // No figure at all when no kill was followed by a replacement.
        if let Some((p50, max)) = percentiles(&self.replacements) {
            figures.push(("kill → back at size p50, ms", p50.as_secs_f64() * 1e3));
            figures.push(("kill → back at size max, ms", max.as_secs_f64() * 1e3));
        }
        for (metric, value) in figures {
            results.record(&figure, metric, value);
        }
    }
}

fn main() -> ExitCode {
    let smoke = std::env::var_os("PITBOSS_BENCH_SMOKE").is_some();
    let scale = if smoke { Scale { calls: 400, callers: 16 } } else { Scale { calls: 20_000, callers: 16 } };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let idempotent = runtime.block_on(chaos_run(&scale, "idempotent, retries = 3", "lookup", ""));
    let not_idempotent = runtime.block_on(chaos_run(&scale, "not idempotent", "charge", ""));
    let reserve = runtime.block_on(chaos_run(&scale, "not idempotent, 2 in reserve", "charge", "calls_in_reserve = 2"));
    let runs = [&idempotent, &not_idempotent, &reserve];
    let host_kill = runtime.block_on(kill_the_host());
    let hung = runtime.block_on(stop_a_worker());

    println!(
        "resilience run: {} calls a case from {} callers, SIGKILL to a random worker every {CHAOS_EVERY:?}, pool of \
         {POOL_SIZE}",
        scale.calls, scale.callers
    );
    println!(
        "{:<30} {:>8} {:>9} {:>7} {:>6} {:>5} {:>6} {:>22} {:>13} {:>20} {:>8}",
        "case",
        "calls",
        "answered",
        "failed",
        "wrong",
        "hung",
        "kills",
        "replaced in p50 / max",
        "back to size",
        "host RSS warm → end",
        "took"
    );
    for run in runs {
        let replaced = match percentiles(&run.replacements) {
            Some((p50, max)) => format!("{:.0} / {:.0} ms", p50.as_secs_f64() * 1e3, max.as_secs_f64() * 1e3),
            None => "-".to_owned(),
        };
        println!(
            "{:<30} {:>8} {:>9} {:>7} {:>6} {:>5} {:>6} {:>22} {:>13} {:>20} {:>7.1}s",
            run.label,
            run.calls,
            run.answered,
            run.failed(),
            run.wrong_answers,
            run.hung,
            run.kills,
            replaced,
            if run.back_to_size { "yes" } else { "NO" },
            format!("{} → {} MiB", run.rss_after_warm_up >> 20, run.rss_at_end >> 20),
            run.took.as_secs_f64()
        );
        if !run.failures.is_empty() {
            println!("{:<30} failures by kind: {:?}", "", run.failures);
        }
    }
    println!(
        "host SIGKILL mid-load: {} of {} workers left after 3 s (the last gone {:.0} ms after the kill); the restarted \
         host swept {} and answered: {}",
        host_kill.left_after_3s,
        host_kill.workers,
        host_kill.all_gone_after.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        if host_kill.restart_swept_nothing { "nothing" } else { "leftovers" },
        if host_kill.restart_answered { "yes" } else { "NO" },
    );

    println!(
        "hung worker (SIGSTOP; ping_interval {HUNG_PING_INTERVAL:?}, max_missed_pings {HUNG_MISSED_PINGS}): taken out \
         of service after {:.0} ms, pool back at its size after {:.0} ms",
        hung.detected.as_secs_f64() * 1e3,
        hung.replaced.as_secs_f64() * 1e3
    );

    let rss_steady = |run: &Outcome| run.rss_at_end as f64 <= run.rss_after_warm_up as f64 * 1.10;
    let checks = [
        ("every idempotent call answered despite the kills", idempotent.failed() == 0),
        ("no call got another call's answer", runs.iter().all(|run| run.wrong_answers == 0)),
        ("no call hung", runs.iter().all(|run| run.hung == 0)),
        (
            "calls to a tool that is not idempotent fail only with worker_crashed",
            [&not_idempotent, &reserve].iter().all(|run| run.failures.keys().all(|kind| kind == "worker_crashed")),
        ),
        (
            "a kill fails only the call running on that worker (one per process worker), calls in reserve included",
            [&not_idempotent, &reserve].iter().all(|run| run.failed() <= run.kills),
        ),
        ("the chaos loop killed workers in every run", runs.iter().all(|run| run.kills > 0)),
        ("each pool back to its size at the end", runs.iter().all(|run| run.back_to_size)),
        ("host RSS at the end within 10% of after warm-up", runs.iter().all(|run| rss_steady(run))),
        ("no worker left 3 s after the host's SIGKILL", host_kill.left_after_3s == 0),
        ("a restarted host sweeps nothing and serves", host_kill.restart_swept_nothing && host_kill.restart_answered),
        (
            "a hung worker is out of service within max_missed_pings + 2 ping intervals (+100 ms of scheduling)",
            // A smoke run (CI, a debug build on a busy machine) only shows the
            // worker was found and replaced; the timing is for real runs.
            smoke || hung.detected <= HUNG_PING_INTERVAL * (HUNG_MISSED_PINGS + 2) + Duration::from_millis(100),
        ),
    ];
    let mut results = Results::new("resilience");
    for run in runs {
        run.record(&mut results);
    }
    let host = Figure { case: "host SIGKILL mid-load", system: "pitboss serve", workers: POOL_SIZE, param: "" };
    results.record(&host, "workers left after 3 s", host_kill.left_after_3s as f64);
    results.record(&host, "last gone, ms", host_kill.all_gone_after.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3));
    let stopped = Figure { case: "hung worker (SIGSTOP)", system: "pitboss", workers: 1, param: "" };
    results.record(&stopped, "out of service, ms", hung.detected.as_secs_f64() * 1e3);
    results.record(&stopped, "replaced, ms", hung.replaced.as_secs_f64() * 1e3);
    let mut all_passed = true;
    for (check, passed) in checks {
        println!("{} {check}", if passed { "pass" } else { "FAIL" });
        let figure = Figure { case: "checks", system: check, workers: POOL_SIZE, param: "" };
        results.record(&figure, "passed", f64::from(u8::from(passed)));
        all_passed &= passed;
    }
    println!("(whole run {:.0} s)", started.elapsed().as_secs_f64());
    if all_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// p50 and max of `samples`.
fn percentiles(samples: &[Duration]) -> Option<(Duration, Duration)> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    Some((*sorted.get(sorted.len() / 2)?, *sorted.last()?))
}

async fn chaos_run(scale: &Scale, label: &'static str, tool: &'static str, pool_settings: &str) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let settings = format!("size = {POOL_SIZE}\nretries = 3\nrequest_timeout = \"10s\"\n{pool_settings}");
    let config = support::config_for(dir.path(), "operations:Operations", &settings);
    let host = Arc::new(support::start_ready(config).await);
    let call = |nonce: String| CallRequest::json(tool, json!({"seconds": 0.001, "nonce": nonce}).to_string());
    for i in 0..200 {
        host.execute("pool", call(format!("warm-{i}"))).await.expect("the warm-up succeeds");
    }
    let rss_after_warm_up = resident_bytes(std::process::id()).unwrap_or(0);

    let stop = Arc::new(AtomicBool::new(false));
    let chaos = tokio::spawn(chaos_loop(host.clone(), stop.clone()));
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let callers: Vec<_> = (0..scale.callers)
        .map(|_| {
            let (host, next, tally, calls) = (host.clone(), next.clone(), tally.clone(), scale.calls);
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        return;
                    }
                    let nonce = format!("{tool}-{i}");
                    let answer = tokio::time::timeout(HUNG_AFTER, host.execute("pool", call(nonce.clone()))).await;
                    tally.lock().unwrap().count(&nonce, answer);
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (kills, replacements) = chaos.await.unwrap();
    let back_to_size = eventually(Duration::from_secs(30), async || {
        host.stats().await[0].workers.iter().filter(|w| w.state == "ready").count() == POOL_SIZE as usize
    })
    .await;
    let rss_at_end = resident_bytes(std::process::id()).unwrap_or(0);
    host.shutdown().await;
    let tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    Outcome {
        label,
        calls: scale.calls,
        answered: tally.answered,
        failures: tally.failures,
        wrong_answers: tally.wrong_answers,
        hung: tally.hung,
        kills,
        replacements,
        back_to_size,
        rss_after_warm_up,
        rss_at_end,
        took,
    }
}

#[derive(Default)]
struct Tally {
    answered: usize,
    failures: BTreeMap<String, usize>,
    wrong_answers: usize,
    hung: usize,
}

impl Tally {
    fn count(
        &mut self,
        nonce: &str,
        answer: Result<Result<pitboss::CallOutput, pitboss::CallError>, tokio::time::error::Elapsed>,
    ) {
        match answer {
            Err(_) => self.hung += 1,
            Ok(Err(error)) => *self.failures.entry(error.kind.as_str().to_owned()).or_default() += 1,
            Ok(Ok(output)) => {
                let answer: Value = serde_json::from_slice(&output.payload).unwrap_or(Value::Null);
                if answer["nonce"] == nonce {
                    self.answered += 1;
                } else {
                    self.wrong_answers += 1;
                }
            }
        }
    }
}

/// Every CHAOS_EVERY, SIGKILL to a random ready worker, until `stop`;
/// returns the kills and how long each took to be replaced.
async fn chaos_loop(host: Arc<Host>, stop: Arc<AtomicBool>) -> (usize, Vec<Duration>) {
    // A fixed-seed xorshift: which worker dies need not be secret, only spread.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let (mut kills, mut replacements) = (0, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let ready: Vec<u32> =
            host.stats().await[0].workers.iter().filter(|w| w.state == "ready").map(|w| w.pid).collect();
        let started = Instant::now();
        if !ready.is_empty() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let pid = ready[(seed % ready.len() as u64) as usize];
            if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                kills += 1;
            }
        }
        let mut replaced = false;
        while started.elapsed() < CHAOS_EVERY {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let stats = &host.stats().await[0];
            let now_ready = stats.workers.iter().filter(|w| w.state == "ready").count();
            if !replaced && now_ready == POOL_SIZE as usize && stats.starting == 0 {
                replacements.push(started.elapsed());
                replaced = true;
            }
        }
    }
    (kills, replacements)
}

struct HostKill {
    workers: usize,
    left_after_3s: usize,
    all_gone_after: Option<Duration>,
    restart_swept_nothing: bool,
    restart_answered: bool,
}

/// `pitboss serve` under load from a gRPC client, killed with SIGKILL;
/// then a second host on the same run directory.
async fn kill_the_host() -> HostKill {
    let dir = tempfile::tempdir().unwrap();
    let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let host_settings = format!("api_address = \"{address}\"");
    let config = support::config_file_with_host(
        dir.path(),
        "operations:Operations",
        &host_settings,
        &format!("size = {POOL_SIZE}"),
    );
    let serve = |log: &std::path::Path| {
        Command::new(PITBOSS)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    };
    let connect = async || -> Client {
        for _ in 0..300 {
            if let Ok(mut client) = Client::connect(address).await {
                if client.pools().await.is_ok_and(|pools| pools[0].ready == POOL_SIZE) {
                    return client;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("pitboss serve did not come up on {address}");
    };

    let mut first = serve(&dir.path().join("first.log"));
    let mut client = connect().await;
    let pids: Vec<u32> = client.pools().await.unwrap()[0].workers.iter().map(|w| w.pid).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|lane| {
            let (mut client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let request = json!({"seconds": 0.005, "nonce": format!("{lane}-{i}")}).to_string();
                    let _ = client.execute("pool", CallRequest::json("lookup", request)).await;
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.kill().unwrap();
    let killed_at = Instant::now();
    first.wait().unwrap();
    let gone = eventually(Duration::from_secs(3), async || pids.iter().all(|pid| !alive(*pid))).await;
    let all_gone_after = gone.then(|| killed_at.elapsed());
    let left_after_3s = pids.iter().filter(|pid| alive(**pid)).count();
    stop.store(true, Ordering::Relaxed);
    for lane in load {
        lane.abort();
    }

    let second_log = dir.path().join("second.log");
    let mut second = serve(&second_log);
    client = connect().await;
    let answer = client.execute("pool", CallRequest::json("lookup", r#"{"seconds": 0, "nonce": "after"}"#)).await;
    let restart_answered = answer.is_ok_and(|output| {
        serde_json::from_slice::<Value>(&output.payload).is_ok_and(|answer| answer["nonce"] == "after")
    });
    kill(Pid::from_raw(second.id() as i32), Signal::SIGTERM).unwrap();
    second.wait().unwrap();
    let log = std::fs::read_to_string(&second_log).unwrap();
    HostKill {
        workers: pids.len(),
        left_after_3s,
        all_gone_after,
        restart_swept_nothing: !log.contains("killed workers left behind"),
        restart_answered,
    }
}

const HUNG_PING_INTERVAL: Duration = Duration::from_millis(100);
const HUNG_MISSED_PINGS: u32 = 3;

struct Hung {
    /// From SIGSTOP to the worker no longer ready.
    detected: Duration,
    /// From SIGSTOP to the pool back at its size with another worker.
    replaced: Duration,
}

/// SIGSTOP to one worker of an idle pool: how long until the pings give
/// it away, and until its replacement is ready.
async fn stop_a_worker() -> Hung {
    let dir = tempfile::tempdir().unwrap();
    let settings = format!(
        "size = 2\nping_interval = \"{}ms\"\nmax_missed_pings = {HUNG_MISSED_PINGS}",
        HUNG_PING_INTERVAL.as_millis()
    );
    let host = support::start_ready(support::config_for(dir.path(), "operations:Operations", &settings)).await;
    let victim = host.stats().await[0].workers[0].clone();
    kill(Pid::from_raw(victim.pid as i32), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let ready_others = async || {
        let stats = host.stats().await.remove(0);
        let victim_ready = stats.workers.iter().any(|w| w.id == victim.id && w.state == "ready");
        let ready = stats.workers.iter().filter(|w| w.state == "ready").count();
        (victim_ready, ready)
    };
    while ready_others().await.0 {
        assert!(stopped.elapsed() < Duration::from_secs(30), "the hung worker was never found");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let detected = stopped.elapsed();
    while ready_others().await.1 < 2 {
        assert!(stopped.elapsed() < Duration::from_secs(30), "the hung worker was never replaced");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let replaced = stopped.elapsed();
    host.shutdown().await;
    Hung { detected, replaced }
}
