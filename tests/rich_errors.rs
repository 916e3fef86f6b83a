//! Calls over gRPC as clients that know nothing of pitboss but the .proto
//! read them: failures in the richer error model, read by a Rust client
//! with tonic-types' `ErrorDetails` and a Python one with grpcio and
//! grpcio-status (tests/clients/read_call_error.py), and the request id a
//! caller names in the `x-request-id` header. Real host, real workers,
//! loopback.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use serde_json::{json, Value};
use support::{eventually, start_ready};
use tonic::Code;
use tonic_types::StatusExt;

#[derive(Clone, PartialEq, prost::Message)]
struct ExecuteRequest {
    #[prost(string, tag = "1")]
    pool: String,
    #[prost(string, tag = "2")]
    tool: String,
    #[prost(bytes = "vec", tag = "3")]
    payload: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CallError {
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(string, tag = "3")]
    python_type: String,
    #[prost(string, tag = "4")]
    traceback: String,
    #[prost(string, tag = "5")]
    request_id: String,
}

/// What a client read from one failed call.
#[derive(Debug)]
struct Read {
    code: Code,
    call_error: CallError,
    details: tonic_types::ErrorDetails,
}

struct Served {
    host: Arc<pitboss::Host>,
    address: String,
    _dir: tempfile::TempDir,
}

async fn serve(pool_settings: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(start_ready(support::config(dir.path(), pool_settings)).await);
    let listener = pitboss::api::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(pitboss::api::serve(host.clone(), listener, std::future::pending()));
    Served { host, address, _dir: dir }
}

/// One Execute through tonic, its failure read with tonic-types.
async fn rust_client(address: &str, tool: &str, args: Value) -> Read {
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let request = ExecuteRequest { pool: "pool".into(), tool: tool.into(), payload: args.to_string().into_bytes() };
    let path = "/pitboss.v1.Pitboss/Execute".parse().unwrap();
    let codec = tonic_prost::ProstCodec::<ExecuteRequest, ()>::default();
    let status = grpc.unary(tonic::Request::new(request), path, codec).await.unwrap_err();
    let rpc_status = tonic_types::pb::Status::decode(status.details()).expect("a google.rpc.Status");
    assert_eq!((rpc_status.code, rpc_status.message.as_str()), (status.code() as i32, status.message()));
    let packed = rpc_status
        .details
        .iter()
        .find(|any| any.type_url == "type.googleapis.com/pitboss.v1.CallError")
        .expect("a CallError detail");
    Read {
        code: status.code(),
        call_error: CallError::decode(packed.value.as_slice()).unwrap(),
        details: status.get_error_details(),
    }
}

