"""Streaming answers, backpressure and cancellation (protocol version 3) in
real workers: STREAM_CHUNK/STREAM_END, CREDIT, CANCEL."""

import json
import os
import time

import pytest

from pitboss_worker import protocol as P
from worker_harness import wait_until

STREAMS = "streaming_tools:Streams"


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _marker(host, name):
    return os.path.join(host.dir, name)


def _chunks(host, n):
    """The next n frames of the call connection, each a STREAM_CHUNK."""
    frames = [host.stream_frame() for _ in range(n)]
    assert all(f.kind == P.STREAM_CHUNK for f in frames), frames
    return frames


def test_hello_lists_streaming_and_idempotent_tools(host):
    hello = host.start_ready(STREAMS)
    assert hello["streaming_tools"] == [
        "bad_item", "class-stream", "count", "count_marked", "fail_after", "meet_stream", "mixed",
        "session_in_stream", "static_stream", "stream_whoami", "unstarted",
    ]
    assert hello["idempotent_tools"] == ["static_stream", "wait_cancelled"]
    assert set(hello["streaming_tools"]) <= set(hello["tools"])
    assert list(hello)[-2:] == ["streaming_tools", "idempotent_tools"]


def test_module_spec_hello(host):
    hello = host.start_ready("streaming_tools")
    assert (hello["tools"], hello["streaming_tools"], hello["idempotent_tools"]) == (
        ["module_plain", "module_stream"], ["module_stream"], ["module_plain"])
    stream = host.stream_call(1, "module_stream", {"n": 3})
    assert stream.chunks == [0, 1, 2] and stream.ended


def test_a_thousand_chunks_in_order_then_one_stream_end(host):
    host.start_ready(STREAMS)
    stream = host.stream_call(1, "count", {"n": 1000})
    assert stream.chunks == list(range(1000))
    assert stream.ended and stream.end.request_id == 1
    assert host.nothing_on_calls(0.2), "exactly one terminal frame"
    assert host.roundtrip(2, "add", {"a": 1, "b": 2}).value == 3, "the next answer is the next call's"


def test_chunks_are_encoded_like_results(host):
    host.start_ready(STREAMS)
    host.call(1, "mixed", stream=True)
    frames = [host.stream_frame() for _ in range(4)]
    assert [(f.kind, f.content_type, f.payload) for f in frames] == [
        (P.STREAM_CHUNK, P.CONTENT_JSON, b'{"a":[1,null]}'),
        (P.STREAM_CHUNK, P.CONTENT_RAW, b"\x00\xff"),
        (P.STREAM_CHUNK, P.CONTENT_JSON, b'""'),
        (P.STREAM_END, None, None),
    ]
    stream = host.stream_call(2, "count", {"n": 3, "raw": True})
    assert stream.chunks == [b"\x00\x00\x00\x00", b"\x00\x00\x00\x01", b"\x00\x00\x00\x02"]


def test_static_and_class_method_streams(host):
    host.start_ready(STREAMS)
    assert host.stream_call(1, "static_stream", {"n": 2}).chunks == [0, 1]
    assert host.stream_call(2, "class-stream", {"n": 2}).chunks == ["Streams", "Streams"]
    assert host.stream_call(3, "count", {"n": 0}).ended, "an empty stream is just STREAM_END"


def test_the_worker_stops_at_sixteen_unacknowledged_chunks_and_resumes_on_credit(host):
    host.start_ready(STREAMS)
    produced = _marker(host, "produced")
    host.call(1, "count_marked", {"path": produced}, stream=True)  # for ever
    values = [f.value["i"] for f in _chunks(host, P.STREAM_WINDOW)]
    assert values == list(range(16))
    assert host.nothing_on_calls(0.4), "no 17th chunk without credit"
    assert _read_json(produced) == 16, "the generator was not advanced past the window"
    host.credit(1, 5)
    assert [f.value["i"] for f in _chunks(host, 5)] == [16, 17, 18, 19, 20]
    assert host.nothing_on_calls(0.3)
    assert _read_json(produced) == 21
    host.ping(7)  # the worker is waiting, not hung
    host.credit(1, 8)
    assert [f.value["i"] for f in _chunks(host, 8)] == list(range(21, 29))
    host.cancel(1)
    end = host.stream_frame()
    assert (end.kind, end.error["kind"]) == (P.ERROR, "cancelled")
    assert _read_json(produced + ".finally")["produced"] == 29


