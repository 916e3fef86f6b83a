//! Round trip of a no-op tool on 1- and 2-worker process pools: through the
//! embedded `Host`, through `pitboss.v1` gRPC on loopback, and through
//! Python's `concurrent.futures.ProcessPoolExecutor` with the same function
//! (benches/ppe_baseline.py), and through Snakepit's transport (a grpcio
//! server per worker process, benches/grpcio_worker.py), all in one run, beside two floors measured in
//! the same run: a plain Python echo of framed messages over a Unix socket
//! (benches/socket_floor.py) and a tonic↔tonic call that does nothing (the
//! gRPC health check, on the host's own server and client settings).
//! Prints p50/p99 and throughput at 1, 8 and 32 calls in flight (and
//! `multiprocessing.Pool.imap_unordered`'s throughput), and the ratios the
//! benchmark targets are set in.
//!
//! Run: `cargo bench -p pitboss --bench roundtrip` (after scripts/python-env).
//! `PITBOSS_BENCH_CALLS` sets the calls per measurement (default 3000);
//! `PITBOSS_BENCH_SMOKE=1` makes it 100, for a run that only shows the
//! harness works (`scripts/test` does that, in the debug build).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use pitboss::api::Client;
use pitboss::config::Config;
use pitboss::pool::CallRequest;
use pitboss::Host;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

struct Figures {
    p50_us: f64,
    p99_us: f64,
    /// Calls per second at 1, 8 and 32 in flight.
    throughput: [f64; 3],
}

const IN_FLIGHT: [usize; 3] = [1, 8, 32];

