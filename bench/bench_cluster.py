"""Scale-out figures: one Redis against a three-primary Redis Cluster, side by side.

- ingest throughput (record_many x100, and 100 concurrent tasks), alternating short bursts on
  both stores within each round, median of the rounds;
- memory: 1,000,000 distinct anomalies across 100 projects (one occurrence each), per anomaly;
  the fixed cost of a project; each occurrence id kept for deduplication;
- top-20 of a project holding 100,000 anomalies: latency percentiles of repeated queries.

Starts its own redis-server processes on free ports (the cluster is made by redis-cli, as in
the tests). Prints the machine, then Markdown for bench/RESULTS.md.

    python bench/bench_cluster.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import structlog

from anomaly_counter import AnomalyCounter, Settings
from bench_record import SIGNATURES, Server, machine  # beside this script, on its sys.path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.cluster import LocalCluster  # the tests' cluster launcher

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

PROJECTS = [f"team-{p:03d}" for p in range(100)]


def used_memory(ports: list[int]) -> int:
    """Memory of the data alone (not of connections, scripts or replication buffers)."""
    total = 0
    for port in ports:
        with redis.Redis(port=port) as client:
            total += int(client.info("memory")["used_memory_dataset"])
    return total


async def ingest_batched(counter: AnomalyCounter, n: int, offset: int) -> None:
    for start in range(0, n, 100):
        await counter.record_many(
            [{"signature": SIGNATURES[(offset + start + i) % len(SIGNATURES)]} for i in range(100)]
        )


async def ingest_concurrent(counter: AnomalyCounter, n: int, offset: int, tasks: int = 100) -> None:
    async def worker(w: int) -> None:
        for i in range(n // tasks):
            await counter.record_anomaly(SIGNATURES[(offset + w * 37 + i) % len(SIGNATURES)])

    await asyncio.gather(*(worker(w) for w in range(tasks)))


def reset_stats(ports: list[int]) -> None:
    for port in ports:
        with redis.Redis(port=port) as client:
            client.config_resetstat()


def script_usec(ports: list[int]) -> float:
    """Microseconds the servers spent in the record script since the last reset, all told."""
    total = 0.0
    for port in ports:
        with redis.Redis(port=port) as client:
            stats = client.info("commandstats").get("cmdstat_evalsha")
            total += float(stats["usec"]) if stats else 0.0
    return total


async def throughput(
    stores: dict[str, AnomalyCounter], run: Any, n: int, rounds: int, bursts: int = 6
) -> dict[str, list[float]]:
    """Per store, the rate of each round (bursts alternate between the stores)."""
    rates: dict[str, list[float]] = {name: [] for name in stores}
    for _ in range(rounds):
        elapsed = dict.fromkeys(stores, 0.0)
        for burst in range(bursts):
            for name, counter in stores.items():
                began = time.perf_counter()
                await run(counter, n, burst * n)
                elapsed[name] += time.perf_counter() - began
        for name in stores:
            rates[name].append(n * bursts / elapsed[name])
    return rates


async def distinct_anomalies(url: str, ports: list[int], total: int) -> dict[str, float]:
    """Memory per anomaly for `total` distinct anomalies across 100 projects (one occurrence
    each), and the memory of one project's index keys."""
    settings = Settings(store_url=url)
    counters = [AnomalyCounter.from_url(url, p, settings=settings) for p in PROJECTS]
    try:
        per_project = total // len(PROJECTS)
        began = time.perf_counter()
        before = used_memory(ports)
        for c, counter in enumerate(counters):
            for start in range(0, per_project, 1000):
                await counter.record_many(
                    [{"signature": {"alertname": "A", "service": f"svc-{c}-{start + i}"}}
                     for i in range(min(1000, per_project - start))]
                )  # fmt: skip
        elapsed = time.perf_counter() - began
        each = (used_memory(ports) - before) / (per_project * len(PROJECTS))
    finally:
        for counter in counters:
            await counter.aclose()
    indexes = project_indexes(ports, PROJECTS[0])
    return {"per_anomaly": each, "indexes": indexes, "rate": per_project * 100 / elapsed}


def project_indexes(ports: list[int], project: str) -> float:
    """MEMORY USAGE of one project's own keys: its 16 shards' indexes and summaries (part of
    the per-anomaly figure: they grow with its anomalies)."""
    names = ("1h", "24h", "7d", "30d", "summary", "dispositions")
    keys = [f"ac:{{{project}.{shard}}}:x:{name}" for shard in range(16) for name in names]
    total = 0
    for port in ports:
        with redis.Redis(port=port) as client:
            for key in keys:
                try:
                    total += client.memory_usage(key, samples=0) or 0
                except redis.ResponseError:  # MOVED: another primary's
                    continue
    return total


