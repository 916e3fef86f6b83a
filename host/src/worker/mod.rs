//! Python worker processes: spawning them, the framed protocol to them,
//! and each worker's driver task (calls out, answers back, exit noticed).
//!
//! Each worker opens two connections to its socket (docs/protocol.md): the
//! control connection (hello, ping/pong, shutdown) read by the worker's
//! protocol thread, and the call connection read directly by the threads
//! that run tools, so a call never waits for a thread handoff.
//!
//! `start` brings a worker up to hello; `connection` drives it from then
//! on; this file holds the pool's handle to it.
//!
//! Owns: one process and its two connections per worker, the requests that
//! worker holds, its liveness answers, and its exit status. Must not touch:
//! queues, routing or other workers; a pool decides which worker gets what,
//! and learns of exits through the channel it hands in.

mod connection;
pub mod protocol;
mod records;
mod spawn;
mod start;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use connection::FrameWriter;
use protocol::Frame;
pub use protocol::{Call, ContentType, Hello, WorkerError, MAX_REQUEST_ID_BYTES, MAX_SESSION_BYTES, STREAM_WINDOW};
pub use records::{process_start_time, WorkerRecords};
pub use spawn::Spawner;
pub use start::{start, StartError};

use crate::config::Interpreter;

/// Everything needed to start one worker.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    pub pool: String,
    pub id: u32,
    pub python: Interpreter,
    pub adapter: String,
    pub python_path: Vec<PathBuf>,
    pub working_dir: PathBuf,
    /// The full environment overrides (thread limits merged with the
    /// pool's `env`).
    pub env: BTreeMap<String, String>,
    pub args: Vec<String>,
    pub socket_path: PathBuf,
    pub startup_timeout: Duration,
    /// Calls the worker runs at once (`--threads`).
    pub threads: u32,
    /// Ask the worker to watch for unsafe concurrent use of its tools.
    pub thread_safety_checks: bool,
    /// How long the worker keeps a session's state unused.
    pub session_idle: Duration,
}

/// How one call ended, from the worker's side.
#[derive(Debug)]
pub enum CallOutcome {
    Done {
        content_type: ContentType,
        payload: Bytes,
    },
    /// A streaming call's end, after its chunks.
    Ended,
    Failed(WorkerError),
    /// The worker died before answering; says how.
    Crashed(String),
    /// The worker died before any of its threads took the call (it waited
    /// behind as many unanswered calls as the worker has threads), or was
    /// gone when the call was sent: the call never ran, and may run
    /// elsewhere. Says how the worker ended.
    NotStarted(String),
    /// The caller stopped waiting ([`WorkerHandle::abandon`]); a late
    /// answer is dropped.
    Abandoned,
}

/// What to do with a call's outcome. It runs on the task that learns the
/// outcome (the connection's reader, the driver, or whoever abandons the
/// call), exactly once.
pub type OnAnswer = Box<dyn FnOnce(CallOutcome) + Send>;

/// What to do with each chunk of a streaming call, in order, on the
/// connection's reader; the [`OnAnswer`] follows the last one.
pub type OnChunk = Box<dyn FnMut(ContentType, Bytes) + Send>;

/// A call the worker holds.
struct PendingCall {
    on_answer: OnAnswer,
    /// Set for a streaming call.
    on_chunk: Option<OnChunk>,
}

/// A worker process that has gone.
#[derive(Debug)]
pub struct WorkerExit {
    pub id: u32,
    /// "exited with status 3", "killed by signal 9 (SIGKILL)", ...
    pub status: String,
}

/// The calls a worker holds: its handle adds them, its reader answers
/// them, and its driver fails the rest when the process is gone.
#[derive(Default)]
struct Pending {
    /// By request id. The pool numbers calls in the order it sends them,
    /// and the worker's threads take them off the socket in that order, so
    /// only the lowest `threads` ids can have started.
    calls: BTreeMap<u64, PendingCall>,
    /// Calls given up on ([`WorkerHandle::abandon`]) that have not
    /// answered: each may still hold one of the worker's threads.
    abandoned: BTreeSet<u64>,
    /// Set once the worker is gone: how it ended.
    gone: Option<String>,
}

type SharedPending = Arc<Mutex<Pending>>;

fn lock(pending: &SharedPending) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pool's handle to a ready worker. Calls go straight onto the socket
/// (through the writer task only when the socket is backed up) and answers
/// straight from its reader to the caller: no task in between on the hot
/// path.
pub struct WorkerHandle {
    pub pid: u32,
    pub hello: Hello,
    pending: SharedPending,
    /// Frames for the call connection.
    calls: FrameWriter,
    /// Frames for the control connection.
    control: FrameWriter,
    /// The id of the last PONG the worker sent.
    last_pong: Arc<AtomicU64>,
    /// Closing it (dropping the handle) or sending on it kills the worker.
    kill: mpsc::UnboundedSender<()>,
}

