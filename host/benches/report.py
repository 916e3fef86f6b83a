"""Turns the figures the benchmark harnesses wrote (JSON lines, see
harness/mod.rs) into docs/benchmarks.md's tables and plots.

    python report.py OUT_DIR DOC.md PLOTS_DIR

OUT_DIR is where scripts/bench left results.jsonl and each harness's
output (profiles.txt and swap.txt are shown as printed).

Every figure is the median over the runs, with the range (min–max) beside it.
The page keeps its hand-written text: only the parts between
``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->`` are
rewritten, and a missing marker is an error naming it. Needs matplotlib
(scripts/bench installs it in .venv-bench).
"""

import json
import os
import platform
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from datetime import date

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
IN_FLIGHT = ("1", "8", "32")


class Figures:
    """Values by (bench, case, system, workers, param, metric), and notes."""

    def __init__(self, path):
        self.values = defaultdict(list)
        self.notes = []
        with open(path) as lines:
            for line in lines:
                record = json.loads(line)
                key = tuple(record[k] for k in ("bench", "case", "system", "workers", "param"))
                if record["kind"] == "note":
                    self.notes.append((key, record["note"]))
                else:
                    self.values[key + (record["metric"],)].append(record["value"])

    def get(self, *key):
        return self.values.get(tuple(key), [])

    def keys(self, bench, case=None):
        return [k for k in self.values if k[0] == bench and (case is None or k[1] == case)]

    def median(self, *key):
        values = self.get(*key)
        return statistics.median(values) if values else None


def number(value):
    if value == int(value) and abs(value) < 1e6:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(values):
    """The median, with the range when there was more than one run; blank
    for a figure this run did not measure."""
    if not values:
        return ""
    median = number(statistics.median(values))
    if len(values) == 1:
        return median
    return f"{median} ({number(min(values))}–{number(max(values))})"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ordered(items):
    """Distinct items in the order first seen."""
    return list(dict.fromkeys(items))


def machine(figures):
    def output(*command):
        try:
            return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError) as error:
            return f"unknown ({error})"

    def interpreter(venv, packages):
        python = os.path.join(ROOT, venv, "bin", "python")
        script = (
            "import importlib.metadata as m, platform, sys\n"
            "found = []\n"
            f"for p in {packages!r}:\n"
            "    try: found.append(p + ' ' + m.version(p))\n"
            "    except m.PackageNotFoundError: pass\n"
            "gil = getattr(sys, '_is_gil_enabled', lambda: True)()\n"
            "parts = [platform.python_implementation(), platform.python_version(), '' if gil else '(GIL off)']\n"
            "print(' '.join(p for p in parts if p) + (', ' + '; '.join(found) if found else ''))"
        )
        return output(python, "-c", script)

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    memory = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    runs = max((len(v) for k, v in figures.values.items() if k[0] == "roundtrip"), default=0)
    rows = [
        ("date", date.today().isoformat()),
        ("CPU", f"{cpu}, {os.cpu_count()} CPUs"),
        ("memory", f"{memory / 2**20:.0f} GiB"),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("Rust", output("rustc", "--version")),
        ("workers' Python (`.venv`)", interpreter(".venv", ["numpy", "grpcio"])),
        ("free-threaded Python (`.venv-ft`)", interpreter(".venv-ft", [])),
        ("peers' Python (`.venv-bench`)", interpreter(".venv-bench", ["numpy", "grpcio", "ray", "matplotlib"])),
        ("runs per figure (round trip)", str(runs)),
    ]
    return table(["", ""], rows)


def roundtrip_latency(figures):
    rows = []
    for key in ordered(k[:4] for k in figures.keys("roundtrip", "noop") if k[4] == "sequential"):
        quantiles = [cell(figures.get(*key, "sequential", m)) for m in ("p50_us", "p99_us", "p999_us")]
        rows.append([key[3] or "–", key[2], *quantiles])
    return table(["workers", "system", "p50 µs", "p99 µs", "p99.9 µs"], rows)


def roundtrip_throughput(figures):
    rows = []
    for key in ordered(k[:4] for k in figures.keys("roundtrip", "noop") if k[5] == "per_second"):
        by_load = [cell(figures.get(*key, f"in_flight={n}", "per_second")) for n in IN_FLIGHT]
        all_at_once = cell(figures.get(*key, "all submitted", "per_second"))
        rows.append([key[3], key[2], *by_load, all_at_once])
    return table(["workers", "system", "1 in flight", "8 in flight", "32 in flight", "all submitted"], rows)


