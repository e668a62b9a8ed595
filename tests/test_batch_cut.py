"""A batch on Redis goes out in many pipelined calls. Issue 11 saw a batch cut part-way leave
part of it stored and the rest unaccounted for. Cut here by a proxy owned by the test, which
forwards only the first part of the batch's bytes to Redis and then closes the connection: the
calls before the cut are stored, those after are not. With a spool the whole batch is
acknowledged (the rest spooled, with the ids it was sent with) and every occurrence ends up
counted once; without one the rest is answered ``degraded``, and the caller's retry with the
same occurrence ids counts each once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomaly_counter import AnomalyCounter, Settings

from .conftest import RedisServer
from .servers import FaultyProxy, eventually


def _batch(tag: str, ids: bool = False) -> list[dict[str, Any]]:
    return [
        {
            "signature": {"alertname": f"Cut{i}", "service": tag, "namespace": "prod"},
            **({"occurrence_id": f"{tag}-{i}"} if ids else {}),
        }
        for i in range(300)
    ]


async def _cut_in_the_middle(proxy: FaultyProxy, counter: AnomalyCounter, ids: bool) -> None:
    """Measure the bytes of a batch like the one to cut, then let the proxy pass 45 % of them."""
    await counter.record_many(_batch("warm", ids))  # (scripts loaded, connections open)
    proxy.forwarded = 0
    await counter.record_many(_batch("measure", ids))
    proxy.forwarded, proxy.budget = 0, int(proxy.forwarded * 0.45)


async def _counts(direct: AnomalyCounter, tag: str) -> list[int]:
    found = []
    for occurrence in _batch(tag):
        frequency = await direct.get_frequency(
            AnomalyCounter.hash_signature(occurrence["signature"])
        )
        found.append(frequency.count_24h if frequency is not None else 0)
    return found


async def test_a_batch_cut_part_way_is_spooled_whole(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    proxy = FaultyProxy(fresh_redis.port)
    await proxy.start()
    settings = Settings(
        store_url=f"redis://127.0.0.1:{proxy.port}/0", spool_dir=str(tmp_path / "spool")
    )
    counter = AnomalyCounter.from_url(settings=settings)
    direct = AnomalyCounter.from_url(fresh_redis.url)
    try:
        await _cut_in_the_middle(proxy, counter, ids=False)
        answers = await counter.record_many(_batch("cut"))
        assert proxy.cut == 1
        spooled = sum(1 for f in answers if f.spooled)
        assert len(answers) == 300 and 0 < spooled < 300, spooled  # cut between its calls

        async def each_once() -> bool:
            return await _counts(direct, "cut") == [1] * 300

        assert await eventually(each_once, within=30), await _counts(direct, "cut")
    finally:
        await counter.aclose()
        await direct.aclose()
        await proxy.stop()


async def test_a_batch_cut_part_way_is_degraded_and_a_retry_counts_each_once(
    fresh_redis: RedisServer,
) -> None:
    proxy = FaultyProxy(fresh_redis.port)
    await proxy.start()
    counter = AnomalyCounter.from_url(f"redis://127.0.0.1:{proxy.port}/0")
    direct = AnomalyCounter.from_url(fresh_redis.url)
    try:
        await _cut_in_the_middle(proxy, counter, ids=True)
        answers = await counter.record_many(_batch("cut", ids=True))
        assert proxy.cut == 1
        degraded = sum(1 for f in answers if f.degraded)
        assert len(answers) == 300 and 0 < degraded < 300, degraded
        stored = await _counts(direct, "cut")
        assert set(stored) == {0, 1} and stored.count(1) >= 300 - degraded  # all it said
        retried = await counter.record_many(_batch("cut", ids=True))  # the caller's retry
        assert not any(f.degraded for f in retried)
        assert await _counts(direct, "cut") == [1] * 300
        assert sum(1 for f in retried if f.duplicate) == stored.count(1)
    finally:
        await counter.aclose()
        await direct.aclose()
        await proxy.stop()
