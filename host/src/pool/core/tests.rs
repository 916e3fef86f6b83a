//! The core's rules, driven with a fake clock (instants built by hand) and
//! a fake router: no Python, no wasmtime, no tokio.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::config::Config;
use crate::pool::call::ErrorKind;
use crate::pool::routing::{least_loaded, Decision, RequestView, RouterReport};

/// Routes least-loaded and remembers what it saw.
#[derive(Clone, Default)]
struct FakeRouter {
    completions: Arc<Mutex<Vec<(u32, bool)>>>,
}

impl Router for FakeRouter {
    fn route(&mut self, _request: &RequestView, workers: &[WorkerView]) -> Decision {
        least_loaded(workers)
    }

    fn on_complete(&mut self, worker: u32, _tool: &str, ok: bool, _latency: Duration) {
        self.completions.lock().unwrap().push((worker, ok));
    }

    fn report(&self) -> RouterReport {
        RouterReport { policy: "fake".to_owned(), ..RouterReport::default() }
    }
}

/// A caller, named by a number; it never leaves, reads no stream and is
/// on its first attempt.
type CallerId = u32;

impl super::Caller for CallerId {
    fn has_left(&self) -> bool {
        false
    }

    fn attempt(&self) -> u32 {
        1
    }

    fn streams(&self) -> bool {
        false
    }
}

fn config(extra: &str) -> PoolConfig {
    let text = format!(
        "[[pool]]\nname = \"p\"\nadapter = \"a:A\"\npython = \"/usr/bin/python3\"\nping_interval = \"1h\"\n{extra}\n"
    );
    let config = Config::parse(&text, Path::new("/tmp/pitboss.toml")).expect("the test config parses");
    config.pools.into_iter().next().expect("one pool")
}

struct Harness {
    core: Core<CallerId>,
    router: FakeRouter,
    /// The fake clock.
    now: Instant,
    effects: Vec<Effect<CallerId>>,
}

impl Harness {
    fn new(extra: &str) -> Self {
        let router = FakeRouter::default();
        let now = Instant::now();
        let mut core = Core::new(config(extra), 0, "/tmp".into(), Box::new(router.clone()), now);
        let effects = core.effects().collect();
        Harness { core, router, now, effects }
    }

    fn on(&mut self, input: Input<CallerId>) -> &[Effect<CallerId>] {
        self.effects = self.core.on(input, self.now).collect();
        &self.effects
    }

    fn advance(&mut self, by: Duration) -> &[Effect<CallerId>] {
        self.now += by;
        self.on(Input::Tick)
    }

    fn ready(&mut self, id: u32) -> &[Effect<CallerId>] {
        let hello = Hello {
            protocol: 3,
            pid: 1000 + id,
            python_version: "3.12.0".into(),
            implementation: "cpython".into(),
            free_threaded_build: false,
            gil_enabled: true,
            tools: vec!["echo".into()],
            adapter: "a:A".into(),
            threads: 1,
            package_version: "0.1.0".into(),
            thread_safe: Some(true),
            unsafe_modules: Vec::new(),
            streaming_tools: Vec::new(),
            idempotent_tools: Vec::new(),
        };
        self.on(Input::Started {
            id,
            outcome: Ok(WorkerReady { pid: 1000 + id, hello, rss_bytes: 1 << 20, threads: 1 }),
        })
    }

    fn fail_start(&mut self, id: u32) -> &[Effect<CallerId>] {
        let err = StartError { pool: "p".into(), worker: id, reason: "it exited".into(), output: Vec::new() };
        self.on(Input::Started { id, outcome: Err(err) })
    }

    fn submit(&mut self, caller: CallerId) -> &[Effect<CallerId>] {
        self.on(Input::Submit { request: CallRequest::json("echo", "{}"), reply: caller, avoid: None })
    }

    fn exit(&mut self, id: u32) -> &[Effect<CallerId>] {
        self.on(Input::Exited { id, status: "killed by signal 9 (SIGKILL)".into() })
    }

