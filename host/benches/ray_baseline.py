"""Baseline for the round-trip benchmark: the same no-op function
(workloads.noop) through a pool of Ray actors (each runs one call at a time
and reserves no CPU), on a local Ray started for this run, measured the way
ppe_baseline.py measures ProcessPoolExecutor: sequential round trips, then
throughput at 1, 8 and 32 calls in flight, submitted round-robin.

Usage: ray_baseline.py CALLS WORKERS [WORKERS ...]. Prints one JSON object
per pool size on stdout, or a single {"error": ...} object (and exits 0)
when Ray cannot be imported or started, or its actors are not up in 60 s."""

import json
import logging
import os
import re
import sys
import time

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

BENCHES = os.path.abspath(os.path.dirname(__file__))
from timing import payload_legs, percentiles  # noqa: E402
from workloads import noop, stamp  # noqa: E402


class Worker:
    def noop(self):
        return noop()

    def stamp(self, data):
        return stamp(data)


def start_ray(ray):
    ray.init(
        address="local",
        num_cpus=os.cpu_count() or 2,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
        # The actors' processes import workloads from benches/ too.
        job_config=ray.job_config.JobConfig(code_search_path=[BENCHES]),
    )


def start_pool(ray, workers):
    actor_class = ray.remote(num_cpus=0, max_concurrency=1)(Worker)
    actors = [actor_class.remote() for _ in range(workers)]
    ray.get([actor.noop.remote() for actor in actors], timeout=60)
    return actors


def round_trips(ray, actors, count):
    samples = []
    for i in range(count):
        started = time.perf_counter_ns()
        ray.get(actors[i % len(actors)].noop.remote())
        samples.append(time.perf_counter_ns() - started)
    return percentiles(samples)


def throughput(ray, actors, in_flight, count):
    started = time.perf_counter()
    pending = []
    submitted = 0
    while pending or submitted < count:
        while submitted < count and len(pending) < in_flight:
            pending.append(actors[submitted % len(actors)].noop.remote())
            submitted += 1
        finished, pending = ray.wait(pending, num_returns=1)
        ray.get(finished)
    return count / (time.perf_counter() - started)


def measure(ray, actors, calls):
    for i in range(200):
        ray.get(actors[i % len(actors)].noop.remote())
    figures = {"workers": len(actors), **round_trips(ray, actors, calls)}
    figures["throughput"] = {str(n): throughput(ray, actors, n, calls) for n in (1, 8, 32)}
    figures["payloads"] = payload_legs(lambda data: ray.get(actors[0].stamp.remote(data)), calls)
    return figures


def print_error(error):
    reason = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(error).__name__}: {error}")
    print(json.dumps({"error": " ".join(reason.split())}), flush=True)


def main():
    calls = int(sys.argv[1])
    try:
        import ray
    except Exception as error:
        return print_error(error)
    try:
        for workers in map(int, sys.argv[2:]):
            try:
                if not ray.is_initialized():
                    start_ray(ray)
                actors = start_pool(ray, workers)
            except Exception as error:
                return print_error(error)
            print(json.dumps(measure(ray, actors, calls)), flush=True)
            for actor in actors:
                ray.kill(actor)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
