//! `pitboss serve` and `pitboss call` as a user runs them: the real binary,
//! real Python workers, gRPC over loopback, and signals to the host.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::alive;

const PITBOSS: &str = env!("CARGO_BIN_EXE_pitboss");

struct Served {
    child: Child,
    address: String,
    config: PathBuf,
    run_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(pool_settings: &str) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let address = free_address();
        let config = support::config(dir.path(), pool_settings);
        let original = std::fs::read_to_string(&config.source).unwrap();
        let with_address = original.replacen("[host]\n", &format!("[host]\napi_address = {address:?}\n"), 1);
        std::fs::write(&config.source, with_address).unwrap();
        let child = Command::new(PITBOSS)
            .args(["serve", "--config"])
            .arg(&config.source)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let served = Served { child, address, config: config.source, run_dir: dir.path().join("run"), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while served.call(&["pool", "noop"]).status.code() != Some(0) {
            assert!(Instant::now() < deadline, "pitboss serve did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        // The pool serves from its first worker; wait for all of them.
        while !text(&served.admin(&["status"]).stdout).lines().next().is_some_and(|line| {
            line.split(", ")
                .nth(1)
                .and_then(|ready| ready.strip_suffix(" ready"))
                .is_some_and(|n| n.split_once('/').is_some_and(|(ready, size)| ready == size))
        }) {
            assert!(Instant::now() < deadline, "the workers did not all start");
            std::thread::sleep(Duration::from_millis(100));
        }
        served
    }

    fn call(&self, args: &[&str]) -> Output {
        self.admin(&[&["call"], args].concat())
    }

    /// Runs `pitboss COMMAND --addr ADDRESS ARGS...`.
    fn admin(&self, command_and_args: &[&str]) -> Output {
        let (command, args) = command_and_args.split_first().unwrap();
        Command::new(PITBOSS).arg(command).args(["--addr", &self.address]).args(args).output().unwrap()
    }

    /// Runs `pitboss COMMAND... --config FILE`: the operator commands find
    /// the admin socket through the config.
    fn operator(&self, command_and_args: &[&str]) -> Output {
        Command::new(PITBOSS).args(command_and_args).arg("--config").arg(&self.config).output().unwrap()
    }

    fn worker_pids(&self) -> Vec<u32> {
        worker_pids(&self.run_dir)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn worker_pids(run_dir: &Path) -> Vec<u32> {
    std::fs::read_dir(run_dir.join("workers"))
        .map(|entries| entries.filter_map(|e| e.ok()?.path().file_stem()?.to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn call_prints_results_and_errors_with_the_documented_exit_codes() {
    let served = Served::start("size = 2");

    let ok = served.call(&["pool", "add", r#"{"a": 2, "b": 40}"#]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert_eq!(text(&ok.stdout), "42\n");

    let echo = served.call(&["pool", "echo", r#"{"name": "pitboss", "n": null}"#]);
    assert_eq!(text(&echo.stdout), "{\"name\":\"pitboss\",\"n\":null}\n");

    let raised = served.call(&["pool", "fail", r#"{"message": "nope"}"#]);
    assert_eq!(raised.status.code(), Some(1));
    let stderr = text(&raised.stderr);
    assert!(stderr.contains("error: exception: ValueError: nope"), "{stderr}");
    assert!(stderr.contains("Traceback"), "the traceback is shown: {stderr}");

    let unknown = served.call(&["pool", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("error: unknown_tool:"), "{}", text(&unknown.stderr));

    let unknown_pool = served.call(&["nowhere", "echo"]);
    assert_eq!(unknown_pool.status.code(), Some(1));
    assert!(text(&unknown_pool.stderr).contains("error: unknown_pool: no pool named `nowhere`"));

    let bad_json = served.call(&["pool", "echo", "{oops"]);
    assert_eq!(bad_json.status.code(), Some(2), "bad usage");
    assert!(text(&bad_json.stderr).contains("not valid JSON"), "{}", text(&bad_json.stderr));

    let timeout = served.call(&["--timeout", "300ms", "pool", "sleep", r#"{"seconds": 5}"#]);
    assert_eq!(timeout.status.code(), Some(1));
    assert!(text(&timeout.stderr).contains("error: timeout:"), "{}", text(&timeout.stderr));

    let after = served.call(&["pool", "add", r#"{"a": 1, "b": 1}"#]);
    assert_eq!(text(&after.stdout), "2\n", "still serving after all that: {}", text(&after.stderr));
}

#[test]
fn status_shows_the_workers_and_recycle_drains_one_over_the_admin_api() {
    let served = Served::start("size = 2");
    let status = text(&served.admin(&["status"]).stdout);
    assert!(status.starts_with("pool pool  process × 1 thread(s), 2/2 ready, 0 starting, 0 draining\n"), "{status}");
    assert!(status.contains("thread_safe true"), "{status}");
    let worker_lines: Vec<&str> = status.lines().filter(|line| line.contains(" ready ")).collect();
    assert_eq!(worker_lines.len(), 2, "{status}");
    let first: u32 = worker_lines[0].split_whitespace().next().unwrap().parse().unwrap();

    let recycled = served.operator(&["recycle", "pool", &first.to_string()]);
    assert_eq!(recycled.status.code(), Some(0), "{}", text(&recycled.stderr));
    assert!(text(&recycled.stdout).contains("is draining"), "{}", text(&recycled.stdout));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = text(&served.admin(&["status"]).stdout);
        if status.contains("recycles: manual 1") && status.contains("2/2 ready") && !status.contains(" draining ") {
            break;
        }
        assert!(Instant::now() < deadline, "the recycle did not complete: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let unknown = served.operator(&["recycle", "pool", "99"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("pool `pool` has no worker 99"), "{}", text(&unknown.stderr));
    let after = served.call(&["pool", "add", r#"{"a": 1, "b": 1}"#]);
    assert_eq!(text(&after.stdout), "2\n");
}

#[test]
fn call_without_a_host_says_where_it_looked() {
    let address = free_address();
    let output = Command::new(PITBOSS).args(["call", "--addr", &address, "pool", "echo"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains(&format!("cannot reach pitboss at {address}")), "{}", text(&output.stderr));
}

#[test]
fn sigterm_stops_the_host_and_every_worker() {
    let mut served = Served::start("size = 2");
    let pids = served.worker_pids();
    assert_eq!(pids.len(), 2);
    kill(Pid::from_raw(served.child.id() as i32), Signal::SIGTERM).unwrap();
    let status = served.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a clean exit");
    for pid in pids {
        assert!(!alive(pid), "worker {pid} outlived the host");
    }
}

#[test]
fn a_host_killed_with_sigkill_leaves_no_worker_behind() {
    let mut served = Served::start("size = 3");
    let pids = served.worker_pids();
    assert_eq!(pids.len(), 3);
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while pids.iter().any(|&pid| alive(pid)) {
        assert!(Instant::now() < deadline, "workers still alive 3 s after the host died: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_refuses_a_bad_config_with_the_file_and_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[[pool]]\nname = \"p\"\nadapter = \"m\"\nsise = 2\n").unwrap();
    let output = Command::new(PITBOSS).args(["serve", "--config"]).arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains(&path.display().to_string()) && stderr.contains("did you mean `size`?"), "{stderr}");
}

#[test]
fn admin_methods_are_not_served_on_the_callers_address() {
    let served = Served::start("size = 1");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", served.address))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        let mut answers = Vec::new();
        for method in ["RecycleWorker", "ListPolicies", "SwapPolicy", "RollbackPolicy"] {
            grpc.ready().await.unwrap();
            let path = format!("/pitboss.v1.Admin/{method}").parse().unwrap();
            let codec = tonic_prost::ProstCodec::<(), ()>::default();
            answers.push(grpc.unary(tonic::Request::new(()), path, codec).await.unwrap_err().code());
        }
        answers
    });
    assert_eq!(status, [tonic::Code::Unimplemented; 4]);

    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let socket = std::fs::metadata(served.run_dir.join("admin.sock")).unwrap();
    assert!(socket.file_type().is_socket());
    assert_eq!(socket.permissions().mode() & 0o777, 0o600, "owner-only");
}

#[test]
fn policy_swap_list_and_rollback_through_the_admin_socket() {
    let served = Served::start("size = 2");
    for n in 0..20 {
        let ok = served.call(&["pool", "add", &format!(r#"{{"a": {n}, "b": 1}}"#)]);
        assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    }
    let round_robin = support::root().join("target/plugins/wasm32-wasip2/plugin/pitboss_plugin_round_robin.wasm");
    let round_robin = round_robin.to_str().unwrap();

    let dry = served.operator(&["policy", "swap", "pool", round_robin, "--dry-run"]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry.stderr));
    let report = text(&dry.stdout);
    assert!(report.contains("replay: ") && report.contains("differ from the live policy's"), "{report}");
    assert!(report.contains("dry run: every check passed"), "{report}");

    let wrong = served.operator(&["policy", "swap", "pool", round_robin, "--sha256", &"ab".repeat(32)]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(text(&wrong.stderr).contains("refused at load: its sha256 is"), "{}", text(&wrong.stderr));

    let swapped = served.operator(&["policy", "swap", "pool", round_robin]);
    assert_eq!(swapped.status.code(), Some(0), "{}", text(&swapped.stderr));
    assert!(text(&swapped.stdout).contains("replacing builtin:least-loaded"), "{}", text(&swapped.stdout));
    let call = served.call(&["pool", "add", r#"{"a": 1, "b": 1}"#]);
    assert_eq!(text(&call.stdout), "2\n");

    let list = text(&served.operator(&["policy", "list"]).stdout);
    assert!(list.starts_with(&format!("pool pool  router {round_robin} (pitboss-plugin-round-robin@")), "{list}");
    assert!(list.contains("  before: builtin:least-loaded"), "{list}");
    assert!(list.contains("rollback: possible"), "{list}");

    let rolled = served.operator(&["policy", "rollback", "pool"]);
    assert_eq!(rolled.status.code(), Some(0), "{}", text(&rolled.stderr));
    assert!(
        text(&rolled.stdout).contains("the router of pool `pool` is builtin:least-loaded again"),
        "{}",
        text(&rolled.stdout)
    );
    let again = served.operator(&["policy", "rollback", "pool"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("no earlier routing policy"), "{}", text(&again.stderr));

    let pool_rules = support::root().join("target/plugins/wasm32-wasip2/plugin/pitboss_plugin_pool_rules.wasm");
    let pool_rules = pool_rules.to_str().unwrap();
    let misnamed = served.operator(&["policy", "swap", "pool", pool_rules, "--kind", "config-rules"]);
    assert_eq!(misnamed.status.code(), Some(1));
    assert!(
        text(&misnamed.stderr).contains("config rules are host-wide: write `-` for POOL"),
        "{}",
        text(&misnamed.stderr)
    );
    let rules = served.operator(&["policy", "swap", "-", pool_rules, "--kind", "config-rules"]);
    assert_eq!(rules.status.code(), Some(0), "{}", text(&rules.stderr));
    assert!(text(&rules.stdout).contains("live as the host's config rules"), "{}", text(&rules.stdout));
    let list = text(&served.operator(&["policy", "list"]).stdout);
    assert!(list.contains(&format!("host  config rules {pool_rules} (pitboss-plugin-pool-rules@")), "{list}");
    assert!(list.contains("host  compat rules builtin:compat-rules"), "{list}");
}
