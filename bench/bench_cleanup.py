"""What starting with history, moving and cleaning up cost (issue 15), on Redis (a redis-server
of its own) and SQLite:

* a backfill's recording: Prometheus episodes (resolved, a few still firing) recorded as the
  receiver records them, and the same run again (everything already there);
* moving a project: export from SQLite, import into Redis, export from Redis, import into a
  fresh SQLite file; the size of the file per anomaly;
* deleting one anomaly (median and p95 of many) and the rest of the project at once;
* the check that refuses writes on anomalies never seen: a repair written with and without it,
  side by side in alternating rounds.

Prints the machine and Markdown.

    python bench/bench_cleanup.py [--anomalies 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta

import structlog

from anomaly_counter import AnomalyCounter, Settings
from anomaly_counter.importers.prometheus import record
from anomaly_counter.importers.prometheus_episodes import FiringEpisode, fingerprint
from anomaly_counter.model import Occurrence
from anomaly_counter.transfer import export_project, import_project
from bench_record import Server, machine  # beside this script, on its sys.path

PER_ANOMALY = 20  # occurrences of each anomaly, over the last 20 days


def _signature(i: int) -> dict[str, str]:
    return {"alertname": f"Alert{i % 97}", "service": f"svc{i}", "namespace": "prod"}


async def fill(counter: AnomalyCounter, anomalies: int) -> list[str]:
    """``anomalies`` anomalies, each with 20 occurrences a day apart, a repair and a
    disposition: what a project looks like after a few weeks."""
    now = datetime.now(UTC)
    keys = []
    for first in range(0, anomalies, 100):
        batch = [
            Occurrence(_signature(i), now - timedelta(days=d, minutes=i % 60))
            for i in range(first, min(first + 100, anomalies))
            for d in range(PER_ANOMALY)
        ]
        frequencies = await counter.record_many(batch)
        keys.extend(dict.fromkeys(f.anomaly_key for f in frequencies))
    for key in keys:
        await counter.record_repair_attempt(key, "restart_pod", True)
        await counter.record_disposition(key, "auto_repair")
    return keys


async def backfill(url: str, episodes: int) -> tuple[float, float]:
    """Seconds to record ``episodes`` backfilled episodes, then to run the same again."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    found = []
    for i in range(episodes):
        labels = {"alertname": f"Alert{i % 50}", "service": f"svc{i % 40}", "pod": f"p{i % 7}"}
        starts = now_ms - (episodes - i) * 60_000
        ends = starts + 30_000 if i < episodes - 20 else None  # the last ones still firing
        found.append(FiringEpisode(labels, fingerprint(labels), starts, ends))
    settings = Settings(store_url=url)
    async with AnomalyCounter.from_url(settings=settings, project="backfill") as counter:
        timings = []
        for _ in range(2):
            began = time.perf_counter()
            await record(counter, found, settings.alert_labels)
            timings.append(time.perf_counter() - began)
    return timings[0], timings[1]


async def move(sqlite_dir: str, redis_url: str, anomalies: int) -> dict[str, float]:
    """Seconds for each step of SQLite -> Redis -> SQLite, and bytes per anomaly."""
    figures: dict[str, float] = {}
    source = AnomalyCounter.from_url(f"sqlite:///{sqlite_dir}/source.db", "moved")
    await fill(source, anomalies)
    target = AnomalyCounter.from_url(redis_url, "moved")
    back = AnomalyCounter.from_url(f"sqlite:///{sqlite_dir}/back.db", "moved")
    try:
        for name, origin, destination in (
            ("SQLite -> Redis", source, target),
            ("Redis -> SQLite", target, back),
        ):
            file = io.StringIO()
            began = time.perf_counter()
            await export_project(origin, file)
            figures[f"export {name}"] = time.perf_counter() - began
            figures["bytes"] = len(file.getvalue().encode()) / anomalies
            file.seek(0)
            began = time.perf_counter()
            await import_project(destination, file)
            figures[f"import {name}"] = time.perf_counter() - began
    finally:
        for counter in (source, target, back):
            await counter.aclose()
    return figures


async def delete(url: str, anomalies: int, singles: int) -> tuple[list[float], float, int]:
    """Milliseconds of each of ``singles`` deletions of one anomaly, then seconds to delete
    the rest of the project, and how many that was."""
    async with AnomalyCounter.from_url(url, "deleted") as counter:
        keys = await fill(counter, anomalies)
        times = []
        for key in keys[:singles]:
            began = time.perf_counter()
            await counter.delete_anomaly(key)
            times.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        rest = (await counter.delete_project()).anomalies
        return times, time.perf_counter() - began, rest


async def repairs(url: str, rounds: int, per_round: int = 300) -> list[tuple[float, float]]:
    """Repairs per second with the check that the anomaly exists, and without (the check
    made a no-op), alternating rounds on the same anomalies."""
    async with AnomalyCounter.from_url(url, "checked") as counter:
        signatures = [{"signature": _signature(i)} for i in range(50)]
        keys = [f.anomaly_key for f in await counter.record_many(signatures)]
        checked = counter._must_exist

        async def unchecked(key: str, now_ms: int) -> None:
            return None

        pairs = []
        for _ in range(rounds):
            rates = []
            for check in (checked, unchecked):
                counter._must_exist = check  # type: ignore[method-assign]
                began = time.perf_counter()
                for n in range(per_round):
                    await counter.record_repair_attempt(keys[n % 50], "restart_pod", True)
                rates.append(per_round / (time.perf_counter() - began))
            pairs.append((rates[0], rates[1]))
        return pairs


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--anomalies", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(f"Machine: {machine()}")
    print()
    server = Server()
    directory = tempfile.mkdtemp()
    stores = (("Redis", server.url), ("SQLite", f"sqlite:///{directory}/bench.db"))
    try:
        print("| store | backfill: 10,000 episodes recorded | the same again (all there) |")
        print("|---|---:|---:|")
        for name, url in stores:
            first, again = await backfill(url, 10_000)
            print(f"| {name} | {first:.2f} s | {again:.2f} s |")
        print()
        n = args.anomalies
        figures = await move(directory, server.url, n)
        print(
            f"Moving a project of {n:,} anomalies ({PER_ANOMALY} occurrences, a repair and a"
            f" disposition each; {figures['bytes']:,.0f} bytes an anomaly in the file):"
        )
        print()
        print("| step | seconds |")
        print("|---|---:|")
        for step, seconds in figures.items():
            if step != "bytes":
                print(f"| {step} | {seconds:.2f} |")
        print()
        print(f"| store | delete one anomaly (of {n:,}): median | p95 | the rest of the project |")
        print("|---|---:|---:|---:|")
        for name, url in stores:
            times, whole, rest = await delete(url, n, 200)
            p95 = statistics.quantiles(times, n=20)[-1]
            print(
                f"| {name} | {statistics.median(times):.2f} ms | {p95:.2f} ms"
                f" | {rest:,} in {whole:.2f} s |"
            )
        print()
        print("| store | repairs/s, anomaly checked | unchecked | ratio (median of rounds) |")
        print("|---|---:|---:|---:|")
        for name, url in stores:
            pairs = await repairs(url, args.rounds)
            ratio = statistics.median(a / b for a, b in pairs)
            checked = statistics.median(a for a, _ in pairs)
            unchecked = statistics.median(b for _, b in pairs)
            print(f"| {name} | {checked:,.0f} | {unchecked:,.0f} | {ratio:.2f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
