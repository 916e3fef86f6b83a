"""The worker runtime: two connections to the host, the executors, signal
handling and the parent-death watch.

Connections (docs/protocol.md, "Transport"):

* control: HELLO and PONG out; PING, SHUTDOWN, CANCEL and CREDIT in.
* call: CALL in; RESULT, ERROR, STREAM_CHUNK and STREAM_END out. The
  executors read it themselves, so a call goes from the socket to the tool on
  one thread, with no handoff.

Threads:

* main thread: sends HELLO, then is executor 0; with --threads N, N-1 more
  executor threads run beside it. An executor takes the read lock, reads one
  frame from the call connection, releases the lock, runs the call and
  writes its answer (leader/follower: the executors take turns reading). A
  streaming call runs its whole generator on that executor, which waits
  (without stepping the generator) while the call has no credit.
* "pitboss-protocol": reads the control connection. Answers PING at once
  (also mid-call), starts the shutdown on SHUTDOWN, marks a call cancelled
  on CANCEL and adds a stream's credit on CREDIT (waking its executor),
  takes the host-gone path at the end of stream.
* "pitboss-call-watch": notices the host closing the call connection while
  every executor is busy in a call, so nobody is reading it.
* "pitboss-signals": turns SIGTERM (delivered to the main thread, which may
  be deep inside a tool) into the shutdown, outside the signal handler.
* "pitboss-parent-watch": exits the process when the parent changes.

Each connection has its own write lock, so frames never interleave. The
calls in flight (request id -> CallState, for CANCEL and CREDIT) are kept
under the state lock, which each call takes anyway to count itself in
flight.
"""

import os
import queue
import select
import signal
import socket
import sys
import sysconfig
import threading
import time
import traceback

