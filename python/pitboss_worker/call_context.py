"""The call context: what a tool can know about the call it is running.

``pitboss_worker.context`` is one object for the whole process; what it says
depends on the thread asking. The worker runs each call on one executor
thread, from the tool's first line to its last (for a streaming tool: every
step of the generator, and its close), and keeps the call on that thread's
``threading.local`` meanwhile::

    from pitboss_worker import context, tool

    @tool
    def tokens(self, text):
        log.info("call %s", context.request_id)
        history = context.session_state.setdefault("history", [])
        for token in self.model.generate(text, history):
            if context.cancelled():      # a generator stops on CANCEL anyway
                return
            yield token

Session state is *soft*: a dict per session key, kept in this worker process
across calls of the same session while it is used, and lost when the worker
is recycled or restarted, when ``end_session()`` runs, or after
``--session-idle-s`` seconds without use. Keep in it what you can rebuild.

Owns: each call's state as its tool sees it, and the process's session
store. Must not touch: the socket (the protocol thread marks a call
cancelled and grants stream credit through ``CallState``).
"""

import threading
import time

from .protocol import STREAM_WINDOW

#: Seconds a session's state is kept without use (--session-idle-s).
DEFAULT_SESSION_IDLE_S = 1800
#: At most one sweep of idle sessions per this many seconds.
PURGE_INTERVAL_S = 1.0

NOT_IN_A_CALL = "pitboss_worker.context is only available inside a tool call"
NO_SESSION = (
    "this call has no session; pass a session key with the call "
    "(ExecuteRequest.session / pitboss call --session)"
)


class CallState:
    """One call in flight: set by the worker, read by the context.

    ``cancelled`` is set by the protocol thread on CANCEL; ``credit`` and
    ``wake`` (a Condition on the worker's state lock, made when a stream
    first waits) belong to a streaming call's backpressure.
    """

    __slots__ = ("request_id", "trace_id", "session", "stream", "cancelled", "credit", "wake")

    def __init__(self, request_id, trace_id, session, stream):
        self.request_id = request_id
        self.trace_id = trace_id
        self.session = session
        self.stream = stream
        self.cancelled = False
        self.credit = STREAM_WINDOW if stream else 0
        self.wake = None

    def __repr__(self):
        return "CallState(%d, trace_id=%r, session=%r, stream=%r, cancelled=%r)" % (
            self.request_id, self.trace_id, self.session, self.stream, self.cancelled)


class SessionStore:
    """Session key -> state dict, within this process. Thread-safe; entries
    not used for `idle_s` seconds are dropped (swept on access, at most once
    per PURGE_INTERVAL_S, and never handed out once expired)."""

    def __init__(self, idle_s=DEFAULT_SESSION_IDLE_S, clock=time.monotonic):
        self.idle_s = idle_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries = {}  # key -> [state dict, last use]
        self._next_purge = 0.0

    def state(self, key):
        """The state dict of session `key`, made on first use; counts as a use."""
        now = self._clock()
        idle_s = self.idle_s
        with self._lock:
            entries = self._entries
            if now >= self._next_purge:
                self._next_purge = now + PURGE_INTERVAL_S
                for stale in [k for k, entry in entries.items() if now - entry[1] > idle_s]:
                    del entries[stale]
            entry = entries.get(key)
            if entry is None or now - entry[1] > idle_s:
                entry = entries[key] = [{}, now]
            else:
                entry[1] = now
            return entry[0]

    def drop(self, key):
        """Forget session `key` (nothing when it has no state)."""
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self):
        with self._lock:
            return len(self._entries)

    def __contains__(self, key):
        with self._lock:
            return key in self._entries


#: The worker sets `.call` (a CallState) on its executor thread around a call.
_local = threading.local()
#: The process's sessions; the worker replaces it to apply --session-idle-s.
sessions = SessionStore()


def configure_sessions(idle_s):
    """Start a fresh session store whose entries expire after `idle_s` seconds."""
    global sessions
    if not isinstance(idle_s, int) or isinstance(idle_s, bool) or idle_s < 1:
        raise ValueError("session idle time must be an integer of at least 1 second, got %r" % (idle_s,))
    sessions = SessionStore(idle_s)
    return sessions


def _current():
    call = getattr(_local, "call", None)
    if call is None:
        raise RuntimeError(NOT_IN_A_CALL)
    return call


class CallContext:
    """The context of the tool call running on the calling thread (import it
    as ``from pitboss_worker import context``). Every attribute raises
    RuntimeError outside a tool call: in setup(), at import time, or on a
    thread the tool started itself."""

    __slots__ = ()

    @property
    def request_id(self):
        """The call's request id as the caller and the host's log know it
        (the CALL's trace id, a str; "" when the host sent none)."""
        return _current().trace_id

    @property
    def session(self):
        """The call's session key (a str), or None for a call without one."""
        return _current().session

    def cancelled(self):
        """True once the host has cancelled this call (CANCEL): a
        long-running tool can check it and return or raise early."""
        return _current().cancelled

    @property
    def session_state(self):
        """A dict for this call's session, kept in this worker process across
        the calls of the same session (soft state: lost when the worker is
        recycled or restarted, at end_session(), or after --session-idle-s
        seconds unused). Calls of one session may run at once on a worker
        with --threads above 1: guard the dict yourself if they can.
        RuntimeError for a call without a session."""
        call = _current()
        if call.session is None:
            raise RuntimeError(NO_SESSION)
        return sessions.state(call.session)

    def end_session(self):
        """Drop this call's session state now (the next call of the session
        starts with an empty dict). Nothing for a call without a session."""
        call = _current()
        if call.session is not None:
            sessions.drop(call.session)

    def __repr__(self):
        call = getattr(_local, "call", None)
        if call is None:
            return "<pitboss_worker.context: not in a tool call>"
        return "<pitboss_worker.context: request_id=%r session=%r>" % (call.trace_id, call.session)


context = CallContext()


def warm_up():
    """Every path of the context once (see dispatch.warm_up), on a store of its own."""
    store = SessionStore(1, clock=iter((0.0, 0.5, 5.0, 6.0)).__next__)
    store.state("a")
    store.state("a")
    store.state("a")  # expired: a fresh dict
    store.state("b")
    store.drop("b")
    try:
        context.request_id
    except RuntimeError:
        pass
    previous = getattr(_local, "call", None)
    _local.call = CallState(0, "w", None, True)
    try:
        context.request_id, context.session, context.cancelled(), repr(context)
        context.end_session()
        try:
            context.session_state
        except RuntimeError:
            pass
    finally:
        _local.call = previous
