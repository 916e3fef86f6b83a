"""Encoding rules of one call: arguments in, result or structured error out."""

import functools
import importlib.util
import inspect
import json
import os

import pytest

from pitboss_worker import protocol as P
from pitboss_worker.adapter import Tool, collect_tools
from pitboss_worker.dispatch import (
    MAX_ERROR_TEXT,
    STREAM,
    Dispatcher,
    cancelled_error,
    encode_result,
    qualified_name,
    warm_up,
)
from worker_harness import ADAPTERS_DIR, Answer

# The test adapter, loaded without touching sys.path (its classes then live in
# module "sample_tools", as they do in a worker).
_spec = importlib.util.spec_from_file_location("sample_tools", os.path.join(ADAPTERS_DIR, "sample_tools.py"))
sample_tools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sample_tools)


@pytest.fixture(scope="module")
def dispatcher():
    instance = sample_tools.Sample()
    instance.setup()
    return Dispatcher(collect_tools(instance))


def run(dispatcher, tool, payload=b"", content_type=P.CONTENT_JSON):
    kind, body = dispatcher.invoke(tool, content_type, payload)
    return Answer(P.Frame(kind, 1, body))


def run_json(dispatcher, tool, args):
    return run(dispatcher, tool, json.dumps(args).encode("utf-8"))


def test_ints_stay_ints_and_none_is_null(dispatcher):
    ans = run_json(dispatcher, "add", {"a": 2, "b": 3})
    assert ans.content_type == P.CONTENT_JSON and ans.payload == b"5"
    assert run(dispatcher, "nothing").payload == b"null"
    assert run(dispatcher, "numbers").payload == (
        b'{"int":3,"big":1180591620717411303424,"float":1.5,"true":true,"none":null}'
    )


def test_compact_utf8_json(dispatcher):
    ans = run_json(dispatcher, "echo", {"text": "h\u00e9llo \u2603", "list": [1, 2]})
    assert ans.payload == '{"text":"h\u00e9llo \u2603","list":[1,2]}'.encode("utf-8")


@pytest.mark.parametrize("payload", [b"", b"null", b" null ", b"{}"])
def test_empty_or_null_payload_means_no_arguments(dispatcher, payload):
    assert run(dispatcher, "nothing", payload).value is None


def test_renamed_static_and_class_tools(dispatcher):
    assert run(dispatcher, "other-name").value == "renamed"
    assert run(dispatcher, "renamed").error["kind"] == "unknown_tool"
    assert run_json(dispatcher, "static_tool", {"x": 4}).value == 8
    assert run(dispatcher, "class-tool").value == "Sample"


def test_bytes_in_and_out(dispatcher):
    ans = run(dispatcher, "reverse", b"\x00\x01\xff", P.CONTENT_RAW)
    assert (ans.content_type, ans.payload) == (P.CONTENT_RAW, b"\xff\x01\x00")
    for tool in ("as_bytearray", "as_memoryview"):
        ans = run_json(dispatcher, tool, {"text": "\u00e9"})
        assert (ans.content_type, ans.payload) == (P.CONTENT_RAW, b"\xc3\xa9")
    # a raw call to a tool that returns JSON answers JSON
    ans = run(dispatcher, "type_error_inside", b"abc", P.CONTENT_RAW)
    assert (ans.content_type, ans.payload) == (P.CONTENT_JSON, b"3")


def test_raw_call_passes_bytes_positionally(dispatcher):
    ans = run(dispatcher, "static_tool", b"ab", P.CONTENT_RAW)
    assert ans.content_type == P.CONTENT_RAW and ans.payload == b"abab"


def test_raw_call_to_a_tool_without_a_positional_parameter(dispatcher):
    ans = run(dispatcher, "nothing", b"x", P.CONTENT_RAW)
    assert ans.error["kind"] == "bad_arguments"


def test_unknown_tool(dispatcher):
    ans = run(dispatcher, "nope")
    assert ans.error == {"kind": "unknown_tool", "type": None, "message": "no tool named 'nope'", "traceback": None}


