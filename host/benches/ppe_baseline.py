"""Baseline for the round-trip benchmark: the same no-op function
(workloads.noop) through concurrent.futures.ProcessPoolExecutor, measured the
way benches/roundtrip.rs measures pitboss (and through its map, every call
submitted at once), and through multiprocessing.Pool's
imap_unordered (chunksize 1), the fastest way the standard library streams
calls to a pool; and workloads.stamp with 0 B, 1 KiB and 1 MiB payloads,
split into legs by the function's own timestamps (timing.py).

    python ppe_baseline.py CALLS WORKERS [WORKERS ...]

Prints one JSON object per pool size on stdout."""

import json
import multiprocessing
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from timing import payload_legs, percentiles
from workloads import noop, stamp


def round_trips(executor, count):
    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        executor.submit(noop).result()
        samples.append(time.perf_counter_ns() - started)
    return percentiles(samples)


def throughput(executor, in_flight, count):
    started = time.perf_counter()
    pending = set()
    submitted = 0
    done = 0
    while done < count:
        while submitted < count and len(pending) < in_flight:
            pending.add(executor.submit(noop))
            submitted += 1
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            future.result()
        done += len(finished)
    return count / (time.perf_counter() - started)


def map_throughput(executor, count):
    """Calls per second of executor.map over `count` no-op calls, chunksize 1."""
    started = time.perf_counter()
    for _ in executor.map(_noop_arg, range(count), chunksize=1):
        pass
    return count / (time.perf_counter() - started)


def pool_throughput(workers, count):
    """Calls per second of imap_unordered over `count` no-op calls."""
    with multiprocessing.Pool(workers) as pool:
        for _ in pool.imap_unordered(_noop_arg, range(200), chunksize=1):
            pass
        started = time.perf_counter()
        for _ in pool.imap_unordered(_noop_arg, range(count), chunksize=1):
            pass
        return count / (time.perf_counter() - started)


def _noop_arg(_):
    return noop()


def main():
    calls = int(sys.argv[1])
    for workers in map(int, sys.argv[2:]):
        with ProcessPoolExecutor(max_workers=workers) as executor:
            for _ in range(200):
                executor.submit(noop).result()
            figures = {"workers": workers, **round_trips(executor, calls)}
            figures["throughput"] = {str(n): throughput(executor, n, calls) for n in (1, 8, 32)}
            figures["ppe_map_throughput"] = map_throughput(executor, calls)
            figures["payloads"] = payload_legs(lambda data: executor.submit(stamp, data).result(), calls)
        figures["mp_pool_throughput"] = pool_throughput(workers, calls)
        print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
