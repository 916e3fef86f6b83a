//! Round trip of a no-op tool on 1- and 2-worker pools, every system in one
//! run with the same Python function (benches/workloads.py):
//!
//! - pitboss through the embedded `Host`, and through `pitboss.v1` gRPC on
//!   loopback from a client on a runtime of its own; both again on a pool
//!   with `calls_in_reserve = 4` (sequential and closed loops only);
//! - `concurrent.futures.ProcessPoolExecutor` and `multiprocessing.Pool`
//!   (benches/ppe_baseline.py), and a Ray actor pool (benches/ray_baseline.py),
//!   both with the payloads below too (benches/timing.py);
//! - Snakepit's transport: a grpcio server per worker process
//!   (benches/grpcio_worker.py) called from tonic, with the payloads too;
//! - the floors: a plain Python echo of framed messages over a Unix socket
//!   (benches/socket_floor.py) and a tonic↔tonic call that does nothing (the
//!   gRPC health check, on the host's own server, from a tonic channel with
//!   default settings).
//!
//! For each: sequential p50/p99/p99.9, and throughput and latency at 1, 8
//! and 32 calls in flight (closed loop); for pitboss also open-loop runs
//! at a quarter and half its saturation rate (latency corrected for coordinated omission)
//! and 0 B / 1 KiB / 1 MiB payloads with the host's overhead: the round trip
//! less the time spent inside the Python function, from CLOCK_MONOTONIC
//! timestamps the function takes. Prints the ratios the benchmark targets
//! are set in, and writes every figure to `PITBOSS_BENCH_RESULTS` (see
//! harness/mod.rs).
//!
//! Run: `cargo bench -p pitboss --bench roundtrip` (after scripts/python-env);
//! `scripts/bench` runs it with the peers' virtualenv (Ray) five times.
//! `PITBOSS_BENCH_PEERS_PYTHON` is the interpreter for the Python baselines
//! (default `.venv`'s; without Ray there, the report says Ray could not
//! start). `PITBOSS_BENCH_CALLS` sets the calls per measurement (default
//! 3000); `PITBOSS_BENCH_SMOKE=1` makes it 100, for a run that only shows
//! the harness works (`scripts/test` does that, in the debug build).

mod harness;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use harness::{closed_loop, open_loop, root, sequential, Figure, Latencies, Results, POOL};
use pitboss::api::Client;
use pitboss::pool::CallRequest;
use pitboss::Host;
use serde_json::Value;

const IN_FLIGHT: [usize; 3] = [1, 8, 32];
/// `calls_in_reserve` of the second pool measured: at 32 in flight on 2
/// workers it keeps each worker's next call waiting on its socket. The
/// names below and the target names say it too.
const RESERVE: u32 = 4;
/// The systems measured on the pool with `calls_in_reserve = RESERVE`.
const RESERVE_EMBEDDED: &str = "embedded, 4 in reserve";
const RESERVE_GRPC: &str = "gRPC, 4 in reserve";
const WORKERS: [u32; 2] = [1, 2];
const PAYLOADS: [(&str, usize); 3] = [("0 B", 0), ("1 KiB", 1 << 10), ("1 MiB", 1 << 20)];
/// The open-loop runs' arrival rates, as fractions of the path's
/// closed-loop saturation rate.
const OPEN_LOOP_RATES: [(&str, f64); 2] = [("25% of saturation", 0.25), ("50% of saturation", 0.5)];

/// One system's figures on one pool size.
struct Figures {
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    /// Calls per second at each of `IN_FLIGHT`.
    throughput: [f64; 3],
}

