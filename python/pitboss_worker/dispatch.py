"""Running one call: decode the arguments, check them, call the tool, encode
the answer. Pure functions of (tool, content type, payload); no I/O.

invoke() returns (frame kind, body): (RESULT, result body) or (ERROR, error
body), or, for a call made as a stream whose tool returned a generator,
(STREAM, the generator): the worker then runs the generator (step() takes
one item, encode_result() encodes it as a chunk). Everything it needs is
imported when the worker starts (see warm_up()), so a call never imports a
module.
"""

import json
import traceback
import types

from .protocol import (
    CONTENT_JSON,
    CONTENT_RAW,
    ERROR,
    MAX_FRAME_LENGTH,
    MIN_FRAME_LENGTH,
    RESULT,
    encode_error_body,
    encode_json_text,
)
from .adapter import Tool
from . import call_context

#: The kind invoke() returns for a stream to run: the body is the generator.
STREAM = "stream"
_GENERATOR = types.GeneratorType

#: message and traceback text in an ERROR body are cut to this many characters.
MAX_ERROR_TEXT = 64 * 1024
_RAW_TYPES = (bytes, bytearray, memoryview)
_JSON_TYPE_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def qualified_name(cls):
    """'ValueError' for builtins, 'package.module.Class' otherwise."""
    qualname = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", repr(cls))
    module = getattr(cls, "__module__", None)
    if not module or module == "builtins":
        return qualname
    return "%s.%s" % (module, qualname)


