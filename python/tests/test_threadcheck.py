"""--thread-safety-checks in-process: which tools are watched, one warning
per tool, unsafe modules reported once each."""

import sys
import threading
import types

import pytest

from pitboss_worker import protocol as P
from pitboss_worker.adapter import Tool
from pitboss_worker.threadcheck import UNSAFE_MODULES, CheckingDispatcher, ThreadSafetyChecker


def _meeting_tool(name, barrier):
    def meet():
        barrier.wait()
        return name

    return meet


def _run_twice_at_once(dispatcher, name):
    answers = []
    threads = [
        threading.Thread(target=lambda: answers.append(dispatcher.invoke(name, P.CONTENT_JSON, b"")))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert [kind for kind, _ in answers] == [P.RESULT, P.RESULT]


@pytest.mark.parametrize(
    "marker,adapter_thread_safe,watched",
    [
        (None, None, True),
        (None, False, True),
        (None, True, False),  # an unmarked tool inherits the adapter's declaration
        (True, None, False),
        (True, False, False),
        (False, True, True),  # the tool's own marker wins
    ],
)
def test_concurrent_entry_warns_once_per_unvouched_tool(marker, adapter_thread_safe, watched):
    barrier = threading.Barrier(2, timeout=5)
    tools = {"meet": Tool("meet", _meeting_tool("meet", barrier), thread_safe=marker)}
    warnings = []
    dispatcher = CheckingDispatcher(tools, ThreadSafetyChecker(tools, adapter_thread_safe, warnings.append))
    for _ in range(3):
        _run_twice_at_once(dispatcher, "meet")
    tool_warnings = [w for w in warnings if "tool 'meet'" in w]
    if watched:
        assert len(tool_warnings) == 1, warnings
        assert "2 threads at once" in tool_warnings[0] and "@tool(thread_safe=True)" in tool_warnings[0]
        assert "\n" not in tool_warnings[0]
    else:
        assert tool_warnings == []


def test_one_thread_after_another_is_not_concurrent():
    tools = {"t": Tool("t", lambda: 1)}
    warnings = []
    dispatcher = CheckingDispatcher(tools, ThreadSafetyChecker(tools, None, warnings.append))
    for _ in range(5):
        t = threading.Thread(target=dispatcher.invoke, args=("t", P.CONTENT_JSON, b""))
        t.start()
        t.join()
    assert [w for w in warnings if "tool" in w] == []


def test_a_tool_that_raises_is_left_and_its_traceback_starts_in_it():
    def boom():
        raise ValueError("x")

    tools = {"boom": Tool("boom", boom)}
    warnings = []
    dispatcher = CheckingDispatcher(tools, ThreadSafetyChecker(tools, None, warnings.append))
    for _ in range(2):  # had the first call not been counted out, the second would look concurrent
        kind, body = dispatcher.invoke("boom", P.CONTENT_JSON, b"")
        assert kind == P.ERROR
    assert warnings == []
    error = P.decode_json_body(body)
    assert error["type"] == "ValueError"
    assert "in boom" in error["traceback"] and "_run" not in error["traceback"]


def test_arguments_that_do_not_bind_never_enter_the_tool():
    def add(a, b):
        return a + b

    tools = {"add": Tool("add", add)}
    entered = []
    checker = ThreadSafetyChecker(tools, None, lambda warning: None)
    checker.enter = entered.append
    kind, body = CheckingDispatcher(tools, checker).invoke("add", P.CONTENT_JSON, b'{"a": 1}')
    assert (kind, P.decode_json_body(body)["kind"]) == (P.ERROR, "bad_arguments")
    assert entered == [], "the checker heard of no entry"


def test_unsafe_modules_reported_once_each(monkeypatch):
    modules = {name: module for name, module in sys.modules.items() if name not in UNSAFE_MODULES}
    monkeypatch.setattr(sys, "modules", modules)
    warnings = []
    checker = ThreadSafetyChecker({}, None, warnings.append)
    checker.scan_modules()
    assert checker.unsafe_modules == [] and warnings == []

    modules["sqlite3"] = types.ModuleType("sqlite3")
    checker.scan_modules()
    checker.scan_modules()
    assert checker.unsafe_modules == ["sqlite3"]
    assert len(warnings) == 1 and "module 'sqlite3'" in warnings[0] and "across threads" in warnings[0]

    modules["matplotlib"] = types.ModuleType("matplotlib")
    modules["matplotlib.pyplot"] = types.ModuleType("matplotlib.pyplot")
    checker.scan_modules()
    assert checker.unsafe_modules == ["sqlite3", "matplotlib", "matplotlib.pyplot"]
    assert len(warnings) == 3


def test_dispatcher_scans_modules_after_calls(monkeypatch):
    modules = {name: module for name, module in sys.modules.items() if name not in UNSAFE_MODULES}
    monkeypatch.setattr(sys, "modules", modules)

    def lazy_import():
        modules["tkinter"] = types.ModuleType("tkinter")

    tools = {"lazy": Tool("lazy", lazy_import)}
    warnings = []
    checker = ThreadSafetyChecker(tools, None, warnings.append)
    checker.scan_modules()
    CheckingDispatcher(tools, checker).invoke("lazy", P.CONTENT_JSON, b"")
    assert checker.unsafe_modules == ["tkinter"]
    assert ["tkinter" in w for w in warnings] == [True]
