"""What the counter answers while its store is partly away, now that the store wrappers
(stores/spooling.py, stores/resilient.py) decide it. Found by a review of that refactoring: a
read that failed during a ranking lowered the ranking's index for good; a batch whose room could
not be made was stored in part; a resolution spooled in an outage aged the spool by its own
time. The faults are injected into a real store (SQLite), one operation at a time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from anomaly_counter import AnomalyCounter, Settings, StoreUnavailableError
from anomaly_counter.service.app import create_app
from anomaly_counter.spool import spool_of
from anomaly_counter.stores.base import Store, store_from_url
from anomaly_counter.stores.wrapper import StoreWrapper

from .conftest import SIG


class Faulty(StoreWrapper):
    """A real store whose named operations fail, as if the store were away, while ``failing``."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.failing: set[str] = set()

    def __getattribute__(self, name: str) -> Any:
        if name in object.__getattribute__(self, "failing"):
            raise StoreUnavailableError(f"{name}: the store is away (injected)")
        return object.__getattribute__(self, name)


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[Faulty]:
    url = f"sqlite:///{tmp_path / 'counter.db'}"
    yield Faulty(store_from_url(url, Settings(store_url=url)))


def sig(i: int) -> dict[str, str]:
    return {**SIG, "alertname": f"A{i}"}


async def test_a_ranking_read_that_fails_leaves_the_ranking_as_it_was(faulty: Faulty) -> None:
    counter = AnomalyCounter(faulty, "team-a")
    for i in range(1, 31):
        await counter.record_many([{"signature": sig(i)}] * i)
    names = [f.signature["alertname"] for f in (await counter.top(5)).anomalies]
    assert names == ["A30", "A29", "A28", "A27", "A26"]
    faulty.failing = {"read"}
    assert (await counter.top(5)).anomalies == []  # degraded, as a whole
    assert (await counter.get_all_disposition_stats(5))[1] == []
    faulty.failing = set()
    names = [f.signature["alertname"] for f in (await counter.top(5)).anomalies]
    assert names == ["A30", "A29", "A28", "A27", "A26"]
    assert len((await counter.top(25)).anomalies) == 25


async def test_a_ranking_whose_candidates_fail_midway_is_not_a_partial_answer(
    faulty: Faulty,
) -> None:
    counter = AnomalyCounter(faulty, "team-a", settings=Settings(strict=True))
    await counter.record_anomaly(SIG)
    faulty.failing = {"candidates"}
    with pytest.raises(StoreUnavailableError):
        await counter.top(5)


async def test_a_batch_whose_room_cannot_be_made_is_spooled_whole(
    faulty: Faulty, tmp_path: Path
) -> None:
    spool = spool_of(Settings(spool_dir=str(tmp_path / "spool")))
    assert spool is not None
    counter = AnomalyCounter(faulty, "team-a", spool=spool, replay=False)
    faulty.failing = {"record_chunks"}  # (room is made in it first: this fails that)
    answers = await counter.record_many([{"signature": sig(i)} for i in range(5)])
    assert [f.spooled for f in answers] == [True] * 5 and spool.depth == 5
    faulty.failing = set()
    assert (await counter.top(10)).anomalies == []  # nothing of it written past the spool
    assert await counter.flush_spool() == 5
    assert len((await counter.top(10)).anomalies) == 5
    await counter.aclose()


async def test_without_a_spool_such_a_batch_is_degraded_whole(faulty: Faulty) -> None:
    counter = AnomalyCounter(faulty, "team-a")
    faulty.failing = {"record_chunks"}
    answers = await counter.record_many([{"signature": sig(i)} for i in range(5)])
    assert [f.degraded for f in answers] == [True] * 5
    faulty.failing = set()
    assert (await counter.top(10)).anomalies == []


async def test_a_resolution_spooled_in_an_outage_does_not_age_the_spool(
    faulty: Faulty, tmp_path: Path
) -> None:
    spool = spool_of(Settings(spool_dir=str(tmp_path / "spool")))
    assert spool is not None
    counter = AnomalyCounter(faulty, "team-a", spool=spool, replay=False)
    key = (await counter.record_anomaly(SIG)).anomaly_key
    faulty.failing = {"resolve"}
    await counter.record_resolution(key, at=datetime.now(UTC) - timedelta(days=3))
    oldest = spool.stats().oldest_ms
    assert oldest is not None and time.time() * 1000 - oldest < 60_000
    spool.close()


def test_the_api_schema_says_every_field_of_an_answer_is_there(tmp_path: Path) -> None:
    schema = create_app(Settings(store_url=f"sqlite:///{tmp_path / 'c.db'}")).openapi()
    schemas = schema["components"]["schemas"]
    for name in ("AnomalyFrequency", "AnomalyRow", "PermanentFix"):
        assert set(schemas[name]["required"]) == set(schemas[name]["properties"]), name