fn main() {
    let calls = harness::calls(3000, 100);
    let python = harness::venv_python(".venv", "scripts/python-env");
    let peers = std::env::var_os("PITBOSS_BENCH_PEERS_PYTHON").map_or_else(|| python.clone(), PathBuf::from);
    let mut results = Results::new("roundtrip");

    let ppe = python_baseline(&peers, "ppe_baseline.py", calls)
        .unwrap_or_else(|reason| panic!("the ProcessPoolExecutor baseline failed: {reason}"));
    let ray = python_baseline(&peers, "ray_baseline.py", calls);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let socket = runtime.block_on(socket_floor(calls, &python));
    results
        .latencies(&Figure { case: "noop", system: "framed-socket floor", workers: 0, param: "sequential" }, &socket);

    println!("no-op round trip, {calls} calls per figure; throughput in calls/s by calls in flight");
    println!(
        "{:<8} {:<22} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "workers", "system", "p50 µs", "p99 µs", "p99.9 µs", "1", "8", "32"
    );
    let floor = [socket.us(0.5), socket.us(0.99), socket.us(0.999)];
    println!("{:<8} {:<22} {:>8.0} {:>8.0} {:>8.0}", "-", "framed-socket floor", floor[0], floor[1], floor[2]);
    for (index, workers) in WORKERS.into_iter().enumerate() {
        let pool = runtime.block_on(measure_pool(workers, calls, &python));
        let (grpcio, grpcio_payloads) = runtime.block_on(grpcio_workers(workers, calls, &python));
        let systems = Systems {
            embedded: pool.embedded.measured.record(&mut results, "embedded", workers),
            grpc: pool.grpc.measured.record(&mut results, "gRPC", workers),
            reserve_embedded: pool.reserve_embedded.record(&mut results, RESERVE_EMBEDDED, workers),
            reserve_grpc: pool.reserve_grpc.record(&mut results, RESERVE_GRPC, workers),
            tonic: pool.tonic.record(&mut results, "tonic↔tonic floor", workers),
            grpcio: grpcio.record(&mut results, "grpcio worker", workers),
            ppe: from_python(&ppe[index], &mut results, "ProcessPoolExecutor", workers),
            ray: ray.as_ref().ok().map(|lines| from_python(&lines[index], &mut results, "Ray actors", workers)),
            mp_pool: ppe[index]["mp_pool_throughput"].as_f64().expect("the baseline reports mp.Pool"),
            ppe_map: ppe[index]["ppe_map_throughput"].as_f64().expect("the baseline reports ProcessPoolExecutor.map"),
            socket_p50_us: floor[0],
        };
        for (system, per_second) in
            [("multiprocessing.Pool", systems.mp_pool), ("ProcessPoolExecutor map", systems.ppe_map)]
        {
            results.record(&Figure { case: "noop", system, workers, param: "all submitted" }, "per_second", per_second);
        }
        systems.print(workers);
        for (system, path) in [("embedded", &pool.embedded), ("gRPC", &pool.grpc)] {
            path.record_and_print(&mut results, system, workers);
        }
        for payload in &grpcio_payloads {
            payload.record_and_print(&mut results, "grpcio worker", workers);
        }
        systems.check_targets(&mut results, workers);
    }
    if let Err(reason) = &ray {
        println!("Ray could not start: {reason}");
        results.note(&Figure { case: "noop", system: "Ray actors", workers: 0, param: "" }, reason);
    }
}

/// Every system's figures on one pool size, side by side.
struct Systems {
    embedded: Figures,
    grpc: Figures,
    reserve_embedded: Figures,
    reserve_grpc: Figures,
    tonic: Figures,
    grpcio: Figures,
    ppe: Figures,
    ray: Option<Figures>,
    /// `multiprocessing.Pool.imap_unordered` calls per second, all submitted at once.
    mp_pool: f64,
    /// `ProcessPoolExecutor.map` calls per second, all submitted at once.
    ppe_map: f64,
    socket_p50_us: f64,
}