fn main() {
    let default_calls = if std::env::var_os("PITBOSS_BENCH_SMOKE").is_some() { 100 } else { 3000 };
    let calls: usize = std::env::var("PITBOSS_BENCH_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(default_calls);
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/python-env first", python.display());

    let baseline = std::process::Command::new(&python)
        .arg(root().join("host/benches/ppe_baseline.py"))
        .arg(calls.to_string())
        .output()
        .expect("the ProcessPoolExecutor baseline runs");
    assert!(baseline.status.success(), "baseline failed: {}", String::from_utf8_lossy(&baseline.stderr));
    let baseline: Vec<Value> =
        String::from_utf8_lossy(&baseline.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let socket = runtime.block_on(socket_floor(calls, &python));
    println!(
        "floor: plain Python framed echo over a Unix socket: p50 {:.0} µs, p99 {:.0} µs",
        socket.p50_us, socket.p99_us
    );
    println!("no-op tool round trip, {calls} calls per figure");
    println!(
        "{:<8} {:<10} {:>9} {:>9} {:>11} {:>11} {:>11}",
        "workers", "path", "p50", "p99", "1 in flight", "8 in flight", "32 in flight"
    );
    for (workers, python_figures) in [1u32, 2].into_iter().zip(&baseline) {
        let (embedded, grpc, tonic) = runtime.block_on(measure_pool(workers, calls, &python));
        let grpcio = runtime.block_on(grpcio_workers(workers, calls, &python));
        let ppe = Figures {
            p50_us: python_figures["p50_us"].as_f64().unwrap(),
            p99_us: python_figures["p99_us"].as_f64().unwrap(),
            throughput: IN_FLIGHT.map(|n| python_figures["throughput"][n.to_string()].as_f64().unwrap()),
        };
        let mp_pool = python_figures["mp_pool_throughput"].as_f64().unwrap();
        for (path, figures) in [("embedded", &embedded), ("grpc", &grpc), ("ppe", &ppe), ("grpcio", &grpcio)] {
            println!(
                "{workers:<8} {path:<10} {:>6.0} µs {:>6.0} µs {:>9.0}/s {:>9.0}/s {:>10.0}/s",
                figures.p50_us, figures.p99_us, figures.throughput[0], figures.throughput[1], figures.throughput[2]
            );
        }
        println!("{workers:<8} mp.Pool    imap_unordered, chunksize 1: {mp_pool:.0}/s");
        println!("{workers:<8} floor      tonic↔tonic no-op: p50 {:.0} µs, p99 {:.0} µs", tonic.p50_us, tonic.p99_us);
        println!(
            "{workers:<8} ratios     embedded/ppe {:.2} (target ≤ 0.25), embedded/socket floor {:.2} (≤ 2), \
             grpc/ppe {:.2} (≤ 0.6), (grpc − embedded)/tonic floor {:.2} (≤ 1.5)",
            embedded.p50_us / ppe.p50_us,
            embedded.p50_us / socket.p50_us,
            grpc.p50_us / ppe.p50_us,
            (grpc.p50_us - embedded.p50_us) / tonic.p50_us
        );
        println!(
            "{workers:<8} ratios     embedded/grpcio worker {:.2} (target ≤ 0.15)",
            embedded.p50_us / grpcio.p50_us
        );
        let at_32 = |figures: &Figures| figures.throughput[2];
        println!(
            "{workers:<8} ratios     32 in flight: embedded/mp.Pool {:.2} (≥ 1.0), embedded/ppe {:.2} (≥ 2), \
             grpc/embedded {:.2} (≥ 0.7)",
            at_32(&embedded) / mp_pool,
            at_32(&embedded) / at_32(&ppe),
            at_32(&grpc) / at_32(&embedded)
        );
    }
}

/// The same no-op behind Snakepit's transport: per worker, a Python
/// process serving gRPC with grpcio on one thread (grpcio_worker.py),
/// called from tonic; calls go round the workers in turn.
async fn grpcio_workers(workers: u32, calls: usize, python: &std::path::Path) -> Figures {
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
    let figures = as_another_program(async move {
        let mut channels = Vec::new();
        for address in addresses {
            channels.push(tonic::transport::Channel::from_shared(address).unwrap().connect().await.unwrap());
        }
        let (channels, next) = (Arc::new(channels), Arc::new(std::sync::atomic::AtomicUsize::new(0)));
        figures(calls, move || {
            let turn = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut grpc = tonic::client::Grpc::new(channels[turn % channels.len()].clone());
            async move {
                grpc.ready().await.unwrap();
                let codec = tonic_prost::ProstCodec::<(), ()>::default();
                let path = "/bench.Worker/Noop".parse().unwrap();
                grpc.unary(tonic::Request::new(()), path, codec).await.expect("noop over grpcio");
            }
        })
        .await
    })
    .await;
    drop(servers);
    figures
}

/// Sequential round trips of a 2-byte frame through socket_floor.py.
async fn socket_floor(calls: usize, python: &std::path::Path) -> Figures {
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
    let stream = std::sync::Arc::new(tokio::sync::Mutex::new(stream));
    let figures = figures(calls, move || {
        let stream = stream.clone();
        async move {
            let mut stream = stream.lock().await;
            let frame = [0, 0, 0, 2, b'{', b'}'];
            stream.write_all(&frame).await.unwrap();
            let mut answer = [0u8; 6];
            stream.read_exact(&mut answer).await.unwrap();
        }
    })
    .await;
    let _ = echo.kill().await;
    figures
}

async fn measure_pool(workers: u32, calls: usize, python: &std::path::Path) -> (Figures, Figures, Figures) {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("pitboss.toml");
    std::fs::write(
        &config_path,
        format!(
            "[host]\npython = {python:?}\nrun_dir = {:?}\napi_address = \"127.0.0.1:0\"\n\n\
             [[pool]]\nname = \"bench\"\nadapter = \"adapter:Example\"\npython_path = [{:?}]\nsize = {workers}\n",
            dir.path().join("run"),
            root().join("examples"),
        ),
    )
    .unwrap();
    let config = Config::load(&config_path).unwrap();
    let host = Arc::new(Host::start(config).await.expect("bench pool starts"));
    while host.stats().await[0].ready < workers {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let embedded = figures(calls, {
        let host = host.clone();
        move || {
            let host = host.clone();
            async move {
                host.execute("bench", CallRequest::json("noop", "{}")).await.expect("noop succeeds");
            }
        }
    })
    .await;

    let listener = pitboss::api::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(pitboss::api::serve(host.clone(), listener, async {
        let _ = stopped.await;
    }));
    let grpc = as_another_program(async move {
        let client = Client::connect(address).await.unwrap();
        figures(calls, move || {
            let mut client = client.clone();
            async move {
                client.execute("bench", CallRequest::json("noop", "{}")).await.expect("noop succeeds over gRPC");
            }
        })
        .await
    })
    .await;
    let tonic = as_another_program(async move {
        let channel = tonic::transport::Channel::from_shared(format!("http://{address}")).unwrap().connect().await;
        let health = tonic_health::pb::health_client::HealthClient::new(channel.unwrap());
        figures(calls, move || {
            let mut health = health.clone();
            async move {
                let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
                health.check(request).await.expect("health check");
            }
        })
        .await
    })
    .await;
    let _ = stop.send(());
    host.shutdown().await;
    let _ = server.await;
    (embedded, grpc, tonic)
}

/// Runs a network client's measurement on a runtime of its own, on a
/// thread of its own, as a caller in another program would: not as tasks
/// competing with the host's own on the host's runtime.
async fn as_another_program(measure: impl Future<Output = Figures> + Send + 'static) -> Figures {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(measure)
    })
    .await
    .unwrap()
}

/// Sequential round trips (after a warm-up), then throughput at each
/// number of calls in flight.
async fn figures<F, Fut>(calls: usize, call: F) -> Figures
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    for _ in 0..200 {
        call().await;
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        call().await;
        samples.push(started.elapsed().as_nanos() as f64 / 1e3);
    }
    samples.sort_by(f64::total_cmp);
    let percentile = |pct: usize| samples[(samples.len() - 1) * pct / 100];

    let mut throughput = [0.0; 3];
    for (slot, in_flight) in throughput.iter_mut().zip(IN_FLIGHT) {
        let started = Instant::now();
        let tasks: Vec<_> = (0..in_flight)
            .map(|lane| {
                let call = call.clone();
                let share = calls / in_flight + usize::from(lane < calls % in_flight);
                tokio::spawn(async move {
                    for _ in 0..share {
                        call().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        *slot = calls as f64 / started.elapsed().as_secs_f64();
    }
    Figures { p50_us: percentile(50), p99_us: percentile(99), throughput }
}
