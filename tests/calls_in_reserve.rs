//! `calls_in_reserve` on real process workers (tests/adapters/
//! operations.py): a worker holds a call behind the one it runs and starts
//! it as it answers; a call that waited in reserve gets its whole request
//! timeout once it starts, and one whose worker died (crashed or timed out)
//! before taking it runs on the replacement, idempotent or not.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pitboss::pool::{CallError, CallOutput, CallRequest, ErrorKind};
use pitboss::Host;
use serde_json::{json, Value};
use support::eventually;
use tokio::task::JoinHandle;

async fn start(settings: &str) -> (tempfile::TempDir, Arc<Host>) {
    let dir = tempfile::tempdir().unwrap();
    let config = support::config_for(dir.path(), "operations:Operations", settings);
    (dir, Arc::new(support::start_ready(config).await))
}

/// Starts `charge` (not idempotent): it sleeps `seconds`, then answers
/// `nonce` and its pid.
fn charge(host: &Arc<Host>, seconds: f64, nonce: &str) -> Answered {
    let host = host.clone();
    let request =
        CallRequest::json("charge", serde_json::to_vec(&json!({"seconds": seconds, "nonce": nonce})).unwrap());
    tokio::spawn(async move { host.execute("pool", request).await })
}

/// Starts `charge` calls "running" (sleeping `running_seconds`) and, once
/// it runs, "reserved" (`reserved_seconds`); waits until the only worker
/// runs the first and holds the second in reserve. Answers both calls and
/// the worker's pid.
async fn running_and_reserved(
    host: &Arc<Host>,
    running_seconds: f64,
    reserved_seconds: f64,
) -> (Answered, Answered, u32) {
    let running = charge(host, running_seconds, "running");
    assert!(eventually(Duration::from_secs(5), async || host.stats().await[0].in_flight == 1).await);
    let reserved = charge(host, reserved_seconds, "reserved");
    let pid = one_running_one_in_reserve(host).await;
    (running, reserved, pid)
}

type Answered = JoinHandle<Result<CallOutput, CallError>>;

/// Waits until the only worker runs one call and holds one in reserve;
/// answers its pid.
async fn one_running_one_in_reserve(host: &Host) -> u32 {
    let both_sent = eventually(Duration::from_secs(5), async || {
        let pool = &host.stats().await[0];
        (pool.in_flight, pool.reserved, pool.queued) == (1, 1, 0)
    })
    .await;
    let pool = &host.stats().await[0];
    assert!(both_sent, "the second call did not go to the busy worker: {pool:#?}");
    assert_eq!((pool.calls_in_reserve, pool.capacity), (1, 1), "capacity counts the calls a pool runs");
    assert_eq!((pool.workers[0].in_flight, pool.workers[0].reserved), (1, 1));
    pool.workers[0].pid
}

fn answer(output: Result<CallOutput, CallError>) -> (Value, CallOutput) {
    let output = output.expect("the call succeeds");
    (serde_json::from_slice(&output.payload).unwrap(), output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_takes_a_second_call_and_starts_it_as_it_answers_the_first() {
    let (_dir, host) = start("size = 1\ncalls_in_reserve = 1").await;
    let (first, second, pid) = running_and_reserved(&host, 0.5, 0.5).await;
    let (first, _) = answer(first.await.unwrap());
    let (second, output) = answer(second.await.unwrap());
    assert_eq!((first["pid"].as_u64(), second["pid"].as_u64()), (Some(pid.into()), Some(pid.into())));
    assert!(output.queued < Duration::from_millis(200), "sent at once, not queued: {:?}", output.queued);
    assert!(output.duration >= Duration::from_millis(800), "it waited on the worker: {:?}", output.duration);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_reserve_gets_its_whole_request_timeout_once_it_starts() {
    let (_dir, host) = start("size = 1\ncalls_in_reserve = 1\nrequest_timeout = \"1500ms\"").await;
    let (first, second, _) = running_and_reserved(&host, 1.0, 1.0).await;
    answer(first.await.unwrap());
    let (second, output) = answer(second.await.unwrap());
    assert_eq!(second["nonce"], "reserved");
    assert!(output.duration > Duration::from_millis(1500), "sent to the worker before the request timeout: {output:?}");
    assert_eq!(host.stats().await[0].errors_of(ErrorKind::Timeout), 0);
    host.shutdown().await;
}

/// Puts a call in reserve behind `running` (sleeping `seconds`), lets
/// `fail` do its worst to the worker (given its pid), and checks that the
/// running call fails with `kind` while the reserved one is answered, on
/// its first attempt, by another worker. `charge` is not idempotent.
async fn reserved_call_outlives(host: &Arc<Host>, seconds: f64, fail: impl FnOnce(u32), kind: ErrorKind) {
    let (running, reserved, failed_worker) = running_and_reserved(host, seconds, 0.1).await;
    fail(failed_worker);
    let error = running.await.unwrap().expect_err("the running call fails");
    assert_eq!(error.kind, kind, "{error}");
    let (value, output) = answer(reserved.await.unwrap());
    assert_eq!(value["nonce"], "reserved");
    assert_ne!(value["pid"].as_u64(), Some(failed_worker.into()), "the replacement ran it");
    assert_eq!(output.attempts, 1, "a call that never started is placed again, not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_reserve_behind_a_crashed_call_runs_on_the_replacement() {
    let (_dir, host) = start("size = 1\ncalls_in_reserve = 1").await;
    let kill = |pid: u32| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap()
    };
    reserved_call_outlives(&host, 2.0, kill, ErrorKind::WorkerCrashed).await;
    let pool = &host.stats().await[0];
    assert_eq!((pool.served, pool.failed), (2, 1), "{pool:#?}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_reserve_behind_a_call_that_timed_out_runs_on_the_replacement() {
    let (_dir, host) = start("size = 1\ncalls_in_reserve = 1\nrequest_timeout = \"1s\"").await;
    reserved_call_outlives(&host, 30.0, |_| {}, ErrorKind::Timeout).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sent_sigterm_finishes_its_call_and_its_reserve_runs_elsewhere() {
    let (_dir, host) = start("size = 1\ncalls_in_reserve = 1").await;
    let (running, reserved, stopped) = running_and_reserved(&host, 1.0, 0.1).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(stopped as i32), nix::sys::signal::Signal::SIGTERM).unwrap();

    let (value, _) = answer(running.await.unwrap());
    assert_eq!(value["pid"].as_u64(), Some(stopped.into()), "the running call finishes on its worker");
    let (value, output) = answer(reserved.await.unwrap());
    assert_eq!(value["nonce"], "reserved");
    assert_ne!(value["pid"].as_u64(), Some(stopped.into()), "the call the worker refused ran on its replacement");
    assert_eq!(output.attempts, 1);
    host.shutdown().await;
}
