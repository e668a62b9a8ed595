"""Recording throughput, commands per occurrence and memory per anomaly, side by side.

Runs against redis-server processes it starts itself on free ports, and a temporary SQLite
file. Each figure is the median of its rounds; each ratio to the baseline comes from alternating
short bursts of both within a round (this machine is shared, and its speed drifts).
Prints the machine, then a Markdown table for bench/RESULTS.md.

    python bench/bench_record.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import redis
import redis.asyncio as aioredis
import structlog

from anomaly_counter import AnomalyCounter, Settings
from anomaly_counter.model import Occurrence
from reference_baseline import ReferenceSequence  # beside this script, on its sys.path

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

SERVICES = ["api", "web", "worker", "db", "cache", "gateway", "auth", "search"]
ALERTS = ["PodCrashLoopBackOff", "HighLatency", "OOMKilled", "DiskPressure", "Error5xx"]
SIGNATURES = [
    {"alertname": ALERTS[i % 5], "service": SERVICES[i % 8], "namespace": f"ns-{i % 25}",
     "reason": f"r{i}", "pod": f"pod-{i}-x7f"}
    for i in range(1000)
]  # fmt: skip


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, {platform.platform()}, "
        f"Python {platform.python_version()}, redis-py {redis.__version__}, "
        f"{server.stdout.split(' sha=')[0]}, {datetime.now(UTC):%Y-%m-%d}"
    )


class Server:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp()
        self.start_again()

    def start_again(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        self.client = client

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


async def rate(n: int, run: Callable[[int], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await run(n)
    return n / (time.perf_counter() - start)


async def sequential(record: Callable[[dict[str, str]], Awaitable[object]], n: int) -> None:
    for i in range(n):
        await record(SIGNATURES[i % len(SIGNATURES)])


async def concurrent(
    record: Callable[[dict[str, str]], Awaitable[object]], n: int, tasks: int = 100
) -> None:
    """Exactly n records, from `tasks` tasks at once."""

    async def worker(w: int) -> None:
        for i in range(n // tasks + (w < n % tasks)):
            await record(SIGNATURES[(w * 37 + i) % len(SIGNATURES)])

    await asyncio.gather(*(worker(w) for w in range(tasks)))


async def batched(counter: AnomalyCounter, n: int, size: int = 100) -> None:
    for start in range(0, n, size):
        await counter.record_many(
            [{"signature": SIGNATURES[(start + i) % len(SIGNATURES)]} for i in range(size)]
        )


Runner = Callable[[int], Awaitable[None]]
BURSTS = 10


class Monitor:
    """Counts the commands clients send (not those run inside scripts)."""

    def __init__(self, port: int) -> None:
        self.port, self.count = port, 0

    def __enter__(self) -> Monitor:
        self.stopper = redis.Redis(port=self.port)
        self.stopper.ping()
        self.client = redis.Redis(port=self.port)
        self.monitor = self.client.monitor().__enter__()
        self.thread = threading.Thread(target=self._collect)
        self.thread.start()
        time.sleep(0.1)
        return self

    def _collect(self) -> None:
        for entry in self.monitor.listen():
            if entry["command"] == "ECHO monitor-stop":
                return
            if entry.get("client_type") != "lua":
                self.count += 1

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.1)
        self.stopper.echo("monitor-stop")
        self.thread.join()
        self.monitor.__exit__(None, None, None)
        self.client.close()
        self.stopper.close()


async def commands_per_record(server: Server) -> tuple[float, float]:
    async with AnomalyCounter.from_url(server.url, "cmds") as counter:
        await sequential(counter.record_anomaly, 50)  # warm: scripts loaded, keys exist
        with Monitor(server.port) as ours:
            await sequential(counter.record_anomaly, 200)
    client = aioredis.Redis(port=server.port)
    baseline = ReferenceSequence(client, "cmds-baseline")
    await sequential(baseline.record_anomaly, 50)
    with Monitor(server.port) as theirs:
        await sequential(baseline.record_anomaly, 200)
    await client.aclose()
    return ours.count / 200, theirs.count / 200


async def memory_of_one_anomaly(
    server: Server, total: int, spool_dir: str | None = None
) -> dict[str, float]:
    """MEMORY USAGE of all of one anomaly's keys after ``total`` occurrences over 30 days; then
    with a full timeline (resolutions and notices, as Alertmanager and the notices write them,
    and milestones); then with 100 repairs and 50 dispositions reported by a token as well.
    With ``spool_dir``, through a spool, as ``serve`` runs (each occurrence numbered)."""
    server.client.flushall()
    now = datetime.now(UTC)
    start = now - timedelta(days=30) + timedelta(minutes=1)
    step = (now - start) / total
    signature = {"alertname": "PodCrashLoopBackOff", "service": "api", "namespace": "prod"}
    key = AnomalyCounter.hash_signature(signature)
    began = time.perf_counter()

    def used(*leaving_out: str) -> int:
        """Its keys' memory, but those named by their last letters (``i``: the ids kept)."""
        keys = [k for k in server.client.keys("ac:{memory*") if b":a:" in k]
        kept = [k for k in keys if k.decode().rsplit(":", 1)[1] not in leaving_out]
        return sum(server.client.memory_usage(k, samples=0) or 0 for k in kept)

    settings = Settings(store_url=server.url, spool_dir=spool_dir or "")
    async with AnomalyCounter.from_url(server.url, "memory", settings=settings) as counter:
        for first in range(0, total, 1000):
            await counter.record_many(
                [{"signature": signature, "at": start + step * i}
                 for i in range(first, min(first + 1000, total))]
            )  # fmt: skip
        elapsed = time.perf_counter() - began
        frequency = await counter.get_frequency(key)
        assert frequency is not None
        figures: dict[str, float] = {"counting": used(), "rate": total / elapsed}
        figures["count_30d"] = frequency.count_30d
        for i in range(200):  # more than the routine part keeps
            moment = now - timedelta(minutes=200 - i)
            await counter.record_resolution(key, at=moment, by="3f2a9c0d1e2f3a4b")
            await counter.note_notice(key, ("slack", "telegram")[i % 2], "escalation", "sent")
        for i in range(60):  # more than the milestones keep
            await counter.mark_permanent_fix_applied(
                key, f"raised the memory limit to {i + 1} GiB", by="oncall:maria"
            )
        figures["with timeline"] = used("i")
        figures["ids"] = used() - used("i")  # the fixes' write ids (deduplication)
        figures["timeline entries"] = len(await counter.timeline(key))
        # and Alertmanager's episodes: max_open of them open, and a flapping state
        bound = settings.episodes.max_open
        await counter.record_many(
            [Occurrence(signature, now, f"am:open{n}:1", f"open{n}") for n in range(bound)]
        )
        figures["with episodes"] = used("i")
        figures["open"] = bound
        for i in range(100):
            await counter.record_repair_attempt(
                key, ("restart_pod", "scale_up")[i % 2], i % 3 == 0, by="3f2a9c0d1e2f3a4b"
            )
            if i % 2:
                await counter.record_disposition(key, "auto_repair", by="3f2a9c0d1e2f3a4b")
        figures["with repairs"] = used()
    return figures