async def id_cost(url: str, ports: list[int], n: int) -> float:
    """Bytes per occurrence id kept for deduplication (occurrences through the service or a
    spool carry one), over 1,000 anomalies already known."""
    async with AnomalyCounter.from_url(url, "ids") as counter:
        sigs = [{"alertname": "Ids", "service": f"s{i}"} for i in range(1000)]
        await counter.record_many([{"signature": s} for s in sigs])
        before = used_memory(ports)
        for start in range(0, n, 1000):
            await counter.record_many(
                [{"signature": sigs[i % 1000], "occurrence_id": f"id-{start + i}"}
                 for i in range(1000)]
            )  # fmt: skip
        return (used_memory(ports) - before) / n


async def top_latency(url: str, anomalies: int, queries: int) -> dict[str, float]:
    """Top-20 of a project of `anomalies` anomalies whose counts fall off like real alert
    streams (a few chronic, most seen once: count ~ 2,000 / rank, at least 1)."""
    async with AnomalyCounter.from_url(url, "big", settings=Settings(store_url=url)) as counter:
        batch: list[dict[str, Any]] = []
        for rank in range(anomalies):
            signature = {"alertname": "Big", "service": f"svc-{rank}"}
            batch.extend([{"signature": signature}] * max(1, 2000 // (rank + 1)))
            if len(batch) >= 2000:
                await counter.record_many(batch)
                batch = []
        if batch:
            await counter.record_many(batch)
        latencies = []
        for _ in range(queries):
            began = time.perf_counter()
            top = await counter.top_anomalies(limit=20)
            latencies.append((time.perf_counter() - began) * 1000)
        assert len(top) == 20 and top[0]["count"] == 2000, top[:2]
    first = latencies[0]  # the first query also lowers the index entries that went stale
    latencies.sort()
    return {
        "first": first,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max": latencies[-1],
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller figures, for a smoke run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    distinct = 20_000 if args.quick else 1_000_000
    big = 10_000 if args.quick else 100_000
    print(machine())
    single = Server()
    directory = tempfile.mkdtemp()
    cluster = LocalCluster(Path(directory), primaries=3, replicas=0)
    single_ports, cluster_ports = [single.port], cluster.primary_ports()
    try:
        stores = {
            "one Redis": AnomalyCounter.from_url(single.url, "ingest"),
            "cluster": AnomalyCounter.from_url(cluster.url, "ingest"),
        }
        for counter in stores.values():  # warm: scripts loaded, anomalies known
            await ingest_batched(counter, 2000, 0)
        store_ports = {"one Redis": single_ports, "cluster": cluster_ports}
        for name in stores:
            reset_stats(store_ports[name])
        batched = await throughput(stores, ingest_batched, 2000, args.rounds)
        server_usec = {
            name: script_usec(store_ports[name]) / (2000 * 6 * args.rounds) for name in stores
        }
        tasks = await throughput(stores, ingest_concurrent, 2000, args.rounds)
        for counter in stores.values():
            await counter.aclose()
        print("\n| ingest | one Redis /s | 3-primary cluster /s | cluster / one | rounds |")
        print("|---|---|---|---|---|")
        for name, rates in (("record_many x100", batched), ("100 tasks", tasks)):
            one, many = statistics.median(rates["one Redis"]), statistics.median(rates["cluster"])
            ratios = "/".join(
                f"{c / o:.2f}" for o, c in zip(rates["one Redis"], rates["cluster"], strict=True)
            )
            print(f"| {name} | {one:,.0f} | {many:,.0f} | {many / one:.2f} | {ratios} |")
        one, many = server_usec["one Redis"], server_usec["cluster"]
        print(
            f"| server time per occurrence (record_many, all primaries) | {one:.1f} us "
            f"| {many:.1f} us | | |"
        )

        print(f"\n| {distinct:,} anomalies, 100 projects | one Redis | 3-primary cluster |")
        print("|---|---|---|")
        memory = {}
        for name, url, ports in (
            ("one", single.url, single_ports),
            ("cluster", cluster.url, cluster_ports),
        ):
            memory[name] = await distinct_anomalies(url, ports, distinct)
            memory[name]["id"] = await id_cost(url, ports, 100_000 if not args.quick else 20_000)
        rows = (
            ("bytes per anomaly", "per_anomaly", "{:,.0f}"),
            ("bytes of a project's 96 index keys (10,000 anomalies)", "indexes", "{:,.0f}"),
            ("bytes per occurrence id kept", "id", "{:,.0f}"),
            ("written at (anomalies/s)", "rate", "{:,.0f}"),
        )
        for label, field, form in rows:
            one, many = memory["one"][field], memory["cluster"][field]
            print(f"| {label} | {form.format(one)} | {form.format(many)} |")

        print(f"\n| top-20 of {big:,} anomalies | first ms | p50 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|")
        for name, url in (("one Redis", single.url), ("3-primary cluster", cluster.url)):
            figures = await top_latency(url, big, 200)
            print(
                f"| {name} | {figures['first']:.1f} | {figures['p50']:.1f} "
                f"| {figures['p99']:.1f} | {figures['max']:.1f} |"
            )
    finally:
        cluster.stop()
        single.stop()


if __name__ == "__main__":
    asyncio.run(main())