def test_an_exception_after_five_chunks(host):
    host.start_ready(STREAMS)
    stream = host.stream_call(1, "fail_after", {"n": 5})
    assert stream.chunks == [0, 1, 2, 3, 4]
    err = stream.end.error
    assert (stream.end.kind, err["kind"], err["type"]) == (P.ERROR, "exception", "sample_tools.CustomError")
    assert err["message"] == "failed after 5 items"
    tb = err["traceback"]
    first_frame = tb.splitlines()[1]
    assert "streaming_tools.py" in first_frame and "in fail_after" in first_frame, "it starts at the tool"
    assert "worker.py" not in tb and "dispatch.py" not in tb
    assert host.nothing_on_calls(0.2)
    assert host.roundtrip(2, "add", {"a": 1, "b": 2}).value == 3


def test_an_item_that_cannot_be_encoded_ends_the_stream_and_closes_the_generator(host):
    host.start_ready(STREAMS)
    closed = _marker(host, "closed")
    stream = host.stream_call(1, "bad_item", {"path": closed, "good": 2})
    assert stream.chunks == [0, 1]
    assert (stream.end.error["kind"], stream.end.error["type"]) == ("bad_result", "TypeError")
    assert _read_json(closed) == "closed", "the generator was closed: its finally ran"


@pytest.mark.parametrize("waiting", [True, False], ids=["waiting-for-credit", "while-producing"])
def test_cancel_after_ten_chunks_stops_the_generator_and_runs_its_finally(host, waiting):
    host.start_ready(STREAMS)
    produced = _marker(host, "produced")
    args = {"path": produced} if waiting else {"path": produced, "delay": 0.01}
    host.call(1, "count_marked", args, stream=True, trace_id="trace-c")
    first = _chunks(host, 10)
    if not waiting:
        host.credit(1, 1000)  # plenty: the generator is producing when CANCEL comes
    else:
        assert wait_until(lambda: os.path.exists(produced) and _read_json(produced) == 16)
    host.cancel(1)
    rest = []
    while True:
        frame = host.stream_frame()
        if frame.terminal:
            break
        rest.append(frame)
    assert (frame.kind, frame.request_id, frame.error["kind"], frame.error["type"]) == (
        P.ERROR, 1, "cancelled", None)
    values = [f.value["i"] for f in first + rest]
    assert values == list(range(len(values))), "in order, none lost"
    if waiting:
        assert len(values) == 16
    assert "stopped after %d chunks" % len(values) in frame.error["message"]
    final = _read_json(produced + ".finally")
    assert final["produced"] in (len(values), len(values) + 1), "stopped before the next item"
    assert final["request_id"] == "trace-c", "close() ran inside the call's context"
    assert final["thread"] == first[0].value["thread"], "on the executor thread that ran the stream"
    assert host.nothing_on_calls(0.2), "exactly one terminal frame"
    host.cancel(1)  # a CANCEL for a call that ended: ignored, nothing comes back
    host.credit(1, 8)  # credit for it too
    host.ping(2)
    assert host.roundtrip(3, "add", {"a": 1, "b": 2}).value == 3


