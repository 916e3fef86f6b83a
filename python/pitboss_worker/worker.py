"""The worker runtime: one connection to the host, a protocol thread, an
executor, signal handling and the parent-death watch.

Threads:

* main thread: sends HELLO, then is executor 0 (runs calls from the queue);
  with --threads N, N-1 more executor threads run beside it.
* "pitboss-protocol": reads frames. Answers PING at once, queues CALLs,
  starts the shutdown on SHUTDOWN, exits the process when the host is gone.
* "pitboss-control": turns SIGTERM (delivered to the main thread, which may
  be deep inside a tool) into the shutdown, outside the signal handler.
* "pitboss-parent-watch": exits the process when the parent changes.

Every write to the socket holds one lock, so frames never interleave.
"""

import os
import queue
import signal
import sys
import sysconfig
import threading
import time
import traceback

from ._version import __version__
from .dispatch import error, exception_error, qualified_name
from .protocol import (
    CALL,
    CANCEL,
    ERROR,
    HELLO,
    PING,
    PONG,
    PROTOCOL_VERSION,
    SHUTDOWN,
    FrameReader,
    FrameTooLarge,
    ProtocolError,
    decode_call_body,
    encode_frame,
    encode_json_text,
    kind_name,
)

# Exit statuses (docs/protocol.md, "Exit statuses").
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_ADAPTER = 3
EXIT_PROTOCOL = 4
EXIT_CONNECT = 5
EXIT_PARENT_GONE = 6

PARENT_CHECK_INTERVAL = 0.5

_STOP = object()


def log(message):
    """One line on stderr, never raising (stderr may be a closed pipe)."""
    try:
        sys.stderr.write("pitboss-worker[%d]: %s\n" % (os.getpid(), message))
        sys.stderr.flush()
    except Exception:
        pass


