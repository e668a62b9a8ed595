"""The dashboard's figures: server time of its pages for a project of 100,000 anomalies, and
what the story (timeline, search index) costs in memory.

For each store (SQLite file, one Redis; `--cluster` adds a three-primary Redis Cluster) it
fills one project with 100,000 anomalies as real streams fall off (a few hundred chronic, most
seen once), gives its 50 busiest a full story (repairs and dispositions reported by a token,
fixes, notices), starts `anomaly-counter serve` on it, and asks each page 200 times in a row.
Server time is what the page itself reports (``Server-Timing``: from the session's check to the
rendered page); latency is what the client saw on loopback. Prints the machine and Markdown.

    python bench/bench_web.py [--quick] [--cluster]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import redis
import structlog

from anomaly_counter import AnomalyCounter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_cluster import used_memory  # beside this script, on its sys.path
from bench_record import Server, machine
from bench_service import PROJECT, Service

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

ALERTS = ["PodCrashLoopBackOff", "HighLatency", "OOMKilled", "DiskPressure", "Error5xx",
          "KubeJobFailed", "NodeNotReady", "CertificateExpiringSoon", "TargetDown",
          "KubePodNotReady"]  # fmt: skip
SERVICES = [f"svc-{n:02d}" for n in range(60)]
NAMESPACES = ["prod", "staging", "payments", "search", "kube-system", "ingest", "batch", "edge"]
TOKEN_ID = "3f2a9c0d1e2f3a4b"  # reporters of repairs in the stories, as the API names them


def signature(i: int) -> dict[str, str]:
    return {
        "alertname": ALERTS[i % len(ALERTS)],
        "service": SERVICES[(i // 10) % len(SERVICES)],
        "namespace": NAMESPACES[(i // 600) % len(NAMESPACES)],
        "reason": f"r{i}",
        "pod": f"{SERVICES[(i // 10) % len(SERVICES)]}-{i:06x}-x7f",
    }


async def fill(url: str, anomalies: int) -> dict[str, float]:
    """The project: anomaly of rank r has max(1, 2000 / r) occurrences over 30 days; the 300
    busiest have half of theirs in the last 24 hours (so a few hundred are chronic)."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    began = time.perf_counter()
    occurrences = 0
    async with AnomalyCounter.from_url(url, PROJECT) as counter:
        batch: list[dict[str, object]] = []
        for i in range(anomalies):
            n = max(1, 2000 // (i + 1))
            for _ in range(n):
                recent = i < 300 and rng.random() < 0.5
                age = rng.uniform(0, 86_000) if recent else rng.uniform(0, 29.9 * 86_400)
                batch.append({"signature": signature(i), "at": now - timedelta(seconds=age)})
            if len(batch) >= 1_000:
                await counter.record_many(batch)
                occurrences += len(batch)
                batch = []
        if batch:
            await counter.record_many(batch)
            occurrences += len(batch)
        filled = time.perf_counter() - began
        for i in range(50):  # full stories for the busiest
            key = AnomalyCounter.hash_signature(signature(i))
            for k in range(120):
                await counter.record_repair_attempt(
                    key, ("restart_pod", "scale_up", "rollback")[k % 3], k % 4 == 0, by=TOKEN_ID
                )
                if k % 2 == 0:
                    await counter.record_disposition(key, "auto_repair", by=TOKEN_ID)
            if i % 5 == 0:
                await counter.mark_permanent_fix_applied(
                    key, "raised the memory limit to 1 GiB and fixed the leak", by="oncall:maria"
                )
            for channel in ("slack", "telegram"):
                await counter.note_notice(key, channel, "escalation", "sent")
    return {"occurrences": occurrences, "rate": occurrences / filled}


def timed(service: Service, path: str, times: int) -> dict[str, float]:
    """Ask a page ``times`` times in a row: server time (Server-Timing) and latency, in ms."""
    server, seen = [], []
    with httpx.Client(base_url=service.url, cookies={"ac_session": service.token}) as http:
        for _ in range(times):
            began = time.perf_counter()
            response = http.get(path)
            seen.append((time.perf_counter() - began) * 1000)
            response.raise_for_status()
            timing = response.headers["server-timing"]
            server.append(float(timing.split("dur=")[1].split(";")[0]))
            size = len(response.content)
    ordered = sorted(server)
    return {
        "first": server[0],
        "p50": statistics.median(server),
        "p99": ordered[int(len(ordered) * 0.99) - 1],
        "max": ordered[-1],
        "latency p50": statistics.median(seen),
        "latency p99": sorted(seen)[int(len(seen) * 0.99) - 1],
        "bytes": size,
    }


def pages(anomaly_key: str) -> list[tuple[str, str, float]]:
    return [
        ("project page (chronic, 24 h)", f"/projects/{PROJECT}", 150),
        ("project page, every anomaly by 7 d", f"/projects/{PROJECT}?level=all&window=7d", 150),
        ("project page, search `svc-07`", f"/projects/{PROJECT}?q=svc-07", 150),
        ("anomaly page (busiest: full story)", f"/projects/{PROJECT}/anomalies/{anomaly_key}", 50),
    ]


def key_bytes(ports: list[int], pattern: str) -> int:
    total = 0
    for port in ports:
        with redis.Redis(port=port) as client:
            for key in client.scan_iter(match=pattern, count=1000):
                total += client.memory_usage(key, samples=0) or 0
    return total


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10,000 anomalies, 40 requests")
    parser.add_argument("--cluster", action="store_true", help="a Redis Cluster as well")
    options = parser.parse_args()
    anomalies = 10_000 if options.quick else 100_000
    requests = 40 if options.quick else 200
    print(f"Machine: {machine()}")
    top_key = AnomalyCounter.hash_signature(signature(0))
    stores: list[tuple[str, str, list[int], object]] = []
    tmp = tempfile.mkdtemp()
    stores.append(("SQLite", f"sqlite:///{tmp}/web.db", [], None))
    server = Server()
    stores.append(("Redis", server.url, [server.port], server))
    if options.cluster:
        from tests.cluster import LocalCluster

        cluster = LocalCluster(Path(tempfile.mkdtemp()), primaries=3, replicas=0)
        stores.append(("Redis Cluster (3 primaries)", cluster.url, cluster.ports, cluster))
    results: dict[str, dict[str, dict[str, float]]] = {}
    memory: dict[str, float] = {}
    for name, url, ports, _ in stores:
        before = used_memory(ports) if ports else 0
        filled = await fill(url, anomalies)
        print(f"{name}: {anomalies:,} anomalies, {filled['occurrences']:,.0f} occurrences at"
              f" {filled['rate']:,.0f}/s")  # fmt: skip
        if ports and name == "Redis":
            memory["per anomaly"] = (used_memory(ports) - before) / anomalies
            memory["search terms"] = key_bytes(ports, f"ac:{{{PROJECT}.*}}:x:terms")
            memory["search grams"] = key_bytes(ports, f"ac:{{{PROJECT}.*}}:x:grams")
            memory["timelines"] = sum(
                key_bytes(ports, f"ac:{{{PROJECT}.*}}:a:*:{part}") for part in "kl"
            )
            memory["busiest timeline"] = sum(
                key_bytes(ports, f"ac:{{{PROJECT}.*}}:a:{top_key}:{part}") for part in "kl"
            )
            memory["chronic index"] = key_bytes(ports, f"ac:{{{PROJECT}.*}}:x:chronic")
            memory["busiest, all its keys"] = key_bytes(ports, f"ac:{{{PROJECT}.*}}:a:{top_key}:*")
        service = Service(url)
        try:
            results[name] = {}
            for label, path, _ in pages(top_key):
                results[name][label] = timed(service, path, requests)
                r = results[name][label]
                size = r["bytes"] / 1024
                print(f"  {label}: first {r['first']:.1f} ms, p50 {r['p50']:.1f},"
                      f" p99 {r['p99']:.1f}, max {r['max']:.1f} ({size:.0f} KB)")  # fmt: skip
        finally:
            service.stop()
    for _, _, _, owner in stores:
        if owner is not None:
            owner.stop()  # type: ignore[attr-defined]

    print()
    print("| page (server time, ms) | store | first | p50 | p99 | max | target | client p99 |")
    print("|---|---|---:|---:|---:|---:|---|---:|")
    for label, _, target in pages(top_key):
        for name in results:
            r = results[name][label]
            met = "met" if r["p99"] <= target else "NOT met"
            print(f"| {label} | {name} | {r['first']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} |"
                  f" {r['max']:.1f} | p99 <= {target:.0f}: {met} |"
                  f" {r['latency p99']:.1f} |")  # fmt: skip
    if memory:
        print()
        print(f"Redis, {anomalies:,} anomalies of one project: {memory['per anomaly']:,.0f} bytes"
              " per anomaly (used_memory_dataset), of which")  # fmt: skip
        for part in ("search terms", "search grams", "timelines", "chronic index"):
            print(f"  {part}: {memory[part] / anomalies:,.0f} bytes per anomaly"
                  f" ({memory[part]:,} in all)")  # fmt: skip
        print(f"the busiest anomaly's timeline: {memory['busiest timeline']:,} bytes;"
              f" all its keys: {memory['busiest, all its keys']:,} bytes")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
