"""Adapters for the thread-safety tests: declarations, ThreadSafeAdapter in a
real worker, and tools that are sure to run on two threads at once."""

import importlib
import threading

from pitboss_worker import Adapter, ThreadSafeAdapter, tool


class Unsafe(Adapter):
    thread_safe = False

    @tool
    def add(self, a, b):
        return a + b


class Rendezvous(Adapter):
    """Declares nothing. Each meet* tool returns only once two calls of it
    are inside at the same time, so two calls of it surely overlap."""

    def __init__(self):
        self._barriers = {}
        self._barriers_lock = threading.Lock()

    def _meet(self, name):
        with self._barriers_lock:
            barrier = self._barriers.setdefault(name, threading.Barrier(2, timeout=5))
        barrier.wait()
        return name

    @tool
    def meet(self):
        return self._meet("meet")

    @tool(thread_safe=True)
    def meet_safe(self):
        return self._meet("meet_safe")

    @tool
    def load_module(self, name):
        importlib.import_module(name)
        return name


class SafeRendezvous(Rendezvous, ThreadSafeAdapter):
    """The same tools in an adapter that declares thread_safe = True, plus one
    that opts out."""

    @tool(thread_safe=False)
    def meet_unsafe(self):
        return self._meet("meet_unsafe")


class Counter(ThreadSafeAdapter):
    """ThreadSafeAdapter's helpers in a worker: a shared counter under a lock,
    one sqlite3 connection per thread."""

    def setup(self):
        import sqlite3

        self._sqlite3 = sqlite3
        self.count = 0

    @tool
    def increment(self):
        with self.locked("count"):
            self.count += 1
            return self.count

    @tool
    def thread_db(self):
        db = self.thread_local("db", lambda: self._sqlite3.connect(":memory:"))
        return [db.execute("select 40 + 2").fetchone()[0], id(db), threading.get_ident()]


class BadDeclaration(Adapter):
    thread_safe = "yes"

    @tool
    def add(self, a, b):
        return a + b
