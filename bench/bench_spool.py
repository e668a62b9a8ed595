"""The spool: ingest throughput with the spool path active against the store path (same run),
replay throughput, and the time from store recovery to an empty spool for a backlog of
100,000 occurrences.

Runs against a redis-server it starts itself and a spool in a temporary directory on the local
disk (every append is fsynced before it is acknowledged).

    python bench/bench_spool.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import tempfile
import time

import structlog

from anomaly_counter import AnomalyCounter, Settings
from bench_record import SIGNATURES, Server, machine  # beside this script, on its sys.path

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


async def ingest(counter: AnomalyCounter, n: int, batch: int) -> float:
    began = time.perf_counter()
    if batch == 1:
        for i in range(n):
            await counter.record_anomaly(SIGNATURES[i % len(SIGNATURES)])
    else:
        for start in range(0, n, batch):
            items = [{"signature": SIGNATURES[(start + i) % len(SIGNATURES)]} for i in range(batch)]
            await counter.record_many(items)
    return n / (time.perf_counter() - began)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    backlog = 10_000 if options.quick else 100_000
    n = 2_000 if options.quick else 10_000
    print(f"Machine: {machine()}")
    server = Server()
    spool_dir = tempfile.mkdtemp()
    settings = Settings(
        store_url=server.url, store_timeout=0.3, spool_dir=spool_dir, spool_max_bytes=1 << 30
    )
    counter = AnomalyCounter.from_url(settings=settings, project_id="bench")
    assert counter.spool is not None
    rows = []
    try:
        await ingest(counter, 1_000, 100)  # warm: scripts loaded, keys exist
        store_seq = await ingest(counter, n, 1)
        store_batch = await ingest(counter, n * 4, 100)
        server.process.kill()  # the store goes away: everything now goes to the spool
        server.process.wait()
        spool_seq = await ingest(counter, n, 1)
        spool_batch = await ingest(counter, n * 4, 100)
        rows += [("sequential `record_anomaly`", store_seq, spool_seq),
                 ("`record_many`, batches of 100", store_batch, spool_batch)]  # fmt: skip
        waiting = counter.spool.depth
        extra = max(0, backlog - waiting)
        await ingest(counter, extra - extra % 100, 100)
        waiting = counter.spool.depth
        print(f"backlog: {waiting:,} occurrences, {counter.spool.stats().size_bytes:,} bytes")
        began = time.perf_counter()
        server.start_again()
        first = None  # when the first batch was stored (the replayer was waiting, backing off)
        while counter.spool.depth:  # polling the figure is the measurement
            if first is None and counter.spool.depth < waiting:
                first = time.perf_counter()
            await asyncio.sleep(0.01)
        done = time.perf_counter()
        drained = done - began
        replay_rate = waiting / (done - (first or began))
    finally:
        await counter.aclose()
        server.stop()
        shutil.rmtree(spool_dir, ignore_errors=True)
    print()
    print("| ingest | store path (Redis up) | spool path (Redis down) | ratio |")
    print("|---|---:|---:|---:|")
    for name, store, spool in rows:
        print(f"| {name} | {store:,.0f}/s | {spool:,.0f}/s | {spool / store:.2f} |")
    print()
    print(
        f"Backlog of {waiting:,} occurrences: from Redis started again to an empty spool"
        f" {drained:.1f} s (the replayer's backoff included); replay {replay_rate:,.0f}"
        " occurrences/s once it runs"
    )


if __name__ == "__main__":
    asyncio.run(main())
