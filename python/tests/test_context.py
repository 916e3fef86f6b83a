"""pitboss_worker.context: the request id, the session and its soft state,
cancellation; in the process and in real workers."""

import threading
import time

import pytest

from pitboss_worker import protocol as P

from pitboss_worker import call_context, context
from pitboss_worker.call_context import CallState, SessionStore, configure_sessions
from worker_harness import all_at_once

STREAMS = "streaming_tools:Streams"


@pytest.fixture
def in_call(monkeypatch):
    """Runs the test as if inside a tool call: returns a function that sets
    the current call (request id, trace id, session)."""
    monkeypatch.setattr(call_context, "sessions", SessionStore())

    def enter(trace_id="t", session=None, stream=False):
        state = CallState(1, trace_id, session, stream)
        call_context._local.call = state
        return state

    yield enter
    call_context._local.call = None


# --- in the process ------------------------------------------------------------


@pytest.mark.parametrize("read", [
    lambda: context.request_id,
    lambda: context.session,
    lambda: context.cancelled(),
    lambda: context.session_state,
    lambda: context.end_session(),
])
def test_outside_a_tool_call_everything_raises(read):
    with pytest.raises(RuntimeError, match=r"^pitboss_worker\.context is only available inside a tool call$"):
        read()
    assert "not in a tool call" in repr(context)


def test_inside_a_call(in_call):
    state = in_call("req-1", "user-7")
    assert (context.request_id, context.session, context.cancelled()) == ("req-1", "user-7", False)
    state.cancelled = True
    assert context.cancelled() is True
    assert "req-1" in repr(context)


def test_session_state_is_per_session_and_kept(in_call):
    in_call(session="a")
    context.session_state["x"] = 1
    assert context.session_state is context.session_state
    in_call(session="b")
    assert context.session_state == {}
    in_call(session="a")
    assert context.session_state == {"x": 1}
    context.end_session()
    assert context.session_state == {}, "a fresh dict after end_session()"


def test_no_session(in_call):
    in_call(session=None)
    assert context.session is None
    with pytest.raises(RuntimeError, match="this call has no session; pass a session key") as info:
        context.session_state
    assert "ExecuteRequest.session" in str(info.value) and "pitboss call --session" in str(info.value)
    context.end_session()  # nothing to do


def test_the_context_is_per_thread(in_call):
    in_call("main-call")
    seen = []

    def other():
        try:
            seen.append(context.request_id)
        except RuntimeError as exc:
            seen.append(str(exc))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [call_context.NOT_IN_A_CALL]
    assert context.request_id == "main-call"


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_session_store_expires_idle_entries():
    clock = FakeClock()
    store = SessionStore(10, clock=clock)
    store.state("a")["v"] = 1
    clock.now += 9
    assert store.state("a") == {"v": 1}, "used within the idle time: kept (and refreshed)"
    clock.now += 9
    assert store.state("a") == {"v": 1}
    store.state("b")["v"] = 2
    clock.now += 10.5
    assert store.state("a") == {}, "unused for more than 10 s: dropped"
    assert "b" not in store, "swept on access"
    store.drop("a")
    store.drop("nothing")
    assert len(store) == 0


def test_session_store_sweeps_at_most_once_a_second():
    clock = FakeClock()
    store = SessionStore(0.5, clock=clock)
    store.state("a")  # sweeps (the first access): nothing to drop
    clock.now += 0.7
    store.state("b")  # within a second of the sweep: "a", idle 0.7 s, is still stored...
    assert "a" in store
    assert store.state("a") == {}, "...but never handed out once expired"
    clock.now += 0.4
    store.state("b")  # 1.1 s after the last sweep: sweeps again
    store.state("c")
    clock.now += 0.6  # now "b" and "c" are idle 0.6 s, "a" 1.0 s
    store.state("d")  # the last sweep was 0.6 s ago: none
    assert all(k in store for k in ("a", "b", "c"))
    clock.now += 0.5
    store.state("d")  # sweeps: "a", "b", "c" are gone
    assert [k for k in ("a", "b", "c", "d") if k in store] == ["d"]