def roundtrip_latency_by_load(figures):
    rows = []
    for key in ordered(k[:4] for k in figures.keys("roundtrip", "noop") if k[4].startswith("in_flight") and k[5] == "p99_us"):
        cells = [f"{cell(figures.get(*key, f'in_flight={n}', 'p50_us'))} / {cell(figures.get(*key, f'in_flight={n}', 'p99_us'))}" for n in IN_FLIGHT]
        rows.append([key[3], key[2], *cells])
    return table(["workers", "system", "1 in flight p50 / p99 µs", "8 in flight", "32 in flight"], rows)


def open_loop(figures):
    rows = []
    for key in ordered(k[:5] for k in figures.keys("roundtrip", "noop open loop")):
        lag = ("roundtrip", "open loop send lag", *key[2:5])
        rows.append([
            key[3], key[2], key[4], cell(figures.get(*key, "offered_per_second")), cell(figures.get(*key, "per_second")),
            *(cell(figures.get(*key, m)) for m in ("p50_us", "p99_us", "p999_us")),
            cell(figures.get(*lag, "p99_us")),
        ])
    header = ["workers", "system", "rate", "offered /s", "completed /s", "p50 µs", "p99 µs", "p99.9 µs", "sent late, p99 µs"]
    return table(header, rows)


def payloads(figures):
    rows = []
    for key in ordered(k[2:5] for k in figures.keys("roundtrip", "round trip")):
        system, workers, size = key
        legs = [cell(figures.get("roundtrip", leg, system, workers, size, "p50_us"))
                for leg in ("round trip", "host overhead", "request leg", "answer leg")]
        rows.append([workers, system, size, *legs, cell(figures.get("roundtrip", "round trip", *key, "p99_us"))])
    header = ["workers", "system", "payload", "round trip p50 µs", "overhead p50 µs", "request leg p50 µs",
              "answer leg p50 µs", "round trip p99 µs"]
    return table(header, rows)


def verdict(values, bound):
    """Whether the median of `values` meets `bound` ("≤ 0.25", "≥ 2")."""
    limit = float(bound.split()[1])
    median = statistics.median(values)
    met = median <= limit if bound.startswith("≤") else median >= limit
    return "met" if met else "**missed**"


def target_rows(figures, bench):
    return [[k[2], k[3], cell(figures.get(*k, "ratio")), k[4], verdict(figures.get(*k, "ratio"), k[4])]
            for k in ordered(k[:5] for k in figures.keys(bench, "targets"))]


TARGET_HEADER = ["ratio", "workers", "value", "target", "median of the runs"]


def targets(figures):
    return table(TARGET_HEADER, target_rows(figures, "roundtrip"))


def saturation(figures):
    parts = []
    for case in ordered(k[1] for k in figures.keys("saturation") if k[1] != "targets"):
        keys = [k for k in figures.keys("saturation", case) if k[5] == "per_second"]
        columns = ordered(per_worker(k) for k in keys)
        rows = []
        for system, workers in ordered((k[2], k[3]) for k in keys):
            by_column = {per_worker(k): figures.get(*k) for k in keys if k[2:4] == (system, workers)}
            rows.append([system, workers, *(cell(by_column.get(c, [])) for c in columns)])
        parts.append(f"**{case}**, calls per second\n\n" + table(["system", "workers", *columns], rows))
    parts.append("**target**\n\n" + table(TARGET_HEADER, target_rows(figures, "saturation")))
    return "\n\n".join(parts)


def per_worker(key):
    """A saturation column: callers per worker, or how a baseline submits."""
    param, workers = key[4], key[3]
    if param.startswith("callers="):
        return f"{int(param.split('=')[1]) // workers}× callers per worker"
    return param


def host_costs(figures):
    rows = [[f"{k[1]}, {k[5]}", k[2], k[4] or k[3], cell(figures.get(*k))] for k in figures.keys("host_costs")]
    return table(["figure", "system", "workers", "value"], rows)


def resilience(figures):
    parts = []
    for case in ordered(k[1] for k in figures.keys("resilience")):
        keys = figures.keys("resilience", case)
        metrics = ordered(k[5] for k in keys)
        systems = ordered(k[2:5] for k in keys)
        if case == "checks":
            rows = [[s, "pass" if min(figures.get("resilience", case, s, w, p, "passed")) else "**FAIL**"]
                    for s, w, p in systems]
            metrics = ["result"]
        else:
            rows = [[s, *(cell(figures.get("resilience", case, s, w, p, m)) for m in metrics)] for s, w, p in systems]
        parts.append(f"**{case}**\n\n" + table(["", *metrics], rows))
    return "\n\n".join(parts)


