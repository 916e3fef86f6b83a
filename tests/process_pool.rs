//! Process pools end to end through the embedded `Host`: real Python
//! workers running examples/adapter.py, the built-in router, real sockets.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pitboss::pool::{CallError, CallOutput, CallRequest, ErrorKind};
use pitboss::Host;
use serde_json::{json, Value};
use support::{alive, config, eventually, json_call};
use tokio::task::JoinHandle;

fn call(tool: &str, args: Value) -> CallRequest {
    CallRequest::json(tool, serde_json::to_vec(&args).unwrap())
}

async fn start(settings: &str) -> (tempfile::TempDir, Host) {
    let dir = tempfile::tempdir().unwrap();
    let host = support::start_ready(config(dir.path(), settings)).await;
    (dir, host)
}

/// Starts a call in the background, for tests that need calls in flight.
fn spawn_call(host: &Arc<Host>, tool: &str, args: Value) -> JoinHandle<Result<CallOutput, CallError>> {
    let host = host.clone();
    let request = call(tool, args);
    tokio::spawn(async move { host.execute("pool", request).await })
}

/// Starts a `sleep(seconds)` call and waits until a worker holds it.
async fn occupy_a_worker(host: &Arc<Host>, seconds: f64) -> JoinHandle<Result<CallOutput, CallError>> {
    let call = spawn_call(host, "sleep", json!({ "seconds": seconds }));
    assert!(eventually(Duration::from_secs(5), async || host.stats().await[0].in_flight == 1).await);
    call
}

