"""Counted once, without an id per occurrence kept (issue 13): a spool numbers what it sends,
and the store keeps only the numbers that can still come again (stores/write_marks.py).

Before, every spooled-store occurrence carried a random id and a chronic anomaly kept up to
``dedup_max_ids`` of them (1.2 MB in Redis after 50,000 occurrences); and the guarantee ended
there: an occurrence whose answer was lost, replayed after more than ``dedup_max_ids`` later
occurrences of its anomaly, was counted twice."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from anomaly_counter import AnomalyCounter, Settings, StoreUnavailableError
from anomaly_counter.spool import Spool
from anomaly_counter.stores.base import Recording, RecordRequest, Snapshot, Store, store_from_url
from anomaly_counter.stores.wrapper import StoreWrapper

from .conftest import SIG, RedisServer

KEY = AnomalyCounter.hash_signature(SIG)


class LostAnswer(StoreWrapper):
    """A real store whose answers to record calls are lost while ``losing``: the write lands,
    the caller hears that the store is away (as when a connection is cut after the command)."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.losing = False

    async def record(
        self, recording: Recording, requests: Sequence[RecordRequest]
    ) -> list[Snapshot]:
        answer = await self.inner.record(recording, requests)
        if self.losing:
            raise StoreUnavailableError("the answer was lost (injected)")
        return answer


def _spool(directory: Path) -> Spool:
    return Spool(directory, 1 << 26)


async def test_a_lost_answer_counts_once_however_many_came_after_it(
    store_url: str, tmp_path: Path
) -> None:
    """An occurrence that landed but whose answer was lost is spooled and replayed after 50
    occurrences from another process (spooling too), with ``dedup_max_ids`` 5; then the same
    spool is replayed again from a copy taken before its checkpoint moved (a crash), by a new
    process. Each occurrence counts once."""
    settings = Settings(store_url=store_url, dedup_max_ids=5)
    store = LostAnswer(store_from_url(store_url, settings))
    other = store_from_url(store_url, settings)
    mine = _spool(tmp_path / "mine")
    counter = AnomalyCounter(store, "team-a", settings=settings, spool=mine, replay=False)
    theirs = _spool(tmp_path / "theirs")
    elsewhere = AnomalyCounter(other, "team-a", settings=settings, spool=theirs, replay=False)
    try:
        store.losing = True
        assert (await counter.record_anomaly(SIG)).spooled  # landed, and kept to be sure
        store.losing = False
        for _ in range(3):  # these join the backlog: never sent before the replay
            assert (await counter.record_anomaly(SIG)).spooled
        for _ in range(50):
            await elsewhere.record_anomaly(SIG)
        shutil.copytree(tmp_path / "mine", tmp_path / "copy", ignore=shutil.ignore_patterns("lock"))
        assert await counter.flush_spool() == 4
        frequency = await elsewhere.get_frequency(KEY)
        assert frequency is not None and frequency.count_30d == 54

        again = _spool(tmp_path / "copy")  # the spool as it was before its checkpoint moved
        restarted = AnomalyCounter(
            store_from_url(store_url, settings), "team-a", settings=settings, spool=again
        )
        try:
            assert again.depth == 4
            assert await restarted.flush_spool() == 4
        finally:
            await restarted.aclose()
        frequency = await elsewhere.get_frequency(KEY)
        assert frequency is not None and frequency.count_30d == 54
    finally:
        await counter.aclose()
        await elsewhere.aclose()


async def test_a_new_spool_directory_is_a_new_spool(store_url: str, tmp_path: Path) -> None:
    """Positions start again in a new directory: its records are not taken for ones replayed
    from the old one."""
    settings = Settings(store_url=store_url)
    stores = [LostAnswer(store_from_url(store_url, settings)) for _ in range(2)]
    for n, store in enumerate(stores):
        spool = _spool(tmp_path / f"spool{n}")
        async with AnomalyCounter(store, "team-a", settings=settings, spool=spool) as counter:
            store.losing = True
            await counter.record_anomaly(SIG)  # landed, spooled at the same position in each
            store.losing = False
            await counter.record_anomaly(SIG)  # joins the backlog
            assert await counter.flush_spool() == 2
            assert (await counter.get_frequency(KEY)).count_30d == 2 * (n + 1)  # type: ignore[union-attr]


async def test_memory_of_one_anomaly_with_the_spool_on_is_bounded(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    """What ``serve`` does (a spool): 30,000 occurrences over 30 days, in batches and one by
    one from 50 concurrent tasks; all of the anomaly's keys, its marks too, under 16 KB."""
    import asyncio

    now = datetime.now(UTC)
    start = now - timedelta(days=30) + timedelta(minutes=1)
    total = 30_000
    settings = Settings(store_url=fresh_redis.url, spool_dir=str(tmp_path / "spool"))
    async with AnomalyCounter.from_url(fresh_redis.url, "team-a", settings=settings) as counter:
        assert counter.spool is not None
        for first in range(0, total - 1000, 1000):
            await counter.record_many(
                [{"signature": SIG, "at": start + (now - start) * i / total}
                 for i in range(first, first + 1000)]
            )  # fmt: skip

        async def one_by_one(task: int) -> None:
            for i in range(20):
                await counter.record_anomaly(SIG, at=now - timedelta(minutes=task + i * 50))

        await asyncio.gather(*(one_by_one(t) for t in range(50)))
        frequency = await counter.get_frequency(KEY)
        with fresh_redis.client() as client:
            keys = [k for k in client.keys("*") if b":a:" in k]
            used = {k.decode(): client.memory_usage(k, samples=0) or 0 for k in keys}
        assert sum(used.values()) <= 16 * 1024, used
        assert counter.spool.sequencer.unsettled == 0  # (every answer settled its number)
    assert frequency is not None and abs(frequency.count_30d - total) <= total // 60


class LateAnswer(StoreWrapper):
    """A real store that, while ``holding``, answers record calls as away and keeps them, to
    be applied later (``land``): a frozen or failing-over server that runs a write after its
    caller gave up on it."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.holding = False
        self.held: list[tuple[Recording, Sequence[RecordRequest]]] = []

    async def record(
        self, recording: Recording, requests: Sequence[RecordRequest]
    ) -> list[Snapshot]:
        if self.holding:
            self.held.append((recording, requests))
            raise StoreUnavailableError("no answer in time (injected)")
        return await self.inner.record(recording, requests)

    async def land(self) -> list[Snapshot]:
        return [s for recording, requests in self.held for s in await self.inner.record(
            recording, requests)]  # fmt: skip


async def test_a_write_that_lands_after_its_replay_counts_once(
    store_url: str, tmp_path: Path
) -> None:
    settings = Settings(store_url=store_url)
    store = LateAnswer(store_from_url(store_url, settings))
    counter = AnomalyCounter(store, "team-a", settings=settings, spool=_spool(tmp_path / "s"))
    try:
        store.holding = True
        assert (await counter.record_anomaly(SIG)).spooled
        store.holding = False
        assert await counter.flush_spool() == 1
        for _ in range(3):  # later writes of the same process move its floor past it
            await counter.record_anomaly(SIG)
        assert [s.duplicate for s in await store.land()] == [True]
        assert (await counter.get_frequency(KEY)).count_30d == 4  # type: ignore[union-attr]
    finally:
        await counter.aclose()