def hard_exit(status):
    """Leave now, from any thread, whatever the other threads are doing."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(status)


def gil_enabled():
    probe = getattr(sys, "_is_gil_enabled", None)
    if probe is None:
        return True
    return bool(probe())


def free_threaded_build():
    return sysconfig.get_config_var("Py_GIL_DISABLED") == 1


def worker_facts(adapter_spec, tool_names, threads):
    """The HELLO body as a dict (measure after the adapter is imported: an
    extension module can turn the GIL back on)."""
    return {
        "protocol": PROTOCOL_VERSION,
        "pid": os.getpid(),
        "python_version": "%d.%d.%d" % tuple(sys.version_info[:3]),
        "implementation": sys.implementation.name,
        "free_threaded_build": free_threaded_build(),
        "gil_enabled": gil_enabled(),
        "tools": sorted(tool_names),
        "adapter": adapter_spec,
        "threads": threads,
        "package_version": __version__,
    }


def watch_parent(interval=PARENT_CHECK_INTERVAL, initial_ppid=None):
    """Start a daemon thread that exits the process (status 6) as soon as
    os.getppid() differs from what it was at start."""
    ppid = os.getppid() if initial_ppid is None else initial_ppid

    def run():
        while True:
            time.sleep(interval)
            if os.getppid() != ppid:
                log("parent process %d is gone; exiting" % ppid)
                hard_exit(EXIT_PARENT_GONE)

    thread = threading.Thread(target=run, name="pitboss-parent-watch", daemon=True)
    thread.start()
    return thread


class Worker:
    """Serves one connected socket until SHUTDOWN, SIGTERM or end of stream."""

    def __init__(self, sock, dispatcher, facts, threads=1):
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self._sock = sock
        self._dispatcher = dispatcher
        self._facts = facts
        self._threads = threads
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._calls = queue.SimpleQueue()  # (request_id, tool, content_type, payload) or _STOP
        self._control = queue.SimpleQueue()  # signal numbers, put by the signal handler
        self._closing = False  # no new calls start
        self._host_gone = False  # nothing more can be sent
        self._in_flight = 0

    # --- sending -----------------------------------------------------------

    def _send(self, kind, request_id, body=b""):
        frame = encode_frame(kind, request_id, body)
        with self._write_lock:
            if self._host_gone:
                return False
            try:
                self._sock.sendall(frame)
            except OSError:
                # The reader sees the end of stream too and takes the exit path.
                self._host_gone = True
                return False
        return True

    def _send_error(self, request_id, kind, message, type_name=None, traceback_text=None):
        _, body = error(kind, type_name, message, traceback_text)
        self._send(ERROR, request_id, body)

    # --- lifecycle ---------------------------------------------------------

    def serve(self):
        """Send HELLO and run calls until told to stop; returns the exit status.

        Call it on the main thread: SIGTERM is handled only there (elsewhere
        the SHUTDOWN frame still works)."""
        self._install_signal_handlers()
        self._send(HELLO, 0, encode_json_text(self._facts).encode("utf-8"))
        threading.Thread(target=self._guard(self._control_loop), name="pitboss-control", daemon=True).start()
        threading.Thread(target=self._guard(self._reader_loop), name="pitboss-protocol", daemon=True).start()
        executors = []
        for i in range(1, self._threads):
            t = threading.Thread(target=self._guard(self._executor_loop), name="pitboss-executor-%d" % i, daemon=True)
            t.start()
            executors.append(t)
        self._executor_loop()
        for t in executors:
            t.join()
        return EXIT_OK

    def _install_signal_handlers(self):
        # Only record the signal: the handler runs on the main thread between
        # two bytecodes of whatever tool is running there, maybe inside a
        # `with lock:` of ours. SimpleQueue.put is reentrant, so it is safe.
        def on_signal(signum, frame):
            self._control.put(signum)

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_signal)

    def _control_loop(self):
        while True:
            signum = self._control.get()
            self.begin_shutdown("signal %d" % signum)

    def begin_shutdown(self, reason):
        """Stop taking calls: refuse the queued ones with shutting_down, let
        the one in flight finish, then let the executors return."""
        with self._state_lock:
            if self._closing:
                return
            self._closing = True
        refused = []
        while True:
            try:
                item = self._calls.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                refused.append(item)
        for item in refused:
            self._send_error(item[0], "shutting_down", "the worker is shutting down (%s); the call did not start" % reason)
        for _ in range(self._threads):
            self._calls.put(_STOP)

    def _on_host_gone(self):
        with self._state_lock:
            self._host_gone = True
            self._closing = True
            busy = self._in_flight > 0
        if busy:
            # Nobody can receive the answer of the call in flight.
            hard_exit(EXIT_OK)
        for _ in range(self._threads):
            self._calls.put(_STOP)

    def _guard(self, loop):
        """A thread of ours that dies unexpectedly takes the process with it
        (a worker without its reader or executor would hang)."""

        def run():
            try:
                loop()
            except BaseException:
                log("internal error in thread %s:\n%s" % (threading.current_thread().name, traceback.format_exc()))
                hard_exit(EXIT_INTERNAL)

        return run

    # --- reading -----------------------------------------------------------

    def _reader_loop(self):
        reader = FrameReader(self._sock)
        while True:
            try:
                frame = reader.read_frame()
            except FrameTooLarge as exc:
                log("protocol error: %s; exiting" % exc)
                hard_exit(EXIT_PROTOCOL)
            except ProtocolError as exc:
                log("protocol error: %s; exiting" % exc)
                hard_exit(EXIT_PROTOCOL)
            except OSError:
                frame = None
            if frame is None:
                self._on_host_gone()
                return
            self._handle(frame)

    def _handle(self, frame):
        kind, request_id, body = frame
        if kind == PING:
            self._send(PONG, request_id)
        elif kind == CALL:
            try:
                tool, content_type, payload = decode_call_body(body)
            except ProtocolError as exc:
                self._send_error(request_id, "protocol", str(exc))
                return
            with self._state_lock:
                closing = self._closing
                if not closing:
                    self._calls.put((request_id, tool, content_type, payload))
            if closing:
                self._send_error(request_id, "shutting_down", "the worker is shutting down; the call did not start")
        elif kind == CANCEL:
            pass  # version 1: a process worker cannot stop a running call; the host kills it instead
        elif kind == SHUTDOWN:
            self.begin_shutdown("SHUTDOWN frame")
        else:
            self._send_error(
                request_id,
                "protocol",
                "unexpected frame kind 0x%02x (%s) from the host" % (kind, kind_name(kind)),
            )

    # --- executing ---------------------------------------------------------

    def _executor_loop(self):
        calls = self._calls
        invoke = self._dispatcher.invoke
        while True:
            item = calls.get()
            if item is _STOP:
                return
            request_id, tool, content_type, payload = item
            with self._state_lock:
                refuse = self._closing
                if not refuse:
                    self._in_flight += 1
            if refuse:
                self._send_error(request_id, "shutting_down", "the worker is shutting down; the call did not start")
                continue
            try:
                try:
                    kind, body = invoke(tool, content_type, payload)
                except BaseException as exc:  # SystemExit, KeyboardInterrupt from the tool
                    _, body = exception_error(exc, skip_frames=0)
                    self._send(ERROR, request_id, body)
                    log("tool %r raised %s; exiting" % (tool, qualified_name(type(exc))))
                    hard_exit(EXIT_INTERNAL)
                self._send(kind, request_id, body)
            finally:
                with self._state_lock:
                    self._in_flight -= 1