@pytest.mark.parametrize(
    "args,fragment",
    [({"a": 1}, "missing a required argument: 'b'"), ({"a": 1, "b": 2, "c": 3}, "unexpected keyword argument 'c'")],
)
def test_bad_arguments(dispatcher, args, fragment):
    ans = run_json(dispatcher, "add", args)
    assert ans.error["kind"] == "bad_arguments"
    assert ans.error["type"] == "TypeError"
    assert ans.error["message"].startswith("add: ") and fragment in ans.error["message"]
    assert ans.error["traceback"] is None


@pytest.mark.parametrize("payload,json_type", [(b"[1,2]", "array"), (b"3", "number"), (b'"s"', "string"), (b"true", "boolean")])
def test_arguments_must_be_an_object(dispatcher, payload, json_type):
    ans = run(dispatcher, "nothing", payload)
    assert ans.error["kind"] == "bad_arguments"
    assert "got a JSON %s" % json_type in ans.error["message"]


def test_type_error_inside_the_tool_is_an_exception(dispatcher):
    ans = run_json(dispatcher, "type_error_inside", {"x": 5})
    assert ans.error["kind"] == "exception"
    assert ans.error["type"] == "TypeError"
    assert "len()" in ans.error["message"]
    tb = ans.error["traceback"]
    assert tb.startswith("Traceback (most recent call last):")
    assert "in type_error_inside" in tb and "sample_tools.py" in tb
    assert "dispatch.py" not in tb, "the worker's own frames are left out"


def test_exception_type_is_qualified(dispatcher):
    ans = run_json(dispatcher, "fail_custom", {"message": "no luck"})
    assert ans.error["kind"] == "exception"
    assert ans.error["type"] == "sample_tools.CustomError"
    assert ans.error["message"] == "no luck"
    assert ans.error["traceback"].rstrip().endswith("sample_tools.CustomError: no luck")
    assert qualified_name(ValueError) == "ValueError"
    assert qualified_name(json.JSONDecodeError) == "json.decoder.JSONDecodeError"


@pytest.mark.parametrize("payload", [b"{not json", b'{"a":1', b"\xff\xfe", b"   "])
def test_bad_json(dispatcher, payload):
    ans = run(dispatcher, "add", payload)
    assert ans.error["kind"] == "bad_payload"
    assert ans.error["type"] in ("json.decoder.JSONDecodeError", "UnicodeDecodeError")


def test_unknown_content_type(dispatcher):
    ans = run(dispatcher, "nothing", b"", 2)
    assert ans.error["kind"] == "bad_payload" and "content type 2" in ans.error["message"]


def test_unencodable_result(dispatcher):
    ans = run(dispatcher, "unencodable")
    assert ans.error["kind"] == "bad_result"
    assert ans.error["type"] == "TypeError"
    for value in (float("nan"), float("inf"), "\ud800", {1j: 1}):
        kind, body = encode_result(value)
        assert kind == P.ERROR and json.loads(body)["kind"] == "bad_result"


def test_error_texts_are_cut_and_always_utf8():
    def huge():
        raise ValueError("x" * (MAX_ERROR_TEXT * 2) + "\udc80")

    ans = run(Dispatcher({"huge": Tool("huge", huge)}), "huge")
    assert ans.error["kind"] == "exception"
    assert len(ans.error["message"]) < MAX_ERROR_TEXT + 100
    assert len(ans.error["traceback"]) < MAX_ERROR_TEXT + 100
    assert ans.error["traceback"].rstrip().endswith("\\udc80")


def test_base_exceptions_propagate(dispatcher):
    with pytest.raises(SystemExit):
        dispatcher.invoke("exit_worker", P.CONTENT_JSON, b'{"code":3}')