    /// Reports how `call` ended, as the driver does.
    fn end(&mut self, call: &Call, error: Option<CallError>, timed_out: bool, started: bool) -> &[Effect<CallerId>] {
        let (worker, request_id, tool, latency) =
            (call.worker, call.request_id, "echo".into(), Duration::from_millis(1));
        self.on(Input::Finished(Completion { worker, request_id, tool, error, latency, timed_out, started }))
    }

    /// Finishes the call `Effect::Call` sent to `worker` for `caller`.
    fn finish(&mut self, call: &Call, ok: bool) -> &[Effect<CallerId>] {
        self.end(call, (!ok).then(|| CallError::new(ErrorKind::Exception, "it raised")), false, true)
    }

    /// Ends `call` as its worker's connection does when the process dies.
    fn crash(&mut self, call: &Call) -> &[Effect<CallerId>] {
        let error = CallError::new(ErrorKind::WorkerCrashed, "the worker crashed: killed by signal 9");
        self.end(call, Some(error), false, true)
    }

    fn status(&self) -> crate::pool::PoolStatus {
        self.core.status(self.now)
    }
}

/// What one `Effect::Call` said.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Call {
    worker: u32,
    request_id: u64,
    caller: CallerId,
}

fn calls(effects: &[Effect<CallerId>]) -> Vec<Call> {
    effects
        .iter()
        .filter_map(|e| match *e {
            Effect::Call { worker, request_id, reply, .. } => Some(Call { worker, request_id, caller: reply }),
            _ => None,
        })
        .collect()
}

fn starts(effects: &[Effect<CallerId>]) -> Vec<u32> {
    effects.iter().filter_map(|e| if let Effect::Start(spec) = e { Some(spec.id) } else { None }).collect()
}

fn stops(effects: &[Effect<CallerId>]) -> Vec<u32> {
    effects.iter().filter_map(|e| if let Effect::Stop { worker } = e { Some(*worker) } else { None }).collect()
}

fn signals(effects: &[Effect<CallerId>]) -> Vec<(u32, StopSignal)> {
    effects
        .iter()
        .filter_map(|e| if let Effect::Signal { worker, signal } = e { Some((*worker, *signal)) } else { None })
        .collect()
}

fn failures(effects: &[Effect<CallerId>]) -> Vec<(CallerId, ErrorKind)> {
    effects
        .iter()
        .filter_map(|e| if let Effect::Fail { reply, error } = e { Some((*reply, error.kind)) } else { None })
        .collect()
}

#[test]
fn a_pool_starts_its_workers_and_reports_the_first_ready_one() {
    let mut pool = Harness::new("size = 2");
    assert_eq!(starts(&pool.effects), [0, 1]);
    let effects = pool.ready(1);
    assert!(matches!(effects, [Effect::Started(Ok(()))]), "{effects:?}");
    assert!(!pool.ready(0).iter().any(|e| matches!(e, Effect::Started(_))), "the start is reported once");
    let status = pool.status();
    assert_eq!((status.ready, status.starting, status.restarts), (2, 0, 0));
}

#[test]
fn startup_batches_wait_for_the_previous_batch_and_the_delay() {
    let mut pool = Harness::new("size = 3\nstartup_batch_size = 2\nstartup_batch_delay = \"500ms\"");
    assert_eq!(starts(&pool.effects), [0, 1]);
    pool.ready(0);
    assert_eq!(pool.core.next_deadline(), None, "the batch has not finished");
    pool.ready(1);
    assert_eq!(pool.core.next_deadline(), Some(pool.now + Duration::from_millis(500)));
    assert!(starts(pool.advance(Duration::from_millis(499))).is_empty());
    assert_eq!(starts(pool.advance(Duration::from_millis(1))), [2]);
}

