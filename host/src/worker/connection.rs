//! A running worker's connections: the reader and writer tasks of each
//! socket, and the driver task that owns the process until it is gone.
//!
//! Owns: the sockets and the child after hello, and failing the calls a
//! dead worker held. Must not touch: which calls a worker gets; that is the
//! pool's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::BufReader;
use tokio::net::unix::OwnedWriteHalf;
use tokio::process::Child;
use tokio::sync::mpsc;

use super::protocol::{read_frame, Frame};
use super::start::Connections;
use super::{describe_exit, kill_group, lock, CallOutcome, SharedPending, WorkerExit, WorkerRecords};

/// After the socket closes, how long the process may take to exit before
/// it is killed.
const EXIT_AFTER_EOF: Duration = Duration::from_secs(2);

/// After the process is gone, how long its call connection may take to
/// deliver the answers it sent before it died. They are read before the
/// calls left are judged started or not, so a call whose predecessor was
/// answered is never taken for one that did not start.
const ANSWERS_AFTER_EXIT: Duration = Duration::from_secs(1);

/// The task that owns a running worker: forwards calls, routes answers to
/// their callers, and reports the exit.
pub(super) struct Driver {
    pub(super) id: u32,
    pub(super) pool: String,
    pub(super) pid: u32,
    /// Calls the worker runs at once (`--threads`).
    pub(super) threads: u32,
    pub(super) records: WorkerRecords,
    pub(super) exits: mpsc::UnboundedSender<WorkerExit>,
}

impl Driver {
    /// Starts a reader and a writer task per connection (each owns its
    /// half, so no frame is ever cut short by a cancelled select). The call
    /// reader answers calls itself; the control reader records pongs.
    /// Returns the senders for each connection and how the connections end.
    pub(super) fn spawn_io(
        &self,
        connections: Connections,
        pending: SharedPending,
        last_pong: Arc<AtomicU64>,
    ) -> (FrameWriter, FrameWriter, Ends) {
        let Connections { mut control_reader, control_writer, call } = connections;
        let (call_read, call_writer) = call.into_split();
        let mut call_reader = BufReader::new(call_read);
        let (closed_tx, closed) = mpsc::channel(2);
        let (pool, id) = (self.pool.clone(), self.id);

        let closed_by_calls = closed_tx.clone();
        let call_pool = pool.clone();
        let call_reader = tokio::spawn(async move {
            let ended = loop {
                let (call, outcome) = match read_frame(&mut call_reader).await {
                    Ok(Some(Frame::Result { id: call, content_type, payload })) => {
                        let mut pending = lock(&pending);
                        // A streaming call whose tool returned one value:
                        // a stream of that one chunk.
                        if let Some(on_chunk) = pending.calls.get_mut(&call).and_then(|c| c.on_chunk.as_mut()) {
                            on_chunk(content_type, payload);
                            (call, CallOutcome::Ended)
                        } else {
                            (call, CallOutcome::Done { content_type, payload })
                        }
                    }
                    Ok(Some(Frame::StreamChunk { id: call, content_type, payload })) => {
                        match lock(&pending).calls.get_mut(&call).map(|c| c.on_chunk.as_mut()) {
                            Some(Some(on_chunk)) => on_chunk(content_type, payload),
                            Some(None) => {
                                tracing::warn!(pool = %call_pool, worker = id, "ignoring a stream chunk of a call that does not stream")
                            }
                            // Abandoned: nobody reads it any more.
                            None => {}
                        }
                        continue;
                    }
                    Ok(Some(Frame::StreamEnd { id })) => (id, CallOutcome::Ended),
                    Ok(Some(Frame::Error { id, error })) => (id, CallOutcome::Failed(error)),
                    Ok(Some(other)) => {
                        tracing::warn!(pool = %call_pool, worker = id, "ignoring an unexpected frame on the call connection: {other:?}");
                        continue;
                    }
                    Ok(None) => break None,
                    // A worker killed with calls unread in its socket resets
                    // the connection, after everything it sent was read.
                    Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break None,
                    Err(err) => break Some(err),
                };
                // An answer to a call nobody waits for any more (it was
                // abandoned) is dropped here.
                let taken = {
                    let mut pending = lock(&pending);
                    pending.abandoned.remove(&call);
                    pending.calls.remove(&call)
                };
                if let Some(taken) = taken {
                    (taken.on_answer)(outcome);
                }
            };
            let clean_end = ended.is_none();
            let _ = closed_by_calls.send(ended).await;
            clean_end
        });
        tokio::spawn(async move {
            let ended = loop {
                match read_frame(&mut control_reader).await {
                    Ok(Some(Frame::Pong { id })) => {
                        last_pong.fetch_max(id, Ordering::AcqRel);
                    }
                    Ok(Some(Frame::Error { error, .. })) => {
                        tracing::warn!(pool = %pool, worker = id, "the worker refused a control frame: {}", error.message);
                    }
                    Ok(Some(other)) => {
                        tracing::warn!(pool = %pool, worker = id, "ignoring an unexpected frame on the control connection: {other:?}");
                    }
                    Ok(None) => break None,
                    Err(err) => break Some(err),
                }
            };
            let _ = closed_tx.send(ended).await;
        });
        (FrameWriter::new(call_writer), FrameWriter::new(control_writer), Ends { closed, call_reader })
    }

