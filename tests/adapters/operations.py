"""Adapter for tests/operations.rs (spec 'operations:Operations'): slow
calls, streams, retries and the call context, seen from the host.

A tool that writes a marker file (`path`) lets a test see from outside
what the tool did after its caller went away."""

import json
import os
import time

from pitboss_worker import context, tool


def _write(path, value):
    """Replace `path` with the JSON of `value`, whole."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


class Operations:
    @tool
    def sleep(self, seconds):
        time.sleep(seconds)
        return os.getpid()

    @tool
    def count(self, n):
        """0 .. n-1, one chunk each."""
        yield from range(n)

    @tool
    def fail_after(self, n):
        for i in range(n):
            yield i
        raise ValueError("failed after %d chunks" % n)

    @tool
    def forever(self, path):
        """Chunks for ever, 10 ms apart, writing how many to `path`; its
        finally writes `path`.finally."""
        produced = 0
        try:
            while True:
                time.sleep(0.01)
                produced += 1
                _write(path, produced)
                yield produced
        finally:
            _write(path + ".finally", {"produced": produced, "request_id": context.request_id})

    @tool(idempotent=True)
    def lookup(self, seconds, nonce):
        """Safe to run twice: answers its nonce and the pid that ran it."""
        time.sleep(seconds)
        return {"nonce": nonce, "pid": os.getpid()}

    @tool
    def charge(self, seconds, nonce):
        """Not safe to run twice."""
        time.sleep(seconds)
        return {"nonce": nonce, "pid": os.getpid()}

    @tool
    def whoami(self):
        return {"request_id": context.request_id, "session": context.session}

    @tool
    def remember(self, key, value=None):
        """Stores `value` under `key` in the session's state (when given)
        and answers what is stored there."""
        state = context.session_state
        if value is not None:
            state[key] = value
        return state.get(key)

    @tool
    def fail(self):
        raise RuntimeError("failing as %s" % context.request_id)
