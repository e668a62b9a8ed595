"""Many writers on one anomaly: exact counts, and exactly one report of each crossing."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from datetime import UTC, datetime
from pathlib import Path

from anomaly_counter import AnomalyCounter, Settings

from .conftest import SIG, RedisServer

WRITERS = 50
EACH = 4


async def test_fifty_redis_clients_on_one_anomaly(fresh_redis: RedisServer) -> None:
    counters = [AnomalyCounter.from_url(fresh_redis.url, "team-a") for _ in range(WRITERS)]
    moment = datetime.now(UTC)  # one instant: every write then sees a distinct count
    try:

        async def writer(counter: AnomalyCounter) -> list[tuple[int, str | None]]:
            out = []
            for _ in range(EACH):
                f = await counter.record_anomaly(SIG, at=moment)
                out.append((f.count_24h, f.escalated_to))
            return out

        results = [r for rs in await asyncio.gather(*map(writer, counters)) for r in rs]
        final = await counters[0].get_frequency(AnomalyCounter.hash_signature(SIG))
        assert final is not None and final.count_24h == WRITERS * EACH
    finally:
        await asyncio.gather(*(c.aclose() for c in counters))
    counts = sorted(count for count, _ in results)
    assert counts == list(range(1, WRITERS * EACH + 1))  # every write saw a distinct count
    crossings = sorted(level for _, level in results if level)
    assert crossings == ["ESCALATE", "PERMANENT_FIX", "REPEAT"]


def _sqlite_writer(url: str, rounds: int, moment: datetime, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def main() -> list[tuple[int, str | None]]:
        counter = AnomalyCounter.from_url(url, "team-a", settings=Settings(store_url=url))
        try:
            results = await asyncio.gather(
                *(counter.record_anomaly(SIG, at=moment) for _ in range(rounds))
            )
        finally:
            await counter.aclose()
        return [(f.count_24h, f.escalated_to) for f in results]

    queue.put(asyncio.run(main()))


def test_fifty_sqlite_writers_in_five_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    moment = datetime.now(UTC)
    processes = [
        context.Process(target=_sqlite_writer, args=(url, WRITERS // 5 * EACH, moment, queue))
        for _ in range(5)
    ]
    for process in processes:
        process.start()
    results = [r for _ in processes for r in queue.get(timeout=120)]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert sorted(count for count, _ in results) == list(range(1, WRITERS * EACH + 1))
    assert sorted(level for _, level in results if level) == ["ESCALATE", "PERMANENT_FIX", "REPEAT"]


def test_one_sqlite_counter_shared_by_threads(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/threads.db"
    # (a lock wait past store_timeout answers degraded, not counted: on a busy machine, CI saw
    # 199 of 200; the test is of exactness between threads, not of the timeout)
    settings = Settings(store_url=url, store_timeout=30)
    counter = AnomalyCounter.from_url(url, "team-a", settings=settings)
    moment = datetime.now(UTC)
    levels: list[str] = []

    def worker() -> None:
        async def main() -> None:
            for _ in range(50):
                f = await counter.record_anomaly(SIG, at=moment)
                if f.escalated_to:
                    levels.append(f.escalated_to)

        asyncio.run(main())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    final = asyncio.run(counter.get_frequency(AnomalyCounter.hash_signature(SIG), at=moment))
    asyncio.run(counter.aclose())
    assert final is not None and final.count_24h == 200
    assert sorted(levels) == ["ESCALATE", "PERMANENT_FIX", "REPEAT"]
