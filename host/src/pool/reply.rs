//! How a pool answers one caller: a single answer or a stream of chunks,
//! and the caller's side of cancellation. A caller that goes away (drops
//! its future or its [`CallStream`]) cancels its call: a queued call is
//! dropped before it reaches a worker, a running one gets a CANCEL frame.
//!
//! Owns: the channels to a caller and the link between a caller and the
//! worker that runs its call. Must not touch: the queue or the worker
//! table (the core's), or which worker runs a call.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::call::{CallError, CallOutput, ErrorKind};
use crate::worker::{ContentType, OnChunk, WorkerControl, STREAM_WINDOW};

/// What the pool core needs to know of a caller.
pub(super) trait Caller {
    /// The caller went away: a queued call is dropped, not sent.
    fn has_left(&self) -> bool;
    /// 1 for a first attempt, 2 for its first retry, ...
    fn attempt(&self) -> u32;
    /// The caller reads a stream (such calls are never retried: chunks
    /// already delivered cannot be taken back).
    fn streams(&self) -> bool;
}

/// One chunk of a streaming call's answer.
#[derive(Clone, Debug)]
pub struct StreamChunk {
    pub payload: Bytes,
    pub content_type: ContentType,
    /// The worker that serves the stream.
    pub worker: u32,
}

/// The pool's end of one caller.
pub(crate) struct Reply {
    to: ReplyTo,
    link: Arc<Link>,
    attempt: u32,
    /// Stamped on the answer, whichever part of the pool gives it.
    request_id: Option<String>,
}

enum ReplyTo {
    Single(oneshot::Sender<Result<CallOutput, CallError>>),
    Stream(mpsc::UnboundedSender<StreamEvent>),
}

enum StreamEvent {
    Chunk(StreamChunk),
    End(Result<(), CallError>),
}

impl Reply {
    /// A caller waiting for one answer; dropping the [`Waiter`] before the
    /// answer comes cancels the call.
    pub(super) fn single(request_id: Option<String>) -> (Reply, Waiter) {
        let (to, answer) = oneshot::channel();
        let link = Arc::new(Link::default());
        let reply = Reply { to: ReplyTo::Single(to), link: link.clone(), attempt: 1, request_id };
        (reply, Waiter { answer, link, answered: false })
    }

    /// A caller reading a stream.
    pub(super) fn stream(request_id: Option<String>) -> (Reply, CallStream) {
        let (to, events) = mpsc::unbounded_channel();
        let link = Arc::new(Link::default());
        let stream =
            CallStream { events, link: link.clone(), unacknowledged: 0, ended: false, request_id: request_id.clone() };
        (Reply { to: ReplyTo::Stream(to), link, attempt: 1, request_id }, stream)
    }

    /// The same caller, for the call's next attempt.
    pub(super) fn retried(self) -> Reply {
        Reply { attempt: self.attempt + 1, ..self }
    }

    /// The call went to a worker as request `id`; `control` reaches it.
    pub(super) fn dispatched(&self, control: WorkerControl, id: u64) {
        self.link.dispatched(control, id);
    }

    /// Where a streaming call's chunks go; `None` for a single answer.
    pub(super) fn chunk_sink(&self, worker: u32) -> Option<OnChunk> {
        match &self.to {
            ReplyTo::Single(_) => None,
            ReplyTo::Stream(events) => {
                let events = events.clone();
                Some(Box::new(move |content_type, payload| {
                    let _ = events.send(StreamEvent::Chunk(StreamChunk { payload, content_type, worker }));
                }))
            }
        }
    }

    /// Answers the caller: the result, or for a stream its end.
    pub(super) fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    pub(super) fn finish(self, result: Result<CallOutput, CallError>) {
        let request_id = self.request_id;
        let result = match result {
            Ok(output) => Ok(CallOutput { request_id, ..output }),
            Err(error) => Err(CallError { request_id: error.request_id.or(request_id), ..error }),
        };
        match self.to {
            ReplyTo::Single(to) => {
                let _ = to.send(result);
            }
            ReplyTo::Stream(events) => {
                let _ = events.send(StreamEvent::End(result.map(|_| ())));
            }
        }
    }
}