from ._version import __version__
from .call_context import CallState, _local as _context_local
from .dispatch import STREAM, cancelled_error, encode_result, error, exception_error, qualified_name
from .protocol import (
    CALL,
    CANCEL,
    CREDIT,
    EARLY_CANCEL_MEMORY,
    ERROR,
    HELLO,
    PING,
    PONG,
    PROTOCOL_VERSION,
    SHUTDOWN,
    STREAM_CHUNK,
    STREAM_END,
    FrameReader,
    ProtocolError,
    decode_call_body,
    decode_credit_body,
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
#: How long (µs) an idle executor keeps reading the call connection without
#: sleeping before it blocks (--call-spin-us).
DEFAULT_CALL_SPIN_US = 200

# POLLRDHUP (Linux) reports that the peer closed or shut down its sending
# side; elsewhere POLLHUP reports at least a full close.
_PEER_CLOSED = getattr(select, "POLLRDHUP", select.POLLHUP)


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


def worker_facts(adapter_spec, tool_names, threads, thread_safe=None, unsafe_modules=(),
                 streaming_tools=(), idempotent_tools=()):
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
        "thread_safe": thread_safe,
        "unsafe_modules": list(unsafe_modules),
        "streaming_tools": sorted(streaming_tools),
        "idempotent_tools": sorted(idempotent_tools),
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


class Connection:
    """One socket to the host and the lock that keeps its frames whole."""

    __slots__ = ("sock", "name", "write_lock")

    def __init__(self, sock, name):
        self.sock = sock
        self.name = name
        self.write_lock = threading.Lock()


class Worker:
    """Serves its two connections until SHUTDOWN, SIGTERM or end of stream."""

    def __init__(self, control_sock, call_sock, dispatcher, facts, threads=1, call_spin_us=DEFAULT_CALL_SPIN_US):
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self._control = Connection(control_sock, "control")
        self._call = Connection(call_sock, "call")
        self._dispatcher = dispatcher
        self._facts = facts
        self._threads = threads
        # The buffered reader is shared by the executors: whoever holds the
        # read lock reads exactly one frame with it. After a call it polls
        # for the next one a little before sleeping: a caller with calls in
        # a row then finds the worker awake, which halves a round trip.
        self._call_reader = FrameReader(call_sock, spin=call_spin_us / 1e6)
        self._read_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._signals = queue.SimpleQueue()  # signal numbers, put by the signal handler
        self._closing = False  # no new calls start
        self._shutdown_reason = None
        self._host_gone = False  # nothing more can be sent
        self._in_flight = 0
        # Under the state lock: the calls running (request id -> CallState),
        # and the CANCELs of calls not read yet (request id -> None, oldest
        # first, at most EARLY_CANCEL_MEMORY).
        self._calls = {}
        self._early_cancels = {}

    # --- sending -----------------------------------------------------------

    def _send(self, conn, kind, request_id, body=b""):
        frame = encode_frame(kind, request_id, body)
        with conn.write_lock:
            if self._host_gone:
                return
            try:
                conn.sock.sendall(frame)
            except OSError:
                # The readers see the end of stream too and take the host-gone path.
                self._host_gone = True

    def _send_error(self, conn, request_id, kind, message):
        _, body = error(kind, None, message)
        self._send(conn, ERROR, request_id, body)

    def _unexpected_frame(self, conn, kind, request_id, hint):
        self._send_error(
            conn,
            request_id,
            "protocol",
            "unexpected frame kind 0x%02x (%s) on the %s connection: %s" % (kind, kind_name(kind), conn.name, hint),
        )

    # --- lifecycle ---------------------------------------------------------

    def serve(self):
        """Send HELLO and run calls until told to stop; returns the exit status.

        Call it on the main thread: SIGTERM is handled only there (elsewhere
        the SHUTDOWN frame still works)."""
        self._install_signal_handlers()
        self._send(self._control, HELLO, 0, encode_json_text(self._facts).encode("utf-8"))
        for loop, name in (
            (self._signal_loop, "pitboss-signals"),
            (self._control_loop, "pitboss-protocol"),
            (self._watch_call_connection, "pitboss-call-watch"),
        ):
            threading.Thread(target=self._guard(loop), name=name, daemon=True).start()
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
            self._signals.put(signum)

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_signal)

    def _signal_loop(self):
        while True:
            signum = self._signals.get()
            self.begin_shutdown("signal %d" % signum)

    def begin_shutdown(self, reason):
        """Stop starting calls: the calls in flight finish; the calls already
        received but not started are refused with shutting_down; then the
        executors return."""
        with self._state_lock:
            if self._closing:
                return
            self._closing = True
            self._shutdown_reason = reason
        self._stop_reading_calls()
        # Refuse what the host had sent before the shutdown now, rather than
        # when an executor is next free: the host can give those calls to
        # another worker at once. Reading never blocks any more (see above).
        with self._read_lock:
            while True:
                frame = self._read_call_frame()
                if frame is None:
                    break
                self._accept_call(frame)

    def _stop_reading_calls(self):
        """Shut the call connection for reading: an executor blocked in recv
        wakes up, what is already buffered can still be read without
        blocking, then the stream ends. The host's later CALL writes fail
        (EPIPE); answers still go out on the same connection."""
        try:
            self._call.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # the host closed it first: the stream has ended anyway

    def _on_host_gone(self):
        with self._state_lock:
            self._host_gone = True
            if not self._closing:
                self._closing = True
                self._shutdown_reason = "the host closed its connection"
            busy = self._in_flight > 0
        if busy:
            # Nobody can receive the answer of the call in flight.
            hard_exit(EXIT_OK)
        self._stop_reading_calls()

    def _fatal_protocol_error(self, exc):
        # The stream is out of step: the next frame cannot be found.
        log("protocol error: %s; exiting" % exc)
        hard_exit(EXIT_PROTOCOL)

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

    # --- the control connection ---------------------------------------------

    def _control_loop(self):
        conn = self._control
        reader = FrameReader(conn.sock)
        while True:
            try:
                frame = reader.read_frame()
            except ProtocolError as exc:
                self._fatal_protocol_error(exc)
            except OSError:
                frame = None
            if frame is None:
                self._on_host_gone()
                return
            kind, request_id, body = frame
            if kind == PING:
                self._send(conn, PONG, request_id)
            elif kind == CREDIT:
                try:
                    chunks = decode_credit_body(body)
                except ProtocolError as exc:
                    self._send_error(conn, request_id, "protocol", str(exc))
                else:
                    self._add_credit(request_id, chunks)
            elif kind == CANCEL:
                self._cancel(request_id)
            elif kind == SHUTDOWN:
                self.begin_shutdown("SHUTDOWN frame")
            elif kind == CALL:
                self._unexpected_frame(conn, kind, request_id, "CALL frames go on the call connection")
            else:
                self._unexpected_frame(conn, kind, request_id, "it carries PING, SHUTDOWN, CANCEL and CREDIT")

    def _cancel(self, request_id):
        """CANCEL: mark the call cancelled (waking its stream if it waits for
        credit), or remember the id for a call not read yet."""
        with self._state_lock:
            state = self._calls.get(request_id)
            if state is not None:
                state.cancelled = True
                if state.wake is not None:
                    state.wake.notify()
                return
            early = self._early_cancels
            early.pop(request_id, None)  # a repeated CANCEL counts as the newest
            early[request_id] = None
            if len(early) > EARLY_CANCEL_MEMORY:
                del early[next(iter(early))]

    def _add_credit(self, request_id, chunks):
        """CREDIT: `chunks` more for a streaming call; ignored for any other."""
        with self._state_lock:
            state = self._calls.get(request_id)
            if state is None or not state.stream:
                return
            state.credit += chunks
            if state.wake is not None:
                state.wake.notify()

    # --- the call connection ------------------------------------------------

    def _watch_call_connection(self):
        # POLLRDHUP reports the peer's close without reading, so buffered
        # CALLs stay for the executors. It also fires after our own SHUT_RD,
        # which the closing flag tells apart.
        poller = select.poll()
        poller.register(self._call.sock, _PEER_CLOSED)
        poller.poll()
        if not self._closing:
            self._on_host_gone()

    def _read_call_frame(self):
        """The next frame of the call connection, or None when it has ended.
        Hold the read lock."""
        try:
            return self._call_reader.read_frame()
        except ProtocolError as exc:
            if self._closing:
                # The read side was shut while the host was writing this
                # frame: the call was never received.
                return None
            self._fatal_protocol_error(exc)
        except OSError:
            return None

    def _accept_call(self, frame):
        """(tool, content_type, payload, state) of a call to run now, counted
        and registered in flight; None when the frame has been answered
        already (a protocol error, cancelled, or shutting_down)."""
        kind, request_id, body = frame
        conn = self._call
        if kind != CALL:
            self._unexpected_frame(conn, kind, request_id, "it carries only CALL frames")
            return None
        try:
            tool, content_type, stream, trace_id, session, payload = decode_call_body(body)
        except ProtocolError as exc:
            self._send_error(conn, request_id, "protocol", str(exc))
            return None
        state = CallState(request_id, trace_id, session, stream)
        with self._state_lock:
            # A call cancelled before it was read is not run (and not worth
            # giving to another worker, as shutting_down would invite).
            early = self._early_cancels
            cancelled = bool(early) and request_id in early
            if cancelled:
                del early[request_id]
            refuse = cancelled or self._closing
            if not refuse:
                self._in_flight += 1
                self._calls[request_id] = state
        if refuse:
            if cancelled:
                self._send(conn, ERROR, request_id, cancelled_error()[1])
            else:
                self._send_error(
                    conn,
                    request_id,
                    "shutting_down",
                    "the worker is shutting down (%s); the call did not start" % self._shutdown_reason,
                )
            return None
        return tool, content_type, payload, state

    def _executor_loop(self):
        conn = self._call
        invoke = self._dispatcher.invoke
        local = _context_local
        while True:
            with self._read_lock:
                frame = self._read_call_frame()
            if frame is None:
                if not self._closing:
                    self._on_host_gone()
                return
            call = self._accept_call(frame)
            if call is None:
                continue
            tool, content_type, payload, state = call
            request_id = state.request_id
            # The call context of pitboss_worker.context, for this thread.
            local.call = state
            try:
                try:
                    kind, body = invoke(tool, content_type, payload, state.stream)
                except BaseException as exc:  # SystemExit, KeyboardInterrupt from the tool
                    self._tool_exit(request_id, tool, exc)
                if kind is STREAM:
                    self._run_stream(state, tool, body)
                else:
                    self._send(conn, kind, request_id, body)
            finally:
                local.call = None
                with self._state_lock:
                    self._in_flight -= 1
                    if self._calls.get(request_id) is state:
                        del self._calls[request_id]

    def _tool_exit(self, request_id, tool, exc, skip_frames=0):
        """A tool raised SystemExit or KeyboardInterrupt: report it as the
        call's ERROR, then end the worker."""
        _, body = exception_error(exc, skip_frames=skip_frames)
        self._send(self._call, ERROR, request_id, body)
        log("tool %r raised %s; exiting" % (tool, qualified_name(type(exc))))
        hard_exit(EXIT_INTERNAL)

    def _close_generator(self, state, tool, generator):
        """generator.close() on this thread (its finally blocks run here, in
        the call's context); an exception from it is logged, not sent: the
        call's terminal frame says why the stream stopped."""
        try:
            generator.close()
        except Exception as exc:
            log("tool %r: closing its generator (call %d) raised %s: %s"
                % (tool, state.request_id, qualified_name(type(exc)), exc))
        except BaseException as exc:
            self._tool_exit(state.request_id, tool, exc)

    def _run_stream(self, state, tool, generator):
        """Send each item of a streaming call's generator as a STREAM_CHUNK,
        while the call has credit, then exactly one terminal frame:
        STREAM_END, or ERROR (exception, bad_result, cancelled)."""
        conn = self._call
        send = self._send
        request_id = state.request_id
        step = self._dispatcher.step
        lock = self._state_lock
        sent = 0
        while True:
            with lock:
                if state.credit <= 0 and not state.cancelled:
                    # Out of credit: wait for CREDIT or CANCEL, the generator untouched.
                    if state.wake is None:
                        state.wake = threading.Condition(lock)
                    while state.credit <= 0 and not state.cancelled:
                        state.wake.wait()
                if state.cancelled:
                    break
                state.credit -= 1
            try:
                item = step(generator, tool)
            except StopIteration:
                send(conn, STREAM_END, request_id)
                return
            except Exception as exc:
                # The generator is finished. skip_frames=2 drops this frame
                # and step()'s: the traceback starts in the tool.
                send(conn, ERROR, request_id, exception_error(exc, skip_frames=2)[1])
                return
            except BaseException as exc:
                self._tool_exit(request_id, tool, exc, skip_frames=2)
            kind, body = encode_result(item)
            if kind == ERROR:
                self._close_generator(state, tool, generator)
                send(conn, ERROR, request_id, body)
                return
            if state.cancelled or self._host_gone:
                break
            send(conn, STREAM_CHUNK, request_id, body)
            sent += 1
        # Cancelled: stop before the next item.
        self._close_generator(state, tool, generator)
        send(conn, ERROR, request_id, cancelled_error(sent)[1])
