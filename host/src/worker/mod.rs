//! Python worker processes: spawning them, the framed protocol to them,
//! and each worker's driver task (calls out, answers back, exit noticed).
//!
//! Each worker opens two connections to its socket (docs/protocol.md): the
//! control connection (hello, ping/pong, shutdown) read by the worker's
//! protocol thread, and the call connection read directly by the threads
//! that run tools, so a call never waits for a thread handoff.
//!
//! Owns: one process and its two connections per worker, the requests that
//! worker holds, its liveness answers, and its exit status. Must not touch: queues, routing or other
//! workers; a pool decides which worker gets what, and learns of exits
//! through the channel it hands in.

pub mod protocol;
mod records;
mod spawn;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use protocol::{read_frame, Frame, PROTOCOL_VERSION};
pub use protocol::{ContentType, Hello, WorkerError};
pub use records::{process_start_time, WorkerRecords};
pub use spawn::Spawner;

use crate::config::Interpreter;

/// Lines of a worker's output kept to explain a failed start.
const TAIL_LINES: usize = 30;
/// After the socket closes, how long the process may take to exit before
/// it is killed.
const EXIT_AFTER_EOF: Duration = Duration::from_secs(2);

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
}

/// How one call ended, from the worker's side.
#[derive(Debug)]
pub enum CallOutcome {
    Done {
        content_type: ContentType,
        payload: Bytes,
    },
    Failed(WorkerError),
    /// The worker died before answering; says how.
    Crashed(String),
    /// The caller stopped waiting ([`WorkerHandle::abandon`]); a late
    /// answer is dropped.
    Abandoned,
}

/// What to do with a call's outcome. It runs on the task that learns the
/// outcome (the connection's reader, the driver, or whoever abandons the
/// call), exactly once.
pub type OnAnswer = Box<dyn FnOnce(CallOutcome) + Send>;

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
    calls: HashMap<u64, OnAnswer>,
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
    pub id: u32,
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
    /// Sends a call; `on_answer` gets its outcome. If the worker is gone it
    /// gets `Crashed` at once.
    pub fn call(&self, id: u64, tool: &str, content_type: ContentType, payload: Bytes, on_answer: OnAnswer) {
        let frame = match (Frame::Call { id, tool: tool.to_owned(), content_type, payload }).encode() {
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
            on_answer(CallOutcome::Crashed(how));
            return;
        }
        pending.calls.insert(id, on_answer);
        drop(pending);
        // If the connection is broken, the process is going: the driver
        // fails the call once it has its exit status.
        self.calls.send(frame);
    }

    /// Stops waiting for call `id`: its [`OnAnswer`] gets `Abandoned` now,
    /// unless the call already ended (then `false`).
    pub fn abandon(&self, id: u64) -> bool {
        let taken = lock(&self.pending).calls.remove(&id);
        match taken {
            Some(on_answer) => {
                on_answer(CallOutcome::Abandoned);
                true
            }
            None => false,
        }
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

/// The two connections of a worker that said hello.
struct Connections {
    control_reader: BufReader<OwnedReadHalf>,
    control_writer: OwnedWriteHalf,
    call: UnixStream,
}

/// Why a worker did not start.
#[derive(Debug, thiserror::Error)]
#[error("worker {worker} of pool `{pool}` did not start: {reason}{}", quote_tail(.output))]
pub struct StartError {
    pub pool: String,
    pub worker: u32,
    pub reason: String,
    /// The last lines the worker printed.
    pub output: Vec<String>,
}

fn quote_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        return "\n  (it printed nothing)".to_owned();
    }
    let mut quoted = String::from("\n  its last output:");
    for line in lines {
        quoted.push_str("\n  | ");
        quoted.push_str(line);
    }
    quoted
}

/// Output lines of a worker, logged as they come, the last few kept.
#[derive(Clone, Default)]
struct OutputTail(Arc<Mutex<VecDeque<String>>>);

impl OutputTail {
    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }
}