impl Systems {
    fn print(&self, workers: u32) {
        let rows = [
            ("embedded", Some(&self.embedded)),
            ("gRPC", Some(&self.grpc)),
            (RESERVE_EMBEDDED, Some(&self.reserve_embedded)),
            (RESERVE_GRPC, Some(&self.reserve_grpc)),
            ("tonic↔tonic floor", Some(&self.tonic)),
            ("grpcio worker", Some(&self.grpcio)),
            ("ProcessPoolExecutor", Some(&self.ppe)),
            ("Ray actors", self.ray.as_ref()),
        ];
        for (system, figures) in rows {
            let Some(figures) = figures else { continue };
            let [one, eight, thirty_two] = figures.throughput;
            println!(
                "{workers:<8} {system:<22} {:>8.0} {:>8.0} {:>8.0} {one:>9.0} {eight:>9.0} {thirty_two:>9.0}",
                figures.p50_us, figures.p99_us, figures.p999_us
            );
        }
        for (system, per_second) in [("multiprocessing.Pool", self.mp_pool), ("ProcessPoolExecutor map", self.ppe_map)]
        {
            println!("{workers:<8} {system:<22} {per_second:>38.0} (all submitted at once)");
        }
    }

    /// Prints and records each target ratio of the benchmarks issue.
    fn check_targets(&self, results: &mut Results, workers: u32) {
        let (embedded, grpc) = (&self.embedded, &self.grpc);
        let at_32 = |figures: &Figures| figures.throughput[2];
        let mut targets = vec![
            ("embedded p50 / ProcessPoolExecutor p50", embedded.p50_us / self.ppe.p50_us, Bound::AtMost(0.25)),
            ("embedded p50 / grpcio worker p50", embedded.p50_us / self.grpcio.p50_us, Bound::AtMost(0.15)),
            ("embedded p50 / framed-socket floor p50", embedded.p50_us / self.socket_p50_us, Bound::AtMost(2.0)),
            (
                "(gRPC p50 − embedded p50) / tonic floor p50",
                (grpc.p50_us - embedded.p50_us) / self.tonic.p50_us,
                Bound::AtMost(1.5),
            ),
            ("gRPC p50 / ProcessPoolExecutor p50", grpc.p50_us / self.ppe.p50_us, Bound::AtMost(0.6)),
            ("embedded / multiprocessing.Pool, 32 in flight", at_32(embedded) / self.mp_pool, Bound::AtLeast(1.0)),
            (
                "embedded, 4 in reserve / multiprocessing.Pool, 32 in flight",
                at_32(&self.reserve_embedded) / self.mp_pool,
                Bound::AtLeast(1.0),
            ),
            ("embedded / ProcessPoolExecutor, 32 in flight", at_32(embedded) / at_32(&self.ppe), Bound::AtLeast(2.0)),
            ("gRPC / embedded, 32 in flight", at_32(grpc) / at_32(embedded), Bound::AtLeast(0.7)),
            (
                "gRPC / embedded, both 4 in reserve, 32 in flight",
                at_32(&self.reserve_grpc) / at_32(&self.reserve_embedded),
                Bound::AtLeast(0.7),
            ),
        ];
        if let Some(ray) = &self.ray {
            targets.push(("embedded p50 / Ray actors p50", embedded.p50_us / ray.p50_us, Bound::AtMost(0.1)));
        }
        for (name, ratio, bound) in targets {
            let target = bound.to_string();
            let verdict = if bound.met_by(ratio) { "met" } else { "missed" };
            println!("{workers:<8} target     {name}: {ratio:.2} (target {target}: {verdict})");
            results.record(&Figure { case: "targets", system: name, workers, param: &target }, "ratio", ratio);
        }
    }
}

enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

impl Bound {
    fn met_by(&self, ratio: f64) -> bool {
        match *self {
            Bound::AtMost(bound) => ratio <= bound,
            Bound::AtLeast(bound) => ratio >= bound,
        }
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Bound::AtMost(bound) => write!(f, "≤ {bound}"),
            Bound::AtLeast(bound) => write!(f, "≥ {bound}"),
        }
    }
}

/// A measurement through the load generator: sequential, then closed loops
/// at each number in flight.
struct Measured {
    sequential: Latencies,
    loads: Vec<harness::Load>,
}