async fn worker_pids(host: &Host) -> Vec<u32> {
    host.stats().await[0].workers.iter().map(|w| w.pid).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trip_keeps_types() {
    let (_dir, host) = start("size = 1").await;
    let args = json!({"n": 7, "x": 1.5, "s": "héllo", "none": null, "list": [1, 2], "nested": {"k": true}});
    assert_eq!(json_call(&host, "echo", args.clone()).await, args);
    let sum = host.execute("pool", call("add", json!({"a": 2, "b": 3}))).await.unwrap();
    assert_eq!(&sum.payload[..], b"5", "ints stay ints");
    assert_eq!(json_call(&host, "noop", json!({})).await, Value::Null);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_calls_all_succeed_on_both_workers() {
    let (_dir, host) = start("size = 2").await;
    let host = Arc::new(host);
    let calls: Vec<_> = (0..200).map(|i| spawn_call(&host, "echo", json!({"i": i}))).collect();
    for (i, call) in calls.into_iter().enumerate() {
        let output = call.await.unwrap().unwrap_or_else(|err| panic!("call {i}: {err}"));
        assert_eq!(serde_json::from_slice::<Value>(&output.payload).unwrap(), json!({"i": i}));
    }
    let status = &host.stats().await[0];
    assert_eq!(status.served, 200);
    assert_eq!(status.in_flight, 0);
    assert!(status.workers.iter().all(|w| w.served > 0), "both workers served: {:?}", status.workers);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_exceptions_come_back_structured() {
    let (_dir, host) = start("size = 1").await;
    let err = host.execute("pool", call("fail", json!({"message": "bad input"}))).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Exception);
    assert_eq!(err.python_type.as_deref(), Some("ValueError"));
    assert_eq!(err.message, "bad input");
    let traceback = err.traceback.expect("a traceback");
    assert!(traceback.contains("Traceback") && traceback.contains("ValueError: bad input"), "{traceback}");
    assert_eq!(json_call(&host, "add", json!({"a": 1, "b": 1})).await, json!(2), "the pool keeps serving");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_the_pool_keeps_serving() {
    let (_dir, host) = start("size = 1").await;

    let err = host.execute("nope", call("echo", json!({}))).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::UnknownPool);
    assert!(err.message.contains("no pool named `nope`; the pools are: pool"), "{err}");

    let err = host.execute("pool", call("nope", json!({}))).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::UnknownTool);
    assert!(err.message.contains("has no tool `nope`") && err.message.contains("echo"), "{err}");

    let err = host.execute("pool", CallRequest::json("echo", "{not json")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadPayload, "{err}");

    let err = host.execute("pool", call("add", json!({"a": 1}))).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadArguments, "{err}");
    assert!(err.message.contains('b'), "names the missing argument: {err}");

    let err = host.execute("pool", call("add", json!({"a": 1, "b": 2, "c": 3}))).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadArguments, "{err}");

    assert_eq!(json_call(&host, "add", json!({"a": 40, "b": 2})).await, json!(42));
    let status = &host.stats().await[0];
    assert_eq!((status.ready, status.crashes, status.in_flight), (1, 0, 0));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_call_fails_that_call_and_is_replaced() {
    let (_dir, host) = start("size = 2").await;
    let host = Arc::new(host);
    let slow = spawn_call(&host, "sleep", json!({"seconds": 10}));
    let mut victim = 0;
    assert!(
        eventually(Duration::from_secs(5), async || {
            let status = &host.stats().await[0];
            victim = status.workers.iter().find(|w| w.in_flight == 1).map_or(0, |w| w.pid);
            victim != 0
        })
        .await
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL).unwrap();

    let err = slow.await.unwrap().unwrap_err();
    assert_eq!(err.kind, ErrorKind::WorkerCrashed);
    assert!(err.message.contains("signal 9"), "names the signal: {err}");

    // The caller hears of the crash straight from the worker's driver, a
    // moment before the pool has processed the exit: wait for both.
    assert!(
        eventually(Duration::from_secs(10), async || {
            host.stats().await[0].ready == 2 && !worker_pids(&host).await.contains(&victim)
        })
        .await,
        "the pool is back to size without the victim: {:?}",
        host.stats().await
    );
    for i in 0..4 {
        assert_eq!(json_call(&host, "echo", json!({"i": i})).await, json!({"i": i}));
    }
    let status = &host.stats().await[0];
    assert_eq!(status.crashes, 1);
    assert_eq!(status.in_flight, 0);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_timeout_fails_and_its_worker_is_replaced() {
    let (_dir, host) = start("size = 1\nrequest_timeout = \"1s\"").await;
    let before = worker_pids(&host).await;
    let started = Instant::now();
    let err = host.execute("pool", call("sleep", json!({"seconds": 10}))).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "the caller is not kept waiting");
    assert!(eventually(Duration::from_secs(5), async || !alive(before[0])).await, "the overrunning worker is stopped");
    let started = Instant::now();
    assert_eq!(json_call(&host, "add", json!({"a": 1, "b": 2})).await, json!(3));
    assert!(started.elapsed() < Duration::from_secs(5), "the next call succeeds promptly");
    let status = &host.stats().await[0];
    assert_ne!(worker_pids(&host).await, before);
    assert_eq!((status.crashes, status.in_flight), (0, 0), "a timeout kill is no crash: {status:?}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_may_shorten_the_pools_timeout_but_not_lengthen_it() {
    let (_dir, host) = start("size = 1\nrequest_timeout = \"1s\"").await;
    let mut request = call("sleep", json!({"seconds": 5}));
    request.timeout = Some(Duration::from_millis(300));
    let err = host.execute("pool", request).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert!(err.message.contains("300ms"), "{err}");

    let mut request = call("sleep", json!({"seconds": 5}));
    request.timeout = Some(Duration::from_secs(30));
    let started = Instant::now();
    let err = host.execute("pool", request).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert!(err.message.contains("1s"), "the pool's limit holds: {err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let (_dir, host) = start("size = 1\nqueue_limit = 1").await;
    let host = Arc::new(host);
    let busy = occupy_a_worker(&host, 1.0).await;
    let queued = spawn_call(&host, "add", json!({"a": 1, "b": 1}));
    assert!(eventually(Duration::from_secs(5), async || host.stats().await[0].queued == 1).await);
    let started = Instant::now();
    let err = host.execute("pool", call("add", json!({"a": 2, "b": 2}))).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Saturated, "{err}");
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once");
    assert!(busy.await.unwrap().is_ok());
    assert_eq!(&queued.await.unwrap().unwrap().payload[..], b"2", "the queued call ran");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_too_long_in_the_queue_times_out() {
    let (_dir, host) = start("size = 1\nqueue_timeout = \"400ms\"").await;
    let host = Arc::new(host);
    let busy = occupy_a_worker(&host, 1.5).await;
    let started = Instant::now();
    let err = host.execute("pool", call("add", json!({"a": 1, "b": 1}))).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::QueueTimeout, "{err}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(350) && waited < Duration::from_millis(1400), "{waited:?}");
    assert!(busy.await.unwrap().is_ok());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_left_the_queue_is_not_timed_out_by_it() {
    let (_dir, host) = start("size = 1\nqueue_timeout = \"1s\"").await;
    let host = Arc::new(host);
    let busy = occupy_a_worker(&host, 0.5).await;
    // Queued for about 0.5 s, then runs 1.5 s: well past the queue timeout
    // in total, but it left the queue in time.
    let output = host.execute("pool", call("sleep", json!({"seconds": 1.5}))).await;
    assert!(output.is_ok(), "{output:?}");
    assert!(busy.await.unwrap().is_ok());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_calls_in_flight_finish_and_leaves_no_worker() {
    let (_dir, host) = start("size = 2").await;
    let host = Arc::new(host);
    let pids = worker_pids(&host).await;
    let in_flight = occupy_a_worker(&host, 0.7).await;
    let stopping = {
        let host = host.clone();
        tokio::spawn(async move { host.shutdown().await })
    };
    assert!(
        eventually(Duration::from_secs(2), async || {
            host.execute("pool", call("noop", json!({}))).await.is_err_and(|e| e.kind == ErrorKind::ShuttingDown)
        })
        .await
    );
    assert_eq!(&in_flight.await.unwrap().expect("the call in flight finishes").payload[..], b"0.7");
    stopping.await.unwrap();
    for pid in pids {
        assert!(!alive(pid), "worker {pid} is gone after shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_that_fails_to_import_is_a_start_error_quoting_its_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.py"),
        "import sys\nprint('loading broken adapter')\nraise ImportError('no such backend: quantum')\n",
    )
    .unwrap();
    let config = support::config_for(dir.path(), "broken:Adapter", "size = 2\nstartup_timeout = \"20s\"");
    let started = Instant::now();
    let err = Host::start(config).await.err().expect("the host refuses to start");
    let full = format!("{err:#}");
    assert!(started.elapsed() < Duration::from_secs(15), "no hang");
    assert!(full.contains("exited with status 3"), "{full}");
    assert!(full.contains("no such backend: quantum"), "quotes the output: {full}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_an_earlier_run_are_swept_at_start() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut leftover = std::process::Command::new("sleep");
    leftover.arg("60").process_group(0);
    let mut leftover = leftover.spawn().unwrap();
    let pid = leftover.id();
    let records = dir.path().join("run/workers");
    std::fs::create_dir_all(&records).unwrap();
    let start_time = pitboss::process_start_time(pid).unwrap();
    std::fs::write(
        records.join(format!("{pid}.json")),
        format!(r#"{{"run_id":"earlier","pool":"pool","worker":0,"pid":{pid},"start_time":{start_time}}}"#),
    )
    .unwrap();
    // A record whose start time does not match is someone else's process.
    let bystander = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(
        records.join(format!("{}.json", bystander.id())),
        format!(r#"{{"run_id":"earlier","pool":"pool","worker":1,"pid":{},"start_time":1}}"#, bystander.id()),
    )
    .unwrap();

    let host = Host::start(config(dir.path(), "size = 1")).await.unwrap();
    let status = leftover.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "the leftover was killed");
    assert!(alive(bystander.id()), "a pid with another start time is left alone");
    let mut bystander = bystander;
    bystander.kill().unwrap();
    let _ = bystander.wait();
    host.shutdown().await;
}
