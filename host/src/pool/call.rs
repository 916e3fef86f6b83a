//! One call's request, answer and error, as callers of a pool see them.
//!
//! Owns: those types and the mapping of a worker's error kinds onto
//! [`ErrorKind`]. Must not touch: queues, workers or the wire format.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::worker::{ContentType, WorkerError};

/// One call to a tool.
#[derive(Clone, Debug)]
pub struct CallRequest {
    pub tool: String,
    pub payload: Bytes,
    pub content_type: ContentType,
    /// Session key, shown to the router.
    pub session: Option<String>,
    /// Caller metadata, shown to the router.
    pub metadata: Vec<(String, String)>,
    /// Worker-side time limit, at most the pool's `request_timeout`; `None`
    /// uses that.
    pub timeout: Option<Duration>,
    /// The caller's id for the call, shown in the host's log, to the tool
    /// (`context.request_id`) and in its error; `None`: the host makes one.
    pub request_id: Option<String>,
}

impl CallRequest {
    /// A call with a JSON payload and no session, metadata or timeout.
    pub fn json(tool: &str, payload: impl Into<Bytes>) -> Self {
        CallRequest {
            tool: tool.to_owned(),
            payload: payload.into(),
            content_type: ContentType::Json,
            session: None,
            metadata: Vec::new(),
            timeout: None,
            request_id: None,
        }
    }
}

/// A successful call's answer.
#[derive(Clone, Debug)]
pub struct CallOutput {
    pub payload: Bytes,
    pub content_type: ContentType,
    /// The worker that served it.
    pub worker: u32,
    /// From dispatch to answer.
    pub duration: Duration,
    /// Waiting in the queue before dispatch (of the last attempt).
    pub queued: Duration,
    /// 1, or more when an idempotent call was retried after its worker
    /// crashed or timed out.
    pub attempts: u32,
    /// The call's request id (the caller's or the host's).
    pub request_id: Option<String>,
}

/// Why a call failed. `kind` is stable and machine-readable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    pub kind: ErrorKind,
    pub message: String,
    /// The Python exception type, when the tool raised.
    pub python_type: Option<String>,
    pub traceback: Option<String>,
    /// The call's request id, once the host has given it one.
    pub request_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    UnknownPool,
    UnknownTool,
    BadArguments,
    BadPayload,
    BadResult,
    /// The tool raised.
    Exception,
    /// The worker did not answer within the request timeout.
    Timeout,
    /// The request waited in the queue past `queue_timeout`.
    QueueTimeout,
    /// The queue was full (`queue_limit`).
    Saturated,
    /// The routing policy rejected the request.
    Rejected,
    WorkerCrashed,
    ShuttingDown,
    /// The caller went away and the call was stopped.
    Cancelled,
    Protocol,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::UnknownPool,
        ErrorKind::UnknownTool,
        ErrorKind::BadArguments,
        ErrorKind::BadPayload,
        ErrorKind::BadResult,
        ErrorKind::Exception,
        ErrorKind::Timeout,
        ErrorKind::QueueTimeout,
        ErrorKind::Saturated,
        ErrorKind::Rejected,
        ErrorKind::WorkerCrashed,
        ErrorKind::ShuttingDown,
        ErrorKind::Cancelled,
        ErrorKind::Protocol,
    ];

    /// The kind [`ErrorKind::as_str`] names.
    pub fn parse(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::UnknownPool => "unknown_pool",
            ErrorKind::UnknownTool => "unknown_tool",
            ErrorKind::BadArguments => "bad_arguments",
            ErrorKind::BadPayload => "bad_payload",
            ErrorKind::BadResult => "bad_result",
            ErrorKind::Exception => "exception",
            ErrorKind::Timeout => "timeout",
            ErrorKind::QueueTimeout => "queue_timeout",
            ErrorKind::Saturated => "saturated",
            ErrorKind::Rejected => "rejected",
            ErrorKind::WorkerCrashed => "worker_crashed",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Protocol => "protocol",
        }
    }

    /// The kind a worker reported; only the kinds a worker may report
    /// count, anything else is a protocol error.
    fn from_worker(kind: &str) -> ErrorKind {
        use ErrorKind::*;
        match ErrorKind::parse(kind) {
            Some(
                kind @ (UnknownTool | BadArguments | BadPayload | BadResult | Exception | ShuttingDown | Cancelled),
            ) => kind,
            _ => Protocol,
        }
    }
}

impl CallError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CallError { kind, message: message.into(), python_type: None, traceback: None, request_id: None }
    }

    pub(super) fn from_worker(error: WorkerError) -> Self {
        CallError {
            kind: ErrorKind::from_worker(&error.kind),
            message: error.message,
            python_type: error.python_type,
            traceback: error.traceback,
            request_id: None,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.python_type {
            Some(python_type) => write!(f, "{}: {python_type}: {}", self.kind.as_str(), self.message),
            None => write!(f, "{}: {}", self.kind.as_str(), self.message),
        }
    }
}

impl std::error::Error for CallError {}

/// Why an operator's request (recycle a worker, swap or roll back a
/// policy) was not carried out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// No such pool or worker.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be carried out now: the worker is starting or
    /// already retiring, the pool is stopping, there is nothing to roll
    /// back to, or the request itself is bad.
    #[error("{0}")]
    Refused(String),
}
