//! Operating a host, end to end on real workers (tests/adapters/
//! operations.py): stats that match what runs, streams with cancellation
//! and errors, retries of idempotent calls, request ids and sessions.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pitboss::pool::{CallError, CallOutput, CallRequest, CallStream, ErrorKind, Reason};
use pitboss::Host;
use serde_json::{json, Value};
use support::eventually;
use tokio::task::JoinHandle;

fn call(tool: &str, args: Value) -> CallRequest {
    CallRequest::json(tool, serde_json::to_vec(&args).unwrap())
}

async fn start(settings: &str) -> (tempfile::TempDir, Arc<Host>) {
    let dir = tempfile::tempdir().unwrap();
    let config = support::config_for(dir.path(), "operations:Operations", settings);
    (dir, Arc::new(support::start_ready(config).await))
}

fn spawn_call(host: &Arc<Host>, request: CallRequest) -> JoinHandle<Result<CallOutput, CallError>> {
    let host = host.clone();
    tokio::spawn(async move { host.execute("pool", request).await })
}

fn decode(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap()
}

/// Every chunk of `stream` until its end, decoded; or the error after them.
async fn read_all(stream: &mut CallStream) -> (Vec<Value>, Option<CallError>) {
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => chunks.push(decode(&chunk.payload)),
            Err(error) => return (chunks, Some(error)),
        }
    }
    (chunks, None)
}

