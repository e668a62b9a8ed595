"""max_anomalies: one project cannot fill the store with distinct anomalies (issue 11 saw one
make 30,000, 60 MiB, in 6 s with nothing refused). A new anomaly past the limit is refused,
the anomalies the project has still count, a batch is refused whole or stored whole, and
another project is never affected; on every store."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from anomaly_counter import AnomalyCounter, LimitExceededError, Settings
from anomaly_counter.errors import AnomalyNotFoundError
from anomaly_counter.limits import Limits
from anomaly_counter.stores.base import shard_of

from .conftest import SIG, Clock, CounterFactory, RedisServer
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
    # a batch that fits is stored whole, new anomalies and all: the refused one's room (made
    # on Redis before its first call) was given back
    fits = [{"signature": sig(i)} for i in range(50)] + [
        {"signature": sig(i)} for i in range(5000, 5800)
    ]
    assert len(await counter.record_many(fits)) == 850
    assert len((await counter.top(5000, "30d")).anomalies) == 850


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


async def test_writes_on_anomalies_never_seen_take_no_room(make_counter: CounterFactory) -> None:
    counter = make_counter(**_limited(160))  # 10 a shard on Redis
    writes = (
        lambda k: counter.record_repair_attempt(k, "restart_pod", True),
        lambda k: counter.record_disposition(k, "auto_repair"),
        lambda k: counter.mark_permanent_fix_applied(k, "raised the limit"),
    )
    for i in range(30):  # keys of anomalies never seen: refused, not ghosts
        with pytest.raises(AnomalyNotFoundError):
            await writes[i % 3](f"{i:016x}")
    made = 0
    for i in range(600):  # so the project's room is whole for its occurrences
        try:
            await counter.record_anomaly(sig(i))
            made += 1
        except LimitExceededError:
            pass
    assert made == 160
    await counter.record_repair_attempt(counter.hash_signature(sig(0)), "scale_up", True)


async def test_a_project_never_holds_more_than_its_limit(make_counter: CounterFactory) -> None:
    # 20 is not a multiple of Redis's 16 shards: each holds one, never 16 x 2
    counter = make_counter(**_limited(20))
    for i in range(300):
        with contextlib.suppress(LimitExceededError):
            await counter.record_anomaly(sig(i))
    held = len((await counter.top(1000, "30d")).anomalies)
    assert held <= 20 and held >= 16


async def test_a_place_that_ended_is_room_for_one_anomaly_only(fresh_redis: RedisServer) -> None:
    """An anomaly that ended (its place in the live set not yet forgotten) and comes back in a
    batch with another new one: there is room for one, so the batch is refused whole."""
    settings = Settings(store_url=fresh_redis.url, **_limited(16))  # one a shard
    keys = [AnomalyCounter.hash_signature(sig(i)) for i in range(2000)]
    shard = shard_of(keys[0], 16)
    ended, new = [i for i, key in enumerate(keys) if shard_of(key, 16) == shard][:2]
    with fresh_redis.client() as client:  # the place of an anomaly that ended a minute ago
        live = f"ac:{{team-a.{shard}}}:x:live"
        client.zadd(live, {keys[ended]: int(time.time() * 1000) - 60_000})
    async with AnomalyCounter.from_url(settings=settings, project_id="team-a") as counter:
        with pytest.raises(LimitExceededError):
            await counter.record_many([{"signature": sig(new)}, {"signature": sig(ended)}])
        assert await counter.get_frequency(keys[new]) is None  # nothing of it stored
        assert await counter.get_frequency(keys[ended]) is None


async def test_a_fixed_anomaly_keeps_its_place_as_long_as_it_lives(
    fresh_redis: RedisServer,
) -> None:
    async with AnomalyCounter.from_url(fresh_redis.url, "team-a") as counter:
        key = (await counter.record_anomaly(SIG)).anomaly_key
        await counter.mark_permanent_fix_applied(key, "raised the memory limit")
    with fresh_redis.client() as client:
        meta_ms = client.pttl(f"ac:{{team-a.{shard_of(key, 16)}}}:a:{key}:m")
        place = client.zscore(f"ac:{{team-a.{shard_of(key, 16)}}}:x:live", key)
        assert meta_ms > 80 * 86_400_000  # a fix keeps the anomaly 90 days...
        assert place is not None and place > time.time() * 1000 + meta_ms - 60_000  # ...its place


async def test_room_freed_by_housekeeping_survives_a_refused_batch(
    tmp_path: Path, clock: Clock
) -> None:
    settings = Settings(store_url=f"sqlite:///{tmp_path / 'c.db'}", **_limited(10))
    async with AnomalyCounter.from_url(settings=settings, project_id="team-a", clock=clock) as c:
        for i in range(10):
            await c.record_anomaly(sig(i))
        clock.advance(days=40)  # all ten forgotten at the next write
        with pytest.raises(LimitExceededError):
            await c.record_many([{"signature": sig(i)} for i in range(100, 111)])
        clock.advance(minutes=10)
        assert (await c.record_anomaly(sig(200))).count_24h == 1
