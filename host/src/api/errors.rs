//! Failed calls in gRPC's richer error model: the status details hold a
//! `google.rpc.Status` whose code and message are the call's, with the
//! `pitboss.v1.CallError` packed as an `Any`
//! (`type.googleapis.com/pitboss.v1.CallError`) and the standard details
//! that fit: `ErrorInfo` (reason = the kind, domain = `pitboss`, metadata
//! pool, tool and request_id) always,
//! `ResourceInfo` for an unknown pool or tool, `RetryInfo` for a saturated
//! pool. grpcio-status, Java's `StatusProto`, Go's `status.FromError` and
//! tonic-types all read this without knowing pitboss.

use std::collections::HashMap;
use std::time::Duration;

use prost::Message;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::proto;
use crate::pool::{CallError, ErrorKind};

/// Where a call's error detail lives among the status details.
pub const CALL_ERROR_TYPE_URL: &str = "type.googleapis.com/pitboss.v1.CallError";

/// The domain of every `ErrorInfo` pitboss sends.
pub const ERROR_DOMAIN: &str = "pitboss";

/// How long a caller refused by a saturated pool is told to wait: the
/// queue frees up as calls finish, which takes milliseconds to seconds.
const SATURATED_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The status a failed call of `tool` on `pool` is answered with.
pub(super) fn status(error: &CallError, pool: &str, tool: &str) -> Status {
    let code = code(error.kind);
    let message = error.to_string();
    let mut standard = ErrorDetails::new();
    let mut metadata = HashMap::from([("pool".to_owned(), pool.to_owned()), ("tool".to_owned(), tool.to_owned())]);
    if let Some(request_id) = &error.request_id {
        metadata.insert("request_id".to_owned(), request_id.clone());
    }
    standard.set_error_info(error.kind.as_str(), ERROR_DOMAIN, metadata);
    match error.kind {
        ErrorKind::UnknownPool => {
            standard.set_resource_info("pitboss.v1.Pool", pool, "", &error.message);
        }
        ErrorKind::UnknownTool => {
            standard.set_resource_info("pitboss.v1.Tool", tool, format!("pool/{pool}"), &error.message);
        }
        ErrorKind::Saturated => {
            standard.set_retry_info(Some(SATURATED_RETRY_DELAY));
        }
        _ => {}
    }
    // tonic-types packs the standard details; the pitboss detail goes first.
    let packed = Status::with_error_details(code, message.clone(), standard);
    let mut rpc_status = tonic_types::pb::Status::decode(packed.details()).expect("tonic-types encodes a valid status");
    let detail = proto::CallError {
        kind: error.kind.as_str().to_owned(),
        message: error.message.clone(),
        python_type: error.python_type.clone().unwrap_or_default(),
        traceback: error.traceback.clone().unwrap_or_default(),
        request_id: error.request_id.clone().unwrap_or_default(),
    };
    rpc_status
        .details
        .insert(0, prost_types::Any { type_url: CALL_ERROR_TYPE_URL.to_owned(), value: detail.encode_to_vec() });
    Status::with_details(code, message, rpc_status.encode_to_vec().into())
}

fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::UnknownPool | ErrorKind::UnknownTool => Code::NotFound,
        ErrorKind::BadArguments | ErrorKind::BadPayload => Code::InvalidArgument,
        ErrorKind::Exception => Code::Unknown,
        ErrorKind::Timeout | ErrorKind::QueueTimeout => Code::DeadlineExceeded,
        ErrorKind::Saturated => Code::ResourceExhausted,
        ErrorKind::Rejected => Code::FailedPrecondition,
        ErrorKind::WorkerCrashed => Code::Aborted,
        ErrorKind::ShuttingDown => Code::Unavailable,
        ErrorKind::Cancelled => Code::Cancelled,
        ErrorKind::BadResult | ErrorKind::Protocol => Code::Internal,
    }
}

/// The call error a failed Execute carries, if any: read from the
/// `google.rpc.Status` details the way any gRPC client reads them.
pub(super) fn call_error(status: &Status) -> Option<CallError> {
    let rpc_status = tonic_types::pb::Status::decode(status.details()).ok()?;
    let packed = rpc_status.details.iter().find(|any| any.type_url == CALL_ERROR_TYPE_URL)?;
    let error = proto::CallError::decode(packed.value.as_slice()).ok()?;
    Some(CallError {
        kind: ErrorKind::parse(&error.kind).unwrap_or(ErrorKind::Protocol),
        message: error.message,
        python_type: Some(error.python_type).filter(|t| !t.is_empty()),
        traceback: Some(error.traceback).filter(|t| !t.is_empty()),
        request_id: Some(error.request_id).filter(|id| !id.is_empty()),
    })
}
