"""Automatic pipelining: concurrent callers share round trips and each gets its own answers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from anomaly_counter import AnomalyCounter, Settings
from anomaly_counter.stores.coalesce import Coalescer

from .conftest import SIG, free_port


class Recorder:
    """A send function that answers each item with its double, and logs the batches."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(0.01)  # a round trip
        if self.fail_on is not None and self.fail_on in items:
            raise ConnectionError("store went away")
        return [2 * item for item in items]


async def test_concurrent_callers_share_batches_and_get_their_own_answers() -> None:
    send = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(send, lanes=2, max_batch=64)
    answers = await asyncio.gather(*(coalescer.submit([i, i + 1000]) for i in range(100)))
    assert answers == [[2 * i, 2 * (i + 1000)] for i in range(100)]
    assert len(send.batches) < 10  # not a hundred round trips
    assert max(len(batch) for batch in send.batches) <= 64
    assert sorted(x for batch in send.batches for x in batch) == sorted(
        [i for i in range(100)] + [i + 1000 for i in range(100)]
    )


async def test_a_failed_batch_fails_its_callers_only() -> None:
    send = Recorder(fail_on=7)
    coalescer: Coalescer[int, int] = Coalescer(send, lanes=1, max_batch=4)
    results = await asyncio.gather(
        *(coalescer.submit([i]) for i in range(12)), return_exceptions=True
    )
    failed = {i for i, r in enumerate(results) if isinstance(r, ConnectionError)}
    batch_with_7 = next(batch for batch in send.batches if 7 in batch)
    assert failed == set(batch_with_7)
    assert all(results[i] == [2 * i] for i in range(12) if i not in failed)


async def test_concurrent_records_on_a_dead_store_all_degrade() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    counter = AnomalyCounter.from_url(url, "team-a", settings=Settings(store_timeout=0.5))
    results = await asyncio.gather(*(counter.record_anomaly(SIG) for _ in range(20)))
    assert all(r.degraded for r in results)
    strict = AnomalyCounter.from_url(
        url, "team-a", settings=Settings(store_timeout=0.5, strict=True)
    )
    outcomes = await asyncio.gather(
        *(strict.record_anomaly(SIG) for _ in range(20)), return_exceptions=True
    )
    assert all(type(o).__name__ == "StoreUnavailableError" for o in outcomes)
    await counter.aclose()
    await strict.aclose()


@pytest.mark.parametrize("size", [1, 49, 50, 51, 250])
async def test_record_many_in_chunks_keeps_order(size: int, make_counter: object) -> None:
    counter = make_counter()  # type: ignore[operator]
    batch = [{"signature": {"alertname": f"A{i % 7}"}} for i in range(size)]
    results = await counter.record_many(batch)
    assert [r.signature["alertname"] for r in results] == [f"A{i % 7}" for i in range(size)]
    for name in {f"A{i % 7}" for i in range(size)}:
        seen = [r.count_1h for r in results if r.signature["alertname"] == name]
        assert seen == list(range(1, len(seen) + 1))  # each anomaly counted in order