def test_a_wrapper_never_runs_for_arguments_that_do_not_bind():
    ran = []

    def add(a, b):
        return a + b

    @functools.wraps(add)
    def logged(*args, **kwargs):
        ran.append(kwargs)
        return add(*args, **kwargs)

    class Callable:
        def __call__(self, a):
            ran.append(a)

    def generated(**kwargs):
        ran.append(kwargs)

    generated.__signature__ = inspect.signature(add)  # stricter than **kwargs
    tools = {name: Tool(name, func) for name, func in
             (("logged", logged), ("callable", Callable()), ("generated", generated), ("add", add))}
    assert [tools[name].bind_first for name in ("logged", "callable", "generated", "add")] == [True, True, True, False]
    d = Dispatcher(tools)
    for name, args in (("logged", {"a": 1}), ("callable", {"b": 2}), ("generated", {"a": 1}), ("add", {"a": 1, "c": 3})):
        ans = run_json(d, name, args)
        assert ans.error["kind"] == "bad_arguments", (name, ans.error)
        assert ans.error["message"].startswith(name + ": "), ans.error
    assert ran == [], "no wrapper, callable object or function with its own signature ran"
    assert run_json(d, "logged", {"a": 1, "b": 2}).value == 3


def test_tools_without_a_signature_are_called_without_a_check():
    t = Tool("len", len)
    t.signature = None  # as for a callable inspect.signature() cannot describe
    ans = run(Dispatcher({"len": t}), "len", b"abc", P.CONTENT_RAW)
    assert ans.value == 3
    ans = run(Dispatcher({"len": t}), "len", b'{"x":1}')
    assert ans.error["kind"] == "exception" and ans.error["type"] == "TypeError"


def test_warm_up_runs():
    warm_up()


# --- streaming tools --------------------------------------------------------------


def _streaming_dispatcher(events):
    def gen(n):
        events.append("started")
        try:
            for i in range(n):
                yield i
        finally:
            events.append("finally")

    def plain(n):
        return list(range(n))

    return Dispatcher({"gen": Tool("gen", gen), "plain": Tool("plain", plain)})


def test_stream_call_of_a_generator_returns_it():
    events = []
    d = _streaming_dispatcher(events)
    kind, generator = d.invoke("gen", P.CONTENT_JSON, b'{"n":2}', True)
    assert kind is STREAM and inspect.getgeneratorstate(generator) == inspect.GEN_CREATED
    items = []
    with pytest.raises(StopIteration):
        while True:
            items.append(d.step(generator, "gen"))
    assert items == [0, 1] and events == ["started", "finally"]


def test_unary_call_of_a_generator_is_bad_result_and_closes_it_unstarted():
    events = []
    kind, body = _streaming_dispatcher(events).invoke("gen", P.CONTENT_JSON, b'{"n":2}')
    err = Answer(P.Frame(kind, 1, body)).error
    assert err["kind"] == "bad_result" and err["type"] is None
    assert "'gen' streams" in err["message"] and "call it as a stream" in err["message"]
    assert "--stream" in err["message"] and "ExecuteStream" in err["message"]
    assert events == [], "the generator's body never ran"


def test_stream_call_of_a_plain_tool_is_a_result():
    kind, body = _streaming_dispatcher([]).invoke("plain", P.CONTENT_JSON, b'{"n":2}', True)
    assert (kind, body) == (P.RESULT, b"\x00[0,1]")


def test_stream_call_errors_before_the_tool_runs_are_errors():
    d = _streaming_dispatcher([])
    assert json.loads(d.invoke("nope", P.CONTENT_JSON, b"", True)[1])["kind"] == "unknown_tool"
    assert json.loads(d.invoke("gen", P.CONTENT_JSON, b"{}", True)[1])["kind"] == "bad_arguments"


def test_other_iterables_are_plain_values():
    d = Dispatcher({"it": Tool("it", lambda: iter([1, 2])), "lst": Tool("lst", lambda: [1])})
    assert d.invoke("lst", P.CONTENT_JSON, b"", True) == (P.RESULT, b"\x00[1]")
    kind, body = d.invoke("it", P.CONTENT_JSON, b"", True)
    assert json.loads(body)["kind"] == "bad_result", "an iterator is not JSON and not a stream"


def test_cancelled_errors():
    for chunks, fragment in ((None, "before it started"), (3, "after 3 chunks")):
        kind, body = cancelled_error(chunks)
        err = json.loads(body)
        assert kind == P.ERROR and err["kind"] == "cancelled" and err["type"] is None and err["traceback"] is None
        assert fragment in err["message"]
