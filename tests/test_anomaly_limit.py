"""max_anomalies: one project cannot fill the store with distinct anomalies (issue 11 saw one
make 30,000, 60 MiB, in 6 s with nothing refused). A new anomaly past the limit is refused,
the anomalies the project has still count, a batch is refused whole or stored whole, and
another project is never affected; on every store."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from anomaly_counter import AnomalyCounter, LimitExceededError, Settings
from anomaly_counter.limits import Limits

from .conftest import SIG, CounterFactory
from .servers import ServiceServer, v1


def sig(i: int) -> dict[str, Any]:
    return {**SIG, "alertname": f"Alert{i}"}


def _limited(limit: int) -> dict[str, Any]:
    return {"project_limits": {"team-a": Limits(max_anomalies=limit)}}


async def test_a_new_anomaly_past_the_limit_is_refused(make_counter: CounterFactory) -> None:
    # 160 on Redis is 10 in each of its 16 shards: 600 distinct anomalies fill every shard
    counter = make_counter(**_limited(160))
    stored, refused = [], []
    for i in range(600):
        try:
            stored.append((await counter.record_anomaly(sig(i))).anomaly_key)
        except LimitExceededError as exc:
            assert exc.limit == "max_anomalies"
            assert "limit of 160 distinct anomalies" in str(exc)
            refused.append(i)
    assert len(stored) == 160 and len(refused) == 440
    assert len((await counter.top(1000, "30d")).anomalies) == 160
    assert await counter.get_frequency(AnomalyCounter.hash_signature(sig(refused[0]))) is None
    # the anomalies it has still count
    again = await counter.record_anomaly(sig(0))
    assert again.count_24h == 2
    # another project has its own room (the default limit)
    other = make_counter("team-b")
    for i in range(300):
        await other.record_anomaly(sig(i))
    assert len((await other.top(1000, "30d")).anomalies) == 300


async def test_a_batch_is_refused_whole_or_stored_whole(make_counter: CounterFactory) -> None:
    counter = make_counter(**_limited(1600))  # 100 a shard on Redis
    first = await counter.record_many({"signature": sig(i % 50)} for i in range(100))
    assert len({f.anomaly_key for f in first}) == 50
    # the anomalies it has, then 2,000 new ones, in one batch of many store calls
    batch = [{"signature": sig(i)} for i in range(50)] + [
        {"signature": sig(i)} for i in range(1000, 3000)
    ]
    with pytest.raises(LimitExceededError) as refused:
        await counter.record_many(batch)
    assert refused.value.limit == "max_anomalies"
    listed = (await counter.top(5000, "30d")).anomalies
    assert len(listed) == 50 and all(f.count_24h == 2 for f in listed)  # nothing of it stored
    # a batch that fits is stored whole, new anomalies and all
    fits = [{"signature": sig(i)} for i in range(50)] + [
        {"signature": sig(i)} for i in range(1000, 1040)
    ]
    assert len(await counter.record_many(fits)) == 90
    assert len((await counter.top(5000, "30d")).anomalies) == 90


async def test_a_refused_spooled_occurrence_is_dropped_on_replay(
    make_counter: CounterFactory,
) -> None:
    counter = make_counter(**_limited(16))  # one a shard on Redis
    told: list[str] = []
    counter.on_replay_refused = told.append
    kept = []
    for i in range(200):
        with contextlib.suppress(LimitExceededError):
            kept.append(await counter.record_anomaly(sig(i)))
    assert len(kept) == 16
    held = {f.anomaly_key for f in kept}
    first, second = [i for i in range(200) if AnomalyCounter.hash_signature(sig(i)) in held][:2]
    at_ms = int(kept[0].last_seen.timestamp() * 1000)
    records = [
        {"signature": sig(i), "at_ms": at_ms, "occurrence_id": f"spool:{i}"}
        for i in (first, 500, second)
    ]
    replayed = await counter.replay(records)  # acknowledged while the store was down
    assert [f.anomaly_key for f in replayed] == [
        AnomalyCounter.hash_signature(sig(first)),
        AnomalyCounter.hash_signature(sig(second)),
    ]
    assert told == ["max_anomalies"]


async def test_the_api_answers_429_past_max_anomalies(tmp_path: Path) -> None:
    settings = Settings(
        store_url=f"sqlite:///{tmp_path / 'limit.db'}",
        project_limits={"team-a": Limits(max_anomalies=2)},
    )
    with ServiceServer(settings) as server:
        async with (
            server.client(server.token("team-a")) as a,
            server.client(server.token("team-b")) as b,
        ):
            for i in range(2):
                r = await a.post(v1("/occurrences"), json={"signature": sig(i)})
                assert r.status_code == 200
            r = await a.post(v1("/occurrences"), json={"signature": sig(2)})
            assert r.status_code == 429 and "max_anomalies" in r.json()["detail"]
            batch = {"occurrences": [{"signature": sig(0)}, {"signature": sig(3)}]}
            r = await a.post(v1("/occurrences/batch"), json=batch)
            assert r.status_code == 429 and "max_anomalies" in r.json()["detail"]
            r = await a.post(v1("/occurrences"), json={"signature": sig(0)})
            assert r.status_code == 200 and r.json()["count_24h"] == 2  # the batch: nothing
            r = await b.post(v1("/occurrences", "team-b"), json={"signature": sig(2)})
            assert r.status_code == 200
            metrics = (await a.get("/metrics")).text
            assert 'limit="max_anomalies",project="team-a"} 2.0' in metrics
