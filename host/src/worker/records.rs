//! The run directory's record of live workers, so a host started after a
//! crash can find and kill what an earlier run left behind.
//!
//! A worker is recorded by pid *and* process start time (from /proc): a
//! recycled pid never matches, so nothing but our own leftovers is killed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Record {
    run_id: String,
    pool: String,
    worker: u32,
    pid: u32,
    start_time: u64,
}

/// The `workers/` folder of a run directory.
#[derive(Clone)]
pub struct WorkerRecords {
    dir: PathBuf,
    run_id: String,
}

impl WorkerRecords {
    pub fn open(run_dir: &Path, run_id: String) -> io::Result<Self> {
        let dir = run_dir.join("workers");
        fs::create_dir_all(&dir)?;
        Ok(WorkerRecords { dir, run_id })
    }

    /// Kills the process group of every recorded worker of an earlier run
    /// that is still alive, and forgets all earlier records. Returns how
    /// many were killed.
    pub fn sweep(&self) -> io::Result<usize> {
        let mut killed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let record: Option<Record> = fs::read(&path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
            if let Some(record) = record.filter(|r| r.run_id != self.run_id) {
                // A zombie (a worker that died with its host, not yet reaped
                // by whoever adopted it) has exited: nothing to kill.
                if running_start_time(record.pid) == Some(record.start_time) {
                    tracing::warn!(pool = %record.pool, worker = record.worker, pid = record.pid, run = %record.run_id,
                        "killing a worker left behind by an earlier run");
                    let _ = killpg(Pid::from_raw(record.pid as i32), Signal::SIGKILL);
                    killed += 1;
                }
            }
            let _ = fs::remove_file(&path);
        }
        Ok(killed)
    }

    pub fn add(&self, pool: &str, worker: u32, pid: u32) -> io::Result<()> {
        let start_time = process_start_time(pid).ok_or_else(|| io::Error::other(format!("process {pid} is gone")))?;
        let record = Record { run_id: self.run_id.clone(), pool: pool.to_owned(), worker, pid, start_time };
        fs::write(self.path(pid), serde_json::to_vec(&record)?)
    }

    pub fn remove(&self, pid: u32) {
        let _ = fs::remove_file(self.path(pid));
    }

    fn path(&self, pid: u32) -> PathBuf {
        self.dir.join(format!("{pid}.json"))
    }
}

/// Field 22 of /proc/PID/stat: the process's start time in clock ticks
/// since boot. `None` when the process does not exist.
pub fn process_start_time(pid: u32) -> Option<u64> {
    stat_after_name(pid)?.split(' ').nth(19)?.parse().ok()
}

/// [`process_start_time`] of a process that has not exited (not a zombie).
fn running_start_time(pid: u32) -> Option<u64> {
    let stat = stat_after_name(pid)?;
    let mut fields = stat.split(' ');
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// /proc/PID/stat from field 3 (the state) on. The command name (field 2)
/// may hold spaces and parentheses; the fields after its closing
/// parenthesis are plain.
fn stat_after_name(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat[stat.rfind(')')? + 2..].to_owned())
}