def print_memory(
    total: int, memory: dict[str, float] | None, spooled: dict[str, float] | None
) -> None:
    for label, figures in (("", memory), (", through a spool (as `serve` runs)", spooled)):
        if figures is None:
            continue
        print(
            f"MEMORY USAGE of one anomaly after {total:,} occurrences over 30 days"
            f"{label}: {figures['counting']:,.0f} bytes (count_30d {figures['count_30d']:,.0f};"
            f" recorded at {figures['rate']:,.0f}/s); with a full timeline"
            f" ({figures['timeline entries']:.0f} entries): {figures['with timeline']:,.0f} bytes"
            f" (and {figures['ids']:,.0f} bytes of the 60 fixes' write ids); with"
            f" {figures['open']:.0f} Alertmanager episodes open (max_open) as well:"
            f" {figures['with episodes']:,.0f} bytes; with 100 repairs"
            f" and 50 dispositions too, all its keys: {figures['with repairs']:,.0f} bytes"
        )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer occurrences, for a smoke run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the 1M-occurrence run")
    parser.add_argument("--memory-only", action="store_true", help="only the 1M-occurrence run")
    options = parser.parse_args()
    scale = 0.1 if options.quick else 1.0
    print(f"Machine: {machine()}")
    server = Server()
    tmp = tempfile.mkdtemp()
    if options.memory_only:
        total = int(1e6 * scale)
        memory = await memory_of_one_anomaly(server, total)
        print_memory(total, memory, await memory_of_one_anomaly(server, total, f"{tmp}/spool"))
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        return
    results: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    baseline_client = aioredis.Redis(port=server.port)
    baseline = ReferenceSequence(baseline_client)
    ours = AnomalyCounter.from_url(server.url, "bench")
    sqlite_url = f"sqlite:///{tmp}/bench.db"
    lite = AnomalyCounter.from_url(sqlite_url, "bench", settings=Settings(store_url=sqlite_url))
    n = int(4000 * scale)
    base_record = baseline.record_anomaly

    # Each figure against the baseline is measured in alternating short bursts of both, so
    # that both see the same machine (it is shared, and its speed drifts by tens of percent).
    async def paired(name: str, base: Runner, mine: Runner, base_n: int, mine_n: int) -> None:
        spent = {"base": 0.0, "mine": 0.0}
        for _ in range(BURSTS):
            for side, run, count in (("base", base, base_n), ("mine", mine, mine_n)):
                began = time.perf_counter()
                await run(count // BURSTS)
                spent[side] += time.perf_counter() - began
        note(f"baseline for {name}", base_n / spent["base"])
        note(name, mine_n / spent["mine"])
        note(f"ratio for {name}", (mine_n / spent["mine"]) / (base_n / spent["base"]))

    for round_ in range(options.rounds):
        await paired(
            "redis sequential",
            lambda k: sequential(base_record, k),
            lambda k: sequential(ours.record_anomaly, k),
            n // 4,
            n,
        )
        await paired(
            "redis 100 tasks",
            lambda k: concurrent(base_record, k),
            lambda k: concurrent(ours.record_anomaly, k),
            n // 2,
            n * 4,
        )
        await paired(
            "redis record_many x100",
            lambda k: sequential(base_record, k),
            lambda k: batched(ours, k),
            n // 4,
            n * 10,
        )
        note("sqlite sequential", await rate(n, lambda k: sequential(lite.record_anomaly, k)))
        note("sqlite 100 tasks", await rate(n, lambda k: concurrent(lite.record_anomaly, k)))
        note("sqlite record_many x100", await rate(n * 4, lambda k: batched(lite, k)))
        figures = ", ".join(
            f"{k} {v[-1]:,.1f}x" if k.startswith("ratio") else f"{k} {v[-1]:,.0f}/s"
            for k, v in results.items()
        )
        print(f"round {round_ + 1}: {figures}")
    await ours.aclose()
    await lite.aclose()
    await baseline_client.aclose()
    median = {name: statistics.median(values) for name, values in results.items()}
    ours_cmds, baseline_cmds = await commands_per_record(server)
    memory = spooled = None
    if not options.no_memory:
        memory = await memory_of_one_anomaly(server, int(1e6 * scale))
        spooled = await memory_of_one_anomaly(server, int(1e6 * scale), f"{tmp}/spool")
    server.stop()
    shutil.rmtree(tmp, ignore_errors=True)

    rows = [
        ("Redis, `record_anomaly` sequential", "redis sequential", 10),
        ("Redis, `record_anomaly` 100 concurrent tasks", "redis 100 tasks", 25),
        ("Redis, `record_many` batches of 100", "redis record_many x100", 50),
        ("SQLite, `record_anomaly` sequential", "sqlite sequential", None),
        ("SQLite, `record_anomaly` 100 concurrent tasks", "sqlite 100 tasks", None),
        ("SQLite, `record_many` batches of 100", "sqlite record_many x100", None),
    ]
    print()
    print("| measurement | records/s | baseline, same bursts | ratio (median of rounds) | target |")
    print("|---|---:|---:|---:|---:|")
    for label, name, target in rows:
        value = median[name]
        against = median.get(f"baseline for {name}")
        base = f"{against:,.0f}" if against else ""
        ratio = f"{median[f'ratio for {name}']:.1f}x" if against else ""
        goal = f">= {target}x" if target else ""
        if name == "sqlite sequential":
            goal = ">= 3,000/s"
        print(f"| {label} | {value:,.0f} | {base} | {ratio} | {goal} |")
    print()
    print(f"Redis commands sent per `record_anomaly`: {ours_cmds:.2f}")
    print(f"Redis commands sent per occurrence by the baseline: {baseline_cmds:.2f}")
    print_memory(int(1e6 * scale), memory, spooled)


if __name__ == "__main__":
    asyncio.run(main())
