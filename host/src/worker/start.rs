//! Starting one worker: the process, its output, and the handshake on its
//! socket, up to a [`WorkerHandle`] or a [`StartError`] that quotes what
//! the worker printed.
//!
//! Owns: the listening socket and the child until hello. Must not touch: a
//! worker once it runs; [`super::connection`] drives it from then on.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::connection::Driver;
use super::protocol::{read_frame, Frame, PROTOCOL_VERSION};
use super::{describe_exit, kill_group, SharedPending, Spawner, WorkerExit, WorkerHandle, WorkerRecords, WorkerSpec};

/// Lines of a worker's output kept to explain a failed start.
const TAIL_LINES: usize = 30;

/// The two connections of a worker that said hello.
pub(super) struct Connections {
    pub(super) control_reader: BufReader<OwnedReadHalf>,
    pub(super) control_writer: OwnedWriteHalf,
    pub(super) call: UnixStream,
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
        // A worker of protocol 1 opens one connection and says hello on it;
        // one of this protocol may say hello before its call connection is
        // accepted.
        let (call, early_hello) = tokio::select! {
            accepted = listener.accept() => (accepted.map_err(accept_failed)?.0, None),
            early = read_frame(&mut control_reader) => match early {
                Ok(Some(Frame::Hello(hello))) if hello.protocol == PROTOCOL_VERSION => {
                    (listener.accept().await.map_err(accept_failed)?.0, Some(hello))
                }
                Ok(Some(Frame::Hello(hello))) => return Err(format!(
                    "it speaks protocol version {} (one connection), this host speaks {PROTOCOL_VERSION}: \
                     install the matching pitboss_worker", hello.protocol)),
                Ok(Some(other)) => return Err(format!("it sent {other:?} before opening its call connection")),
                Ok(None) => return Err("it closed its control connection before opening its call connection".to_owned()),
                Err(err) => return Err(format!("its first frame was unreadable: {err}")),
            },
        };
        let hello = match early_hello {
            Some(hello) => hello,
            None => match read_frame(&mut control_reader).await {
                Ok(Some(Frame::Hello(hello))) => hello,
                Ok(Some(other)) => return Err(format!("its first frame was {other:?}, not hello")),
                Ok(None) => return Err("it closed the connection before saying hello".to_owned()),
                Err(err) => return Err(format!("its hello was unreadable: {err}")),
            },
        };
        Ok((hello, Connections { control_reader, control_writer, call }))
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
            let driver = Driver {
                id: spec.id,
                pool: spec.pool.clone(),
                pid,
                threads: spec.threads,
                records: records.clone(),
                exits,
            };
            let (calls, control, ends) = driver.spawn_io(connections, pending.clone(), last_pong.clone());
            tokio::spawn(driver.run(child, ends, kill_requests, pending.clone()));
            return Ok(WorkerHandle { pid, hello, pending, calls, control, last_pong, kill });
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
        .arg(spec.threads.to_string())
        .arg("--session-idle-s")
        .arg(spec.session_idle.as_secs().max(1).to_string());
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
