"""The work the benchmarks measure, as plain functions, so that every system
compared runs the same Python code: pitboss serves them through the
``Workloads`` adapter below (``workloads:Workloads``, with this folder on
``python_path``); the Python baselines import the functions themselves.
"""

import threading
import time

try:
    from pitboss_worker import Adapter, tool
except ImportError:  # a peers' virtualenv without the worker package
    Adapter, tool = object, (lambda function: function)


def noop():
    return None


def stamp(data=""):
    """Echoes `data`, with the CLOCK_MONOTONIC nanoseconds at which the
    function was entered and left: a caller on the same machine subtracts
    them from its round trip to get what the transport cost."""
    entered = time.monotonic_ns()
    answer = {"data": data, "entered_ns": entered}
    answer["left_ns"] = time.monotonic_ns()
    return answer


def spin(ms=1.0):
    """Pure-Python CPU work for `ms` milliseconds of this thread's CPU time
    (holds the GIL). CPU time, not wall time: a worker that has to share its
    core with the host gets through fewer calls a second, which is what the
    saturation bench looks for."""
    deadline = time.thread_time() + ms / 1e3
    count = 0
    while time.thread_time() < deadline:
        count += 1
    return count


_matrices = {}
_products = threading.local()


def matmul(n=200):
    """An n × n matrix product in numpy: native code that releases the GIL.
    The input is made once per process and the product goes into a buffer
    kept per thread, so a call does not pay glibc handing a fresh 1 MB array
    back to the OS each time (page faults that cost a process's main thread
    most of the product's own time)."""
    import numpy as np

    if n not in _matrices:
        _matrices[n] = np.arange(n * n, dtype=np.float64).reshape(n, n) / float(n * n)
    a = _matrices[n]
    buffers = _products.__dict__.setdefault("by_size", {})
    if n not in buffers:
        buffers[n] = np.empty((n, n))
    np.matmul(a, a.T, out=buffers[n])
    return float(buffers[n].trace())


def sleep(ms=10.0):
    """Waits `ms` milliseconds: I/O-bound work."""
    time.sleep(ms / 1e3)
    return ms


class Workloads(Adapter):
    # Stateless functions: a thread worker may run them at once.
    thread_safe = True

    @tool
    def noop(self):
        return noop()

    @tool
    def stamp(self, data=""):
        return stamp(data)

    @tool
    def spin(self, ms=1.0):
        return spin(ms)

    @tool
    def matmul(self, n=200):
        return matmul(n)

    @tool
    def sleep(self, ms=10.0):
        return sleep(ms)
