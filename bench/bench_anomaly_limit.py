"""One project tries to fill the store with distinct anomalies (issue 11: 30,000 of them, 60 MiB,
in 6 s, with nothing refused). With the default max_anomalies (20,000) it is refused past its
limit, its memory stops growing there, and another project still records new anomalies.

Through the library, on a redis-server of its own and on a SQLite file: 30,000 new anomalies
in batches of 100 (``record_many``), then one new anomaly of another project. Prints the
machine and Markdown.

    python bench/bench_anomaly_limit.py
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import tempfile
import time
from typing import Any

import structlog

from anomaly_counter import AnomalyCounter, LimitExceededError, Settings
from bench_record import Server, machine  # beside this script, on its sys.path

ATTEMPTS, BATCH = 30_000, 100


def _signature(i: int) -> dict[str, str]:
    return {"alertname": "Flood", "service": "api", "namespace": "prod", "reason": f"r{i}"}


async def flood(url: str, used: Any, held: Any) -> dict[str, float]:
    settings = Settings(store_url=url)
    before = used()
    async with (
        AnomalyCounter.from_url(url, "flood", settings=settings) as flooding,
        AnomalyCounter.from_url(url, "calm", settings=settings) as calm,
    ):
        stored = refused = 0
        began = time.perf_counter()
        for start in range(0, ATTEMPTS, BATCH):
            try:
                await flooding.record_many(
                    [{"signature": _signature(start + i)} for i in range(BATCH)]
                )
                stored += BATCH
            except LimitExceededError:
                refused += BATCH
        elapsed = time.perf_counter() - began
        began = time.perf_counter()
        await calm.record_anomaly(_signature(0))
        calm_ms = (time.perf_counter() - began) * 1000
    return {
        "seconds": elapsed,
        "stored": stored,
        "refused": refused,
        "held": held(),
        "bytes": used() - before,
        "calm_ms": calm_ms,
    }


def _redis_used(server: Server) -> int:
    return int(server.client.info("memory")["used_memory"])


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(f"Machine: {machine()}")
    rows = []
    server = Server()
    try:
        rows.append(
            (
                "Redis",
                await flood(
                    server.url,
                    lambda: _redis_used(server),
                    lambda: sum(
                        server.client.zcard(f"ac:{{flood.{shard}}}:x:30d") for shard in range(16)
                    ),
                ),
            )
        )
    finally:
        server.stop()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "flood.db")

        def size() -> int:
            files = (path, path + "-wal")
            return sum(os.path.getsize(f) for f in files if os.path.exists(f))

        def anomalies() -> int:
            with sqlite3.connect(path) as db:
                query = "SELECT COUNT(*) FROM anomalies WHERE project = 'flood'"
                return int(db.execute(query).fetchone()[0])

        rows.append(("SQLite", await flood(f"sqlite:///{path}", size, anomalies)))
    print()
    print(
        f"| store | {ATTEMPTS:,} new anomalies in batches of {BATCH} | stored (batches) |"
        " refused | anomalies held | store grew by | then another project's new anomaly |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(
            f"| {name} | {r['seconds']:.1f} s | {r['stored']:,.0f} | {r['refused']:,.0f} |"
            f" {r['held']:,.0f} | {r['bytes'] / 2**20:.1f} MiB | stored, {r['calm_ms']:.1f} ms |"
        )


if __name__ == "__main__":
    asyncio.run(main())