impl Measured {
    async fn run<F, Fut>(calls: usize, call: F) -> Measured
    where
        F: Fn() -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let sequential = sequential(200, calls, call.clone()).await;
        let mut loads = Vec::new();
        for in_flight in IN_FLIGHT {
            loads.push(closed_loop(in_flight, calls, call.clone()).await);
        }
        Measured { sequential, loads }
    }

    fn saturation_per_second(&self) -> f64 {
        self.loads.iter().map(|load| load.per_second).fold(0.0, f64::max)
    }

    fn record(&self, results: &mut Results, system: &str, workers: u32) -> Figures {
        results.latencies(&Figure { case: "noop", system, workers, param: "sequential" }, &self.sequential);
        for (in_flight, load) in IN_FLIGHT.iter().zip(&self.loads) {
            let param = format!("in_flight={in_flight}");
            let figure = Figure { case: "noop", system, workers, param: &param };
            results.record(&figure, "per_second", load.per_second);
            results.latencies(&figure, &load.latencies);
        }
        Figures {
            p50_us: self.sequential.us(0.5),
            p99_us: self.sequential.us(0.99),
            p999_us: self.sequential.us(0.999),
            throughput: std::array::from_fn(|n| self.loads[n].per_second),
        }
    }
}

/// A baseline's figures as its script printed them (one JSON line per pool
/// size), recorded under `system`.
fn from_python(line: &Value, results: &mut Results, system: &str, workers: u32) -> Figures {
    let number = |value: &Value| value.as_f64().unwrap_or_else(|| panic!("{system} printed {line}"));
    let figures = Figures {
        p50_us: number(&line["p50_us"]),
        p99_us: number(&line["p99_us"]),
        p999_us: number(&line["p999_us"]),
        throughput: IN_FLIGHT.map(|n| number(&line["throughput"][n.to_string()])),
    };
    let sequential = Figure { case: "noop", system, workers, param: "sequential" };
    for (metric, value) in [("p50_us", figures.p50_us), ("p99_us", figures.p99_us), ("p999_us", figures.p999_us)] {
        results.record(&sequential, metric, value);
    }
    for (in_flight, per_second) in IN_FLIGHT.iter().zip(figures.throughput) {
        let param = format!("in_flight={in_flight}");
        results.record(&Figure { case: "noop", system, workers, param: &param }, "per_second", per_second);
    }
    let payloads = line["payloads"].as_object().unwrap_or_else(|| panic!("{system} printed no payloads: {line}"));
    for (size, legs) in payloads {
        let legs = legs.as_object().unwrap_or_else(|| panic!("{system} printed {legs} for {size}"));
        for (leg, quantiles) in legs {
            let figure = Figure { case: leg, system, workers, param: size };
            for (metric, value) in quantiles.as_object().into_iter().flatten() {
                results.record(&figure, metric, number(value));
            }
        }
        let round_trip = number(&legs["round trip"]["p50_us"]);
        println!("{workers:<8} {system:<10} payload {size:>5}: round trip p50 {round_trip:.0} µs");
    }
    figures
}

/// Runs `script` (in benches/) with `python` for every pool size: its JSON
/// lines, or the reason it gave for not running (`{"error": ...}`).
fn python_baseline(python: &Path, script: &str, calls: usize) -> Result<Vec<Value>, String> {
    let output = std::process::Command::new(python)
        .arg(root().join("host/benches").join(script))
        .arg(calls.to_string())
        .args(WORKERS.map(|workers| workers.to_string()))
        .output()
        .map_err(|err| format!("{} does not run: {err}", python.display()))?;
    if !output.status.success() {
        return Err(format!("{script} failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{script} printed {line:?}: {err}")))
        .collect();
    match lines.first().and_then(|line| line["error"].as_str()) {
        Some(reason) => Err(reason.to_owned()),
        None => Ok(lines),
    }
}