/// Starts a worker and waits for its hello. On success the worker's driver
/// runs until the process is gone, then reports on `exits`.
pub async fn start(
    spec: &WorkerSpec,
    spawner: &Spawner,
    records: &WorkerRecords,
    exits: mpsc::UnboundedSender<WorkerExit>,
) -> Result<WorkerHandle, StartError> {
    let fail =
        |reason: String, output: Vec<String>| StartError { pool: spec.pool.clone(), worker: spec.id, reason, output };
    let _ = std::fs::remove_file(&spec.socket_path);
    let listener = UnixListener::bind(&spec.socket_path)
        .map_err(|err| fail(format!("cannot listen on {}: {err}", spec.socket_path.display()), Vec::new()))?;

    let mut child = spawner
        .spawn(command(spec))
        .await
        .map_err(|err| fail(format!("cannot run the interpreter {}: {err}", spec.python), Vec::new()))?;
    let pid = child.id().unwrap_or_default();
    let tail = OutputTail::default();
    let drains = [
        child.stdout.take().map(|out| drain_output(out, tail.clone(), spec.pool.clone(), spec.id, "stdout")),
        child.stderr.take().map(|err| drain_output(err, tail.clone(), spec.pool.clone(), spec.id, "stderr")),
    ];
    if let Err(err) = records.add(&spec.pool, spec.id, pid) {
        tracing::warn!(pool = %spec.pool, worker = spec.id, error = %err, "cannot record the worker in the run directory");
    }

    let handshake = async {
        let accept_failed = |err| format!("accepting its connection failed: {err}");
        let (control, _) = listener.accept().await.map_err(accept_failed)?;
        let (control_read, control_writer) = control.into_split();
        let mut control_reader = BufReader::new(control_read);
        // A worker of protocol 1 opens one connection and says hello on it.
        let call = tokio::select! {
            accepted = listener.accept() => accepted.map_err(accept_failed)?.0,
            early = read_frame(&mut control_reader) => return Err(match early {
                Ok(Some(Frame::Hello(hello))) => format!(
                    "it speaks protocol version {} (one connection), this host speaks {PROTOCOL_VERSION}: \
                     install the matching pitboss_worker", hello.protocol),
                Ok(Some(other)) => format!("it sent {other:?} before opening its call connection"),
                Ok(None) => "it closed its control connection before opening its call connection".to_owned(),
                Err(err) => format!("its first frame was unreadable: {err}"),
            }),
        };
        match read_frame(&mut control_reader).await {
            Ok(Some(Frame::Hello(hello))) => Ok((hello, Connections { control_reader, control_writer, call })),
            Ok(Some(other)) => Err(format!("its first frame was {other:?}, not hello")),
            Ok(None) => Err("it closed the connection before saying hello".to_owned()),
            Err(err) => Err(format!("its hello was unreadable: {err}")),
        }
    };
    // `Err((reason, exited))`: whether the reason already says how the
    // process ended.
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(spec.startup_timeout, handshake) => outcome
            .unwrap_or_else(|_| Err(format!("it did not say hello within {:?} (startup_timeout)", spec.startup_timeout)))
            .map_err(|reason| (reason, false)),
        status = child.wait() => Err((match status {
            Ok(status) => format!("it {} during startup", describe_exit(status)),
            Err(err) => format!("waiting for it failed: {err}"),
        }, true)),
    };
    let _ = std::fs::remove_file(&spec.socket_path);

    let failure = match outcome {
        Ok((hello, _)) if hello.protocol != PROTOCOL_VERSION => format!(
            "it speaks protocol version {}, this host speaks {PROTOCOL_VERSION}: install the matching pitboss_worker",
            hello.protocol
        ),
        Ok((hello, connections)) => {
            let pending = SharedPending::default();
            let last_pong = Arc::new(AtomicU64::new(0));
            let (kill, kill_requests) = mpsc::unbounded_channel();
            let driver = Driver { id: spec.id, pool: spec.pool.clone(), pid, records: records.clone(), exits };
            let (calls, control, closed) = driver.spawn_io(connections, pending.clone(), last_pong.clone());
            tokio::spawn(driver.run(child, closed, kill_requests, pending.clone()));
            return Ok(WorkerHandle { id: spec.id, pid, hello, pending, calls, control, last_pong, kill });
        }
        Err((reason, true)) => reason,
        // A worker that gave up on its own says more by its exit status.
        Err((reason, false)) => match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
            Ok(Ok(status)) => format!("{reason}; it {}", describe_exit(status)),
            _ => reason,
        },
    };
    kill_group(pid);
    let _ = child.wait().await;
    records.remove(pid);
    // The pipes close once the process is gone; give the drains a moment
    // to read its last words.
    for drain in drains.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
    Err(fail(failure, tail.lines()))
}

