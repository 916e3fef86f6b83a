"""Timing shared by the Python baselines, measured as benches/roundtrip.rs
measures pitboss: percentiles of sorted samples, and payload round trips
split by the timestamps workloads.stamp takes inside the function."""

import time

QUANTILES = (("p50_us", 0.5), ("p99_us", 0.99), ("p999_us", 0.999))
# The payload sizes of the round-trip bench, by the names it prints.
PAYLOADS = (("0 B", 0), ("1 KiB", 1 << 10), ("1 MiB", 1 << 20))


def percentiles(samples_ns):
    """p50, p99 and p99.9 of nanosecond samples, in microseconds."""
    ordered = sorted(samples_ns)
    return {name: ordered[int((len(ordered) - 1) * q)] / 1e3 for name, q in QUANTILES}


def payload_legs(stamp, calls):
    """Sequential calls of `stamp(data)` (a callable returning what
    workloads.stamp returns) for each payload size: the round trip, the
    round trip less the time inside the function ("host overhead"), and
    the legs to the function's start and back from its end, in the
    percentiles above. 1 MiB calls take milliseconds: a tenth as many."""
    legs = {}
    for size_name, size in PAYLOADS:
        data = "x" * size
        count = max(calls // 10, 10) if size >= 1 << 20 else calls
        for _ in range(min(count, 20)):
            stamp(data)
        samples = {"round trip": [], "host overhead": [], "request leg": [], "answer leg": []}
        for _ in range(count):
            sent = time.monotonic_ns()
            answer = stamp(data)
            received = time.monotonic_ns()
            inside = answer["left_ns"] - answer["entered_ns"]
            samples["round trip"].append(received - sent)
            samples["host overhead"].append(received - sent - inside)
            samples["request leg"].append(answer["entered_ns"] - sent)
            samples["answer leg"].append(received - answer["left_ns"])
        legs[size_name] = {leg: percentiles(values) for leg, values in samples.items()}
    return legs