    /// Waits for the process to end (killing it when asked, or when its
    /// socket breaks), then fails what it still held and reports the exit.
    pub(super) async fn run(
        self,
        mut child: Child,
        ends: Ends,
        mut kill_requests: mpsc::UnboundedReceiver<()>,
        pending: SharedPending,
    ) {
        let Ends { mut closed, call_reader } = ends;
        let status = loop {
            tokio::select! {
                ended = closed.recv() => {
                    if let Some(Some(err)) = ended {
                        tracing::warn!(pool = %self.pool, worker = self.id, error = %err, "protocol error; stopping the worker");
                        kill_group(self.pid);
                    }
                    break match tokio::time::timeout(EXIT_AFTER_EOF, child.wait()).await {
                        Ok(status) => status,
                        Err(_) => {
                            kill_group(self.pid);
                            child.wait().await
                        }
                    };
                }
                status = child.wait() => break status,
                request = kill_requests.recv() => {
                    kill_group(self.pid);
                    if request.is_none() {
                        break child.wait().await;
                    }
                }
            }
        };
        // Whatever else it left (a grandchild, say) goes with it.
        kill_group(self.pid);
        let status = match status {
            Ok(status) => describe_exit(status),
            Err(err) => format!("could not be waited for ({err})"),
        };
        // A reader stopped by a bad frame left whatever followed it unread.
        let answers_read = matches!(tokio::time::timeout(ANSWERS_AFTER_EXIT, call_reader).await, Ok(Ok(true)));
        let how = format!("worker {} (pid {}) {status}", self.id, self.pid);
        let (held, abandoned) = {
            let mut pending = lock(&pending);
            pending.gone = Some(how.clone());
            (std::mem::take(&mut pending.calls), std::mem::take(&mut pending.abandoned))
        };
        // Unless the answers could not all be read, a call behind as many
        // unanswered ones (abandoned ones included) as the worker has
        // threads was never taken.
        for (position, (id, call)) in held.into_iter().enumerate() {
            let calls_ahead = position + abandoned.range(..id).count();
            (call.on_answer)(if answers_read && calls_ahead >= self.threads as usize {
                CallOutcome::NotStarted(how.clone())
            } else {
                CallOutcome::Crashed(how.clone())
            });
        }
        self.records.remove(self.pid);
        let _ = self.exits.send(WorkerExit { id: self.id, status });
    }
}

/// How a worker's connections end: `closed` fires when either closes;
/// `call_reader` ends with the call connection's reader, true when it read
/// every answer up to the end of the stream.
pub(super) struct Ends {
    closed: mpsc::Receiver<Option<std::io::Error>>,
    call_reader: tokio::task::JoinHandle<bool>,
}

/// Writes one connection's frames in order. A frame goes straight onto the
/// socket from the sending task when the socket takes it whole; otherwise
/// it, and every frame after it until the backlog is written, goes through
/// a writer task. That keeps a task hand-off off the hot path.
#[derive(Clone)]
pub(super) struct FrameWriter(Arc<WriterShared>);

struct WriterShared {
    socket: OwnedWriteHalf,
    /// Frames for the writer task; while it has any, every frame goes there.
    backlog: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
    /// Set once a write failed: the connection is gone.
    broken: std::sync::atomic::AtomicBool,
}

impl FrameWriter {
    fn new(socket: OwnedWriteHalf) -> Self {
        FrameWriter(Arc::new(WriterShared {
            socket,
            backlog: Mutex::new(None),
            broken: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Writes `frame`, or queues it behind the backlog. Frames after a
    /// failed write are dropped: the process is going, and its driver
    /// fails the calls it held.
    pub(super) fn send(&self, frame: Bytes) {
        let shared = &self.0;
        if shared.broken.load(Ordering::Acquire) {
            return;
        }
        let mut backlog = shared.backlog.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = backlog.as_ref() {
            let _ = queue.send(frame);
            return;
        }
        let mut written = 0;
        while written < frame.len() {
            match shared.socket.try_write(&frame[written..]) {
                Ok(n) => written += n,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    shared.broken.store(true, Ordering::Release);
                    return;
                }
            }
        }
        if written < frame.len() {
            let (queue, frames) = mpsc::unbounded_channel();
            let _ = queue.send(frame.slice(written..));
            *backlog = Some(queue);
            tokio::spawn(drain_backlog(self.0.clone(), frames));
        }
    }
}

/// Writes queued frames until none are left, then hands writing back to
/// the senders. The backlog lock makes "none left" and "hand back" one
/// step, so no frame can slip in between and be written out of order.
async fn drain_backlog(shared: Arc<WriterShared>, mut frames: mpsc::UnboundedReceiver<Bytes>) {
    loop {
        let frame = match frames.try_recv() {
            Ok(frame) => frame,
            Err(_) => {
                let mut backlog = shared.backlog.lock().unwrap_or_else(|e| e.into_inner());
                match frames.try_recv() {
                    Ok(frame) => frame,
                    Err(_) => {
                        *backlog = None;
                        return;
                    }
                }
            }
        };
        if write_all(&shared.socket, &frame).await.is_err() {
            shared.broken.store(true, Ordering::Release);
            *shared.backlog.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return;
        }
    }
}

/// `write_all` on a shared write half: wait until writable, then write
/// without blocking, until the frame is out.
async fn write_all(socket: &OwnedWriteHalf, mut frame: &[u8]) -> std::io::Result<()> {
    while !frame.is_empty() {
        socket.as_ref().writable().await?;
        match socket.try_write(frame) {
            Ok(n) => frame = &frame[n..],
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}
