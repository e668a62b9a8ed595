"""What repair verification costs the record path in the worst case: a storm of one anomaly
right after a repair (its window open, its history full), against the same storm without any
repair, on a redis-server of its own, through the library. Three rounds; prints Markdown rows.

    python bench/bench_verification.py   (PYTHONPATH=<tree>/src to run another tree)
"""

from __future__ import annotations

import asyncio
import logging
import time

import structlog

from anomaly_counter import AnomalyCounter, Settings
from bench_record import Server, machine  # beside this script, on its sys.path

STORM, REPAIRS = 3_000, 100


async def storm(url: str, project: str, repairs: int) -> float:
    async with AnomalyCounter.from_url(settings=Settings(store_url=url), project=project) as c:
        signature = {"alertname": "Storm", "service": project}
        key = c.hash_signature(signature)
        await c.record_anomaly(signature)
        for _ in range(repairs):  # a full history, the last attempt's window open
            await c.record_repair_attempt(key, "restart_pod", True)
        began = time.perf_counter()
        for _ in range(STORM):
            await c.record_anomaly(signature)
        return STORM / (time.perf_counter() - began)


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(f"Machine: {machine()}")
    print()
    print(f"| round | storm of {STORM:,}, no repair | right after {REPAIRS} repairs | ratio |")
    print("|---|---:|---:|---:|")
    server = Server()
    try:
        for r in range(3):
            plain = await storm(server.url, f"plain{r}", 0)
            watched = await storm(server.url, f"watched{r}", REPAIRS)
            print(f"| {r + 1} | {plain:,.0f}/s | {watched:,.0f}/s | {watched / plain:.2f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