#[test]
fn a_recycled_worker_drains_only_after_its_replacement_is_ready() {
    let mut pool = Harness::new("size = 1");
    pool.ready(0);
    let call = calls(pool.submit(7))[0];
    assert_eq!(call.worker, 0);

    pool.core.recycle(0, pool.now).expect("a ready worker recycles");
    let effects: Vec<_> = pool.core.effects().collect();
    assert_eq!(starts(&effects), [1], "the replacement starts at once");
    assert!(stops(&effects).is_empty(), "the old worker keeps its call");
    assert_eq!(pool.status().draining, 1);

    // Queued behind the draining worker: nobody can take it yet.
    assert!(calls(pool.submit(8)).is_empty());
    let effects = pool.ready(1);
    assert_eq!(calls(effects).iter().map(|c| (c.worker, c.caller)).collect::<Vec<_>>(), [(1, 8)]);
    assert!(stops(effects).is_empty(), "a worker with a call in flight is not stopped");

    assert_eq!(stops(pool.finish(&call, true)), [0], "drained and replaced: now it stops");
    assert_eq!(pool.status().recycles.get(Reason::Manual), 1);
    assert!(signals(pool.exit(0)).is_empty());
    let status = pool.status();
    assert_eq!((status.crashes, status.restarts, status.ready), (0, 1, 1));
}

#[test]
fn a_worker_stopping_slowly_gets_term_then_kill() {
    let mut pool = Harness::new("size = 1");
    pool.ready(0);
    pool.core.recycle(0, pool.now).unwrap();
    pool.core.effects().for_each(drop);
    assert_eq!(stops(pool.ready(1)), [0]);
    let health = |pool: &mut Harness, by| {
        pool.now += by;
        let samples = [0, 1].map(|worker| Sample { worker, rss_bytes: 0, threads: 1, last_pong: 0 }).to_vec();
        signals(pool.on(Input::Health(samples)))
    };
    assert!(health(&mut pool, Duration::from_millis(1999)).is_empty());
    assert_eq!(health(&mut pool, Duration::from_millis(1)), [(0, StopSignal::Term)]);
    assert_eq!(health(&mut pool, Duration::from_secs(2)), [(0, StopSignal::Kill)]);
}

#[test]
fn a_call_limit_retires_the_worker_and_its_successor_starts_early() {
    let mut pool = Harness::new("size = 1\nworker_max_requests = 4\nrecycle_jitter = 0.0");
    pool.ready(0);
    let first = calls(pool.submit(1))[0];
    pool.finish(&first, true);
    let second = calls(pool.submit(2))[0];
    assert!(starts(&pool.effects).is_empty());
    pool.finish(&second, true);
    // The third call is a quarter of the limit before it: the successor starts.
    let effects = pool.submit(3);
    assert_eq!(calls(effects)[0].worker, 0);
    assert_eq!(starts(effects), [1]);
    let third = calls(effects)[0];
    pool.finish(&third, true);
    pool.ready(1);
    let effects = pool.submit(4);
    assert_eq!(calls(effects)[0].worker, 0, "the fourth call is still the old worker's");
    let fourth = calls(effects)[0];
    assert_eq!(pool.status().recycles.get(Reason::MaxRequests), 1);
    assert_eq!(calls(pool.submit(5))[0].worker, 1, "a worker past its limit takes no call");
    assert_eq!(stops(pool.finish(&fourth, true)), [0]);
}

#[test]
fn crash_replacements_back_off_and_a_good_call_resets_the_delay() {
    let mut pool = Harness::new("size = 1");
    pool.ready(0);
    assert_eq!(starts(pool.exit(0)), [1], "the first crash is replaced at once");
    pool.ready(1);
    assert!(starts(pool.exit(1)).is_empty(), "the second waits");
    assert_eq!(pool.core.next_deadline(), Some(pool.now + Duration::from_millis(100)));
    assert!(starts(pool.advance(Duration::from_millis(99))).is_empty());
    assert_eq!(starts(pool.advance(Duration::from_millis(1))), [2]);
    pool.fail_start(2);
    assert_eq!(pool.core.next_deadline(), Some(pool.now + Duration::from_millis(200)), "the delay doubles");
    assert!(pool.status().degraded, "three failures in a row");
    assert_eq!(starts(pool.advance(Duration::from_millis(200))), [3]);
    pool.ready(3);
    let call = calls(pool.submit(1))[0];
    pool.finish(&call, true);
    assert!(!pool.status().degraded);
    assert_eq!(starts(pool.exit(3)), [4], "after a good call, a crash is replaced at once again");
    let status = pool.status();
    assert_eq!((status.crashes, status.restarts, status.recycles.get(Reason::Crashed)), (3, 4, 3));
}

