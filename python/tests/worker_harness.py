"""Test-side host: a listening Unix socket owned by the test, a real worker
process connected to it, and frame helpers. Every wait is bounded."""

import json
import os
import socket
import subprocess
import sys
import tempfile
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


def worker_env():
    env = dict(os.environ)
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
    """A RESULT or ERROR frame, decoded."""

    def __init__(self, frame):
        self.frame = frame
        self.request_id = frame.request_id
        self.kind = frame.kind
        if frame.kind == P.RESULT:
            self.content_type, self.payload = P.decode_result_body(frame.body)
            self.error = None
        elif frame.kind == P.ERROR:
            self.content_type = self.payload = None
            self.error = P.decode_json_body(frame.body)
        else:
            raise AssertionError("expected RESULT or ERROR, got %s" % P.kind_name(frame.kind))

    @property
    def value(self):
        assert self.kind == P.RESULT, "expected a RESULT, got ERROR %r" % (self.error,)
        if self.content_type == P.CONTENT_RAW:
            return self.payload
        assert self.content_type == P.CONTENT_JSON
        return json.loads(self.payload.decode("utf-8"))

    def __repr__(self):
        return "Answer(id=%d, %s)" % (self.request_id, self.error if self.error else self.payload)


class Host:
    """Listens on a Unix socket in `directory`, starts workers against it."""

    def __init__(self, directory):
        self.dir = directory
        self.socket_path = os.path.join(directory, "host.sock")
        self.stderr_path = os.path.join(directory, "worker.stderr")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.socket_path)
        self.listener.listen(4)
        self.proc = None
        self.conn = None
        self.reader = None
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

    def accept(self, timeout=TIMEOUT, proc=None):
        """Wait for the worker to connect; fails fast if it exits first."""
        proc = proc or self.proc
        self.listener.settimeout(0.05)
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn, _ = self.listener.accept()
                break
            except socket.timeout:
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(
                        "worker exited with %s before connecting; stderr:\n%s" % (proc.returncode, self.stderr())
                    )
                if time.monotonic() > deadline:
                    raise AssertionError("worker did not connect within %.0f s" % timeout)
        conn.settimeout(timeout)
        self.conn = conn
        self.reader = P.FrameReader(conn)
        return conn

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

    def close(self):
        if self.conn is not None:
            self.conn.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        if self._stderr_file is not None:
            self._stderr_file.close()
        self.listener.close()

    # --- frames --------------------------------------------------------------

    def send(self, data):
        self.conn.sendall(data)

    def send_frame(self, kind, request_id=0, body=b""):
        self.send(P.encode_frame(kind, request_id, body))

    def call(self, request_id, tool, args=None, raw=None, content_type=None):
        """Send a CALL: JSON of `args` (b'' when None), or `raw` bytes."""
        if raw is not None:
            payload, ct = raw, P.CONTENT_RAW
        else:
            payload, ct = (b"" if args is None else json.dumps(args).encode("utf-8")), P.CONTENT_JSON
        if content_type is not None:
            ct = content_type
        self.send_frame(P.CALL, request_id, P.encode_call_body(tool, ct, payload))

    def read(self, timeout=TIMEOUT):
        """The next frame; AssertionError on timeout or end of stream."""
        self.conn.settimeout(timeout)
        frame = self.reader.read_frame()
        assert frame is not None, "worker closed the connection; stderr:\n%s" % self.stderr()
        return frame

    def read_eof(self, timeout=TIMEOUT):
        """Assert that the next thing on the connection is the end of stream."""
        self.conn.settimeout(timeout)
        frame = self.reader.read_frame()
        assert frame is None, "expected end of stream, got %s" % P.kind_name(frame.kind)

    def answer(self, timeout=TIMEOUT):
        return Answer(self.read(timeout))

    def roundtrip(self, request_id, tool, args=None, raw=None, content_type=None):
        self.call(request_id, tool, args, raw, content_type)
        ans = self.answer()
        assert ans.request_id == request_id
        return ans