/// The same call through grpcio in the test venv.
fn python_client(address: &str, tool: &str, args: Value) -> Value {
    let script = support::root().join("tests/clients/read_call_error.py");
    let output =
        Command::new(support::python()).arg(script).args([address, "pool", tool, &args.to_string()]).output().unwrap();
    assert!(
        output.status.success(),
        "the grpcio client failed (scripts/python-env installs grpcio, grpcio-status and grpcio-tools): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn check_error_info(read: &Read, kind: &str) {
    let info = read.details.error_info().expect("an ErrorInfo");
    assert_eq!((info.reason.as_str(), info.domain.as_str()), (kind, "pitboss"));
    assert_eq!(info.metadata.get("pool").map(String::as_str), Some("pool"));
    assert!(!read.call_error.request_id.is_empty(), "the host gave the call a request id");
    assert_eq!(info.metadata.get("request_id"), Some(&read.call_error.request_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_and_an_unknown_tool_read_the_same_from_rust_and_python() {
    let served = serve("size = 1").await;
    let address = served.address.clone();

    let raised = rust_client(&address, "fail", json!({"message": "nope"})).await;
    assert_eq!(raised.code, Code::Unknown);
    assert_eq!((raised.call_error.kind.as_str(), raised.call_error.python_type.as_str()), ("exception", "ValueError"));
    assert!(raised.call_error.traceback.contains("Traceback") && raised.call_error.traceback.contains("nope"));
    check_error_info(&raised, "exception");

    let unknown = rust_client(&address, "nope", json!({})).await;
    assert_eq!((unknown.code, unknown.call_error.kind.as_str()), (Code::NotFound, "unknown_tool"));
    let resource = unknown.details.resource_info().expect("a ResourceInfo");
    assert_eq!(
        (resource.resource_type.as_str(), resource.resource_name.as_str(), resource.owner.as_str()),
        ("pitboss.v1.Tool", "nope", "pool/pool")
    );
    check_error_info(&unknown, "unknown_tool");

    let (py_raised, py_unknown) = tokio::task::spawn_blocking(move || {
        (python_client(&address, "fail", json!({"message": "nope"})), python_client(&address, "nope", json!({})))
    })
    .await
    .unwrap();
    assert_eq!(py_raised["code"], "UNKNOWN", "{py_raised}");
    assert_eq!(py_raised["message_matches"], true, "{py_raised}");
    assert_eq!(py_raised["call_error"]["kind"], "exception");
    assert_eq!(py_raised["call_error"]["python_type"], "ValueError");
    assert!(py_raised["call_error"]["traceback"].as_str().unwrap().contains("Traceback"), "{py_raised}");
    let request_id = py_raised["call_error"]["request_id"].as_str().unwrap().to_owned();
    assert!(!request_id.is_empty(), "{py_raised}");
    assert_ne!(request_id, raised.call_error.request_id, "each call has its own id");
    assert_eq!(
        py_raised["error_info"],
        json!({"reason": "exception", "domain": "pitboss",
               "metadata": {"pool": "pool", "tool": "fail", "request_id": request_id}})
    );
    assert_eq!(py_unknown["code"], "NOT_FOUND", "{py_unknown}");
    assert_eq!(py_unknown["resource_info"], json!({"type": "pitboss.v1.Tool", "name": "nope", "owner": "pool/pool"}));
    served.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_says_when_to_retry() {
    let served = serve("size = 1\nqueue_limit = 1").await;
    let host = served.host.clone();
    let busy = support::spawn_json_call(&host, "sleep", json!({"seconds": 3}));
    assert!(eventually(Duration::from_secs(5), async || host.stats().await[0].in_flight == 1).await);
    let queued = support::spawn_json_call(&host, "add", json!({"a": 1, "b": 1}));
    assert!(eventually(Duration::from_secs(5), async || host.stats().await[0].queued == 1).await);

    let refused = rust_client(&served.address, "add", json!({"a": 2, "b": 2})).await;
    assert_eq!((refused.code, refused.call_error.kind.as_str()), (Code::ResourceExhausted, "saturated"));
    assert_eq!(refused.details.retry_info().and_then(|retry| retry.retry_delay), Some(Duration::from_millis(100)));
    check_error_info(&refused, "saturated");
    let address = served.address.clone();
    let py =
        tokio::task::spawn_blocking(move || python_client(&address, "add", json!({"a": 2, "b": 2}))).await.unwrap();
    assert_eq!((py["code"].as_str(), py["retry_delay_ms"].as_i64()), (Some("RESOURCE_EXHAUSTED"), Some(100)), "{py}");
    assert_eq!(py["call_error"]["kind"], "saturated");

    assert!(busy.await.unwrap().is_ok() && queued.await.unwrap().is_ok());
    served.host.shutdown().await;
}

/// Kills the pool's only worker once it is running a call.
async fn kill_the_busy_worker(host: &pitboss::Host) {
    assert!(eventually(Duration::from_secs(10), async || host.stats().await[0].in_flight == 1).await);
    let pid = host.stats().await[0].workers.iter().find(|w| w.in_flight == 1).unwrap().pid;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_crash_reads_as_aborted_with_its_kind() {
    let served = serve("size = 1").await;
    let host = served.host.clone();

    let call = rust_client(&served.address, "sleep", json!({"seconds": 10}));
    let (crashed, ()) = tokio::join!(call, kill_the_busy_worker(&host));
    assert_eq!((crashed.code, crashed.call_error.kind.as_str()), (Code::Aborted, "worker_crashed"));
    assert!(crashed.call_error.message.contains("SIGKILL"), "{crashed:?}");
    check_error_info(&crashed, "worker_crashed");

    assert!(eventually(Duration::from_secs(20), async || host.stats().await[0].ready == 1).await);
    let address = served.address.clone();
    let python = tokio::task::spawn_blocking(move || python_client(&address, "sleep", json!({"seconds": 10})));
    kill_the_busy_worker(&host).await;
    let py = python.await.unwrap();
    assert_eq!(
        (py["code"].as_str(), py["call_error"]["kind"].as_str()),
        (Some("ABORTED"), Some("worker_crashed")),
        "{py}"
    );
    assert_eq!(py["error_info"]["reason"], "worker_crashed");
    served.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_x_request_id_header_names_the_call_and_comes_back() {
    let served = serve("size = 1").await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", served.address)).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let request = |tool: &str, args: Value| {
        let mut request = tonic::Request::new(ExecuteRequest {
            pool: "pool".into(),
            tool: tool.into(),
            payload: args.to_string().into_bytes(),
        });
        request.metadata_mut().insert("x-request-id", "from-header-1".parse().unwrap());
        request
    };
    let header = |metadata: &tonic::metadata::MetadataMap| {
        metadata.get("x-request-id").map(|value| value.to_str().unwrap().to_owned())
    };

    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<ExecuteRequest, ()>::default();
    let path = "/pitboss.v1.Pitboss/Execute".parse().unwrap();
    let answered = grpc.unary(request("add", json!({"a": 1, "b": 2})), path, codec).await.unwrap();
    assert_eq!(header(answered.metadata()).as_deref(), Some("from-header-1"));

    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<ExecuteRequest, ()>::default();
    let path = "/pitboss.v1.Pitboss/ExecuteStream".parse().unwrap();
    let streamed = grpc.server_streaming(request("ticks", json!({"n": 2})), path, codec).await.unwrap();
    assert_eq!(header(streamed.metadata()).as_deref(), Some("from-header-1"), "a stream names its id up front");
    let mut chunks = streamed.into_inner();
    let mut count = 0;
    while chunks.message().await.unwrap().is_some() {
        count += 1;
    }
    assert_eq!(count, 2);

    let failed = rust_client(&served.address, "fail", json!({"message": "nope"})).await;
    assert!(!failed.call_error.request_id.is_empty(), "a failure names the id the host made: {failed:?}");
}
