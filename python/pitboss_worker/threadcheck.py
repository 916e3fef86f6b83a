"""--thread-safety-checks: warnings, at run time, about thread-unsafe use.

* A tool not vouched for (neither ``@tool(thread_safe=True)`` nor, unmarked,
  in an adapter declaring ``thread_safe = True``) that runs on two threads at
  once gets one warning line on stderr, the first time it happens (a
  streaming tool runs while its generator takes a step).
* Modules known to be unsafe to share across threads are reported once each,
  when found loaded: after setup (also listed in HELLO) and after any call
  during which new modules were imported.

The checks cost a lock and a few dict operations per call, which is why
they are a flag.
"""

import sys
import threading

from .dispatch import Dispatcher, refused_arguments

#: Modules known to be unsafe to share across threads, and what to do.
UNSAFE_MODULES = {
    "matplotlib": "Matplotlib is not thread-safe: draw from one thread at a time, "
    'or serve the adapter with profile = "process"',
    "matplotlib.pyplot": "pyplot keeps one current figure for the whole process, so threads plotting at "
    "once draw into each other's figures: build a matplotlib.figure.Figure per call instead",
    "sqlite3": "a sqlite3 connection must not be shared across threads (check_same_thread): "
    'open one per thread, e.g. ThreadSafeAdapter.thread_local("db", ...)',
    "tkinter": "Tk may be used only from the thread that created it",
    "pandas": "pandas is not fully thread-safe (DataFrame.copy and in-place changes race): "
    "do not modify a frame that other threads use",
    "multiprocessing": "its 'fork' start method (the Linux default before Python 3.14) copies only the "
    "forking thread, and a child forked while another thread holds a lock can hang: "
    "use the 'spawn' or 'forkserver' start method",
}


def vouched_thread_safe(found, adapter_thread_safe):
    """A tool's own marker decides; an unmarked tool inherits the adapter's declaration."""
    if found.thread_safe is not None:
        return found.thread_safe
    return adapter_thread_safe is True


class ThreadSafetyChecker:
    """Counts the threads inside each watched tool and reports unsafe modules.
    `warn` writes one line (the worker's log)."""

    def __init__(self, tools, adapter_thread_safe, warn):
        self._watched = frozenset(
            name for name, found in tools.items() if not vouched_thread_safe(found, adapter_thread_safe)
        )
        self._warn = warn
        self._lock = threading.Lock()
        self._inside = {}  # watched tool name -> threads running it now
        self._warned = set()
        self._reported = []  # unsafe module names, in the order found
        self._modules_seen = 0  # len(sys.modules) at the last scan

    def enter(self, name):
        if name not in self._watched:
            return
        with self._lock:
            count = self._inside.get(name, 0) + 1
            self._inside[name] = count
            first = count > 1 and name not in self._warned
            if first:
                self._warned.add(name)
        if first:
            self._warn(
                "warning: --thread-safety-checks: tool %r ran on %d threads at once but is not marked "
                "thread-safe; if it is, mark it @tool(thread_safe=True) (or declare the adapter "
                'thread_safe = True), otherwise serve this adapter with profile = "process"' % (name, count)
            )

    def leave(self, name):
        if name not in self._watched:
            return
        with self._lock:
            self._inside[name] -= 1

    @property
    def unsafe_modules(self):
        """The unsafe modules found so far, in the order found."""
        with self._lock:
            return list(self._reported)

    def scan_modules(self):
        """Report the unsafe modules loaded since the last scan (each once).
        Cheap when no module was imported since: one len()."""
        loaded = sys.modules
        if len(loaded) == self._modules_seen:
            return
        with self._lock:
            self._modules_seen = len(loaded)
            found = [name for name in UNSAFE_MODULES if name in loaded and name not in self._reported]
            self._reported.extend(found)
        for name in found:
            self._warn("warning: --thread-safety-checks: module %r is loaded: %s" % (name, UNSAFE_MODULES[name]))


class CheckingDispatcher(Dispatcher):
    """A Dispatcher that tells a ThreadSafetyChecker about every call."""

    def __init__(self, tools, checker):
        super().__init__(tools)
        self._checker = checker

    def _run(self, found, args, kwargs, stream=False):
        # Arguments that do not bind never enter the tool, so they are
        # checked before the checker hears of an entry (the plain
        # dispatcher leaves that to the call itself, unless invoke() did).
        refused = None if found.bind_first else refused_arguments(found, args, kwargs)
        if refused is not None:
            return refused
        checker = self._checker
        checker.enter(found.name)
        try:
            return Dispatcher._run(found, args, kwargs, stream)
        finally:
            checker.leave(found.name)
            checker.scan_modules()

    def step(self, generator, name):
        # A streaming tool's body runs while its generator steps: watch each step.
        checker = self._checker
        checker.enter(name)
        try:
            return next(generator)
        finally:
            checker.leave(name)
            checker.scan_modules()
