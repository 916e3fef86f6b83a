"""Baselines for the saturation benchmark: the functions of workloads.py
through the standard library's process pools, with every call submitted at
once, so the pool is never short of work:

- ``ProcessPoolExecutor(W).map(fn, [arg] * N, chunksize=1)``;
- ``multiprocessing.Pool(W).imap_unordered(fn, [arg] * N, chunksize=1)``.

BLAS and OpenMP threads are pinned to 1, as pitboss pins them in its
workers. Each pool first runs a warm-up of 4 calls per worker (starting the
workers and importing numpy), then the N calls that are timed.

Usage: saturation_baseline.py SPEC, where SPEC is a JSON list of
``{"tool": "spin", "arg": 1.0, "workers": 2, "calls": 1500}``. Prints one
JSON object per entry on stdout: the entry's tool and workers, the
interpreter (``"3.11"``, ``"3.13t"``), and ``ppe_map`` and ``mp_pool`` in
calls per second."""

import os

# Before numpy is imported, here and in the pools' workers (they inherit it).
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                  "VECLIB_MAXIMUM_THREADS"):
    os.environ[_variable] = "1"

import json  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402

WARM_UP_PER_WORKER = 4


def interpreter():
    free_threaded = "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""
    return f"{sys.version_info.major}.{sys.version_info.minor}{free_threaded}"


def calls_per_second(run, function, arg, workers, calls):
    """Calls per second of `run(function, args)` over `calls` calls, after a
    warm-up; `run` consumes every result."""
    run(function, [arg] * (WARM_UP_PER_WORKER * workers))
    started = time.perf_counter()
    run(function, [arg] * calls)
    return calls / (time.perf_counter() - started)


def ppe_map(function, arg, workers, calls):
    with ProcessPoolExecutor(max_workers=workers) as executor:
        return calls_per_second(
            lambda fn, args: list(executor.map(fn, args, chunksize=1)), function, arg, workers, calls
        )


def mp_pool(function, arg, workers, calls):
    with multiprocessing.Pool(workers) as pool:
        return calls_per_second(
            lambda fn, args: list(pool.imap_unordered(fn, args, chunksize=1)), function, arg, workers, calls
        )


def main():
    for entry in json.loads(sys.argv[1]):
        function = getattr(workloads, entry["tool"])
        arg, workers, calls = entry["arg"], entry["workers"], entry["calls"]
        figures = {
            "tool": entry["tool"],
            "workers": workers,
            "python": interpreter(),
            "ppe_map": ppe_map(function, arg, workers, calls),
            "mp_pool": mp_pool(function, arg, workers, calls),
        }
        print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