#[test]
fn a_worker_whose_call_crashed_takes_no_new_call_before_its_exit() {
    let mut pool = Harness::new("size = 2");
    pool.ready(0);
    pool.ready(1);
    let lost = calls(pool.submit(1))[0];
    let busy = calls(pool.submit(2))[0];
    assert_ne!(lost.worker, busy.worker);
    pool.crash(&lost);
    assert!(calls(pool.submit(3)).is_empty(), "the idle but dead worker gets nothing; the call waits");
    let status = pool.status();
    assert_eq!((status.ready, status.capacity, status.queued), (1, 1, 1), "{status:#?}");
    assert_eq!(status.workers.iter().find(|w| w.id == lost.worker).unwrap().state, "stopping");
    assert_eq!(starts(pool.exit(lost.worker)), [2], "its exit is a crash, replaced at once");
    assert_eq!(pool.status().crashes, 1);
}

#[test]
fn queued_requests_time_out_and_a_full_queue_saturates() {
    let mut pool = Harness::new("size = 1\nqueue_limit = 1\nqueue_timeout = \"1s\"");
    pool.ready(0);
    assert_eq!(calls(pool.submit(1)).len(), 1);
    assert!(calls(pool.submit(2)).is_empty(), "queued");
    assert_eq!(failures(pool.submit(3)), [(3, ErrorKind::Saturated)]);
    assert_eq!(pool.status().queued, 1);
    assert!(failures(pool.advance(Duration::from_millis(999))).is_empty());
    assert_eq!(failures(pool.advance(Duration::from_millis(1))), [(2, ErrorKind::QueueTimeout)]);
    assert_eq!(pool.status().queued, 0);
}

#[test]
fn a_call_sent_again_skips_a_full_queue_and_goes_first() {
    let mut pool = Harness::new("size = 1\nqueue_limit = 1");
    pool.ready(0);
    let running = calls(pool.submit(1))[0];
    assert!(calls(pool.submit(2)).is_empty(), "queued: the queue is full");
    let again = Input::Submit { request: CallRequest::json("echo", "{}"), reply: 3, avoid: Some(7) };
    assert!(failures(pool.on(again)).is_empty(), "a call sent again is not refused as saturated");
    assert_eq!(pool.status().queued, 2);
    assert_eq!(calls(pool.finish(&running, true)).iter().map(|c| c.caller).collect::<Vec<_>>(), [3]);
}

#[test]
fn a_call_past_its_deadline_is_abandoned_and_its_process_worker_killed() {
    let mut pool = Harness::new("size = 1\nrequest_timeout = \"2s\"");
    pool.ready(0);
    let call = calls(pool.submit(1))[0];
    assert_eq!(pool.core.next_deadline(), Some(pool.now + Duration::from_secs(2)));
    let effects = pool.advance(Duration::from_secs(2));
    assert!(matches!(effects, [Effect::Abandon { worker: 0, request_id }] if *request_id == call.request_id));
    let effects = pool.end(&call, Some(CallError::new(ErrorKind::Timeout, "no answer")), true, true);
    assert!(effects.iter().any(|e| matches!(e, Effect::Kill { worker: 0 })), "{effects:?}");
    assert_eq!(starts(pool.exit(0)), [1], "its exit starts the replacement");
    assert_eq!(pool.status().recycles.get(Reason::Timeout), 1);
    assert_eq!(pool.router.completions.lock().unwrap().as_slice(), [(0, false)]);
}