fn command(spec: &WorkerSpec) -> Command {
    let mut command = Command::new(&spec.python.path);
    command
        .args(["-m", "pitboss_worker", "--adapter", &spec.adapter, "--socket"])
        .arg(&spec.socket_path)
        .arg("--threads")
        .arg(spec.threads.to_string());
    if spec.thread_safety_checks {
        command.arg("--thread-safety-checks");
    }
    for path in &spec.python_path {
        command.arg("--path").arg(path);
    }
    command
        .args(&spec.args)
        .current_dir(&spec.working_dir)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn drain_output(
    stream: impl AsyncRead + Unpin + Send + 'static,
    tail: OutputTail,
    pool: String,
    worker: u32,
    name: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: "pitboss::worker", pool = %pool, worker, stream = name, "{line}");
            tail.push(line);
        }
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

/// The task that owns a running worker: forwards calls, routes answers to
/// their callers, and reports the exit.
struct Driver {
    id: u32,
    pool: String,
    pid: u32,
    records: WorkerRecords,
    exits: mpsc::UnboundedSender<WorkerExit>,
}

impl Driver {
    /// Starts a reader and a writer task per connection (each owns its
    /// half, so no frame is ever cut short by a cancelled select). The call
    /// reader answers calls itself; the control reader records pongs.
    /// Returns the senders for each connection and a channel that fires
    /// when either connection closes.
    fn spawn_io(
        &self,
        connections: Connections,
        pending: SharedPending,
        last_pong: Arc<AtomicU64>,
    ) -> (FrameWriter, FrameWriter, mpsc::Receiver<Option<std::io::Error>>) {
        let Connections { mut control_reader, control_writer, call } = connections;
        let (call_read, call_writer) = call.into_split();
        let mut call_reader = BufReader::new(call_read);
        let (closed_tx, closed) = mpsc::channel(2);
        let (pool, id) = (self.pool.clone(), self.id);

        let closed_by_calls = closed_tx.clone();
        let call_pool = pool.clone();
        tokio::spawn(async move {
            let ended = loop {
                let (call, outcome) = match read_frame(&mut call_reader).await {
                    Ok(Some(Frame::Result { id, content_type, payload })) => {
                        (id, CallOutcome::Done { content_type, payload })
                    }
                    Ok(Some(Frame::Error { id, error })) => (id, CallOutcome::Failed(error)),
                    Ok(Some(other)) => {
                        tracing::warn!(pool = %call_pool, worker = id, "ignoring an unexpected frame on the call connection: {other:?}");
                        continue;
                    }
                    Ok(None) => break None,
                    Err(err) => break Some(err),
                };
                // An answer to a call nobody waits for any more (it was
                // abandoned) is dropped here.
                let on_answer = lock(&pending).calls.remove(&call);
                if let Some(on_answer) = on_answer {
                    on_answer(outcome);
                }
            };
            let _ = closed_by_calls.send(ended).await;
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
        (FrameWriter::new(call_writer), FrameWriter::new(control_writer), closed)
    }

    /// Waits for the process to end (killing it when asked, or when its
    /// socket breaks), then fails what it still held and reports the exit.
    async fn run(
        self,
        mut child: Child,
        mut closed: mpsc::Receiver<Option<std::io::Error>>,
        mut kill_requests: mpsc::UnboundedReceiver<()>,
        pending: SharedPending,
    ) {
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
        let how = format!("worker {} (pid {}) {status}", self.id, self.pid);
        let held: Vec<_> = {
            let mut pending = lock(&pending);
            pending.gone = Some(how.clone());
            pending.calls.drain().map(|(_, reply)| reply).collect()
        };
        for on_answer in held {
            on_answer(CallOutcome::Crashed(how.clone()));
        }
        self.records.remove(self.pid);
        let _ = self.exits.send(WorkerExit { id: self.id, status });
    }
}

/// Writes one connection's frames in order. A frame goes straight onto the
/// socket from the sending task when the socket takes it whole; otherwise
/// it, and every frame after it until the backlog is written, goes through
/// a writer task. That keeps a task hand-off off the hot path.
#[derive(Clone)]
struct FrameWriter(Arc<WriterShared>);

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
    fn send(&self, frame: Bytes) {
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
