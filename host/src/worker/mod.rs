//! Python worker processes: spawning them, the framed protocol to them,
//! and each worker's driver task (calls out, answers back, exit noticed).
//!
//! Owns: one process and one socket per worker, the requests that worker
//! holds, and its exit status. Must not touch: queues, routing or other
//! workers; a pool decides which worker gets what, and learns of exits
//! through the channel it hands in.

pub mod protocol;
mod records;
mod spawn;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

pub use protocol::{ContentType, Hello, WorkerError};
use protocol::{read_frame, Frame, PROTOCOL_VERSION};
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
}

/// How one call ended, from the worker's side.
#[derive(Debug)]
pub enum CallOutcome {
    Done { content_type: ContentType, payload: Bytes },
    Failed(WorkerError),
    /// The worker died before answering; says how.
    Crashed(String),
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
    calls: HashMap<u64, oneshot::Sender<CallOutcome>>,
    /// Set once the worker is gone: how it ended.
    gone: Option<String>,
}

type SharedPending = Arc<Mutex<Pending>>;

fn lock(pending: &SharedPending) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pool's handle to a ready worker. Calls go straight to the socket's
/// writer and answers straight from its reader to the caller: no task in
/// between on the hot path.
pub struct WorkerHandle {
    pub id: u32,
    pub pid: u32,
    pub hello: Hello,
    pending: SharedPending,
    outgoing: mpsc::UnboundedSender<Bytes>,
    /// Closing it (dropping the handle) or sending on it kills the worker.
    kill: mpsc::UnboundedSender<()>,
}

impl WorkerHandle {
    /// Sends a call; the outcome arrives on `reply`. If the worker is gone
    /// the reply is `Crashed` at once.
    pub fn call(&self, id: u64, tool: &str, content_type: ContentType, payload: Bytes, reply: oneshot::Sender<CallOutcome>) {
        let frame = match (Frame::Call { id, tool: tool.to_owned(), content_type, payload }).encode() {
            Ok(frame) => frame,
            Err(err) => {
                let _ = reply.send(CallOutcome::Failed(WorkerError {
                    kind: "bad_payload".into(),
                    python_type: None,
                    message: err.to_string(),
                    traceback: None,
                }));
                return;
            }
        };
        let mut pending = lock(&self.pending);
        if let Some(how) = &pending.gone {
            let _ = reply.send(CallOutcome::Crashed(how.clone()));
            return;
        }
        pending.calls.insert(id, reply);
        drop(pending);
        // If the writer has stopped, the process is going: the driver fails
        // the call once it has its exit status.
        let _ = self.outgoing.send(frame);
    }

    /// Kills the worker's process group now.
    pub fn kill(&self) {
        let _ = self.kill.send(());
    }

    /// Asks the worker to finish its calls and exit.
    pub fn shutdown(&self) {
        let _ = self.outgoing.send(Frame::Shutdown.encode().expect("the shutdown frame encodes"));
    }
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
    let fail = |reason: String, output: Vec<String>| StartError {
        pool: spec.pool.clone(),
        worker: spec.id,
        reason,
        output,
    };
    let _ = std::fs::remove_file(&spec.socket_path);
    let listener = UnixListener::bind(&spec.socket_path)
        .map_err(|err| fail(format!("cannot listen on {}: {err}", spec.socket_path.display()), Vec::new()))?;

    let mut child = spawner.spawn(command(spec)).await.map_err(|err| {
        fail(format!("cannot run the interpreter {}: {err}", spec.python), Vec::new())
    })?;
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
        let (stream, _) = listener.accept().await.map_err(|err| format!("accepting its connection failed: {err}"))?;
        let (read_half, write_half) = stream.into_split();
        let mut reader = BufReader::new(read_half);
        match read_frame(&mut reader).await {
            Ok(Some(Frame::Hello(hello))) => Ok((hello, reader, write_half)),
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
        Ok((hello, _, _)) if hello.protocol != PROTOCOL_VERSION => format!(
            "it speaks protocol version {}, this host speaks {PROTOCOL_VERSION}: install the matching pitboss_worker",
            hello.protocol
        ),
        Ok((hello, reader, writer)) => {
            let pending = SharedPending::default();
            let (outgoing, to_write) = mpsc::unbounded_channel();
            let (kill, kill_requests) = mpsc::unbounded_channel();
            let driver = Driver { id: spec.id, pool: spec.pool.clone(), pid, records: records.clone(), exits };
            let reader_done = driver.spawn_io(reader, writer, to_write, pending.clone());
            tokio::spawn(driver.run(child, reader_done, kill_requests, pending.clone()));
            return Ok(WorkerHandle { id: spec.id, pid, hello, pending, outgoing, kill });
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
        .arg(&spec.socket_path);
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
    /// Starts the socket's reader and writer tasks (each owns its half, so
    /// no frame is ever cut short by a cancelled select). The reader answers
    /// calls itself; the returned channel fires when the socket closes.
    fn spawn_io(
        &self,
        mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
        mut writer: tokio::net::unix::OwnedWriteHalf,
        mut to_write: mpsc::UnboundedReceiver<Bytes>,
        pending: SharedPending,
    ) -> oneshot::Receiver<Option<std::io::Error>> {
        tokio::spawn(async move {
            while let Some(frame) = to_write.recv().await {
                if writer.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        let (done, reader_done) = oneshot::channel();
        let (pool, id) = (self.pool.clone(), self.id);
        tokio::spawn(async move {
            let ended = loop {
                let (call, outcome) = match read_frame(&mut reader).await {
                    Ok(Some(Frame::Result { id, content_type, payload })) => (id, CallOutcome::Done { content_type, payload }),
                    Ok(Some(Frame::Error { id, error })) => (id, CallOutcome::Failed(error)),
                    Ok(Some(Frame::Pong { .. })) => continue,
                    Ok(Some(other)) => {
                        tracing::warn!(pool = %pool, worker = id, "ignoring an unexpected frame from the worker: {other:?}");
                        continue;
                    }
                    Ok(None) => break None,
                    Err(err) => break Some(err),
                };
                // An answer to a call nobody waits for any more (it timed
                // out) is dropped here.
                if let Some(reply) = lock(&pending).calls.remove(&call) {
                    let _ = reply.send(outcome);
                }
            };
            let _ = done.send(ended);
        });
        reader_done
    }

    /// Waits for the process to end (killing it when asked, or when its
    /// socket breaks), then fails what it still held and reports the exit.
    async fn run(
        self,
        mut child: Child,
        mut reader_done: oneshot::Receiver<Option<std::io::Error>>,
        mut kill_requests: mpsc::UnboundedReceiver<()>,
        pending: SharedPending,
    ) {
        let status = loop {
            tokio::select! {
                ended = &mut reader_done => {
                    if let Ok(Some(err)) = ended {
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
        for reply in held {
            let _ = reply.send(CallOutcome::Crashed(how.clone()));
        }
        self.records.remove(self.pid);
        let _ = self.exits.send(WorkerExit { id: self.id, status });
    }
}