fn read_marker(path: &Path) -> Option<Value> {
    std::fs::read(path).ok().map(|bytes| decode(&bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_three_slow_calls_on_four_workers_and_the_workers_own_memory() {
    let (_dir, host) = start("size = 4").await;
    let calls: Vec<_> = (0..3).map(|_| spawn_call(&host, call("sleep", json!({"seconds": 2.0})))).collect();
    assert!(eventually(Duration::from_secs(5), async || host.stats().await[0].in_flight == 3).await);
    let stats = host.pool_stats("pool").await.unwrap();
    assert_eq!((stats.in_flight, stats.capacity, stats.queued), (3, 4, 0));
    assert!((stats.utilisation() - 0.75).abs() < 1e-9, "{}", stats.utilisation());
    assert_eq!(stats.workers.iter().filter(|w| w.in_flight == 1).count(), 3);
    for worker in &stats.workers {
        assert_eq!((worker.capacity, worker.state, worker.gil_enabled), (1, "ready", true));
        assert!(worker.threads >= 1, "{worker:?}");
        // The Python process's own memory, not the host's.
        let rss = pitboss::resident_bytes(worker.pid).unwrap();
        assert!(worker.rss_bytes > 0 && worker.rss_bytes.abs_diff(rss) < rss / 2, "{worker:?} vs {rss}");
        assert_ne!(worker.pid, std::process::id());
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }

    let before = host.pool_stats("pool").await.unwrap();
    assert_eq!((before.served, before.in_flight), (3, 0));
    host.recycle("pool", before.workers[0].id).await.unwrap();
    let stats = host.pool_stats("pool").await.unwrap();
    assert_eq!(stats.recycles.get(Reason::Manual), before.recycles.get(Reason::Manual) + 1);
    assert!(host.pool_stats("nope").await.is_err());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_kind_and_shown_on_their_worker() {
    let (_dir, host) = start("size = 1").await;
    let error = host.execute("pool", call("fail", json!({}))).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Exception);
    host.execute("pool", call("nope", json!({}))).await.unwrap_err();
    let stats = host.pool_stats("pool").await.unwrap();
    assert_eq!((stats.errors_of(ErrorKind::Exception), stats.errors_of(ErrorKind::UnknownTool)), (1, 1));
    // An unknown tool never reaches a worker; the exception did.
    let last = stats.workers[0].last_error.clone().unwrap();
    assert!(last.starts_with("exception:") && last.contains("failing as"), "{last}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_chunks_arrive_in_order_with_one_end() {
    let (_dir, host) = start("size = 1").await;
    let mut stream = host.execute_stream("pool", call("count", json!({"n": 1000})));
    let (chunks, error) = read_all(&mut stream).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(chunks, (0..1000).map(Value::from).collect::<Vec<_>>());
    assert!(stream.next().await.is_none(), "one end only");
    // The worker is free again: the stream finished on both sides.
    host.execute("pool", call("sleep", json!({"seconds": 0}))).await.unwrap();
    assert_eq!(host.pool_stats("pool").await.unwrap().in_flight, 0);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_after_five_chunks_is_a_typed_error_after_them() {
    let (_dir, host) = start("size = 1").await;
    let mut stream = host.execute_stream("pool", call("fail_after", json!({"n": 5})));
    let (chunks, error) = read_all(&mut stream).await;
    assert_eq!(chunks, (0..5).map(Value::from).collect::<Vec<_>>());
    let error = error.expect("the stream ends with the error");
    assert_eq!((error.kind, error.python_type.as_deref()), (ErrorKind::Exception, Some("ValueError")));
    assert!(error.message.contains("failed after 5 chunks"), "{error:?}");
    assert!(error.request_id.is_some(), "the error names its call");
    assert!(stream.next().await.is_none());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_after_ten_chunks_stops_the_generator() {
    let (dir, host) = start("size = 1").await;
    let marker = dir.path().join("forever");
    let mut request = call("forever", json!({"path": marker}));
    request.request_id = Some("stop-me".into());
    let mut stream = host.execute_stream("pool", request);
    for expected in 1..=10 {
        let chunk = stream.next().await.unwrap().unwrap();
        assert_eq!(decode(&chunk.payload), expected);
    }
    drop(stream);
    let finally_path = dir.path().join("forever.finally");
    assert!(
        eventually(Duration::from_secs(3), async || finally_path.exists()).await,
        "the generator's finally did not run within 3 s of the caller leaving"
    );
    let finally = read_marker(&finally_path).unwrap();
    assert_eq!(finally["request_id"], "stop-me");
    // It stopped for good, at most a credit window past what was read.
    let produced = finally["produced"].as_u64().unwrap();
    assert!((10..=10 + 16 + 1).contains(&produced), "{finally}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(read_marker(&marker).unwrap(), produced, "nothing was produced after the finally");
    assert!(eventually(Duration::from_secs(3), async || host.stats().await[0].in_flight == 0).await);
    host.execute("pool", call("sleep", json!({"seconds": 0}))).await.expect("the worker serves on");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_the_generator_back() {
    let (dir, host) = start("size = 1").await;
    let marker = dir.path().join("slow");
    let mut stream = host.execute_stream("pool", call("forever", json!({"path": marker})));
    stream.next().await.unwrap().unwrap();
    // Nobody reads: the worker stops at its credit window.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let produced = read_marker(&marker).unwrap().as_u64().unwrap();
    assert!(produced <= 1 + 16 + 1, "the worker ran {produced} chunks ahead of its reader");
    drop(stream);
    host.shutdown().await;
}

/// Starts `tool` (sleeping 2 s) and kill -9s the worker running it.
async fn kill_the_worker_running(host: &Arc<Host>, tool: &str) -> (u32, Result<CallOutput, CallError>) {
    let running = spawn_call(host, call(tool, json!({"seconds": 2.0, "nonce": "n-17"})));
    assert!(eventually(Duration::from_secs(5), async || host.stats().await[0].in_flight == 1).await);
    let pid = host.stats().await[0].workers.iter().find(|w| w.in_flight == 1).unwrap().pid;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    (pid, running.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_call_whose_worker_is_killed_is_answered_by_another() {
    let (_dir, host) = start("size = 2\nretries = 1").await;
    let (killed, answer) = kill_the_worker_running(&host, "lookup").await;
    let output = answer.expect("the retry answers");
    let value = decode(&output.payload);
    assert_eq!(value["nonce"], "n-17");
    assert_ne!(value["pid"], killed, "another worker answered");
    assert_eq!(output.attempts, 2);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_is_not_idempotent_is_never_retried() {
    let (_dir, host) = start("size = 2\nretries = 3").await;
    let (_, answer) = kill_the_worker_running(&host, "charge").await;
    assert_eq!(answer.unwrap_err().kind, ErrorKind::WorkerCrashed);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_an_idempotent_call_fails_too() {
    let (_dir, host) = start("size = 2").await;
    let (_, answer) = kill_the_worker_running(&host, "lookup").await;
    assert_eq!(answer.unwrap_err().kind, ErrorKind::WorkerCrashed, "retries default to 0");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_reaches_the_tool_and_its_error() {
    let (_dir, host) = start("size = 1").await;
    let mut request = call("whoami", json!({}));
    request.request_id = Some("caller-7".into());
    request.session = Some("s-1".into());
    let output = host.execute("pool", request).await.unwrap();
    assert_eq!(decode(&output.payload), json!({"request_id": "caller-7", "session": "s-1"}));
    assert_eq!(output.request_id.as_deref(), Some("caller-7"));

    let made = host.execute("pool", call("whoami", json!({}))).await.unwrap();
    let seen = decode(&made.payload);
    assert_eq!(seen["request_id"].as_str(), made.request_id.as_deref(), "the host's id reaches the tool");
    assert_eq!(seen["session"], Value::Null);
    let again = host.execute("pool", call("whoami", json!({}))).await.unwrap();
    assert_ne!(again.request_id, made.request_id);

    let error = host.execute("pool", call("fail", json!({}))).await.unwrap_err();
    let id = error.request_id.clone().expect("a failed call names its id");
    assert!(error.message.contains(&id), "the tool saw the same id: {error:?}");
    let error = host.execute("nope", call("fail", json!({}))).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::UnknownPool);
    assert!(error.request_id.is_some());

    let mut long = call("whoami", json!({}));
    long.request_id = Some("x".repeat(256));
    let error = host.execute("pool", long).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::BadArguments);
    assert_eq!(error.message, "the request id is 256 bytes long; at most 255 are allowed");
    let mut long = call("whoami", json!({}));
    long.session = Some("s".repeat(70_000));
    let mut stream = host.execute_stream("pool", long);
    let (chunks, error) = read_all(&mut stream).await;
    assert!(chunks.is_empty());
    assert!(error.unwrap().message.starts_with("the session key is 70000 bytes long"), "refused before any worker");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_lives_in_the_worker_until_it_recycles() {
    let (_dir, host) = start("size = 1").await;
    let remember = |args: Value, session: &str| {
        let mut request = call("remember", args);
        request.session = Some(session.to_owned());
        request
    };
    host.execute("pool", remember(json!({"key": "k", "value": 41}), "a")).await.unwrap();
    let read = |session: &'static str| {
        let host = host.clone();
        async move { decode(&host.execute("pool", remember(json!({"key": "k"}), session)).await.unwrap().payload) }
    };
    assert_eq!(read("a").await, 41);
    assert_eq!(read("b").await, Value::Null, "state is per session");
    let worker = host.stats().await[0].workers[0].id;
    host.recycle("pool", worker).await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), async || {
            let stats = host.stats().await;
            stats[0].ready == 1 && stats[0].workers.iter().all(|w| w.id != worker)
        })
        .await
    );
    assert_eq!(read("a").await, Value::Null, "soft state: gone with the worker");
    host.shutdown().await;
}

/// `GET /metrics` over a plain TCP socket.
async fn scrape(address: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    socket.write_all(b"GET /metrics HTTP/1.1\r\nHost: pitboss\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    body.to_owned()
}

/// Every sample of `text`, as the Prometheus client library parses it.
fn parse_metrics(text: &str) -> Vec<Value> {
    use std::io::Write;
    let mut parser = std::process::Command::new(support::python())
        .arg(support::root().join("tests/clients/parse_metrics.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    parser.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = parser.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}\n(scripts/python-env installs prometheus-client)\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout.split(|b| *b == b'\n').filter(|line| !line.is_empty()).map(decode).collect()
}

fn sample<'a>(samples: &'a [Value], name: &str, labels: Value) -> Option<&'a Value> {
    let wanted = labels.as_object().unwrap();
    samples.iter().find(|s| s["name"] == name && wanted.iter().all(|(k, v)| &s["labels"][k] == v)).map(|s| &s["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scraped_under_load_parse_and_count_every_call() {
    let (_dir, host) = start("size = 2").await;
    let listener = pitboss::api::bind_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(pitboss::api::serve_metrics(host.clone(), listener, std::future::pending()));

    let load: Vec<_> =
        (0..40).map(|i| spawn_call(&host, call("sleep", json!({"seconds": 0.01 * (i % 3) as f64})))).collect();
    let during = scrape(address).await;
    parse_metrics(&during);
    for call in load {
        call.await.unwrap().unwrap();
    }
    host.execute("pool", call("fail", json!({}))).await.unwrap_err();
    host.execute("pool", call("no_such_tool", json!({}))).await.unwrap_err();
    host.recycle("pool", host.stats().await[0].workers[0].id).await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), async || {
            let stats = host.stats().await;
            stats[0].ready == 2 && stats[0].draining == 0
        })
        .await
    );

    let samples = parse_metrics(&scrape(address).await);
    let count = |outcome: &str, tool: &str| {
        sample(&samples, "pitboss_requests_total", json!({"pool": "pool", "tool": tool, "outcome": outcome}))
            .and_then(Value::as_f64)
    };
    assert_eq!(count("ok", "sleep"), Some(40.0), "every call counted once");
    assert_eq!(count("exception", "fail"), Some(1.0));
    assert_eq!(count("unknown_tool", ""), Some(1.0), "a made-up tool name is not a label");
    let histogram_count =
        sample(&samples, "pitboss_request_duration_seconds_count", json!({"tool": "sleep", "outcome": "ok"}));
    assert_eq!(histogram_count.and_then(Value::as_f64), Some(40.0));
    assert_eq!(sample(&samples, "pitboss_queue_wait_seconds_count", json!({"pool": "pool"})).unwrap(), 40.0);
    assert_eq!(sample(&samples, "pitboss_worker_recycles_total", json!({"reason": "manual"})).unwrap(), 1.0);
    let workers = |state: &str| sample(&samples, "pitboss_workers", json!({"pool": "pool", "state": state})).cloned();
    assert!(workers("ready").is_some() && workers("starting").is_some() && workers("draining").is_some());
    assert_eq!(sample(&samples, "pitboss_capacity", json!({"pool": "pool"})).unwrap(), 2.0);
    let decisions = sample(&samples, "pitboss_policy_decisions_total", json!({"pool": "pool"})).unwrap();
    assert!(decisions.as_f64().unwrap() >= 41.0, "{decisions}");
    let decided = sample(&samples, "pitboss_policy_decision_seconds_count", json!({"pool": "pool"})).unwrap();
    assert_eq!(decided, decisions, "every decision timed");
    assert_eq!(sample(&samples, "pitboss_policy_swaps_total", json!({"pool": "pool"})).unwrap(), 0.0);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_metrics_count_each_version_on_its_own() {
    use pitboss::policy::{Candidate, SwapOptions, BUILTIN_ROUTERS};
    let (_dir, host) = start("size = 2").await;
    for _ in 0..5 {
        host.execute("pool", call("whoami", json!({}))).await.unwrap();
    }
    let round_robin = BUILTIN_ROUTERS.iter().find(|b| b.name == "round-robin").unwrap();
    let candidate = Candidate { label: "round-robin".to_owned(), wasm: round_robin.wasm.to_vec() };
    let swapped = host.swap_router("pool", candidate, SwapOptions::default()).await.unwrap();
    assert!(swapped.refused.is_none(), "{:?}", swapped.refused);
    for _ in 0..7 {
        host.execute("pool", call("whoami", json!({}))).await.unwrap();
    }

    let samples = parse_metrics(&host.metrics().await);
    let by_version = |name: &str, plugin: &str| -> f64 {
        let found: Vec<&Value> = samples
            .iter()
            .filter(|s| s["name"] == name && s["labels"]["version"].as_str().unwrap_or("").contains(plugin))
            .collect();
        assert_eq!(found.len(), 1, "one {name} series for {plugin}: {found:?}");
        found[0]["value"].as_f64().unwrap()
    };
    assert_eq!(by_version("pitboss_policy_decisions_total", "least-loaded"), 5.0, "its count stays after the swap");
    assert_eq!(by_version("pitboss_policy_decisions_total", "round-robin"), 7.0, "counted from zero");
    assert_eq!(by_version("pitboss_policy_decision_seconds_count", "round-robin"), 7.0);
    assert_eq!(by_version("pitboss_policy_faults_total", "round-robin"), 0.0);
    assert_eq!(sample(&samples, "pitboss_policy_swaps_total", json!({"pool": "pool"})).unwrap(), 1.0);
    let states: Vec<&str> = samples
        .iter()
        .filter(|s| s["name"] == "pitboss_workers")
        .map(|s| s["labels"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["starting", "ready", "draining", "stopping"], "every state, once");
    let ready = sample(&samples, "pitboss_workers", json!({"state": "ready"})).unwrap();
    assert_eq!(ready, 2.0);
    host.shutdown().await;
}
