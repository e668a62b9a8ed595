"""Recording speed of this tree against an earlier commit, side by side on one redis-server.

Checks out the earlier commit into a temporary git worktree, then runs the same workload in
alternating child processes, one importing each tree (``PYTHONPATH``), each with its own key
prefix: sequential ``record_anomaly``, 100 concurrent tasks, ``record_many`` in batches of 100,
over 1,000 anomalies; and batches of 100 new anomalies each. Pairs alternate which goes first;
each figure is the median of the pairs, and the ratio (this tree / the earlier one) the median
of the pairs' ratios, so that the drift of a shared machine falls on both alike. Prints the
machine and Markdown.

    python bench/ab_record.py --base 340a3f0 [--pairs 9] [--spool]

``--spool`` gives both a spool directory, as ``serve`` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_record import Server, machine  # beside this script, on its sys.path

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = r"""
import asyncio, json, logging, sys, time
import structlog
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
import anomaly_counter
from anomaly_counter import AnomalyCounter, Settings

url, prefix, spool_dir = sys.argv[1], sys.argv[2], sys.argv[3]
signatures = [
    {"alertname": f"A{i % 5}", "service": f"s{i % 8}", "namespace": f"ns-{i % 25}",
     "reason": f"r{i}", "pod": f"pod-{i}-x7f"}
    for i in range(1000)
]

async def main():
    settings = Settings(store_url=url, key_prefix=prefix, spool_dir=spool_dir)
    async with AnomalyCounter.from_url(url, "ab", settings=settings) as counter:
        await counter.record_many([{"signature": s} for s in signatures])  # all exist, warm
        out = {"file": anomaly_counter.__file__}
        n = 2000
        began = time.perf_counter()
        for i in range(n):
            await counter.record_anomaly(signatures[i % 1000])
        out["sequential"] = n / (time.perf_counter() - began)
        async def worker(w):
            for i in range(80):
                await counter.record_anomaly(signatures[(w * 37 + i) % 1000])
        began = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(100)))
        out["100 tasks"] = 8000 / (time.perf_counter() - began)
        began = time.perf_counter()
        for start in range(0, 10000, 100):
            await counter.record_many(
                [{"signature": signatures[(start + i) % 1000]} for i in range(100)])
        out["batches of 100"] = 10000 / (time.perf_counter() - began)
        began = time.perf_counter()  # every occurrence a new anomaly (room made for each)
        for start in range(0, 5000, 100):
            await counter.record_many(
                [{"signature": {**signatures[0], "reason": f"new-{start + i}"}}
                 for i in range(100)])
        out["new anomalies, batches of 100"] = 5000 / (time.perf_counter() - began)
    print(json.dumps(out))

asyncio.run(main())
"""


def run(tree: Path, url: str, prefix: str, spool: bool) -> dict[str, float]:
    spool_dir = tempfile.mkdtemp(prefix="ab-spool-") if spool else ""
    done = subprocess.run(
        [sys.executable, "-c", WORKLOAD, url, prefix, spool_dir],
        capture_output=True, text=True, check=True, env={"PYTHONPATH": str(tree / "src"),
                                                        "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    assert str(tree / "src") in str(result.pop("file")), "imported the wrong tree"
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="the earlier commit")
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument(
        "--spool", action="store_true", help="with a spool directory, as `serve` runs"
    )
    options = parser.parse_args()
    print(f"Machine: {machine()}")
    base_tree = Path(tempfile.mkdtemp()) / "base"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), options.base],
        check=True, capture_output=True,
    )  # fmt: skip
    server = Server()
    figures: dict[str, dict[str, list[float]]] = {"base": {}, "this": {}}
    ratios: dict[str, list[float]] = {}
    try:
        for pair in range(options.pairs):
            sides = [("base", base_tree, f"b{pair}"), ("this", ROOT, f"t{pair}")]
            if pair % 2:
                sides.reverse()
            measured = {
                name: run(tree, server.url, prefix, options.spool) for name, tree, prefix in sides
            }
            for name, result in measured.items():
                for workload, value in result.items():
                    figures[name].setdefault(workload, []).append(value)
            for workload in measured["this"]:
                ratio = measured["this"][workload] / measured["base"][workload]
                ratios.setdefault(workload, []).append(ratio)
            print(f"pair {pair + 1}: " + ", ".join(
                f"{w} {measured['base'][w]:,.0f} -> {measured['this'][w]:,.0f}/s" for w in ratios
            ))  # fmt: skip
    finally:
        server.stop()
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)],
            check=False, capture_output=True,
        )  # fmt: skip
    print()
    spooled = ", spool on" if options.spool else ""
    print(f"| Redis, 1,000 anomalies{spooled} | {options.base} | this tree | this / {options.base}"
          " (median of pairs) | pairs' ratios |")  # fmt: skip
    print("|---|---:|---:|---:|---|")
    for workload, values in ratios.items():
        base = statistics.median(figures["base"][workload])
        this = statistics.median(figures["this"][workload])
        spread = ", ".join(f"{r:.2f}" for r in sorted(values))
        print(f"| {workload} | {base:,.0f}/s | {this:,.0f}/s | {statistics.median(values):.2f} |"
              f" {spread} |")  # fmt: skip


if __name__ == "__main__":
    main()