def printed(name):
    """A harness's output as scripts/bench saved it, as a code block."""
    def render(out):
        path = os.path.join(out, f"{name}.txt")
        if not os.path.exists(path):
            return f"Not run: `{name}` runs only in a full `scripts/bench`."
        return "```text\n" + open(path).read().rstrip() + "\n```"
    return render


def notes(figures):
    lines = [f"- {key[0]}, {key[2]}: {note}" for key, note in dict(figures.notes).items()]
    return "\n".join(lines) if lines else "None: every system measured."


def plot_latency_by_concurrency(figures, path):
    figure, axes = plt.subplots(figsize=(7, 4))
    workers = max((k[3] for k in figures.keys("roundtrip", "noop")), default=0)
    systems = ordered(k[2] for k in figures.keys("roundtrip", "noop") if k[3] == workers and k[5] == "p99_us" and k[4].startswith("in_flight"))
    loads = [int(n) for n in IN_FLIGHT]
    for color, system in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], systems):
        for metric, style in (("p50_us", "-"), ("p99_us", "--")):
            medians = [figures.median("roundtrip", "noop", system, workers, f"in_flight={n}", metric) for n in IN_FLIGHT]
            axes.plot(loads, medians, style, color=color, marker="o", label=f"{system} {metric[:3]}")
    axes.set(xscale="log", yscale="log", xlabel="calls in flight", ylabel="latency, µs",
             title=f"No-op round trip latency by concurrency, {workers} workers")
    axes.set_xticks(loads, [str(n) for n in loads])
    axes.legend(fontsize=7, ncol=2)
    save(figure, path)


def plot_throughput_by_workers(figures, path):
    cases = ordered(k[1] for k in figures.keys("saturation") if k[1] != "targets")
    figure, grid = plt.subplots(1, max(len(cases), 1), figsize=(4 * max(len(cases), 1), 4), squeeze=False)
    for axes, case in zip(grid[0], cases):
        keys = [k for k in figures.keys("saturation", case) if k[5] == "per_second"]
        for system in ordered(k[2] for k in keys):
            # Each system at its best number of callers.
            points = {}
            for k in keys:
                if k[2] == system:
                    points.setdefault(k[3], []).append(figures.median(*k))
            workers = sorted(points)
            axes.plot(workers, [max(points[w]) for w in workers], marker="o", label=system)
        axes.set(xlabel="workers", ylabel="calls per second", title=case, ylim=(0, None))
        axes.set_xticks(sorted({k[3] for k in keys}))
        axes.legend(fontsize=7)
    save(figure, path)


def save(figure, path):
    plt.rcParams["svg.hashsalt"] = "pitboss"
    figure.tight_layout()
    figure.savefig(path, metadata={"Date": None})
    plt.close(figure)


SECTIONS = {
    "machine": machine,
    "roundtrip-latency": roundtrip_latency,
    "roundtrip-throughput": roundtrip_throughput,
    "roundtrip-latency-by-load": roundtrip_latency_by_load,
    "roundtrip-open-loop": open_loop,
    "roundtrip-payloads": payloads,
    "roundtrip-targets": targets,
    "saturation": saturation,
    "host-costs": host_costs,
    "resilience": resilience,
    "notes": notes,
}


def rewrite(doc, sections):
    text = open(doc).read()
    for name, body in sections.items():
        pattern = re.compile(rf"(<!-- generated: {name} -->\n).*?(<!-- end generated: {name} -->)", re.S)
        if not pattern.search(text):
            sys.exit(f"report.py: {doc} has no '<!-- generated: {name} -->' … '<!-- end generated: {name} -->' markers")
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    with open(doc, "w") as out:
        out.write(text)


PRINTED = {"profiles-output": printed("profiles"), "swap-output": printed("swap")}


def main():
    out, doc, plots = sys.argv[1:4]
    figures = Figures(os.path.join(out, "results.jsonl"))
    os.makedirs(plots, exist_ok=True)
    plot_latency_by_concurrency(figures, os.path.join(plots, "latency-by-concurrency.svg"))
    plot_throughput_by_workers(figures, os.path.join(plots, "throughput-by-workers.svg"))
    sections = {name: render(figures) for name, render in SECTIONS.items()}
    sections.update({name: render(out) for name, render in PRINTED.items()})
    rewrite(doc, sections)


if __name__ == "__main__":
    main()