impl Caller for Reply {
    fn has_left(&self) -> bool {
        self.link.state().left
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn streams(&self) -> bool {
        matches!(self.to, ReplyTo::Stream(_))
    }
}

/// Shared by a caller and the worker that runs its call.
#[derive(Default)]
struct Link(Mutex<LinkState>);

#[derive(Default)]
struct LinkState {
    /// The caller went away.
    left: bool,
    /// Where the call runs: the worker's control line and the request id.
    running: Option<(WorkerControl, u64)>,
}

impl Link {
    fn state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dispatched(&self, control: WorkerControl, id: u64) {
        let mut state = self.state();
        // A caller that left while the call was being sent: the worker
        // remembers a CANCEL that overtakes its CALL.
        if state.left {
            control.cancel(id);
        }
        state.running = Some((control, id));
    }

    fn caller_left(&self) {
        let mut state = self.state();
        state.left = true;
        if let Some((control, id)) = &state.running {
            control.cancel(*id);
        }
    }

    fn credit(&self, chunks: u32) {
        if let Some((control, id)) = &self.state().running {
            control.credit(*id, chunks);
        }
    }
}

/// A caller waiting for one answer.
pub(super) struct Waiter {
    answer: oneshot::Receiver<Result<CallOutput, CallError>>,
    link: Arc<Link>,
    answered: bool,
}

impl Waiter {
    /// The answer, or `None` if the pool stopped without giving one.
    pub(super) async fn answer(mut self) -> Option<Result<CallOutput, CallError>> {
        let answer = (&mut self.answer).await.ok();
        self.answered = true;
        answer
    }
}

impl Drop for Waiter {
    /// Dropped while waiting: the caller went away.
    fn drop(&mut self) {
        if !self.answered {
            self.link.caller_left();
        }
    }
}

/// A streaming call's answer, chunk by chunk, in order; it ends after the
/// last chunk, or with one error (after the chunks already delivered).
/// Dropping it before the end cancels the call: the worker closes the
/// generator (its `finally` blocks run).
///
/// Reading it grants the worker more credit, so a slow reader slows the
/// generator down rather than making anything buffer without bound.
pub struct CallStream {
    events: mpsc::UnboundedReceiver<StreamEvent>,
    link: Arc<Link>,
    /// Chunks read since credit was last granted.
    unacknowledged: u32,
    ended: bool,
    request_id: Option<String>,
}

impl CallStream {
    /// A stream that fails at once with `error` (the call never started).
    pub(crate) fn failed(error: CallError) -> CallStream {
        let (reply, stream) = Reply::stream(error.request_id.clone());
        reply.finish(Err(error));
        stream
    }

    /// The call's request id (the caller's, or the one the host made).
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The next chunk; `None` after the last one; an error ends the stream.
    pub async fn next(&mut self) -> Option<Result<StreamChunk, CallError>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<StreamChunk, CallError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let event = match self.events.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(event) => event,
        };
        Poll::Ready(match event {
            Some(StreamEvent::Chunk(chunk)) => {
                self.unacknowledged += 1;
                if self.unacknowledged >= STREAM_WINDOW / 2 {
                    self.link.credit(self.unacknowledged);
                    self.unacknowledged = 0;
                }
                Some(Ok(chunk))
            }
            Some(StreamEvent::End(end)) => {
                self.ended = true;
                self.link.state().running = None;
                end.err().map(Err)
            }
            None => {
                self.ended = true;
                Some(Err(CallError::new(ErrorKind::ShuttingDown, "the pool stopped before the stream ended")))
            }
        })
    }
}

impl tokio_stream::Stream for CallStream {
    type Item = Result<StreamChunk, CallError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_chunk(cx)
    }
}

impl Drop for CallStream {
    fn drop(&mut self) {
        if !self.ended {
            self.link.caller_left();
        }
    }
}