def test_unary_call_of_a_streaming_tool_is_bad_result_without_starting_it(host):
    host.start_ready(STREAMS)
    started = _marker(host, "started")
    err = host.roundtrip(1, "unstarted", {"path": started}).error
    assert (err["kind"], err["type"]) == ("bad_result", None)
    assert "streams" in err["message"] and "--stream" in err["message"] and "ExecuteStream" in err["message"]
    assert not os.path.exists(started), "the generator's body never ran"
    assert host.roundtrip(2, "count", {"n": 3}).error["kind"] == "bad_result"


def test_stream_call_of_a_plain_tool_is_one_result(host):
    host.start_ready(STREAMS)
    stream = host.stream_call(1, "add", {"a": 1, "b": 2})
    assert (stream.chunks, stream.end.kind, stream.end.value) == ([], P.RESULT, 3)
    stream = host.stream_call(2, "plain_list", {"n": 3})
    assert stream.end.value == [0, 1, 2], "a list is one value, not a stream"
    assert host.stream_call(3, "iterator", {"n": 3}).end.error["kind"] == "bad_result"
    assert host.stream_call(4, "nope").end.error["kind"] == "unknown_tool"
    assert host.stream_call(5, "count", {"m": 1}).end.error["kind"] == "bad_arguments"


def test_cancel_before_the_call_is_read(host):
    host.start_ready(STREAMS)
    busy, second = _marker(host, "busy"), _marker(host, "second")
    host.call(1, "sleep_marked", {"path": busy, "seconds": 0.5})
    assert wait_until(lambda: os.path.exists(busy))
    host.call(2, "sleep_marked", {"path": second, "seconds": 0})  # waits in the socket: one executor
    host.call(3, "count", {"n": 2}, stream=True)
    host.cancel(2)
    host.cancel(3)
    host.ping(9)  # the CANCELs have been handled
    assert host.answer().value == 0.5
    for request_id in (2, 3):
        ans = host.answer()
        assert (ans.request_id, ans.error["kind"], ans.error["type"]) == (request_id, "cancelled", None)
        assert "before it started" in ans.error["message"]
    assert not os.path.exists(second), "a cancelled call does not run"
    assert host.roundtrip(4, "add", {"a": 1, "b": 2}).value == 3


def test_early_cancels_remembered_are_the_last_1024(host):
    host.start_ready(STREAMS)
    for request_id in range(100, 100 + P.EARLY_CANCEL_MEMORY + 1):
        host.cancel(request_id)
    host.ping(1)
    assert host.roundtrip(100, "add", {"a": 1, "b": 2}).value == 3, "the oldest one was forgotten"
    assert host.roundtrip(101, "add", {"a": 1, "b": 2}).error["kind"] == "cancelled"
    assert host.roundtrip(100 + P.EARLY_CANCEL_MEMORY, "add", {"a": 1, "b": 2}).error["kind"] == "cancelled"
    assert host.roundtrip(101, "add", {"a": 1, "b": 2}).value == 3, "a remembered CANCEL is used once"


def test_a_plain_call_runs_on_after_cancel_and_can_see_it(host):
    host.start_ready(STREAMS)
    started = _marker(host, "started")
    host.call(1, "wait_cancelled", {"path": started})
    assert wait_until(lambda: os.path.exists(started))
    host.cancel(1)
    assert host.answer().value == "cancelled", "the cooperative tool saw context.cancelled()"
    started2 = _marker(host, "started2")
    assert host.roundtrip(2, "wait_cancelled", {"path": started2, "timeout": 0.05}).value == "timed out"


def test_a_malformed_credit_is_a_protocol_error_on_the_control_connection(host):
    host.start_ready(STREAMS)
    host.send_control(P.CREDIT, 5, b"\x00\x08")
    frame = host.read()
    assert frame.kind == P.ERROR and frame.request_id == 5
    assert json.loads(frame.body)["kind"] == "protocol"
    assert host.stream_call(6, "count", {"n": 40}).chunks == list(range(40))


