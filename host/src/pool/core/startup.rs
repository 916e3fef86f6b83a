//! Starting workers: the initial ones in batches, replacements one by one;
//! what a worker's hello says about the pool, and a thread pool's fallback
//! to process workers when its first workers cannot start.

use super::Caller;
use std::collections::VecDeque;
use std::time::Instant;

use super::{Core, Effect, Phase, Worker, WorkerReady};
use crate::config::Profile;
use crate::pool::lifecycle::{worker_env, WorkerLimits};
use crate::pool::status::PoolFacts;
use crate::worker::{Hello, StartError, WorkerSpec};

impl<R: Caller> Core<R> {
    /// Starts a new worker; returns its id.
    pub(super) fn start_worker(&mut self, now: Instant) -> u32 {
        let id = self.next_worker_id;
        self.next_worker_id += 1;
        self.workers.push(Worker {
            id,
            phase: Phase::Starting,
            pid: 0,
            sent: VecDeque::new(),
            dispatched: 0,
            served: 0,
            spawned_at: now,
            limits: WorkerLimits::jittered(&self.config.lifecycle),
            rss_bytes: 0,
            threads: 0,
            gil_enabled: true,
            last_error: None,
            pings_sent: 0,
            lost: false,
        });
        let spec = self.spec(id);
        self.effects.push(Effect::Start(spec));
        id
    }

    /// Starts a worker that replaces another (recycled, crashed, killed or
    /// never started), and counts it.
    pub(super) fn start_replacement(&mut self, now: Instant) -> u32 {
        self.restarts += 1;
        self.start_worker(now)
    }

    fn spec(&self, id: u32) -> WorkerSpec {
        WorkerSpec {
            pool: self.config.name.clone(),
            id,
            python: self.config.python.clone(),
            adapter: self.config.adapter.clone(),
            python_path: self.config.python_path.clone(),
            working_dir: self.config.working_dir.clone(),
            env: worker_env(self.profile, &self.config.env),
            args: self.config.args.clone(),
            socket_path: self.socket_dir.join(format!("p{}w{id}.sock", self.index)),
            startup_timeout: self.config.startup_timeout,
            threads: self.threads(),
            thread_safety_checks: self.config.thread_safety_checks && self.profile == Profile::Thread,
            session_idle: self.config.session_idle,
        }
    }

    /// Starts the next wave of initial workers; the one after it follows
    /// once this wave has reported, after `startup_batch_delay`.
    pub(super) fn start_batch(&mut self, now: Instant) {
        let batch = self.unstarted.min(self.config.lifecycle.startup_batch_size);
        self.unstarted -= batch;
        self.batch_pending = (0..batch).map(|_| self.start_worker(now)).collect();
    }

    fn startup_batch_reported(&mut self, worker_id: u32, now: Instant) {
        let before = self.batch_pending.len();
        self.batch_pending.retain(|&id| id != worker_id);
        if before > 0 && self.batch_pending.is_empty() && self.unstarted > 0 {
            self.next_batch_at = Some(now + self.config.lifecycle.startup_batch_delay);
        }
    }