#[test]
fn a_process_worker_holds_calls_in_reserve_whose_clock_starts_when_they_do() {
    let mut pool = Harness::new("size = 1\ncalls_in_reserve = 2\nrequest_timeout = \"2s\"");
    pool.ready(0);
    let first = calls(pool.submit(1))[0];
    assert_eq!(calls(pool.submit(2)).len(), 1, "the second call goes to the busy worker");
    assert_eq!(calls(pool.submit(3)).len(), 1);
    assert!(calls(pool.submit(4)).is_empty(), "queued: one running and two in reserve fill the worker");
    let status = pool.status();
    assert_eq!((status.in_flight, status.reserved, status.queued), (1, 2, 1));
    assert_eq!((status.workers[0].in_flight, status.workers[0].reserved), (1, 2));
    assert_eq!(pool.core.next_deadline(), Some(pool.now + Duration::from_secs(2)), "only the running call's clock");

    pool.now += Duration::from_millis(1500);
    let effects = pool.finish(&first, true);
    assert_eq!(calls(effects).iter().map(|c| c.caller).collect::<Vec<_>>(), [4], "the queued call takes the place");
    assert_eq!(pool.core.next_deadline(), Some(pool.now + Duration::from_secs(2)), "the second call starts now");
    assert!(pool.advance(Duration::from_millis(1999)).is_empty(), "3.5 s after it was sent, 2 s after it started");
    assert!(matches!(pool.advance(Duration::from_millis(1)), [Effect::Abandon { worker: 0, .. }]));
}

#[test]
fn a_call_its_dead_worker_never_started_counts_as_neither_served_nor_failed() {
    let mut pool = Harness::new("size = 2\ncalls_in_reserve = 1");
    pool.ready(0);
    pool.ready(1);
    let sent: Vec<Call> = (1..=4).flat_map(|caller| calls(pool.submit(caller))).collect();
    assert_eq!(sent.iter().map(|c| c.worker).collect::<Vec<_>>(), [0, 1, 0, 1], "least loaded, reserve included");
    pool.crash(&sent[0]);
    assert!(calls(pool.end(&sent[2], None, false, false)).is_empty());
    let status = pool.status();
    assert_eq!((status.served, status.failed, status.workers[0].in_flight), (1, 1, 0));
    assert_eq!(
        pool.router.completions.lock().unwrap().as_slice(),
        [(0, false)],
        "the router hears of the call that ran"
    );
    assert!(calls(pool.submit(5)).is_empty(), "worker 0 is lost and worker 1 full: the new call waits");
    assert_eq!(starts(pool.exit(0)), [2]);
}

#[test]
fn shutdown_waits_for_calls_within_the_grace_period_then_escalates() {
    let mut pool = Harness::new("size = 2");
    pool.ready(0);
    pool.ready(1);
    let call = calls(pool.submit(1))[0];
    pool.submit(2);
    assert!(calls(pool.submit(3)).is_empty(), "queued: both workers busy");
    let effects = pool.on(Input::Shutdown { grace: Duration::from_secs(5) });
    assert_eq!(failures(effects), [(3, ErrorKind::ShuttingDown)]);
    assert!(stops(effects).is_empty(), "calls in flight get their grace");
    assert_eq!(failures(pool.submit(4)), [(4, ErrorKind::ShuttingDown)]);
    assert!(pool.core.recycle(0, pool.now).is_err());

    assert!(stops(pool.finish(&call, true)).is_empty(), "one call still runs");
    assert_eq!(stops(pool.advance(Duration::from_secs(5))), [0, 1], "grace over");
    assert_eq!(signals(pool.advance(Duration::from_secs(2))), [(0, StopSignal::Term), (1, StopSignal::Term)]);
    assert_eq!(signals(pool.advance(Duration::from_secs(2))), [(0, StopSignal::Kill), (1, StopSignal::Kill)]);
    pool.exit(0);
    assert!(!pool.core.is_stopped());
    assert!(starts(pool.exit(1)).is_empty(), "no replacements while stopping");
    assert!(pool.core.is_stopped());
}

#[test]
fn a_worker_ready_during_shutdown_is_told_to_stop() {
    let mut pool = Harness::new("size = 2");
    pool.ready(0);
    pool.on(Input::Shutdown { grace: Duration::from_secs(5) });
    assert_eq!(stops(&pool.effects), [0], "idle: stops at once");
    assert_eq!(stops(pool.ready(1)), [1]);
    assert_eq!(pool.status().workers.iter().map(|w| w.state).collect::<Vec<_>>(), ["ready", "stopping"]);
}