/// What the bench measures of one pitboss path (embedded or gRPC).
struct PathFigures {
    measured: Measured,
    /// Each open-loop run: its rate's name, calls offered per second, and
    /// what came of them.
    open_loops: Vec<(&'static str, f64, harness::OpenLoad)>,
    payloads: Vec<Payload>,
}

impl PathFigures {
    async fn run<F, Fut, S, SFut>(calls: usize, noop: F, stamp: S) -> PathFigures
    where
        F: Fn() -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        S: Fn(Bytes) -> SFut,
        SFut: Future<Output = Bytes>,
    {
        let measured = Measured::run(calls, noop.clone()).await;
        let mut open_loops = Vec::new();
        for (name, fraction) in OPEN_LOOP_RATES {
            let offered = measured.saturation_per_second() * fraction;
            open_loops.push((name, offered, open_loop(offered, calls, noop.clone()).await));
        }
        let mut payloads = Vec::new();
        for (size, bytes) in PAYLOADS {
            payloads.push(Payload::run(size, bytes, payload_calls(calls, bytes), &stamp).await);
        }
        PathFigures { measured, open_loops, payloads }
    }

    fn record_and_print(&self, results: &mut Results, system: &str, workers: u32) {
        for (rate, offered, run) in &self.open_loops {
            let figure = Figure { case: "noop open loop", system, workers, param: rate };
            results.record(&figure, "offered_per_second", *offered);
            results.record(&figure, "per_second", run.load.per_second);
            results.latencies(&figure, &run.load.latencies);
            results.latencies(&Figure { case: "open loop send lag", system, workers, param: rate }, &run.send_lag);
            let latencies = &run.load.latencies;
            println!(
                "{workers:<8} {system:<10} open loop at {offered:.0}/s ({rate}): p50 {:.0} µs, p99 {:.0} µs, \
                 p99.9 {:.0} µs (sent late by p50 {:.0} µs, p99 {:.0} µs)",
                latencies.us(0.5),
                latencies.us(0.99),
                latencies.us(0.999),
                run.send_lag.us(0.5),
                run.send_lag.us(0.99)
            );
        }
        for payload in &self.payloads {
            payload.record_and_print(results, system, workers);
        }
    }
}

/// Calls per payload figure: 1 MiB calls take milliseconds, so a tenth as
/// many of them (as timing.py does for the Python baselines).
fn payload_calls(calls: usize, bytes: usize) -> usize {
    if bytes >= 1 << 20 {
        (calls / 10).max(10)
    } else {
        calls
    }
}

/// Round trips of one payload size through `stamp`, split by the function's
/// own timestamps.
struct Payload {
    size: &'static str,
    round_trip: Latencies,
    /// The round trip less the time inside the Python function.
    overhead: Latencies,
    /// From sending the call to the function's start.
    request_leg: Latencies,
    /// From the function's end to the answer in the caller's hands.
    answer_leg: Latencies,
}

#[derive(serde::Deserialize)]
struct Stamps {
    entered_ns: u64,
    left_ns: u64,
}

fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

impl Payload {
    async fn run<S, SFut>(size: &'static str, bytes: usize, calls: usize, stamp: &S) -> Payload
    where
        S: Fn(Bytes) -> SFut,
        SFut: Future<Output = Bytes>,
    {
        let body = Bytes::from(serde_json::json!({ "data": "x".repeat(bytes) }).to_string());
        for _ in 0..calls.min(20) {
            stamp(body.clone()).await;
        }
        let mut payload = Payload {
            size,
            round_trip: Latencies::default(),
            overhead: Latencies::default(),
            request_leg: Latencies::default(),
            answer_leg: Latencies::default(),
        };
        for _ in 0..calls {
            let sent = monotonic_ns();
            let answer = stamp(body.clone()).await;
            let received = monotonic_ns();
            let stamps: Stamps = serde_json::from_slice(&answer).expect("stamp answers its timestamps");
            let inside = stamps.left_ns - stamps.entered_ns;
            payload.round_trip.record(Duration::from_nanos(received - sent));
            payload.overhead.record(Duration::from_nanos(received - sent - inside));
            payload.request_leg.record(Duration::from_nanos(stamps.entered_ns - sent));
            payload.answer_leg.record(Duration::from_nanos(received - stamps.left_ns));
        }
        payload
    }

    fn record_and_print(&self, results: &mut Results, system: &str, workers: u32) {
        let legs = [
            ("round trip", &self.round_trip),
            ("host overhead", &self.overhead),
            ("request leg", &self.request_leg),
            ("answer leg", &self.answer_leg),
        ];
        let mut line = format!("{workers:<8} {system:<10} payload {:>5}:", self.size);
        for (leg, latencies) in legs {
            let figure = Figure { case: leg, system, workers, param: self.size };
            results.latencies(&figure, latencies);
            line += &format!(" {leg} p50 {:.0} / p99 {:.0} µs;", latencies.us(0.5), latencies.us(0.99));
        }
        println!("{}", line.trim_end_matches(';'));
    }
}

/// The same functions behind Snakepit's transport: per worker, a Python
/// process serving gRPC with grpcio on one thread (grpcio_worker.py),
/// called from tonic; no-op calls go round the workers in turn, payloads
/// go to the first.
async fn grpcio_workers(workers: u32, calls: usize, python: &Path) -> (Measured, Vec<Payload>) {
    use tokio::io::AsyncBufReadExt;
    let mut servers = Vec::new();
    let mut addresses = Vec::new();
    for _ in 0..workers {
        let mut server = tokio::process::Command::new(python)
            .arg(root().join("host/benches/grpcio_worker.py"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the grpcio worker starts");
        let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
        let port = lines.next_line().await.unwrap().expect("the grpcio worker prints its port");
        addresses.push(format!("http://127.0.0.1:{port}"));
        servers.push(server);
    }
    let measured = as_another_program(async move {
        let mut channels = Vec::new();
        for address in addresses {
            channels.push(tonic::transport::Channel::from_shared(address).unwrap().connect().await.unwrap());
        }
        let first = channels[0].clone();
        let (channels, next) = (Arc::new(channels), Arc::new(std::sync::atomic::AtomicUsize::new(0)));
        let measured = Measured::run(calls, move || {
            let turn = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut grpc = tonic::client::Grpc::new(channels[turn % channels.len()].clone());
            async move {
                grpc.ready().await.unwrap();
                let codec = tonic_prost::ProstCodec::<(), ()>::default();
                let path = "/bench.Worker/Noop".parse().unwrap();
                grpc.unary(tonic::Request::new(()), path, codec).await.expect("noop over grpcio");
            }
        })
        .await;
        // The payload travels as a google.protobuf.BytesValue (prost's
        // message for Vec<u8>), which grpcio_worker.py unwraps.
        let stamp = |body: Bytes| {
            let mut grpc = tonic::client::Grpc::new(first.clone());
            async move {
                grpc.ready().await.unwrap();
                let codec = tonic_prost::ProstCodec::<Vec<u8>, Vec<u8>>::default();
                let path = "/bench.Worker/Stamp".parse().unwrap();
                let answer = grpc.unary(tonic::Request::new(body.to_vec()), path, codec).await;
                Bytes::from(answer.expect("stamp over grpcio").into_inner())
            }
        };
        let mut payloads = Vec::new();
        for (size, bytes) in PAYLOADS {
            payloads.push(Payload::run(size, bytes, payload_calls(calls, bytes), &stamp).await);
        }
        (measured, payloads)
    })
    .await;
    drop(servers);
    measured
}

/// Sequential round trips of a 2-byte frame through socket_floor.py.
async fn socket_floor(calls: usize, python: &Path) -> Latencies {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("floor.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let mut echo = tokio::process::Command::new(python)
        .arg(root().join("host/benches/socket_floor.py"))
        .arg(&path)
        .kill_on_drop(true)
        .spawn()
        .expect("the socket floor starts");
    let (stream, _) = listener.accept().await.unwrap();
    let stream = tokio::sync::Mutex::new(stream);
    let latencies = sequential(200, calls, || async {
        let mut stream = stream.lock().await;
        stream.write_all(&[0, 0, 0, 2, b'{', b'}']).await.unwrap();
        let mut answer = [0u8; 6];
        stream.read_exact(&mut answer).await.unwrap();
    })
    .await;
    let _ = echo.kill().await;
    latencies
}

/// What one pitboss pool of `workers` gives on each path.
struct PoolFigures {
    embedded: PathFigures,
    grpc: PathFigures,
    tonic: Measured,
    /// Both paths on a pool whose workers hold `RESERVE` calls in reserve.
    reserve_embedded: Measured,
    reserve_grpc: Measured,
}

/// One call of the bench's own, boxed so that one closure type serves
/// every host it is made for.
type BenchCall = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

fn embedded_noop(host: &Arc<Host>) -> impl Fn() -> BenchCall + Clone + Send + 'static {
    let host = host.clone();
    move || {
        let host = host.clone();
        Box::pin(async move {
            host.execute(POOL, CallRequest::json("noop", "{}")).await.expect("noop succeeds");
        })
    }
}

fn grpc_noop(client: &Client) -> impl Fn() -> BenchCall + Clone + Send + 'static {
    let client = client.clone();
    move || {
        let mut client = client.clone();
        Box::pin(async move {
            client.execute(POOL, CallRequest::json("noop", "{}")).await.expect("noop succeeds over gRPC");
        })
    }
}

/// `host` serving `pitboss.v1` on a loopback port.
struct Api {
    address: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Api {
    async fn serve(host: &Arc<Host>) -> Api {
        let listener = pitboss::api::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = pitboss::api::serve(host.clone(), listener, async {
            let _ = stopped.await;
        });
        let server = tokio::spawn(async move { serving.await.expect("the API serves") });
        Api { address, stop, server }
    }

    async fn stop(self, host: &Host) {
        let _ = self.stop.send(());
        host.shutdown().await;
        let _ = self.server.await;
    }
}

async fn measure_pool(workers: u32, calls: usize, python: &Path) -> PoolFigures {
    let workloads = root().join("host/benches");
    let settings = format!("size = {workers}");
    let (_dir, host) = harness::start_pool(python, "workloads:Workloads", &workloads, &settings).await;
    let stamp = |body: Bytes| {
        let host = host.clone();
        async move { host.execute(POOL, CallRequest::json("stamp", body)).await.expect("stamp succeeds").payload }
    };
    let embedded = PathFigures::run(calls, embedded_noop(&host), stamp).await;

    let api = Api::serve(&host).await;
    let address = api.address;
    let grpc = as_another_program(async move {
        let client = Client::connect(address).await.unwrap();
        let stamp = |body: Bytes| {
            let mut client = client.clone();
            async move { client.execute(POOL, CallRequest::json("stamp", body)).await.expect("stamp over gRPC").payload }
        };
        PathFigures::run(calls, grpc_noop(&client), stamp).await
    })
    .await;
    let tonic = as_another_program(async move {
        let channel = tonic::transport::Channel::from_shared(format!("http://{address}")).unwrap().connect().await;
        let health = tonic_health::pb::health_client::HealthClient::new(channel.unwrap());
        Measured::run(calls, move || {
            let mut health = health.clone();
            async move {
                let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
                health.check(request).await.expect("health check");
            }
        })
        .await
    })
    .await;
    api.stop(&host).await;

    let settings = format!("size = {workers}\ncalls_in_reserve = {RESERVE}");
    let (_dir, host) = harness::start_pool(python, "workloads:Workloads", &workloads, &settings).await;
    let reserve_embedded = Measured::run(calls, embedded_noop(&host)).await;
    let api = Api::serve(&host).await;
    let address = api.address;
    let reserve_grpc =
        as_another_program(
            async move { Measured::run(calls, grpc_noop(&Client::connect(address).await.unwrap())).await },
        )
        .await;
    api.stop(&host).await;
    PoolFigures { embedded, grpc, tonic, reserve_embedded, reserve_grpc }
}

/// Runs a network client's measurement on a runtime of its own, on a
/// thread of its own, as a caller in another program would: not as tasks
/// competing with the host's own on the host's runtime.
async fn as_another_program<T: Send + 'static>(measure: impl Future<Output = T> + Send + 'static) -> T {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(measure)
    })
    .await
    .unwrap()
}
