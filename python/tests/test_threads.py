"""Thread safety in real workers: thread_safe declarations against
--threads, ThreadSafeAdapter's helpers, and --thread-safety-checks."""

import pytest

CHECKS = "--thread-safety-checks"


def _lines(host, text):
    return [line for line in host.stderr().splitlines() if text in line]


def _twice_at_once(host, first_id, tool):
    host.call(first_id, tool)
    host.call(first_id + 1, tool)
    answers = sorted((host.answer(), host.answer()), key=lambda a: a.request_id)
    assert [(a.request_id, a.value) for a in answers] == [(first_id, tool), (first_id + 1, tool)]


def test_thread_unsafe_adapter_refuses_threads(host):
    host.start("thread_tools:Unsafe", ["--threads", "2"])
    host.accept()
    host.read_eof()  # no HELLO
    assert host.wait_exit() == 3
    [line] = _lines(host, "error:")
    assert "thread_tools:Unsafe" in line and "thread_safe = False" in line
    assert 'profile = "process"' in line and "thread_safe = True" in line, "the message says the fix"


def test_thread_unsafe_adapter_runs_with_one_thread(host):
    hello = host.start_ready("thread_tools:Unsafe")
    assert hello["thread_safe"] is False
    assert host.roundtrip(1, "add", {"a": 1, "b": 2}).value == 3
    assert host.stderr() == ""


def test_undeclared_adapter_warns_with_threads(host):
    hello = host.start_ready("sample_tools:Sample", ["--threads", "2"])
    assert hello["thread_safe"] is None
    [line] = _lines(host, "does not declare thread_safe")
    assert "sample_tools:Sample" in line and "warning" in line
    assert host.roundtrip(1, "add", {"a": 1, "b": 2}).value == 3


def test_undeclared_adapter_with_one_thread_does_not_warn(host):
    host.start_ready("sample_tools:Sample")
    host.ping(1)
    assert host.stderr() == ""


@pytest.mark.parametrize("adapter", ["thread_tools:Counter", "safe_module"])
def test_declared_thread_safe_adapter_starts_quietly(host, adapter):
    hello = host.start_ready(adapter, ["--threads", "4"])
    assert hello["thread_safe"] is True
    host.ping(1)
    assert host.stderr() == ""


def test_thread_safe_adapter_helpers_in_a_worker(host):
    host.start_ready("thread_tools:Counter", ["--threads", "4"])
    for i in range(1, 201):
        host.call(i, "increment")
    counts = sorted(host.answer().value for _ in range(200))
    assert counts == list(range(1, 201)), "the named lock kept the increments whole"
    for i in range(201, 241):
        host.call(i, "thread_db")
    answers = [host.answer().value for _ in range(40)]
    assert {answer for answer, _, _ in answers} == {42}
    connection_of_thread = {}
    for _, connection, thread in answers:
        assert connection_of_thread.setdefault(thread, connection) == connection, "one connection per thread"
    assert len(set(connection_of_thread.values())) == len(connection_of_thread)


def test_checks_warn_once_per_tool_run_on_two_threads(host):
    hello = host.start_ready("thread_tools:Rendezvous", ["--threads", "2", CHECKS])
    assert hello["unsafe_modules"] == []
    _twice_at_once(host, 1, "meet")
    _twice_at_once(host, 3, "meet")
    _twice_at_once(host, 5, "meet_safe")
    [line] = _lines(host, "thread-safety-checks")
    assert "tool 'meet'" in line and "not marked thread-safe" in line


def test_checks_follow_the_adapter_declaration_and_tool_markers(host):
    host.start_ready("thread_tools:SafeRendezvous", ["--threads", "2", CHECKS])
    _twice_at_once(host, 1, "meet")
    _twice_at_once(host, 3, "meet_unsafe")
    [line] = _lines(host, "thread-safety-checks")
    assert "tool 'meet_unsafe'" in line


def test_checks_report_unsafe_modules_at_hello(host):
    hello = host.start_ready("thread_tools:Counter", ["--threads", "2", CHECKS])
    assert hello["unsafe_modules"] == ["sqlite3"], "setup() imported it"
    [line] = _lines(host, "module 'sqlite3'")
    assert "across threads" in line


def test_checks_report_modules_imported_by_calls_once(host):
    host.start_ready("thread_tools:Rendezvous", ["--threads", "2", CHECKS])
    assert host.roundtrip(1, "load_module", {"name": "sqlite3"}).value == "sqlite3"
    assert len(_lines(host, "module 'sqlite3'")) == 1, "reported after the call that imported it"
    host.roundtrip(2, "load_module", {"name": "sqlite3"})
    host.roundtrip(3, "load_module", {"name": "json"})
    assert len(_lines(host, "module 'sqlite3'")) == 1, "reported once"


def test_without_checks_nothing_is_watched(host):
    hello = host.start_ready("thread_tools:Rendezvous", ["--threads", "2"])
    assert hello["unsafe_modules"] == []
    _twice_at_once(host, 1, "meet")
    host.roundtrip(3, "load_module", {"name": "sqlite3"})
    assert _lines(host, "thread-safety-checks") == []


def test_checks_watch_streaming_tools_while_their_generators_run(host):
    host.start_ready("streaming_tools:Streams", ["--threads", "2", CHECKS])
    for request_id in (1, 2):
        # Both wait inside the generator's first step until the other is there.
        host.call(request_id, "meet_stream", {"n": 3, "parties": 2}, stream=True)
    streams = host.read_streams([1, 2])
    assert all(s.ended and len(s.chunks) == 3 for s in streams.values()), streams
    [line] = _lines(host, "thread-safety-checks")
    assert "tool 'meet_stream'" in line and "not marked thread-safe" in line
