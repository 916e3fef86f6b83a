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
        Served::launch("", pool_settings, |serve| serve.stderr(Stdio::inherit()))
    }

    /// [`Served::start`] with JSON logs, each call's log line on, and the
    /// host's stderr sent to `log`.
    fn start_logging_json(pool_settings: &str, log: Stdio) -> Served {
        Served::launch("", pool_settings, |serve| {
            serve.arg("--log-format=json").env("PITBOSS_LOG", "info,pitboss::pool=debug").stderr(log)
        })
    }

    /// Starts `pitboss [OPTIONS] serve` with `host_settings` added to
    /// `[host]` (`options` adds the options and the environment) and waits
    /// for every worker.
    fn launch(host_settings: &str, pool_settings: &str, options: impl FnOnce(&mut Command) -> &mut Command) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let address = free_address();
        let config = support::config_file_with_host(
            dir.path(),
            "adapter:Example",
            &format!("api_address = {address:?}\n{host_settings}"),
            pool_settings,
        );
        let mut serve = Command::new(PITBOSS);
        options(&mut serve);
        let child = serve.args(["serve", "--config"]).arg(&config).stdout(Stdio::null()).spawn().unwrap();
        let served = Served { child, address, config, run_dir: dir.path().join("run"), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while served.call(&["pool", "noop"]).status.code() != Some(0) {
            assert!(Instant::now() < deadline, "pitboss serve did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        // The pool serves from its first worker; wait for all of them.
        while !served.status_json()["pools"][0].as_object().is_some_and(|pool| pool["ready"] == pool["size"]) {
            assert!(Instant::now() < deadline, "the workers did not all start");
            std::thread::sleep(Duration::from_millis(100));
        }
        served
    }

    fn call(&self, args: &[&str]) -> Output {
        self.admin(&[&["call"], args].concat())
    }

    /// `pitboss call ARGS...` left running, its output piped.
    fn spawn_call(&self, args: &[&str]) -> Child {
        Command::new(PITBOSS)
            .args(["call", "--addr", &self.address])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
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

    /// `pitboss status --json`, parsed.
    fn status_json(&self) -> serde_json::Value {
        let output = self.admin(&["status", "--json"]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("{err}: {}", text(&output.stdout)))
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
    let status = text(&served.admin(&["status", "--workers"]).stdout);
    let lines: Vec<&str> = status.lines().collect();
    assert!(lines[0].starts_with("POOL") && lines[0].contains("UTILISATION"), "{status}");
    assert!(
        lines[1].starts_with("pool ") && lines[1].contains("process×1") && lines[1].contains("2/2 ready"),
        "{status}"
    );
    assert!(lines[1].contains("░░░░░░░░░░   0%"), "an empty utilisation bar: {status}");
    let worker_header = lines.iter().position(|line| line.starts_with("POOL  WORKER")).expect("a worker table");
    let worker_rows: Vec<&str> =
        lines[worker_header + 1..].iter().copied().filter(|l| l.starts_with("pool ")).collect();
    assert_eq!(worker_rows.len(), 2, "{status}");
    assert!(worker_rows.iter().all(|row| row.contains(" MiB ")), "RSS in human units: {status}");

    let first = served.status_json()["pools"][0]["workers"][0]["id"].as_u64().unwrap();
    let recycled = served.operator(&["recycle", "pool", &first.to_string()]);
    assert_eq!(recycled.status.code(), Some(0), "{}", text(&recycled.stderr));
    assert!(text(&recycled.stdout).contains("is draining"), "{}", text(&recycled.stdout));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pool = &served.status_json()["pools"][0];
        if pool["recycles"]["manual"] == 1 && pool["ready"] == 2 && pool["draining"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the recycle did not complete: {pool}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let unknown = served.operator(&["recycle", "pool", "99"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("pool `pool` has no worker 99"), "{}", text(&unknown.stderr));
    let after = served.call(&["pool", "add", r#"{"a": 1, "b": 1}"#]);
    assert_eq!(text(&after.stdout), "2\n");
}

#[test]
fn status_json_has_the_documented_shape_and_real_figures() {
    let served = Served::start("size = 2");
    served.call(&["pool", "fail", r#"{"message": "nope"}"#]);
    let slow = served.spawn_call(&["pool", "sleep", r#"{"seconds": 3}"#]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = served.status_json();
        if status["pools"][0]["in_flight"] == 1 {
            break status;
        }
        assert!(Instant::now() < deadline, "the slow call never showed in flight: {status}");
        std::thread::sleep(Duration::from_millis(50));
    };

    assert_same_shape("", &documented_status_example(), &status);
    let pool = &status["pools"][0];
    assert_eq!(pool["utilisation"], 0.5, "{pool}");
    assert_eq!(pool["errors"]["exception"], 1, "{pool}");
    assert_eq!(pool["failed"], 1, "{pool}");
    let pids = served.worker_pids();
    for worker in pool["workers"].as_array().unwrap() {
        let pid = worker["pid"].as_u64().unwrap() as u32;
        assert!(pids.contains(&pid), "worker pid {pid} is one of the pool's processes {pids:?}");
        let rss = worker["rss_bytes"].as_u64().unwrap();
        assert!(rss > 5 << 20, "a Python process's RSS, not zero or the host's: {rss}");
    }
    assert_eq!(slow.wait_with_output().unwrap().status.code(), Some(0));

    let one = served.admin(&["status", "--json", "--pool", "nowhere"]);
    assert_eq!(one.status.code(), Some(1));
    assert!(text(&one.stderr).contains("no pool named `nowhere`"), "{}", text(&one.stderr));
}

/// The example document in docs/status.md.
fn documented_status_example() -> serde_json::Value {
    let doc = std::fs::read_to_string(support::root().join("docs/status.md")).unwrap();
    let start = doc.find("```json\n").expect("docs/status.md has a ```json example") + "```json\n".len();
    let end = start + doc[start..].find("```").unwrap();
    serde_json::from_str(&doc[start..end]).unwrap_or_else(|err| panic!("the example in docs/status.md: {err}"))
}

/// `actual` has the keys and value types of `documented`, recursively:
/// every element of an array is shaped like the example's first; a `null`
/// in the example stands for "a string or null"; `errors` maps kinds
/// (which vary) to counts.
fn assert_same_shape(path: &str, documented: &serde_json::Value, actual: &serde_json::Value) {
    use serde_json::Value;
    match (documented, actual) {
        (Value::Object(_), Value::Object(counts)) if path.ends_with(".errors") => {
            assert!(counts.values().all(Value::is_u64), "{path}: counts by kind, got {actual}");
        }
        (Value::Object(doc), Value::Object(got)) => {
            let doc_keys: Vec<&String> = doc.keys().collect();
            let got_keys: Vec<&String> = got.keys().collect();
            assert_eq!(got_keys, doc_keys, "{path}: the keys docs/status.md documents");
            for (key, value) in doc {
                assert_same_shape(&format!("{path}.{key}"), value, &got[key]);
            }
        }
        (Value::Array(doc), Value::Array(got)) => {
            let example = doc.first().unwrap_or_else(|| panic!("{path}: the example needs one element"));
            for (i, value) in got.iter().enumerate() {
                assert_same_shape(&format!("{path}[{i}]"), example, value);
            }
        }
        (Value::Null, Value::Null | Value::String(_)) => {}
        (Value::Number(doc), Value::Number(got)) => {
            assert_eq!(doc.is_f64(), got.is_f64(), "{path}: {documented} and {actual} differ in kind of number");
        }
        _ => assert_eq!(
            std::mem::discriminant(documented),
            std::mem::discriminant(actual),
            "{path}: documented {documented}, got {actual}"
        ),
    }
}

#[test]
fn call_stream_prints_each_chunk_in_order_with_the_request_id() {
    let served = Served::start("size = 1");
    let streamed = served.call(&["--stream", "--request-id", "req-7", "pool", "ticks", r#"{"n": 5}"#]);
    assert_eq!(streamed.status.code(), Some(0), "{}", text(&streamed.stderr));
    let expected: String = (0..5).map(|i| format!("{{\"tick\":{i},\"request_id\":\"req-7\"}}\n")).collect();
    assert_eq!(text(&streamed.stdout), expected);

    let not_a_generator = served.call(&["--stream", "pool", "add", r#"{"a": 1, "b": 2}"#]);
    assert_eq!(text(&not_a_generator.stdout), "3\n", "a plain tool streams its one answer");

    let failed = served.call(&["--request-id", "req-8", "pool", "fail", r#"{"message": "nope"}"#]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(text(&failed.stderr).contains("request id: req-8"), "{}", text(&failed.stderr));
}

#[test]
fn json_logs_carry_the_request_id_and_the_worker_of_each_line() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let served = Served::start_logging_json("size = 1", Stdio::from(log.reopen().unwrap()));
    let answered = served.call(&["--request-id", "req-42", "pool", "log", r#"{"message": "hello from python"}"#]);
    assert_eq!(answered.status.code(), Some(0), "{}", text(&answered.stderr));

    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(log.path())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not a JSON log line ({err}): {line}")))
            .collect();
        let has = |message: &str| lines.iter().any(|line| line["message"] == message);
        if has("hello from python") && lines.iter().any(|line| line["tool"] == "log") {
            break lines;
        }
        assert!(Instant::now() < deadline, "the log lacks the call or the worker's output: {lines:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let answered = lines.iter().find(|line| line["tool"] == "log").unwrap();
    assert_eq!(answered["message"], "call answered", "{answered}");
    assert_eq!(answered["request_id"], "req-42", "{answered}");
    assert_eq!(answered["pool"], "pool", "{answered}");
    let printed = lines.iter().find(|line| line["message"] == "hello from python").unwrap();
    assert_eq!(printed["pool"], "pool", "{printed}");
    assert_eq!(printed["stream"], "stderr", "{printed}");
    assert!(printed["worker"].is_u64(), "{printed}");
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
fn a_tcp_admin_address_is_opt_in_warned_about_and_found_by_the_operator_commands() {
    let admin = format!("tcp://{}", free_address());
    let dir = tempfile::tempdir().unwrap();
    let without_opt_in = support::config_file_with_host(
        dir.path(),
        "adapter:Example",
        &format!("admin_address = {admin:?}"),
        "size = 1",
    );
    let refused = Command::new(PITBOSS).args(["serve", "--config"]).arg(&without_opt_in).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("host.admin_address") && stderr.contains("set `admin_allow_tcp = true`"), "{stderr}");

    let log = tempfile::NamedTempFile::new().unwrap();
    let host_settings = format!("admin_address = {admin:?}\nadmin_allow_tcp = true");
    let served = Served::launch(&host_settings, "size = 1", |serve| serve.stderr(log.reopen().unwrap()));
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert!(logged.contains("the Admin service listens on TCP"), "a warning at start: {logged}");
    assert!(!served.run_dir.join("admin.sock").exists(), "no socket besides the TCP address");

    let worker = served.status_json()["pools"][0]["workers"][0]["id"].to_string();
    let by_flag = Command::new(PITBOSS).args(["recycle", "--admin-socket", &admin, "pool", &worker]).output().unwrap();
    assert_eq!(by_flag.status.code(), Some(0), "{}", text(&by_flag.stderr));
    let by_config = served.operator(&["policy", "list"]);
    assert_eq!(by_config.status.code(), Some(0), "the config names the TCP address: {}", text(&by_config.stderr));
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
