"""Test-side host: a listening Unix socket owned by the test, a real worker
process connected to it, and frame helpers. Every wait is bounded."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pitboss_worker
from pitboss_worker import protocol as P

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ADAPTERS_DIR = os.path.join(TESTS_DIR, "adapters")
REPO_ROOT = os.path.dirname(os.path.dirname(TESTS_DIR))
EXAMPLES_DIR = os.path.join(REPO_ROOT, "examples")
VECTORS_PATH = os.path.join(REPO_ROOT, "docs", "protocol_vectors.json")
# The directory the tests imported pitboss_worker from: the worker runs the same code.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(pitboss_worker.__file__)))

TIMEOUT = 10.0


def short_tmpdir():
    """A fresh directory with a short path (AF_UNIX paths are limited to ~100 bytes)."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    return tempfile.mkdtemp(prefix="pbw-", dir=base)


def all_at_once(make, threads=8):
    """What `make()` returned on each of `threads` threads released together
    (a barrier), for checks that racing callers all get the same object."""
    start = threading.Barrier(threads)
    got = []

    def take():
        start.wait()
        got.append(make())

    runners = [threading.Thread(target=take) for _ in range(threads)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join(TIMEOUT)
    return got


def worker_env():
    env = dict(os.environ)
    # The tests check what the worker itself does to the GIL, not a forced setting.
    env.pop("PYTHON_GIL", None)
    paths = [PACKAGE_PARENT]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def worker_command(adapter, socket_path, extra=()):
    return [
        sys.executable, "-m", "pitboss_worker",
        "--adapter", adapter,
        "--socket", socket_path,
        "--path", ADAPTERS_DIR,
        "--path", EXAMPLES_DIR,
    ] + list(extra)


def wait_until(predicate, timeout=TIMEOUT, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Answer:
    """A RESULT or ERROR frame, decoded (also a STREAM_CHUNK or STREAM_END
    with stream=True)."""

    def __init__(self, frame, stream=False):
        self.frame = frame
        self.request_id = frame.request_id
        self.kind = frame.kind
        self.content_type = self.payload = self.error = None
        if frame.kind == P.RESULT or (stream and frame.kind == P.STREAM_CHUNK):
            self.content_type, self.payload = P.decode_result_body(frame.body)
        elif frame.kind == P.ERROR:
            self.error = P.decode_json_body(frame.body)
        elif stream and frame.kind == P.STREAM_END:
            assert frame.body == b"", "STREAM_END has an empty body"
        else:
            raise AssertionError("expected RESULT or ERROR, got %s" % P.kind_name(frame.kind))

    @property
    def terminal(self):
        """RESULT, ERROR and STREAM_END end a call; STREAM_CHUNK does not."""
        return self.kind != P.STREAM_CHUNK

    @property
    def value(self):
        assert self.kind in (P.RESULT, P.STREAM_CHUNK), "expected a RESULT or a chunk, got %s %r" % (
            P.kind_name(self.kind), self.error)
        if self.content_type == P.CONTENT_RAW:
            return self.payload
        assert self.content_type == P.CONTENT_JSON
        return json.loads(self.payload.decode("utf-8"))

    def __repr__(self):
        return "Answer(id=%d, %s, %s)" % (
            self.request_id, P.kind_name(self.kind), self.error if self.error else self.payload)


class Stream:
    """What a streaming call answered: its chunks' values, in order, and its
    terminal frame (an Answer: STREAM_END, ERROR, or a RESULT)."""

    def __init__(self, request_id):
        self.request_id = request_id
        self.chunks = []
        self.end = None

    @property
    def ended(self):
        return self.end is not None and self.end.kind == P.STREAM_END

    def __repr__(self):
        return "Stream(id=%d, %d chunks, end=%r)" % (self.request_id, len(self.chunks), self.end)


class Host:
    """Listens on a Unix socket in `directory`, starts workers against it.

    A worker opens two connections (docs/protocol.md, "Transport"):
    `control` (HELLO, PING/PONG, SHUTDOWN, CANCEL, CREDIT) and `calls` (CALL
    out, RESULT/ERROR/STREAM_CHUNK/STREAM_END back)."""

    def __init__(self, directory):
        self.dir = directory
        self.socket_path = os.path.join(directory, "host.sock")
        self.stderr_path = os.path.join(directory, "worker.stderr")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.socket_path)
        self.listener.listen(4)
        self.proc = None
        self.control = self.calls = None
        self.control_reader = self.calls_reader = None
        self._stderr_file = None

    # --- process -------------------------------------------------------------

    def start(self, adapter="sample_tools:Sample", extra=(), command=None):
        self._stderr_file = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            command or worker_command(adapter, self.socket_path, extra),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr_file,
            env=worker_env(),
            cwd=self.dir,
        )
        return self.proc

    def _accept_one(self, which, deadline, proc):
        while True:
            try:
                conn, _ = self.listener.accept()
                return conn
            except socket.timeout:
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(
                        "worker exited with %s before opening its %s connection; stderr:\n%s"
                        % (proc.returncode, which, self.stderr())
                    )
                if time.monotonic() > deadline:
                    raise AssertionError("worker did not open its %s connection in time" % which)

    def accept(self, timeout=TIMEOUT, proc=None):
        """Wait for the worker's control connection, then its call
        connection; fails fast if it exits first."""
        proc = proc or self.proc
        self.listener.settimeout(0.05)
        deadline = time.monotonic() + timeout
        self.control = self._accept_one("control", deadline, proc)
        self.calls = self._accept_one("call", deadline, proc)
        for conn in (self.control, self.calls):
            conn.settimeout(timeout)
        self.control_reader = P.FrameReader(self.control)
        self.calls_reader = P.FrameReader(self.calls)

    def start_ready(self, adapter="sample_tools:Sample", extra=()):
        """Start a worker, accept it, read its HELLO; returns the HELLO body."""
        self.start(adapter, extra)
        self.accept()
        return self.read_hello()

    def read_hello(self):
        frame = self.read()
        assert frame.kind == P.HELLO, "expected HELLO, got %s" % P.kind_name(frame.kind)
        assert frame.request_id == 0
        return P.decode_json_body(frame.body)

    def wait_exit(self, timeout=TIMEOUT):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("worker still running after %.0f s; stderr:\n%s" % (timeout, self.stderr()))

    def stderr(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def close_connection(self, which):
        """Close the host's end of `control` or `calls`, as a host that went away does."""
        getattr(self, which).close()
        setattr(self, which, None)

    def close(self):
        for conn in (self.control, self.calls):
            if conn is not None:
                conn.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        if self._stderr_file is not None:
            self._stderr_file.close()
        self.listener.close()

    # --- frames --------------------------------------------------------------

    def send_control(self, kind, request_id=0, body=b""):
        """A frame on the control connection."""
        self.control.sendall(P.encode_frame(kind, request_id, body))

    def send_call_frame(self, kind, request_id, body=b""):
        """A frame on the call connection (a CALL, or something that does not belong there)."""
        self.calls.sendall(P.encode_frame(kind, request_id, body))

    def call(self, request_id, tool, args=None, raw=None, content_type=None, stream=False, trace_id="",
             session=None):
        """Send a CALL: JSON of `args` (b'' when None), or `raw` bytes."""
        if raw is not None:
            payload, ct = raw, P.CONTENT_RAW
        else:
            payload, ct = (b"" if args is None else json.dumps(args).encode("utf-8")), P.CONTENT_JSON
        if content_type is not None:
            ct = content_type
        body = P.encode_call_body(tool, ct, payload, stream=stream, trace_id=trace_id, session=session)
        self.send_call_frame(P.CALL, request_id, body)

    def cancel(self, request_id):
        self.send_control(P.CANCEL, request_id)

    def credit(self, request_id, chunks):
        self.send_control(P.CREDIT, request_id, P.encode_credit_body(chunks))

    def _read(self, conn, reader, which, timeout):
        conn.settimeout(timeout)
        frame = reader.read_frame()
        assert frame is not None, "worker closed its %s connection; stderr:\n%s" % (which, self.stderr())
        return frame

    def read(self, timeout=TIMEOUT):
        """The next frame on the control connection; AssertionError on timeout or end of stream."""
        return self._read(self.control, self.control_reader, "control", timeout)

    def ping(self, request_id, timeout=TIMEOUT):
        """Send PING and wait for its PONG."""
        self.send_control(P.PING, request_id)
        frame = self.read(timeout)
        assert (frame.kind, frame.request_id, frame.body) == (P.PONG, request_id, b""), frame

    def read_eof(self, timeout=TIMEOUT):
        """Assert that both connections are at the end of stream, nothing left unread."""
        for conn, reader, which in (
            (self.control, self.control_reader, "control"),
            (self.calls, self.calls_reader, "call"),
        ):
            conn.settimeout(timeout)
            frame = reader.read_frame()
            assert frame is None, "expected end of stream on the %s connection, got %s" % (
                which, P.kind_name(frame.kind))

    def answer(self, timeout=TIMEOUT):
        """The next RESULT or ERROR on the call connection."""
        return Answer(self._read(self.calls, self.calls_reader, "call", timeout))

    def stream_frame(self, timeout=TIMEOUT):
        """The next frame on the call connection, any of the four it carries."""
        return Answer(self._read(self.calls, self.calls_reader, "call", timeout), stream=True)

    def nothing_on_calls(self, seconds=0.3):
        """True when no frame comes on the call connection for `seconds`."""
        self.calls.settimeout(seconds)
        try:
            frame = self.calls_reader.read_frame()
        except socket.timeout:
            return True
        raise AssertionError("expected silence on the call connection, got %r" % (Answer(frame, stream=True),))

    def read_streams(self, request_ids, grant=8, cancel_after=None, max_chunks=100000):
        """Read the call connection until each call of `request_ids` has its
        terminal frame, as the host does: after each `grant` chunks of a call
        (None: never) send CREDIT `grant` for it; `cancel_after` ({request
        id: n}) sends CANCEL once that call's n-th chunk is read. Every frame
        read must belong to one of those calls, none may follow its call's
        terminal frame. Returns {request id: Stream}."""
        cancel_after = dict(cancel_after or {})
        streams = {rid: Stream(rid) for rid in request_ids}
        open_ids = set(request_ids)
        total = 0
        while open_ids:
            ans = self.stream_frame()
            stream = streams.get(ans.request_id)
            assert stream is not None, "a frame for a call not read here: %r" % (ans,)
            assert stream.end is None, "a frame after the terminal frame of call %d: %r" % (ans.request_id, ans)
            if ans.terminal:
                stream.end = ans
                open_ids.discard(ans.request_id)
                continue
            stream.chunks.append(ans.value)
            total += 1
            if cancel_after.get(ans.request_id) == len(stream.chunks):
                self.cancel(ans.request_id)
            assert total <= max_chunks, "more chunks than expected"
            if grant and len(stream.chunks) % grant == 0:
                self.credit(ans.request_id, grant)
        return streams

    def read_stream(self, request_id, grant=8):
        """read_streams() for one call: its Stream."""
        return self.read_streams([request_id], grant)[request_id]

    def stream_call(self, request_id, tool, args=None, grant=8, **kwargs):
        """Send a CALL with the STREAM flag and read its whole answer."""
        self.call(request_id, tool, args, stream=True, **kwargs)
        return self.read_stream(request_id, grant)

    def roundtrip(self, request_id, tool, args=None, raw=None, content_type=None, **call_fields):
        """call() (with `stream`, `trace_id`, `session` as given), then its one answer."""
        self.call(request_id, tool, args, raw, content_type, **call_fields)
        ans = self.answer()
        assert ans.request_id == request_id
        return ans


def run_every_call_path(host, first_id=1000):
    """Drive a sample_tools:Sample worker through every path of a call:
    JSON and raw results, each error kind, frames on the wrong connection."""
    ids = iter(range(first_id, first_id + 100))
    host.roundtrip(next(ids), "add", {"a": 1, "b": 2})
    host.roundtrip(next(ids), "reverse", raw=b"ab")
    host.roundtrip(next(ids), "as_memoryview", {"text": "x"})
    host.roundtrip(next(ids), "fail_custom", {"message": "m"})
    host.roundtrip(next(ids), "type_error_inside", {"x": 1})
    host.roundtrip(next(ids), "add", {"a": 1})
    host.roundtrip(next(ids), "add", raw=b"\xff")
    host.send_call_frame(P.CALL, next(ids), P.encode_call_body("add", P.CONTENT_JSON, b"{bad"))
    host.answer()
    host.roundtrip(next(ids), "unencodable")
    host.roundtrip(next(ids), "nope")
    host.roundtrip(next(ids), "nothing", content_type=9)
    host.send_call_frame(0x42, next(ids))
    host.answer()
    host.send_control(0x42, next(ids))
    host.read()
    host.ping(next(ids))


def run_every_stream_path(host, directory, first_id=3000):
    """Drive a streaming_tools:Streams worker through every path of
    protocol 3: streams to their end (JSON and raw chunks), waiting for
    credit, an exception and a bad item mid-stream, cancellation while
    waiting and before the call is read, a unary call of a streaming tool, a
    stream call of a plain tool, the call context and session state (kept,
    ended, missing), CREDIT for no stream and a malformed one."""
    ids = iter(range(first_id, first_id + 100))
    host.stream_call(next(ids), "count", {"n": 40})
    host.stream_call(next(ids), "mixed")
    host.stream_call(next(ids), "fail_after", {"n": 2})
    host.stream_call(next(ids), "bad_item", {"path": os.path.join(directory, "bad-item")})
    host.stream_call(next(ids), "add", {"a": 1, "b": 2})
    host.stream_call(next(ids), "stream_whoami", trace_id="t", session="s")
    host.roundtrip(next(ids), "count", {"n": 1})
    waiting = next(ids)
    host.call(waiting, "count_marked", {"path": os.path.join(directory, "waiting")}, stream=True)
    for _ in range(P.STREAM_WINDOW):
        host.stream_frame()
    host.credit(waiting, 1)
    host.stream_frame()
    host.cancel(waiting)
    assert host.stream_frame().error["kind"] == "cancelled"
    early = next(ids)
    host.cancel(early)
    host.ping(next(ids))
    assert host.roundtrip(early, "add", {"a": 1, "b": 2}).error["kind"] == "cancelled"
    host.roundtrip(next(ids), "whoami", trace_id="t", session="s")
    host.roundtrip(next(ids), "remember", {"key": "k", "value": 1}, session="s")
    host.roundtrip(next(ids), "recall", {"key": "k"}, session="s")
    host.roundtrip(next(ids), "forget", session="s")
    host.roundtrip(next(ids), "remember", {"key": "k", "value": 1})
    host.credit(next(ids), 8)
    host.send_control(P.CREDIT, next(ids), b"\x00")
    host.read()
    host.ping(next(ids))