def test_session_store_creates_one_dict_per_key_across_threads():
    store = SessionStore()
    got = all_at_once(lambda: store.state("k"))
    assert len(got) == 8 and len({id(d) for d in got}) == 1


def test_configure_sessions(monkeypatch):
    monkeypatch.setattr(call_context, "sessions", call_context.sessions)
    assert configure_sessions(5).idle_s == 5
    assert call_context.sessions.idle_s == 5
    for bad in (0, -1, 1.5, True, "5"):
        with pytest.raises(ValueError):
            configure_sessions(bad)


# --- in real workers ------------------------------------------------------------


def test_request_id_and_session_reach_the_tool(host):
    host.start_ready(STREAMS)
    assert host.roundtrip(1, "whoami", trace_id="req-\u00e9", session="user-1").value == {
        "request_id": "req-\u00e9", "session": "user-1", "cancelled": False,
    }
    assert host.roundtrip(2, "whoami").value == {"request_id": "", "session": None, "cancelled": False}
    stream = host.stream_call(3, "stream_whoami", {"n": 3}, trace_id="tr-3", session="s")
    assert stream.chunks == [{"i": i, "request_id": "tr-3", "session": "s"} for i in range(3)], (
        "the context is set around every step of the generator")


def test_session_state_across_calls(host):
    host.start_ready(STREAMS)
    assert host.roundtrip(1, "remember", {"key": "a", "value": 1}, session="s1").value == ["a"]
    assert host.roundtrip(2, "remember", {"key": "b", "value": 2}, session="s1").value == ["a", "b"]
    assert host.roundtrip(3, "recall", {"key": "a"}, session="s2").value is None, "sessions are separate"
    assert host.roundtrip(4, "remember", {"key": "c", "value": 3}, session="s2").value == ["c"]
    assert host.roundtrip(5, "recall", {"key": "b"}, session="s1").value == 2
    assert host.roundtrip(6, "forget", session="s1").value == "s1"
    assert host.roundtrip(7, "recall", {"key": "a"}, session="s1").value is None, "end_session dropped it"
    assert host.roundtrip(8, "recall", {"key": "c"}, session="s2").value == 3, "the other session is kept"
    stream = host.stream_call(9, "session_in_stream", {"key": "n", "n": 3}, session="s2")
    assert stream.chunks == [1, 2, 3]
    assert host.roundtrip(10, "recall", {"key": "n"}, session="s2").value == 3


def test_session_state_without_a_session_is_an_exception(host):
    host.start_ready(STREAMS)
    err = host.roundtrip(1, "remember", {"key": "a", "value": 1}).error
    assert (err["kind"], err["type"]) == ("exception", "RuntimeError")
    assert "this call has no session" in err["message"] and "pitboss call --session" in err["message"]
    assert host.roundtrip(2, "forget").value is None, "end_session() without a session does nothing"


def test_session_idle_s_drops_unused_state(host):
    host.start_ready(STREAMS, ["--session-idle-s", "1"])
    host.roundtrip(1, "remember", {"key": "a", "value": 1}, session="s")
    host.roundtrip(2, "remember", {"key": "a", "value": 1}, session="kept")
    for i in range(3):
        time.sleep(0.5)
        assert host.roundtrip(10 + i, "recall", {"key": "a"}, session="kept").value == 1, "used: kept"
    assert host.roundtrip(3, "recall", {"key": "a"}, session="s").value is None, "idle 1.5 s: dropped"


def test_threads_one_session_state_for_calls_at_once(host):
    host.start_ready(STREAMS, ["--threads", "4"])
    for i in range(1, 41):
        host.call(i, "put", {"key": "k%d" % i, "value": i}, session="new")
    answers = [host.answer() for _ in range(40)]
    assert all(a.kind == P.RESULT for a in answers), answers
    assert host.roundtrip(50, "size", session="new").value == 40, "every call found the same dict"