def _utf8_safe(text):
    """text with lone surrogates (not encodable as UTF-8) written as escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _cut_head(text):
    if len(text) <= MAX_ERROR_TEXT:
        return text
    return text[:MAX_ERROR_TEXT] + " ... [%d characters cut]" % (len(text) - MAX_ERROR_TEXT)


def _cut_tail(text):
    # A traceback's last lines matter most: keep the end.
    if len(text) <= MAX_ERROR_TEXT:
        return text
    return "[%d characters cut] ...\n" % (len(text) - MAX_ERROR_TEXT) + text[-MAX_ERROR_TEXT:]


def exception_message(exc):
    try:
        return str(exc)
    except Exception:
        return "<unprintable %s>" % qualified_name(type(exc))


def error(kind, type_name, message, traceback_text=None):
    """(ERROR, body) with texts made safe to encode and cut to the limit."""
    message = _cut_head(_utf8_safe(message))
    if traceback_text is not None:
        traceback_text = _cut_tail(_utf8_safe(traceback_text))
    return ERROR, encode_error_body(kind, type_name, message, traceback_text)


def format_traceback(exc, skip_frames=0):
    """The usual 'Traceback (most recent call last): ...' text, without the
    first `skip_frames` frames (the worker's own)."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is None:
            break
        tb = tb.tb_next
    try:
        return "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:
        return "%s: %s\n" % (qualified_name(type(exc)), exception_message(exc))


def exception_error(exc, skip_frames=1):
    return error(
        "exception",
        qualified_name(type(exc)),
        exception_message(exc),
        format_traceback(exc, skip_frames),
    )


def _json_type(value):
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def encode_result(result):
    """(RESULT, body) for a tool's return value, or (ERROR, bad_result body)."""
    try:
        if isinstance(result, _RAW_TYPES):
            content_type = CONTENT_RAW
            data = bytes(result)
        else:
            content_type = CONTENT_JSON
            data = encode_json_text(result).encode("utf-8")
    except Exception as exc:
        return error(
            "bad_result",
            qualified_name(type(exc)),
            "the tool's result cannot be encoded (JSON-serialisable values or bytes only): %s"
            % exception_message(exc),
        )
    if MIN_FRAME_LENGTH + 1 + len(data) > MAX_FRAME_LENGTH:
        return error(
            "bad_result",
            None,
            "the tool's result is %d bytes encoded; a frame holds at most %d"
            % (len(data), MAX_FRAME_LENGTH - MIN_FRAME_LENGTH - 1),
        )
    return RESULT, bytes((content_type,)) + data


def streams_unary_error(name):
    """(ERROR, bad_result body) for a streaming tool called without the STREAM flag."""
    return error(
        "bad_result",
        None,
        "tool %r streams (it is a generator function, its answer is a stream of chunks): call it as a "
        "stream (ExecuteStream, or pitboss call --stream)" % (name,),
    )


def cancelled_error(chunks=None):
    """(ERROR, cancelled body): before the call started (chunks None), or a
    stream stopped after `chunks` chunks."""
    if chunks is None:
        message = "the call was cancelled (CANCEL) before it started"
    else:
        message = "the call was cancelled (CANCEL); its stream stopped after %d chunks" % chunks
    return error("cancelled", None, message)


class Dispatcher:
    """Maps tool names to Tools and runs calls. Thread-safe: it holds no
    per-call state, so N executor threads can share one."""

    def __init__(self, tools):
        self._tools = dict(tools)

    @property
    def tool_names(self):
        return sorted(self._tools)

    def invoke(self, name, content_type, payload, stream=False):
        """Run one call; returns (RESULT, body) or (ERROR, body), or (STREAM,
        generator) when `stream` is true and the tool returned a generator.
        Without `stream` a returned generator is closed, unstarted, and the
        call is a bad_result. Exceptions from the tool are caught (Exception
        subclasses); BaseExceptions such as SystemExit and KeyboardInterrupt
        propagate to the caller."""
        found = self._tools.get(name)
        if found is None:
            return error("unknown_tool", None, "no tool named %r" % (name,))

        if content_type == CONTENT_JSON:
            args = ()
            if len(payload) == 0:
                kwargs = {}
            else:
                try:
                    kwargs = json.loads(bytes(payload).decode("utf-8"))
                except (UnicodeDecodeError, ValueError) as exc:
                    return error(
                        "bad_payload",
                        qualified_name(type(exc)),
                        "the payload is not UTF-8 JSON: %s" % exception_message(exc),
                    )
                if kwargs is None:
                    kwargs = {}
                elif not isinstance(kwargs, dict):
                    return error(
                        "bad_arguments",
                        None,
                        "%s: arguments must be a JSON object of keyword arguments (or null), got a JSON %s"
                        % (name, _json_type(kwargs)),
                    )
        elif content_type == CONTENT_RAW:
            args = (bytes(payload),)
            kwargs = {}
        else:
            return error(
                "bad_payload",
                None,
                "unknown content type %d (0 = JSON, 1 = raw bytes)" % content_type,
            )

        if found.bind_first:
            refused = refused_arguments(found, args, kwargs)
            if refused is not None:
                return refused

        return self._run(found, args, kwargs, stream)

    @staticmethod
    def _run(found, args, kwargs, stream=False):
        try:
            result = found.func(*args, **kwargs)
        except TypeError as exc:
            # A plain function's arguments are bound as it is called: a
            # TypeError raised there, before any frame of the tool ran, is
            # the arguments' (the signature says which and why).
            if exc.__traceback__.tb_next is None:
                refused = refused_arguments(found, args, kwargs)
                if refused is not None:
                    return refused
            return exception_error(exc, skip_frames=1)
        except Exception as exc:
            # skip_frames=1 drops this frame: the traceback starts in the tool.
            return exception_error(exc, skip_frames=1)
        if type(result) is _GENERATOR:
            if stream:
                return STREAM, result
            result.close()  # unstarted: its body has not run, nothing to clean up
            return streams_unary_error(found.name)
        return encode_result(result)

    def step(self, generator, name):
        """The next item of a streaming tool's generator (StopIteration at
        its end; its exceptions propagate). One frame between the caller and
        the generator: the caller's tracebacks skip two frames."""
        return next(generator)


def refused_arguments(found, args, kwargs):
    """The bad_arguments error when the arguments do not bind to the tool's
    signature, else None (also when it has none to check against)."""
    if found.signature is None:
        return None
    try:
        found.signature.bind(*args, **kwargs)
    except TypeError as exc:
        return error("bad_arguments", "TypeError", "%s: %s" % (found.name, exception_message(exc)))
    return None


def _warm_up_tool(kind):
    if kind == "fail":
        raise ValueError("warm-up")
    if kind == "bytes":
        return b"\x00"
    if kind == "bad":
        return object()
    return {"n": 1, "s": "\u00e9", "f": 1.5, "l": [None, True]}


def _warm_up_stream(fail=False):
    yield {"n": 1}
    yield b"\x00"
    if fail:
        raise ValueError("warm-up")


def warm_up():
    """Run every path of invoke() once, so that anything the standard library
    imports lazily (traceback formatting, JSON errors, signature binding) is
    imported at start and never during a call."""
    d = Dispatcher({"t": Tool("t", _warm_up_tool)})
    d.invoke("t", CONTENT_JSON, b'{"kind":"ok"}')
    d.invoke("t", CONTENT_JSON, b'{"kind":"fail"}')
    d.invoke("t", CONTENT_JSON, b'{"kind":"bytes"}')
    d.invoke("t", CONTENT_JSON, b'{"kind":"bad"}')
    d.invoke("t", CONTENT_JSON, b'{"nope":1}')
    d.invoke("t", CONTENT_JSON, b"{not json")
    d.invoke("t", CONTENT_JSON, b"\xff")
    d.invoke("t", CONTENT_JSON, b"[1]")
    d.invoke("t", CONTENT_RAW, b"x")
    d.invoke("t", 9, b"")
    d.invoke("missing", CONTENT_JSON, b"")
    d.invoke("t", CONTENT_JSON, b'{"kind":"ok"}', True)  # a plain tool called as a stream
    encode_result(float("nan"))
    encode_result("\ud800")
    # Streams: a generator called as a stream and not, stepped to its end,
    # closed half-way; the cancelled errors.
    d = Dispatcher({"g": Tool("g", _warm_up_stream)})
    d.invoke("g", CONTENT_JSON, b"")
    d.invoke("g", CONTENT_JSON, b"", True)
    for payload in (b"", b'{"fail":true}'):
        kind, generator = d.invoke("g", CONTENT_JSON, payload, True)
        try:
            while True:
                encode_result(d.step(generator, "g"))
        except StopIteration:
            pass
        except ValueError as exc:
            exception_error(exc, skip_frames=2)
    kind, generator = d.invoke("g", CONTENT_JSON, b"", True)
    d.step(generator, "g")
    generator.close()
    cancelled_error()
    cancelled_error(3)
    call_context.warm_up()