    pub(super) fn started(&mut self, id: u32, outcome: Result<WorkerReady, StartError>, now: Instant) {
        let Some(position) = self.workers.iter().position(|w| w.id == id) else {
            // Started for a table that moved on (a fallback restarted the pool).
            if outcome.is_ok() {
                self.effects.push(Effect::Kill { worker: id });
            }
            return;
        };
        self.startup_batch_reported(id, now);
        match outcome {
            Ok(ready) => {
                tracing::info!(pool = %self.config.name, worker = id, pid = ready.pid,
                    python = %ready.hello.python_version, gil = ready.hello.gil_enabled, "worker ready");
                if self.tools.is_none() {
                    self.tools = Some(ready.hello.tools.clone());
                    self.idempotent = ready.hello.idempotent_tools.clone();
                }
                self.note_facts(&ready.hello);
                let unwanted = self.shutdown.is_some();
                let worker = &mut self.workers[position];
                worker.pid = ready.pid;
                worker.rss_bytes = ready.rss_bytes;
                worker.threads = ready.threads;
                worker.gil_enabled = ready.hello.gil_enabled;
                worker.phase = if unwanted { Phase::Unwanted } else { Phase::Ready { successor: None } };
                if unwanted {
                    self.effects.push(Effect::Stop { worker: id });
                }
                if std::mem::take(&mut self.start_unreported) {
                    self.effects.push(Effect::Started(Ok(())));
                }
                self.advance_recycles(now);
                self.pump(now);
            }
            Err(err) => {
                self.workers.remove(position);
                if let Some(predecessor) =
                    self.workers.iter_mut().find(|w| w.phase == Phase::Ready { successor: Some(id) })
                {
                    // The worker it was to replace keeps serving; its own
                    // retirement starts a replacement the usual way.
                    predecessor.phase = Phase::Ready { successor: None };
                    self.backoff.note_failure();
                    tracing::error!(pool = %self.config.name, "{err}");
                    return;
                }
                self.forget_replacement(id);
                if self.start_unreported && self.try_fallback(&err, now) {
                    return;
                }
                if std::mem::take(&mut self.start_unreported) {
                    self.effects.push(Effect::Started(Err(err)));
                    return;
                }
                tracing::error!(pool = %self.config.name, "{err}");
                self.crashed(now);
            }
        }
    }

    /// A thread pool whose first workers cannot start restarts as a process
    /// pool when `fallback_profile = "process"`; returns whether it did.
    fn try_fallback(&mut self, err: &StartError, now: Instant) -> bool {
        if self.profile != Profile::Thread || self.config.fallback_profile != Some(Profile::Process) {
            return false;
        }
        let reason = err.to_string();
        tracing::warn!(pool = %self.config.name,
            "thread workers cannot start; starting process workers instead (fallback_profile = \"process\"): {reason}");
        self.profile = Profile::Process;
        self.fallback = Some(reason);
        for worker in std::mem::take(&mut self.workers) {
            if worker.has_started() {
                self.effects.push(Effect::Kill { worker: worker.id });
            }
        }
        self.unstarted = self.config.size;
        self.start_batch(now);
        true
    }

    /// Keeps what the newest worker said about itself and warns, once per
    /// pool, about a thread pool that will not run its calls in parallel
    /// or whose adapter made no thread-safety promise.
    fn note_facts(&mut self, hello: &Hello) {
        if self.profile == Profile::Thread {
            if hello.gil_enabled && !self.warned_gil {
                self.warned_gil = true;
                let build = if hello.free_threaded_build {
                    "a free-threaded build with the GIL turned back on by an import"
                } else {
                    "not a free-threaded build"
                };
                tracing::warn!(pool = %self.config.name, python = %hello.python_version,
                    "thread pool runs with the GIL enabled ({build}): its calls overlap only while they wait on I/O \
                     or run native code that releases the GIL; use a free-threaded Python (3.13t) for CPU-bound Python code");
            }
            if !self.warned_thread_safety {
                self.warned_thread_safety = true;
                if hello.thread_safe.is_none() {
                    tracing::warn!(pool = %self.config.name, adapter = %hello.adapter,
                        "the adapter does not declare `thread_safe`; a thread pool runs its tools on several threads at once: \
                         declare `thread_safe = True` once it is safe (or use profile = \"process\")");
                }
                if !hello.unsafe_modules.is_empty() {
                    tracing::warn!(pool = %self.config.name, modules = ?hello.unsafe_modules,
                        "the workers loaded modules known to be unsafe to share across threads");
                }
            }
        }
        self.facts = Some(PoolFacts {
            python_version: hello.python_version.clone(),
            implementation: hello.implementation.clone(),
            free_threaded_build: hello.free_threaded_build,
            gil_enabled: hello.gil_enabled,
            thread_safe: hello.thread_safe,
            unsafe_modules: hello.unsafe_modules.clone(),
            threads_per_worker: hello.threads,
        });
    }
}