def test_large_credit_lets_the_stream_run_to_its_end(host):
    host.start_ready(STREAMS)
    host.call(1, "count", {"n": 300}, stream=True)
    _chunks(host, 16)
    host.credit(1, 2 ** 32 - 1)
    stream = host.read_stream(1, grant=None)
    assert len(stream.chunks) == 300 - 16 and stream.ended


def test_every_step_of_a_stream_runs_on_one_thread(host):
    host.start_ready(STREAMS, ["--threads", "4"])
    for attempt in range(3):
        stream = host.stream_call(attempt + 1, "count_marked", {"path": _marker(host, "p%d" % attempt), "n": 40})
        assert len({chunk["thread"] for chunk in stream.chunks}) == 1


def test_threads_several_streams_at_once(host):
    host.start_ready(STREAMS, ["--threads", "4"])
    ids = [11, 12, 13, 14]
    for request_id in ids:
        # Each waits until all four are inside: they surely stream at once.
        host.call(request_id, "meet_stream", {"n": 300, "parties": 4}, stream=True)
    streams = host.read_streams(ids)
    threads = set()
    for request_id in ids:
        stream = streams[request_id]
        assert stream.ended, stream
        assert [c["i"] for c in stream.chunks] == list(range(300))
        threads |= {c["thread"] for c in stream.chunks}
    assert len(threads) == 4
    assert host.nothing_on_calls(0.2)


def test_threads_a_stream_waiting_for_credit_holds_one_executor_only(host):
    host.start_ready(STREAMS, ["--threads", "2"])
    produced = _marker(host, "produced")
    host.call(1, "count_marked", {"path": produced}, stream=True)
    _chunks(host, 16)
    assert host.nothing_on_calls(0.2)
    assert host.roundtrip(2, "add", {"a": 1, "b": 2}).value == 3, "the other executor serves calls"
    stream = host.stream_call(3, "count", {"n": 50})
    assert stream.chunks == list(range(50))
    host.cancel(1)
    end = host.stream_frame()
    assert (end.request_id, end.error["kind"]) == (1, "cancelled")
    assert _read_json(produced + ".finally")["produced"] == 16


def test_threads_cancel_one_stream_of_several(host):
    host.start_ready(STREAMS, ["--threads", "4"])
    markers = {i: _marker(host, "m%d" % i) for i in (1, 2, 3)}
    for i, path in markers.items():
        host.call(i, "count_marked", {"path": path, "n": 200, "delay": 0.001}, stream=True)
    streams = host.read_streams([1, 2, 3], cancel_after={2: 5})
    assert streams[1].ended and streams[3].ended
    assert [c["i"] for c in streams[1].chunks] == list(range(200))
    assert [c["i"] for c in streams[3].chunks] == list(range(200))
    assert streams[2].end.error["kind"] == "cancelled"
    assert 5 <= len(streams[2].chunks) < 200
    assert os.path.exists(markers[2] + ".finally")


def test_shutdown_lets_a_stream_finish(host):
    host.start_ready(STREAMS)
    produced = _marker(host, "produced")
    host.call(1, "count_marked", {"path": produced, "n": 40}, stream=True)
    _chunks(host, 16)
    host.call(2, "add", {"a": 1, "b": 2})  # received, not started
    host.send_control(P.SHUTDOWN, 0)
    refused = host.stream_frame()
    assert (refused.request_id, refused.error["kind"]) == (2, "shutting_down")
    host.credit(1, 100)
    rest = host.read_stream(1, grant=None)
    assert len(rest.chunks) == 40 - 16 and rest.ended
    host.read_eof()
    assert host.wait_exit() == 0


def test_host_gone_mid_stream_ends_the_worker(host):
    host.start_ready(STREAMS)
    host.call(1, "count_marked", {"path": _marker(host, "p")}, stream=True)
    _chunks(host, 16)  # now waiting for credit
    started = time.monotonic()
    host.close_connection("calls")
    assert host.wait_exit(5) == 0
    assert time.monotonic() - started < 3.0
