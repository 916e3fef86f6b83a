"""On a free-threaded interpreter (3.13t, run under .venv-ft): the worker
keeps the GIL off, and a thread worker runs pure-Python calls in parallel.
Skipped on a GIL build; the README's test command runs the suite under both
interpreters, so these always run somewhere."""

import os
import sysconfig

import pytest

from worker_harness import run_every_call_path, run_every_stream_path

pytestmark = pytest.mark.skipif(
    sysconfig.get_config_var("Py_GIL_DISABLED") != 1,
    reason="needs a free-threaded interpreter (run the suite with .venv-ft/bin/python)",
)

#: Iterations of Sample.burn: about 0.1 s of pure Python on this class of machine;
#: short attempts, so that one of them can fall between bursts of other load.
BURN = 1_000_000
#: Sum of the two calls' CPU time over their common wall-clock span. With a
#: GIL only one thread runs Python at a time, so it cannot exceed 1.0; two
#: threads running at once on two cores come close to 2.0.
MIN_PARALLELISM = 1.2
ATTEMPTS = 10


def test_gil_stays_off_with_the_whole_hot_path_imported(host):
    """HELLO measures the GIL after the adapter's imports and the worker's
    warm-up, with every module of the worker loaded (threads, checks); calls
    down every path import nothing that turns it back on."""
    hello = host.start_ready("sample_tools:Sample", ["--threads", "2", "--thread-safety-checks"])
    assert hello["free_threaded_build"] is True
    assert hello["gil_enabled"] is False, "something the worker imports turned the GIL back on"
    run_every_call_path(host)
    assert host.roundtrip(1, "gil_enabled").value is False, "a call turned the GIL back on"


def test_gil_stays_off_through_streams_and_the_call_context(host):
    hello = host.start_ready("streaming_tools:Streams", ["--threads", "2", "--thread-safety-checks"])
    assert hello["gil_enabled"] is False
    run_every_call_path(host)
    run_every_stream_path(host, host.dir)
    assert host.roundtrip(1, "gil_enabled").value is False, "a stream or the context turned the GIL back on"


def test_two_cpu_bound_calls_run_at_the_same_time_on_two_threads(host):
    host.start_ready("sample_tools:Sample", ["--threads", "2"])
    seen = []
    for attempt in range(ATTEMPTS):
        first = 2 * attempt + 1
        host.call(first, "burn", {"n": BURN})
        host.call(first + 1, "burn", {"n": BURN})
        a, b = host.answer().value, host.answer().value
        span = max(a["end"], b["end"]) - min(a["start"], b["start"])
        overlap = min(a["end"], b["end"]) - max(a["start"], b["start"])
        parallelism = (a["cpu"] + b["cpu"]) / span
        if overlap > 0 and parallelism >= MIN_PARALLELISM:
            return
        seen.append("overlap %.3f s of a %.3f s span, parallelism %.2f" % (overlap, span, parallelism))
    pytest.fail(
        "two CPU-bound calls on a --threads 2 worker did not run at the same time (%s); need an overlap "
        "and a parallelism (CPU seconds of both / wall-clock span) of at least %.1f. Load average: %s "
        "(on a machine whose cores are all busy, no two threads can run at once)."
        % ("; ".join(seen), MIN_PARALLELISM, " ".join("%.2f" % x for x in os.getloadavg()))
    )