#[test]
fn a_thread_pool_falls_back_to_process_workers() {
    let mut pool =
        Harness::new("size = 2\nprofile = \"thread\"\nthreads_per_worker = 4\nfallback_profile = \"process\"");
    let threads = |effects: &[Effect<CallerId>]| -> Vec<u32> {
        effects.iter().filter_map(|e| if let Effect::Start(spec) = e { Some(spec.threads) } else { None }).collect()
    };
    assert_eq!(threads(&pool.effects), [4, 4]);
    let effects = pool.fail_start(0);
    assert_eq!(starts(effects), [2, 3], "the pool starts again");
    assert_eq!(threads(effects), [1, 1], "as process workers");
    assert!(matches!(pool.ready(1), [Effect::Kill { worker: 1 }]), "a thread worker from before is not kept");
    assert!(matches!(pool.ready(2).first(), Some(Effect::Started(Ok(())))));
    let status = pool.status();
    assert_eq!(status.profile, "process");
    assert!(status.fallback.as_deref().is_some_and(|why| why.contains("it exited")), "{:?}", status.fallback);
}

#[test]
fn a_pool_whose_first_worker_cannot_start_reports_why() {
    let mut pool = Harness::new("size = 1");
    let effects = pool.fail_start(0);
    assert!(matches!(effects, [Effect::Started(Err(err))] if err.reason == "it exited"), "{effects:?}");
}

#[test]
fn an_unknown_tool_is_refused_once_the_tools_are_known() {
    let mut pool = Harness::new("size = 1");
    pool.ready(0);
    let effects = pool.on(Input::Submit { request: CallRequest::json("nope", "{}"), reply: 1, avoid: None });
    assert_eq!(failures(effects), [(1, ErrorKind::UnknownTool)]);
}

#[test]
fn unresponsive_workers_are_killed_after_the_missed_pings() {
    let mut pool = Harness::new("size = 1\nmax_missed_pings = 2");
    pool.ready(0);
    let round = |pool: &mut Harness, last_pong| {
        pool.now += Duration::from_secs(3600);
        pool.on(Input::Health(vec![Sample { worker: 0, rss_bytes: 0, threads: 1, last_pong }])).to_vec_debug()
    };
    assert_eq!(round(&mut pool, 0), ["Ping { worker: 0, sequence: 1 }"]);
    assert_eq!(round(&mut pool, 1), ["Ping { worker: 0, sequence: 2 }"], "answered");
    assert_eq!(round(&mut pool, 1), ["Ping { worker: 0, sequence: 3 }"], "one missed");
    assert_eq!(round(&mut pool, 1), ["Kill { worker: 0 }"], "two missed");
    assert_eq!(pool.status().recycles.get(Reason::Unresponsive), 1);
}

#[test]
fn pings_keep_their_schedule_when_a_round_runs_late() {
    let mut pool = Harness::new("size = 1");
    pool.ready(0);
    let start = pool.now;
    let interval = Duration::from_secs(3600);
    // Rounds come from a timer of the same period, each a little late and
    // by a different amount; every one of them pings.
    for (round, late_us) in [(1, 1_000), (2, 500), (3, 200), (4, 900)] {
        pool.now = start + interval * round + Duration::from_micros(late_us);
        let effects = pool.on(Input::Health(vec![Sample {
            worker: 0,
            rss_bytes: 0,
            threads: 1,
            last_pong: u64::from(round - 1),
        }]));
        assert_eq!(effects.to_vec_debug(), [format!("Ping {{ worker: 0, sequence: {round} }}")], "round {round}");
    }
}

trait DebugList {
    fn to_vec_debug(&self) -> Vec<String>;
}

impl DebugList for [Effect<CallerId>] {
    fn to_vec_debug(&self) -> Vec<String> {
        self.iter().map(|e| format!("{e:?}")).collect()
    }
}
