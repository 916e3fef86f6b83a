"""Real worker processes against a test-owned listening socket."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time

import pytest

import pitboss_worker
from pitboss_worker import protocol as P
from worker_harness import (
    TIMEOUT,
    Answer,
    run_every_call_path,
    run_every_stream_path,
    wait_until,
    worker_command,
    worker_env,
)

SAMPLE_TOOLS = sorted(
    [
        "add", "echo", "other-name", "setup_count", "reverse", "as_bytearray", "as_memoryview",
        "nothing", "numbers", "fail_custom", "type_error_inside", "unencodable", "spin", "burn",
        "gil_enabled", "sleep", "sleep_marked", "modules", "module_files", "pid", "exit_worker",
        "static_tool", "class-tool",
    ]
)


def test_hello_facts(host):
    hello = host.start_ready()
    assert hello["protocol"] == 3
    assert hello["pid"] == host.proc.pid
    assert hello["python_version"] == "%d.%d.%d" % sys.version_info[:3]
    assert hello["implementation"] == sys.implementation.name
    assert hello["free_threaded_build"] is (sysconfig.get_config_var("Py_GIL_DISABLED") == 1)
    expected_gil = sys._is_gil_enabled() if hasattr(sys, "_is_gil_enabled") else True
    assert hello["gil_enabled"] is expected_gil
    assert hello["tools"] == SAMPLE_TOOLS
    assert hello["adapter"] == "sample_tools:Sample"
    assert hello["threads"] == 1
    assert hello["package_version"] == pitboss_worker.__version__ == "0.1.0"
    assert hello["thread_safe"] is None, "Sample declares nothing"
    assert hello["unsafe_modules"] == [], "checks are off"
    assert (hello["streaming_tools"], hello["idempotent_tools"]) == ([], []), "Sample has neither"
    assert list(hello) == [
        "protocol", "pid", "python_version", "implementation", "free_threaded_build",
        "gil_enabled", "tools", "adapter", "threads", "package_version", "thread_safe", "unsafe_modules",
        "streaming_tools", "idempotent_tools",
    ]


def test_calls(host):
    host.start_ready()
    assert host.roundtrip(1, "add", {"a": 2, "b": 40}).payload == b"42"
    assert host.roundtrip(2, "echo", {"t": "\u00e9\u2603"}).value == {"t": "\u00e9\u2603"}
    assert host.roundtrip(3, "nothing").payload == b"null"
    assert host.roundtrip(4, "setup_count").value == 1
    ans = host.roundtrip(5, "reverse", raw=b"\x01\x02\x03")
    assert (ans.content_type, ans.payload) == (P.CONTENT_RAW, b"\x03\x02\x01")
    assert host.roundtrip(2 ** 64 - 1, "pid").value == host.proc.pid

    assert host.roundtrip(6, "nope").error["kind"] == "unknown_tool"
    assert host.roundtrip(7, "add", {"a": 1}).error["kind"] == "bad_arguments"
    err = host.roundtrip(8, "fail_custom", {"message": "m"}).error
    assert (err["kind"], err["type"], err["message"]) == ("exception", "sample_tools.CustomError", "m")
    assert "in fail_custom" in err["traceback"]
    assert host.roundtrip(9, "type_error_inside", {"x": 1}).error["kind"] == "exception"
    assert host.roundtrip(10, "add", raw=b"{bad").error["kind"] == "bad_arguments"
    host.send_call_frame(P.CALL, 11, P.encode_call_body("add", P.CONTENT_JSON, b"{bad"))
    assert host.answer().error["kind"] == "bad_payload"
    assert host.roundtrip(12, "nothing", content_type=5).error["kind"] == "bad_payload"
    assert host.roundtrip(13, "unencodable").error["kind"] == "bad_result"
    # still healthy after all that
    assert host.roundtrip(14, "add", {"a": 1, "b": 1}).value == 2


def test_pipelined_calls_answer_in_order(host):
    host.start_ready()
    for i in range(1, 51):
        host.call(i, "add", {"a": i, "b": 1})
    for i in range(1, 51):
        ans = host.answer()
        assert (ans.request_id, ans.value) == (i, i + 1)


def test_example_adapter(host):
    hello = host.start_ready("adapter:Example")
    assert hello["tools"] == ["add", "echo", "fail", "fib", "log", "lookup", "matmul", "noop", "pid", "sleep", "ticks"]
    assert host.roundtrip(1, "echo", {"x": [1, None]}).value == {"x": [1, None]}
    assert host.roundtrip(2, "add", {"a": 1, "b": 2}).value == 3
    assert host.roundtrip(3, "sleep", {"seconds": 0.01}).value == 0.01
    err = host.roundtrip(4, "fail").error
    assert (err["kind"], err["type"], err["message"]) == ("exception", "ValueError", "boom")
    assert host.roundtrip(5, "fail", {"message": "m"}).error["message"] == "m"
    assert host.roundtrip(6, "fib", {"n": 15}).value == 610
    assert host.roundtrip(7, "noop").payload == b"null"
    assert host.roundtrip(8, "pid").value == host.proc.pid
    ans = host.roundtrip(9, "matmul", {"n": 4})
    if importlib.util.find_spec("numpy") is not None:
        assert ans.value["n"] == 4
    else:
        assert ans.error["type"] == "RuntimeError" and "pip install numpy" in ans.error["message"]


def test_module_spec(host):
    hello = host.start_ready("sample_tools")
    assert hello["tools"] == ["module-echo", "module_add"]
    assert hello["adapter"] == "sample_tools"
    assert host.roundtrip(1, "module-echo", {"k": 1}).value == {"k": 1}


def test_ping_answered_while_a_cpu_bound_tool_runs(host):
    host.start_ready()
    host.call(1, "spin", {"seconds": 1.5})
    time.sleep(0.2)  # the tool is running on the main thread by now
    sent = time.monotonic()
    host.ping(77)
    latency = time.monotonic() - sent
    assert latency < 0.5, "PONG took %.3f s" % latency
    ans = host.answer()
    assert ans.request_id == 1 and ans.value > 0
    assert time.monotonic() - sent > 1.0, "the RESULT came after the PONG"


def _start_long_call(host, request_id=1, seconds=1.0):
    marker = os.path.join(host.dir, "started-%d" % request_id)
    host.call(request_id, "sleep_marked", {"path": marker, "seconds": seconds})
    assert wait_until(lambda: os.path.exists(marker)), "the call never started"


def test_sigterm_mid_call_finishes_the_call_and_exits_0(host):
    host.start_ready()
    _start_long_call(host, 1, 1.0)
    host.call(2, "add", {"a": 1, "b": 2})  # received (in the worker's socket buffer), not started
    host.proc.send_signal(signal.SIGTERM)
    ans = host.answer()
    assert (ans.request_id, ans.error["kind"]) == (2, "shutting_down"), "refused at once, before call 1 ends"
    assert "signal 15" in ans.error["message"]
    with pytest.raises(BrokenPipeError):
        host.call(4, "add", {"a": 1, "b": 2})  # the worker no longer reads its call connection
    host.ping(5)  # still answered while the call finishes
    ans = host.answer()
    assert (ans.request_id, ans.value) == (1, 1.0)
    host.read_eof()
    assert host.wait_exit() == 0


def test_sigterm_when_idle_exits_0(host):
    host.start_ready()
    started = time.monotonic()
    host.proc.send_signal(signal.SIGTERM)
    assert host.wait_exit() == 0
    assert time.monotonic() - started < 2.0


def test_shutdown_frame(host):
    host.start_ready()
    _start_long_call(host, 1, 0.8)
    host.call(2, "nothing")
    host.call(3, "nothing")
    host.send_control(P.SHUTDOWN, 0)
    refused = [host.answer(), host.answer()]
    assert [(a.request_id, a.error["kind"]) for a in refused] == [(2, "shutting_down"), (3, "shutting_down")]
    assert "SHUTDOWN frame" in refused[0].error["message"]
    host.send_control(P.SHUTDOWN, 0)  # a second one changes nothing
    host.ping(9)
    ans = host.answer()
    assert (ans.request_id, ans.value) == (1, 0.8)
    host.read_eof()
    assert host.wait_exit() == 0


def test_shutdown_when_idle_wakes_the_reading_executors(host):
    host.start_ready(extra=["--threads", "3"])
    assert host.roundtrip(1, "add", {"a": 1, "b": 2}).value == 3
    started = time.monotonic()
    host.send_control(P.SHUTDOWN, 0)
    host.read_eof()
    assert host.wait_exit() == 0
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("which", ["control", "calls"])
def test_host_closing_a_connection_ends_an_idle_worker(host, which):
    host.start_ready()
    host.close_connection(which)
    assert host.wait_exit(5) == 0


@pytest.mark.parametrize("which", ["control", "calls"])
def test_host_closing_a_connection_ends_a_busy_worker(host, which):
    host.start_ready()
    _start_long_call(host, 1, 30)
    host.close_connection(which)
    assert host.wait_exit(5) == 0


@pytest.mark.parametrize(
    "adapter,expected",
    [
        ("no_such_module_pbw", "ModuleNotFoundError"),
        ("broken_import", "RuntimeError: import exploded"),
        ("broken_setup:Broken", "RuntimeError: setup exploded"),
        ("no_tools:Empty", "defines no @tool methods"),
        ("sample_tools:Missing", "no attribute"),
    ],
)
def test_adapter_failure_exits_3(host, adapter, expected):
    host.start(adapter)
    host.accept()  # it opens both connections first, then loads the adapter
    host.read_eof()  # no HELLO
    assert host.wait_exit() == 3
    stderr = host.stderr()
    assert expected in stderr
    if "Error" in expected:
        assert "Traceback (most recent call last)" in stderr
        assert stderr.rstrip().splitlines()[-1].startswith(expected.split(":")[0])


def test_unknown_cli_flags_are_ignored(host):
    hello = host.start_ready(extra=["--future-flag", "7", "--another-one"])
    assert hello["threads"] == 1
    assert host.roundtrip(1, "add", {"a": 1, "b": 1}).value == 2
    warnings = [line for line in host.stderr().splitlines() if "unknown arguments" in line]
    assert len(warnings) == 1
    assert "--future-flag 7 --another-one" in warnings[0]


def test_cannot_connect_exits_5(host):
    missing = os.path.join(host.dir, "nobody-listens.sock")
    host.start(command=worker_command("sample_tools:Sample", missing))
    assert host.wait_exit() == 5
    assert "cannot connect" in host.stderr()


@pytest.mark.parametrize(
    "args,complaint",
    [
        (["--adapter", "x"], "--socket"),
        (["--adapter", "x", "--socket", "s", "--threads", "0"], "--threads"),
        (["--adapter", "x", "--socket", "s", "--call-spin-us", "-1"], "--call-spin-us"),
        (["--adapter", "x", "--socket", "s", "--session-idle-s", "0"], "--session-idle-s"),
        (["--adapter", "x", "--socket", "s", "--session-idle-s", "1.5"], "--session-idle-s"),
    ],
)
def test_usage_error_exits_2(host, args, complaint):
    host.start(command=[sys.executable, "-m", "pitboss_worker"] + args)
    assert host.wait_exit() == 2
    assert complaint in host.stderr()


@pytest.mark.parametrize("spin", ["0", "5000"])
def test_calls_in_a_row_are_answered_with_or_without_polling(host, spin):
    host.start_ready(extra=["--call-spin-us", spin])
    for request_id in range(1, 6):
        answer = host.roundtrip(request_id, "echo", {"n": request_id})
        assert (answer.request_id, answer.value) == (request_id, {"n": request_id})
    # An idle gap longer than the polling: the worker sleeps, then wakes.
    time.sleep(0.05)
    assert host.roundtrip(6, "echo", {"n": 6}).value == {"n": 6}


def test_the_adapter_loads_before_any_worker_thread_starts(host):
    # On a free-threaded 3.13 only what exists when the first thread starts
    # is immortalized; the adapter's functions must be among it, or every
    # call pays for contended reference counts.
    host.start_ready(adapter="import_probe:Probe")
    assert host.roundtrip(1, "threads_before_serving").value == [1, 1]


def _control_error(host):
    frame = host.read()
    assert frame.kind == P.ERROR, "expected ERROR on the control connection, got %s" % P.kind_name(frame.kind)
    return Answer(frame)


def test_unexpected_frames_on_the_control_connection(host):
    host.start_ready()
    host.send_control(0x42, 9, b"whatever")
    ans = _control_error(host)
    assert (ans.request_id, ans.error["kind"]) == (9, "protocol")
    assert "0x42" in ans.error["message"] and "control connection" in ans.error["message"]
    host.send_control(P.RESULT, 10, b"\x00{}")  # a worker-to-host kind
    assert _control_error(host).error["kind"] == "protocol"
    host.send_control(P.CALL, 11, P.encode_call_body("add", P.CONTENT_JSON, b'{"a":1,"b":2}'))
    ans = _control_error(host)
    assert (ans.request_id, ans.error["kind"]) == (11, "protocol")
    assert "call connection" in ans.error["message"], "the message says where CALLs go"
    host.send_control(P.CANCEL, 12)  # remembered, not answered: nothing comes back for it
    host.send_control(P.CREDIT, 15, P.encode_credit_body(8))  # no such stream: ignored
    host.ping(13)
    assert host.roundtrip(14, "add", {"a": 1, "b": 2}).value == 3


def test_unexpected_frames_on_the_call_connection(host):
    host.start_ready()
    host.send_call_frame(0x42, 9, b"whatever")
    ans = host.answer()
    assert (ans.request_id, ans.error["kind"]) == (9, "protocol")
    assert "0x42" in ans.error["message"] and "call connection" in ans.error["message"]
    for kind in (P.PING, P.SHUTDOWN, P.CANCEL, P.CREDIT):  # control frames do not count here
        host.send_call_frame(kind, 10, P.encode_credit_body(1) if kind == P.CREDIT else b"")
        ans = host.answer()
        assert (ans.request_id, ans.error["kind"]) == (10, "protocol")
    for kind in (P.STREAM_CHUNK, P.STREAM_END, P.RESULT):  # worker-to-host kinds
        host.send_call_frame(kind, 10, b"\x00{}" if kind != P.STREAM_END else b"")
        ans = host.answer()
        assert (ans.request_id, ans.error["kind"]) == (10, "protocol")
    host.send_call_frame(P.CALL, 11, b"\x00")  # malformed CALL body
    ans = host.answer()
    assert (ans.request_id, ans.error["kind"]) == (11, "protocol")
    assert host.roundtrip(12, "add", {"a": 1, "b": 2}).value == 3


@pytest.mark.parametrize("which", ["control", "calls"])
def test_oversized_frame_exits_4(host, which):
    host.start_ready()
    getattr(host, which).sendall((P.MAX_FRAME_LENGTH + 1).to_bytes(4, "big") + bytes([P.CALL]))
    assert host.wait_exit() == 4
    assert "exceeds the limit" in host.stderr()


def test_tool_raising_system_exit_reports_then_exits(host):
    host.start_ready()
    err = host.roundtrip(1, "exit_worker", {"code": 0}).error
    assert (err["kind"], err["type"]) == ("exception", "SystemExit")
    assert host.wait_exit() == 1


def test_threads_serve_calls_concurrently(host):
    hello = host.start_ready(extra=["--threads", "2"])
    assert hello["threads"] == 2
    started = time.monotonic()
    host.call(1, "sleep", {"seconds": 0.6})
    host.call(2, "sleep", {"seconds": 0.6})
    ids = {host.answer().request_id, host.answer().request_id}
    assert ids == {1, 2}
    assert time.monotonic() - started < 1.1


def test_threads_ping_answered_while_every_thread_runs_a_call(host):
    """The protocol thread answers on the control connection even while all N
    executors run CPU-bound calls."""
    host.start_ready(extra=["--threads", "2"])
    host.call(1, "spin", {"seconds": 1.0})
    host.call(2, "spin", {"seconds": 1.0})
    time.sleep(0.2)
    sent = time.monotonic()
    host.ping(77)
    latency = time.monotonic() - sent
    assert latency < 0.5, "PONG took %.3f s" % latency
    assert {host.answer().request_id, host.answer().request_id} == {1, 2}


def _markers(host, ids):
    return [os.path.join(host.dir, "started-%d" % i) for i in ids]


def test_threads_run_at_most_n_calls_and_then_the_queued_ones(host):
    host.start_ready(extra=["--threads", "2"])
    m1, m2, m3 = _markers(host, (1, 2, 3))
    for i, m in zip((1, 2, 3), (m1, m2, m3)):
        host.call(i, "sleep_marked", {"path": m, "seconds": 0.6})
    assert wait_until(lambda: os.path.exists(m1) and os.path.exists(m2)), "calls 1 and 2 never started"
    assert not os.path.exists(m3), "a third call started beside two with --threads 2"
    answers = {}
    for _ in range(3):
        ans = host.answer()
        answers[ans.request_id] = ans.value
    assert answers == {1: 0.6, 2: 0.6, 3: 0.6}


def test_threads_shutdown_refuses_queued_and_finishes_running(host):
    host.start_ready(extra=["--threads", "2"])
    m1, m2 = _markers(host, (1, 2))
    host.call(1, "sleep_marked", {"path": m1, "seconds": 0.8})
    host.call(2, "sleep_marked", {"path": m2, "seconds": 0.8})
    assert wait_until(lambda: os.path.exists(m1) and os.path.exists(m2)), "calls 1 and 2 never started"
    host.call(3, "add", {"a": 1, "b": 2})  # received, not started: two calls run
    host.send_control(P.SHUTDOWN, 0)
    ans = host.answer()
    assert (ans.request_id, ans.error["kind"]) == (3, "shutting_down")
    host.ping(5)
    answers = {}
    for _ in range(2):
        ans = host.answer()
        answers[ans.request_id] = ans.value
    assert answers == {1: 0.8, 2: 0.8}
    host.read_eof()
    assert host.wait_exit() == 0


def test_pipelined_calls_and_pings(host):
    """One call at a time, answers in order, each PING answered."""
    host.start_ready()
    for i in range(1, 41):
        host.call(i, "add", {"a": i, "b": 1})
        host.send_control(P.PING, 1000 + i)
    results = [(a.request_id, a.value) for a in (host.answer() for _ in range(40))]
    pongs = [host.read() for _ in range(40)]
    assert results == [(i, i + 1) for i in range(1, 41)]
    assert [(f.kind, f.request_id) for f in pongs] == [(P.PONG, 1000 + i) for i in range(1, 41)]


def test_threads_pipelined_calls_all_answered_once(host):
    """N executors take turns reading the call connection: every call is
    read by exactly one of them and answered exactly once."""
    host.start_ready(extra=["--threads", "4"])
    for i in range(1, 201):
        host.call(i, "add", {"a": i, "b": 1})
    answers = [host.answer() for _ in range(200)]
    assert sorted((a.request_id, a.value) for a in answers) == [(i, i + 1) for i in range(1, 201)]
    host.ping(1)


@pytest.mark.parametrize(
    "body,fragment",
    [
        (b"\x00\x03add\x00", "too short for a 3-byte tool name"),  # a version-2 CALL body: no flags
        (b"\x00\x03add\x00\x00\x05ab", "too short for a 5-byte trace id"),
        (b"\x00\x03add\x00\x00\x00\x00\x09se", "too short for a 9-byte session key"),
        (b"\x00\x03add\x00\x00\x01\xff\x00\x00{}", "trace id is not valid UTF-8"),
        (b"\x00\x03add\x00\x00\x00\x00\x01\xff{}", "session key is not valid UTF-8"),
        (b"\x00\x02\xff\xfe\x00\x00\x00\x00\x00", "tool name is not valid UTF-8"),
    ],
    ids=["v2-layout", "trace-id-cut", "session-cut", "trace-id-not-utf8", "session-not-utf8", "name-not-utf8"],
)
def test_malformed_call_bodies_are_protocol_errors_and_the_worker_carries_on(host, body, fragment):
    host.start_ready()
    host.send_call_frame(P.CALL, 21, body)
    ans = host.answer()
    assert (ans.request_id, ans.error["kind"], ans.error["type"]) == (21, "protocol", None)
    assert fragment in ans.error["message"]
    assert host.roundtrip(22, "add", {"a": 1, "b": 2}).value == 3


def test_call_fields_do_not_change_a_plain_call(host):
    host.start_ready()
    assert host.roundtrip(1, "add", {"a": 1, "b": 2}, trace_id="t" * 255, session="s" * 65535).value == 3
    assert host.roundtrip(2, "reverse", raw=b"ab", trace_id="\u00e9", session="k").payload == b"ba"


def test_calls_import_nothing_new(host):
    """Every path of a call (results, bytes, each error kind) runs without
    importing a module after start."""
    host.start_ready()
    before = host.roundtrip(1, "modules").value
    run_every_call_path(host)
    after = host.roundtrip(2, "modules").value
    assert sorted(set(after) - set(before)) == []


def test_streams_and_context_import_nothing_new(host):
    """Also every path of protocol 3: streams, credit, cancellation, the
    call context and sessions."""
    host.start_ready("streaming_tools:Streams")
    before = host.roundtrip(1, "modules").value
    run_every_call_path(host)
    run_every_stream_path(host, host.dir)
    after = host.roundtrip(2, "modules").value
    assert sorted(set(after) - set(before)) == []


def test_worker_imports_only_the_standard_library(host):
    """Beyond what the interpreter loads at start, the worker (and the test
    adapter, which imports only os/sys/time) loads standard-library modules only."""
    baseline = json.loads(
        subprocess.run(
            [sys.executable, "-c", "import sys, json; print(json.dumps(sorted(sys.modules)))"],
            env=worker_env(), stdout=subprocess.PIPE, check=True, timeout=TIMEOUT,
        ).stdout
    )
    host.start_ready()
    files = host.roundtrip(1, "module_files").value
    stdlib_dirs = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}
    ours = {os.path.realpath(os.path.dirname(pitboss_worker.__file__))}
    outside = []
    for name, path in files.items():
        if name in baseline or path is None or name == "sample_tools":
            continue
        real = os.path.realpath(path)
        if not any(real.startswith(d + os.sep) for d in stdlib_dirs | ours):
            outside.append((name, path))
    assert outside == []


PARENT_SCRIPT = """
import subprocess, sys, time
child = subprocess.Popen(sys.argv[1:])
print(child.pid, flush=True)
time.sleep(60)
"""


def _gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_worker_dies_with_its_parent(host):
    """An intermediate process starts the worker and is SIGKILLed; the worker
    notices its parent changed and exits. (No PR_SET_PDEATHSIG here: this
    checks the worker's own watch.)"""
    worker_pid = None
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT] + worker_command("sample_tools:Sample", host.socket_path),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=worker_env(),
    )
    try:
        host.accept(proc=parent)
        worker_pid = int(parent.stdout.readline())
        assert host.read_hello()["pid"] == worker_pid
        parent.kill()
        parent.wait(TIMEOUT)
        started = time.monotonic()
        host.read_eof(timeout=5)  # the worker closed its end: it exited
        assert wait_until(lambda: _gone(worker_pid), timeout=5)
        assert time.monotonic() - started < 3.0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(TIMEOUT)
        parent.stdout.close()
        if worker_pid is not None and not _gone(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)