impl WorkerHandle {
    /// Sends a call; `on_chunk` (for a streaming call) gets its chunks and
    /// `on_answer` its outcome. If the worker is gone `on_answer` gets
    /// `NotStarted` at once. Ids must grow from call to call.
    pub fn call(&self, call: Call, on_chunk: Option<OnChunk>, on_answer: OnAnswer) {
        let id = call.id;
        let frame = match Frame::Call(call).encode() {
            Ok(frame) => frame,
            Err(err) => {
                on_answer(CallOutcome::Failed(WorkerError {
                    kind: "bad_payload".into(),
                    python_type: None,
                    message: err.to_string(),
                    traceback: None,
                }));
                return;
            }
        };
        let mut pending = lock(&self.pending);
        if let Some(how) = pending.gone.clone() {
            drop(pending);
            on_answer(CallOutcome::NotStarted(how));
            return;
        }
        pending.calls.insert(id, PendingCall { on_answer, on_chunk });
        drop(pending);
        // If the connection is broken, the process is going: the driver
        // fails the call once it has its exit status.
        self.calls.send(frame);
    }

    /// Stops waiting for call `id`: its [`OnAnswer`] gets `Abandoned` now,
    /// unless the call already ended (then `false`).
    pub fn abandon(&self, id: u64) -> bool {
        let taken = {
            let mut pending = lock(&self.pending);
            let taken = pending.calls.remove(&id);
            if taken.is_some() {
                pending.abandoned.insert(id);
            }
            taken
        };
        match taken {
            Some(call) => {
                (call.on_answer)(CallOutcome::Abandoned);
                true
            }
            None => false,
        }
    }

    /// What a caller needs to cancel its call or grant its stream credit.
    pub fn control(&self) -> WorkerControl {
        WorkerControl(self.control.clone())
    }

    /// Sends PING `sequence`; [`Self::last_pong`] shows when it was answered.
    pub fn ping(&self, sequence: u64) {
        self.control.send(Frame::Ping { id: sequence }.encode().expect("a ping frame encodes"));
    }

    /// The sequence number of the last PING the worker answered (0 before any).
    pub fn last_pong(&self) -> u64 {
        self.last_pong.load(Ordering::Acquire)
    }

    /// The worker process's resident memory now, from /proc; `None` once it
    /// is gone.
    pub fn rss_bytes(&self) -> Option<u64> {
        resident_bytes(self.pid)
    }

    /// Sends `signal` to the worker's whole process group.
    pub fn signal(&self, signal: Signal) {
        let _ = killpg(Pid::from_raw(self.pid as i32), signal);
    }

    /// Kills the worker's process group now.
    pub fn kill(&self) {
        let _ = self.kill.send(());
    }

    /// Asks the worker to finish its calls and exit.
    pub fn shutdown(&self) {
        self.control.send(Frame::Shutdown.encode().expect("the shutdown frame encodes"));
    }
}

/// A caller's line to the worker that runs its call: cancel it, grant a
/// stream more credit. Cheap to clone; frames to a gone worker are dropped.
#[derive(Clone)]
pub struct WorkerControl(FrameWriter);

impl WorkerControl {
    /// Asks the worker to stop call `id` (docs/protocol.md, CANCEL). The
    /// call still ends with its own outcome.
    pub fn cancel(&self, id: u64) {
        self.0.send(Frame::Cancel { id }.encode().expect("a cancel frame encodes"));
    }

    /// Lets the worker send `chunks` more chunks of stream `id`.
    pub fn credit(&self, id: u64, chunks: u32) {
        self.0.send(Frame::Credit { id, chunks }.encode().expect("a credit frame encodes"));
    }
}

/// Threads of process `pid` now, from /proc; `None` once it is gone.
pub fn thread_count(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok())
}

/// Resident memory of process `pid` now, from /proc; `None` once it is gone.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident_pages * page_size())
}

fn page_size() -> u64 {
    static PAGE_SIZE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE_SIZE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |size| size as u64)
    })
}

fn kill_group(pid: u32) {
    if pid != 0 {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

/// "exited with status 3", "killed by signal 9 (SIGKILL)".
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(name) => format!("was killed by signal {signal} ({name})"),
            Err(_) => format!("was killed by signal {signal}"),
        },
        (None, None) => format!("ended ({status})"),
    }
}
