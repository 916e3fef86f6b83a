//! Starting worker processes from one long-lived thread.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
//! not the process; so every worker is forked by this one thread, which
//! lives as long as the host. When the host dies, even by SIGKILL, the
//! kernel kills every worker.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::sync::mpsc;
use std::thread;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

struct SpawnRequest {
    command: Command,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// Handle to the spawning thread; cheap to clone. The thread ends (and the
/// kernel kills any worker still running) when the last handle is dropped.
#[derive(Clone)]
pub struct Spawner {
    requests: mpsc::Sender<SpawnRequest>,
}

impl Spawner {
    /// Starts the spawning thread inside `runtime`, whose reaper collects
    /// the children.
    pub fn start(runtime: tokio::runtime::Handle) -> io::Result<Spawner> {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new().name("pitboss-spawner".into()).spawn(move || {
            let _runtime = runtime.enter();
            for SpawnRequest { mut command, reply } in incoming {
                let _ = reply.send(command.spawn());
            }
        })?;
        Ok(Spawner { requests })
    }

    /// Spawns `command` in its own process group, killed with SIGKILL when
    /// the host goes away.
    pub async fn spawn(&self, mut command: Command) -> io::Result<Child> {
        let host = nix::unistd::getpid();
        // SAFETY: runs between fork and exec; calls only async-signal-safe
        // system calls (setpgid, prctl, getppid).
        #[allow(unsafe_code)]
        unsafe {
            command.as_std_mut().pre_exec(move || {
                nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                if nix::unistd::getppid() != host {
                    return Err(io::Error::other("the host exited while the worker was starting"));
                }
                Ok(())
            });
        }
        command.kill_on_drop(true);
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(SpawnRequest { command, reply })
            .map_err(|_| io::Error::other("the worker spawning thread has stopped"))?;
        answer.await.map_err(|_| io::Error::other("the worker spawning thread has stopped"))?
    }
}
