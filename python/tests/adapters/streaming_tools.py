"""Adapter for the protocol-3 tests (spec 'streaming_tools:Streams', or
'streaming_tools' for the module-level tools): streaming tools, the call
context, sessions, cancellation, idempotent markers. Streams inherits every
tool of sample_tools:Sample, so run_every_call_path works on it too.

The marker files a tool writes (`path`) let a test see from outside what
the tool did, and when."""

import json
import os
import threading
import time

from pitboss_worker import context, tool
from sample_tools import CustomError, Sample


def _write(path, value):
    """Replace `path` with the JSON of `value`, whole (written aside, then renamed)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


class Streams(Sample):
    def __init__(self):
        super().__init__()
        self._barriers = {}
        self._barriers_lock = threading.Lock()

    # --- streams ---------------------------------------------------------------

    @tool
    def count(self, n, raw=False):
        """0 .. n-1, as JSON numbers or (raw) as 4-byte big-endian bytes."""
        for i in range(n):
            yield i.to_bytes(4, "big") if raw else i

    @tool
    def count_marked(self, path, n=None, delay=0):
        """0, 1, ... (n items, or for ever), `delay` seconds before each.
        Before yielding an item it writes how many it has produced to `path`;
        its finally writes {"produced", "request_id", "thread"} to
        `path`.finally (the context is there: close runs inside the call)."""
        produced = 0
        try:
            while n is None or produced < n:
                if delay:
                    time.sleep(delay)
                produced += 1
                _write(path, produced)
                yield {"i": produced - 1, "thread": threading.get_ident()}
        finally:
            _write(path + ".finally", {
                "produced": produced, "request_id": context.request_id, "thread": threading.get_ident(),
            })

    @tool
    def fail_after(self, n):
        """n items, then CustomError."""
        for i in range(n):
            yield i
        raise CustomError("failed after %d items" % n)

    @tool
    def bad_item(self, path, good=2):
        """`good` items, then one that cannot be encoded; its finally writes `path`."""
        try:
            for i in range(good):
                yield i
            yield object()
            yield "never sent"
        finally:
            _write(path, "closed")

    @tool
    def unstarted(self, path):
        """Writes `path` when its body starts: a unary call must not start it."""
        _write(path, "started")
        yield 1

    @tool
    def mixed(self):
        """A JSON chunk, a raw chunk, an empty string."""
        yield {"a": [1, None]}
        yield b"\x00\xff"
        yield ""

    @tool
    def meet_stream(self, n, parties):
        """Waits (5 s at most) until `parties` calls of it are inside, then
        yields n items: all of them stream at once."""
        with self._barriers_lock:
            barrier = self._barriers.setdefault(parties, threading.Barrier(parties, timeout=5))
        barrier.wait()
        for i in range(n):
            yield {"i": i, "thread": threading.get_ident()}

    @tool
    def stream_whoami(self, n=3):
        """The context, as each step of the generator sees it."""
        for i in range(n):
            yield {"i": i, "request_id": context.request_id, "session": context.session}

    @tool
    def plain_list(self, n):
        """Not a generator: a list is one plain value, also for a stream call."""
        return list(range(n))

    @tool
    def iterator(self, n):
        """An iterator that is not a generator: a plain value (bad_result: not JSON)."""
        return iter(range(n))

    @staticmethod
    @tool(idempotent=True)
    def static_stream(n):
        yield from range(n)

    @classmethod
    @tool(name="class-stream")
    def class_stream(cls, n):
        for _ in range(n):
            yield cls.__name__

    # --- context ---------------------------------------------------------------

    @tool
    def whoami(self):
        return {"request_id": context.request_id, "session": context.session, "cancelled": context.cancelled()}

    @tool(idempotent=True)
    def wait_cancelled(self, path, timeout=5.0):
        """Cooperative: writes `path`, then polls context.cancelled()."""
        _write(path, "started")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if context.cancelled():
                return "cancelled"
            time.sleep(0.005)
        return "timed out"

    @tool
    def remember(self, key, value):
        state = context.session_state
        state[key] = value
        return sorted(state)

    @tool
    def put(self, key, value):
        context.session_state[key] = value

    @tool
    def size(self):
        return len(context.session_state)

    @tool
    def recall(self, key):
        return context.session_state.get(key)

    @tool
    def forget(self):
        context.end_session()
        return context.session

    @tool(idempotent=False)
    def session_in_stream(self, key, n=3):
        """Counts in the session state at each step of a stream."""
        for _ in range(n):
            state = context.session_state
            state[key] = state.get(key, 0) + 1
            yield state[key]


@tool
def module_stream(n):
    for i in range(n):
        yield i


@tool(idempotent=True)
def module_plain():
    return "plain"
