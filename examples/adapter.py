"""An example pitboss adapter.

Serve it with (from this directory, or pass --path examples):

    python -m pitboss_worker --adapter adapter:Example --socket /path/to/host.sock

``adapter:Example`` serves the methods marked @tool below; ``adapter`` (the
module spec) would serve the module-level @tool function ``shout`` instead.
"""

import os
import sys
import time

from pitboss_worker import Adapter, context, tool


def _fib(n):
    return n if n < 2 else _fib(n - 1) + _fib(n - 2)


class Example(Adapter):
    # Every tool below is stateless, so a thread pool may run them at once.
    thread_safe = True

    def setup(self):
        # Runs once per worker process, before the worker reports ready:
        # load models, open connections, warm caches here.
        self.started_at = time.time()

    @tool
    def echo(self, **kwargs):
        """Returns its keyword arguments as a JSON object."""
        return kwargs

    @tool
    def add(self, a, b):
        return a + b

    @tool
    def sleep(self, seconds):
        """Sleeps (releasing the GIL) and returns the seconds slept."""
        time.sleep(seconds)
        return seconds

    @tool
    def fail(self, message="boom"):
        """Always raises: the host gets an error of kind 'exception', type 'ValueError'."""
        raise ValueError(message)

    @tool
    def fib(self, n):
        """Naive recursive Fibonacci: pure-Python, CPU-bound, holds the GIL."""
        return _fib(n)

    @tool
    def matmul(self, n):
        """Multiplies two n x n matrices with numpy (native code, releases the GIL)."""
        try:
            import numpy as np  # imported on first use, not at worker start
        except ImportError:
            raise RuntimeError("the matmul tool needs numpy: pip install numpy") from None
        a = np.arange(n * n, dtype=np.float64).reshape(n, n) / float(n * n)
        product = a @ a.T
        return {"n": n, "trace": float(np.trace(product)), "sum": float(product.sum())}

    @tool
    def noop(self):
        """Returns None (JSON null): the cheapest round trip."""
        return None

    @tool
    def pid(self):
        """The worker's process id (which worker of a pool served the call)."""
        return os.getpid()

    @tool
    def ticks(self, n=10, interval=0.0):
        """A streaming tool: a generator's items reach the caller as they
        are yielded (`pitboss call --stream default ticks '{"n": 3}'`)."""
        for i in range(n):
            if interval:
                time.sleep(interval)
            yield {"tick": i, "request_id": context.request_id}

    @tool
    def log(self, message):
        """Writes `message` to the worker's stderr, where the host logs it
        with the pool and worker id (and the caller gets nothing back)."""
        print(message, file=sys.stderr, flush=True)

    @tool(idempotent=True)
    def lookup(self, key):
        """Safe to run twice, so a pool with `retries` may rerun it on another
        worker when its worker crashes."""
        return {"key": key, "pid": os.getpid()}


@tool(name="shout")
def shout(text):
    """A module-level tool, served with the spec ``adapter`` (no class)."""
    return text.upper() + "!"
