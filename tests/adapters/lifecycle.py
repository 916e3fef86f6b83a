"""Adapters for the host's lifecycle and thread-profile tests: tools that
sleep, burn CPU, hold memory, spawn children or hang with the GIL held."""

import ctypes
import os
import signal
import subprocess
import time

from pitboss_worker import Adapter, ThreadSafeAdapter, tool


@tool
def probe(self, role, seconds):
    """Detects two threads running Python at the same instant. The
    "writer" bumps a shared counter for `seconds`; the "reader" reads it
    twice in a row, again and again, and counts how often it changed in
    between. With the GIL, the counter can only change when the GIL passes
    between those two reads (a few hundred times a second at most); with
    two threads truly in parallel, it changes on most reads."""
    start = time.monotonic()
    changes = 0
    if role == "writer":
        while time.monotonic() - start < seconds:
            for _ in range(1000):
                self.counter += 1
    else:
        while time.monotonic() - start < seconds:
            for _ in range(1000):
                before = self.counter
                if self.counter != before:
                    changes += 1
    return {"start": start, "end": time.monotonic(), "pid": os.getpid(), "changes": changes}


class Tools(ThreadSafeAdapter):
    counter = 0
    probe = probe

    def setup(self):
        self.hoard = []

    @tool
    def pid(self):
        return os.getpid()

    @tool
    def sleep(self, seconds):
        time.sleep(seconds)
        return os.getpid()

    @tool
    def fail(self):
        raise ValueError("asked to fail")

    @tool
    def burn(self, seconds):
        """Pure-Python CPU work for `seconds`; returns when it ran, on the
        system-wide monotonic clock, so calls can be compared."""
        start = time.monotonic()
        count = 0
        while time.monotonic() - start < seconds:
            for i in range(1000):
                count += i * i
        return {"start": start, "end": time.monotonic(), "pid": os.getpid()}

    @tool
    def allocate(self, megabytes):
        """Keeps `megabytes` of touched memory for the life of the worker.

        One mebibyte at a time: a single 200 MB allocation holds the GIL long
        enough on a loaded machine for the worker to miss its pings."""
        self.hoard.extend(b"x" * (1 << 20) for _ in range(megabytes))
        return os.getpid()

    @tool
    def spawn_child(self):
        """Starts `sleep 300` in the worker's process group; returns its pid."""
        child = subprocess.Popen(["sleep", "300"])
        return child.pid

    @tool
    def stuck(self, seconds):
        """Hangs in C with the GIL held and SIGTERM blocked, like an
        extension stuck in a system call: no Python thread can run."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        # PyDLL keeps the GIL across the foreign call.
        ctypes.PyDLL(None).sleep(int(seconds))
        return os.getpid()


class Unsafe(Adapter):
    thread_safe = False

    @tool
    def pid(self):
        return os.getpid()


class Undeclared(Adapter):
    counter = 0
    probe = probe

    @tool
    def pid(self):
        return os.getpid()
