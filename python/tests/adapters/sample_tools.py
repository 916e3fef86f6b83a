"""Adapter used by the test suite (spec 'sample_tools:Sample', or 'sample_tools'
for the module-level tools)."""

import os
import sys
import time

from pitboss_worker import Adapter, tool


class CustomError(Exception):
    pass


class Sample(Adapter):
    def __init__(self):
        self.setup_calls = 0

    def setup(self):
        self.setup_calls += 1

    @tool
    def add(self, a, b):
        return a + b

    @tool
    def echo(self, **kwargs):
        return kwargs

    @tool(name="other-name")
    def renamed(self):
        return "renamed"

    @tool
    def setup_count(self):
        return self.setup_calls

    @tool
    def reverse(self, data):
        # raw in (bytes), raw out
        return data[::-1]

    @tool
    def as_bytearray(self, text):
        return bytearray(text.encode("utf-8"))

    @tool
    def as_memoryview(self, text):
        return memoryview(text.encode("utf-8"))

    @tool
    def nothing(self):
        return None

    @tool
    def numbers(self):
        return {"int": 3, "big": 2 ** 70, "float": 1.5, "true": True, "none": None}

    @tool
    def fail_custom(self, message):
        raise CustomError(message)

    @tool
    def type_error_inside(self, x):
        return len(x)

    @tool
    def unencodable(self):
        return object()

    @tool
    def spin(self, seconds):
        """Pure-Python busy loop: holds the GIL (on a GIL build) the whole time."""
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            n += 1
        return n

    @tool
    def burn(self, n):
        """A fixed amount of pure-Python work: its wall-clock window
        (time.monotonic) and the CPU time its thread spent on it."""
        start, cpu = time.monotonic(), time.thread_time()
        x = 0
        for i in range(n):
            x = (x * 31 + i) % 1000003
        return {"start": start, "end": time.monotonic(), "cpu": time.thread_time() - cpu}

    @tool
    def gil_enabled(self):
        probe = getattr(sys, "_is_gil_enabled", None)
        return True if probe is None else probe()

    @tool
    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    @tool
    def sleep_marked(self, path, seconds):
        """Creates `path` when the call starts, then sleeps."""
        with open(path, "w"):
            pass
        time.sleep(seconds)
        return seconds

    @tool
    def modules(self):
        return sorted(sys.modules)

    @tool
    def module_files(self):
        return {name: getattr(m, "__file__", None) for name, m in list(sys.modules.items())}

    @tool
    def pid(self):
        return os.getpid()

    @tool
    def exit_worker(self, code):
        raise SystemExit(code)

    @staticmethod
    @tool
    def static_tool(x):
        return x * 2

    @classmethod
    @tool(name="class-tool")
    def class_tool(cls):
        return cls.__name__


@tool
def module_add(a, b):
    return a + b


@tool(name="module-echo")
def module_echo(**kwargs):
    return kwargs
