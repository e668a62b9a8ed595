"""The spool against a real outage: Redis stopped under load and started again. Every
occurrence acknowledged is counted exactly once; a full spool refuses loudly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from anomaly_counter import AnomalyCounter, ConfigurationError, Settings, SpoolFullError
from anomaly_counter.errors import AnomalyNotFoundError
from anomaly_counter.spool import Spool, spool_of
from anomaly_counter.stores.base import store_from_url

from .conftest import SIG, RedisServer
from .servers import ServiceServer, eventually

KEY = AnomalyCounter.hash_signature(SIG)


def _settings(redis: RedisServer, tmp_path: Path, **options: object) -> Settings:
    return Settings(
        store_url=redis.url,
        store_timeout=0.3,
        spool_dir=str(tmp_path / "spool"),
        **options,  # type: ignore[arg-type]
    )


async def _count(counter: AnomalyCounter) -> int:
    frequency = await counter.get_frequency(KEY)
    return frequency.count_24h if frequency is not None and not frequency.degraded else -1


async def test_an_outage_is_spooled_and_replayed_exactly(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    counter = AnomalyCounter.from_url(settings=_settings(durable_redis, tmp_path))
    try:
        for _ in range(5):
            assert not (await counter.record_anomaly(SIG)).spooled
        durable_redis.stop()
        answers = [await counter.record_anomaly(SIG) for _ in range(10)]
        answers += await counter.record_many([{"signature": SIG}] * 10)
        await counter.record_resolution(KEY)
        assert all(a.spooled and a.degraded for a in answers)
        assert counter.spool is not None and counter.spool.depth == 21
        durable_redis.start()
        spool = counter.spool

        async def replayed() -> bool:  # counted, and the checkpoint moved past it
            return await _is(counter, 25) and spool.depth == 0

        assert await eventually(replayed, within=20), (await _count(counter), spool.depth)
        frequency = await counter.get_frequency(KEY)
        assert frequency is not None and frequency.last_resolved is not None
        after = await counter.record_anomaly(SIG)  # straight to the store again
        assert not after.spooled and after.count_24h == 26
    finally:
        await counter.aclose()


async def _is(counter: AnomalyCounter, n: int) -> bool:
    return await _count(counter) == n


async def test_concurrent_writers_through_an_outage(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    counter = AnomalyCounter.from_url(settings=_settings(durable_redis, tmp_path))
    acknowledged = 0
    stop = asyncio.Event()

    async def writer() -> None:
        nonlocal acknowledged
        while not stop.is_set():
            await counter.record_anomaly(SIG)
            acknowledged += 1
            await asyncio.sleep(0.005)

    try:
        tasks = [asyncio.create_task(writer()) for _ in range(10)]
        await asyncio.sleep(0.3)
        durable_redis.stop()
        await asyncio.sleep(1.0)
        durable_redis.start()
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        assert await eventually(lambda: _is(counter, acknowledged), within=20), (
            await _count(counter),
            acknowledged,
        )
    finally:
        await counter.aclose()


async def test_a_full_spool_refuses_loudly_and_loses_nothing_acknowledged(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    counter = AnomalyCounter.from_url(
        settings=_settings(durable_redis, tmp_path, spool_max_bytes=4096)
    )
    try:
        durable_redis.stop()
        acknowledged = refused = 0
        for _ in range(100):
            try:
                await counter.record_anomaly(SIG)
                acknowledged += 1
            except SpoolFullError:
                refused += 1
        assert acknowledged > 5 and refused > 0
        durable_redis.start()
        assert await eventually(lambda: _is(counter, acknowledged), within=20)
    finally:
        await counter.aclose()


async def test_a_spool_left_by_a_stopped_process_is_replayed_by_the_next(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    settings = _settings(durable_redis, tmp_path)
    durable_redis.stop()
    first = AnomalyCounter.from_url(settings=settings)
    for _ in range(7):
        await first.record_anomaly(SIG)
    with pytest.raises(ConfigurationError, match="in use"):
        Spool(settings.spool_dir, 1 << 20)  # one process owns a spool
    await first.aclose()
    durable_redis.start()
    second = AnomalyCounter.from_url(settings=settings)
    try:
        await second.record_anomaly(SIG)  # joins the backlog, after the seven
        assert await eventually(lambda: _is(second, 8), within=20)
    finally:
        await second.aclose()


async def test_the_service_accepts_into_its_spool_and_says_so(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    with ServiceServer(_settings(durable_redis, tmp_path)) as server:
        async with server.client(server.token("team-a")) as http:
            r = await http.post("/v1/projects/team-a/occurrences", json={"signature": SIG})
            assert r.status_code == 200
            durable_redis.stop()
            r = await http.post("/v1/projects/team-a/occurrences", json={"signature": SIG})
            assert r.status_code == 202 and r.json()["spooled"] is True
            batch = {"occurrences": [{"signature": SIG}] * 3}
            r = await http.post("/v1/projects/team-a/occurrences/batch", json=batch)
            assert r.status_code == 202
            ready = await http.get("/readyz")
            assert ready.status_code == 200 and "on spool" in ready.text and "4" in ready.text
            metrics = (await http.get("/metrics")).text
            assert "anomaly_counter_spool_depth 4.0" in metrics
            assert 'outcome="spooled",project="team-a"} 4.0' in metrics
            durable_redis.start()

            async def counted() -> bool:
                r = await http.get(f"/v1/projects/team-a/anomalies/{KEY}")
                return r.status_code == 200 and r.json()["count_24h"] == 5

            assert await eventually(counted, within=20)

            async def replayed_total() -> bool:
                metrics = (await http.get("/metrics")).text
                return "anomaly_counter_spool_replayed_total 4.0" in metrics

            assert await eventually(replayed_total, within=10)

            async def ready() -> bool:
                return (await http.get("/readyz")).text == "ok"

            assert await eventually(ready, within=10)


async def test_the_service_answers_503_when_its_spool_is_full_and_reports_losses(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    settings = _settings(durable_redis, tmp_path, spool_max_bytes=2048, spool_project_share=1.0)
    with ServiceServer(settings) as server:
        async with server.client(server.token("team-a")) as http:
            assert (await http.get("/v1/projects/team-a/anomalies")).status_code == 200
            durable_redis.stop()
            statuses = []
            for _ in range(30):
                r = await http.post("/v1/projects/team-a/occurrences", json={"signature": SIG})
                statuses.append(r.status_code)
            accepted = statuses.count(202)
            assert accepted > 3 and statuses.count(503) == 30 - accepted
            assert (await http.get("/readyz")).status_code == 503  # down, and no room left
            metrics = (await http.get("/metrics")).text
            assert f'outcome="refused",project="team-a"}} {30 - accepted}.0' in metrics
            durable_redis.start()

            async def counted() -> bool:
                r = await http.get(f"/v1/projects/team-a/anomalies/{KEY}")
                return r.status_code == 200 and r.json()["count_24h"] == accepted

            assert await eventually(counted, within=20)
    # a damaged spool: opened again, it replays what is intact and says what it lost
    spool_dir = Path(settings.spool_dir)
    with ServiceServer(settings) as server:
        async with server.client(server.token("team-a")) as http:
            assert (await http.get("/v1/projects/team-a/anomalies")).status_code == 200
            durable_redis.stop()
            for _ in range(3):
                r = await http.post("/v1/projects/team-a/occurrences", json={"signature": SIG})
                assert r.status_code == 202
    _flip_a_bit_of_the_last_record(spool_dir)
    durable_redis.start()
    with ServiceServer(settings) as server:
        async with server.client(server.token("team-a")) as http:

            async def replayed() -> bool:
                r = await http.get(f"/v1/projects/team-a/anomalies/{KEY}")
                return r.json()["count_24h"] == accepted + 2

            assert await eventually(replayed, within=20)
            assert "anomaly_counter_spool_lost 1.0" in (await http.get("/metrics")).text


def _flip_a_bit_of_the_last_record(spool_dir: Path) -> None:
    segment = max(spool_dir.glob("segment-*.log"))
    data = bytearray(segment.read_bytes())
    data[-20] ^= 0x01
    segment.write_bytes(bytes(data))


async def test_a_write_on_an_anomaly_whose_first_occurrence_waits_in_the_spool(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    settings = _settings(durable_redis, tmp_path)
    durable_redis.stop()
    store = store_from_url(settings.store_url, settings)
    counter = AnomalyCounter(store, settings=settings, spool=spool_of(settings), replay=False)
    try:
        assert (await counter.record_anomaly(SIG)).spooled
        durable_redis.start()  # back, but the occurrence is not replayed yet
        await counter.record_disposition(KEY, "auto_repair")  # it exists: taken
        with pytest.raises(AnomalyNotFoundError):  # one that exists nowhere: refused
            await counter.record_disposition("0123456789abcdef", "auto_repair")
        assert await counter.flush_spool() == 1
        frequency = await counter.get_frequency(KEY)
        assert frequency is not None and frequency.count_24h == 1
        assert frequency.auto_repair_disposition_count == 1
    finally:
        await counter.aclose()
