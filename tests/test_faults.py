"""Fault tests on real processes over loopback. Each asserts that the occurrences counted equal
the occurrences acknowledged, exactly."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx

from anomaly_counter import AnomalyCounter, Settings, StoreUnavailableError
from anomaly_counter.limits import Limits

from .conftest import SIG, RedisServer, free_port
from .servers import Alertmanager, FaultyProxy, eventually, make_token, wait_until_up

KEY = AnomalyCounter.hash_signature(SIG)


async def _counted(counter: AnomalyCounter) -> int:
    frequency = await counter.get_frequency(KEY)
    if frequency is None or frequency.degraded:
        return -1
    return frequency.count_24h


class Load:
    """Writers recording as fast as they can; counts what was acknowledged and how long each
    acknowledgement took."""

    def __init__(self, counter: AnomalyCounter, writers: int = 8) -> None:
        self.counter, self.writers = counter, writers
        self.acknowledged = 0
        self.slowest = 0.0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _write(self) -> None:
        while not self._stop.is_set():
            began = time.perf_counter()
            if random.random() < 0.2:
                await self.counter.record_many([{"signature": SIG}] * 5)
                n = 5
            else:
                await self.counter.record_anomaly(SIG)
                n = 1
            self.slowest = max(self.slowest, time.perf_counter() - began)
            self.acknowledged += n
            await asyncio.sleep(0.002)

    def __enter__(self) -> Load:
        self._tasks = [asyncio.create_task(self._write()) for _ in range(self.writers)]
        return self

    async def finish(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def _settings(redis: RedisServer, tmp_path: Path, timeout: float = 0.3) -> Settings:
    return Settings(store_url=redis.url, store_timeout=timeout, spool_dir=str(tmp_path / "spool"))


async def test_redis_killed_under_load_and_restarted(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    counter = AnomalyCounter.from_url(settings=_settings(durable_redis, tmp_path))
    try:
        with Load(counter) as load:
            await asyncio.sleep(0.5)
            assert durable_redis.process is not None
            durable_redis.process.kill()  # SIGKILL: no goodbye
            durable_redis.process.wait()
            await asyncio.sleep(1.0)
            durable_redis.start()  # its AOF (fsync always) has every write it acknowledged
            await asyncio.sleep(0.5)
            await load.finish()
        assert load.acknowledged > 100

        async def exact() -> bool:
            return await _counted(counter) == load.acknowledged

        assert await eventually(exact, within=30), (await _counted(counter), load.acknowledged)
    finally:
        await counter.aclose()


async def test_redis_without_persistence_killed_under_load(tmp_path: Path) -> None:
    """A Redis that keeps nothing on disk loses, on restart, all it had acknowledged: no client
    can bring that back (use AOF or replicas). What the spool acknowledged during the outage,
    and everything after, is counted exactly once."""
    server = RedisServer(free_port(), str(tmp_path))  # no AOF, no snapshots
    server.start()
    counter = AnomalyCounter.from_url(settings=_settings(server, tmp_path))
    try:
        with Load(counter) as load:
            await asyncio.sleep(0.5)
            assert server.process is not None
            server.process.kill()
            server.process.wait()
            before_the_kill = load.acknowledged  # acknowledged by the store, now gone
            await asyncio.sleep(1.0)
            server.start()
            await asyncio.sleep(0.5)
            await load.finish()
        assert counter.spool is not None

        async def exact() -> bool:
            # Every write acknowledged after the kill is counted, exactly once, except those
            # the store itself had answered just before dying (answers still in the socket
            # when the kill came): at most one call per writer, 5 occurrences each. Never more.
            since = load.acknowledged - before_the_kill
            counted = await _counted(counter)
            return since - load.writers * 5 <= counted <= since and not counter.spool.depth

        assert await eventually(exact, within=30), (
            await _counted(counter),
            load.acknowledged,
            before_the_kill,
        )
    finally:
        await counter.aclose()
        server.stop()


async def test_redis_frozen_under_load(durable_redis: RedisServer, tmp_path: Path) -> None:
    """SIGSTOP for 10 s: acknowledgements keep coming within the store timeout (from the
    spool); the writes the frozen server takes up when it thaws count once."""
    timeout = 0.3
    counter = AnomalyCounter.from_url(settings=_settings(durable_redis, tmp_path, timeout))
    try:
        with Load(counter) as load:
            await asyncio.sleep(0.5)
            assert durable_redis.process is not None
            os.kill(durable_redis.process.pid, signal.SIGSTOP)
            await asyncio.sleep(10)
            os.kill(durable_redis.process.pid, signal.SIGCONT)
            await asyncio.sleep(0.5)
            await load.finish()
        # a call waits at most the store timeout, then an fsync of the spool (and the loop)
        assert load.slowest < timeout + 1.0, load.slowest

        async def exact() -> bool:
            return await _counted(counter) == load.acknowledged

        assert await eventually(exact, within=30), (await _counted(counter), load.acknowledged)
    finally:
        await counter.aclose()


async def test_replies_lost_on_the_way(durable_redis: RedisServer, tmp_path: Path) -> None:
    proxy = FaultyProxy(durable_redis.port, loss=0.05)
    await proxy.start()
    settings = Settings(
        store_url=f"redis://127.0.0.1:{proxy.port}/0",
        store_timeout=0.5,
        spool_dir=str(tmp_path / "spool"),
        limits=Limits(max_actions=100),  # (60 action names below)
    )
    counter = AnomalyCounter.from_url(settings=settings)
    direct = AnomalyCounter.from_url(durable_redis.url)
    strict = AnomalyCounter.from_url(settings=replace(settings, spool_dir="", strict=True))
    acknowledged: list[str] = []
    unanswered: list[str] = []

    async def repair() -> None:  # retried with the same write id: never applied twice
        for i in range(60):
            action = f"restart_pod_{i}"  # one action per call: each call's count is its own
            try:
                await strict.record_repair_attempt(KEY, action, True)
                acknowledged.append(action)
            except StoreUnavailableError:
                unanswered.append(action)  # every try lost its answer: applied once, or not
            await asyncio.sleep(0.01)

    try:
        await direct.record_anomaly(SIG)  # (repairs are written for an anomaly that occurred)
        with Load(counter, writers=4) as load:
            await repair()
            await asyncio.sleep(1)
            await load.finish()
        assert proxy.cut > 3 and load.acknowledged > 100
        proxy.loss = 0.0

        async def exact() -> bool:
            return await _counted(direct) == load.acknowledged + 1

        assert await eventually(exact, within=30), (await _counted(direct), load.acknowledged)
        stats = await direct.get_all_repair_stats(KEY)
        assert all(stats[action]["total"] == 1 for action in acknowledged), stats
        assert all(stats.get(a, {"total": 0})["total"] <= 1 for a in unanswered), stats
    finally:
        await counter.aclose()
        await direct.aclose()
        await strict.aclose()
        await proxy.stop()


async def test_the_service_killed_while_replaying_resumes(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    store, spool = durable_redis.url, tmp_path / "spool"
    token = make_token(Settings(store_url=store), "team-a")

    def serve(port: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, "ANOMALY_COUNTER_SPOOL_DIR": str(spool),
               "ANOMALY_COUNTER_STORE_TIMEOUT": "0.3"}  # fmt: skip
        return subprocess.Popen(
            [sys.executable, "-m", "anomaly_counter.cli", "--store", store, "serve",
             "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    port = free_port()
    service = serve(port)
    headers = {"Authorization": f"Bearer {token}"}
    path = "/v1/projects/team-a/occurrences/batch"
    acknowledged = 0
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as http:
            await wait_until_up(http)
            assert (await http.get("/v1/projects/team-a/anomalies")).status_code == 200
            durable_redis.stop()
            for _ in range(30):
                r = await http.post(path, json={"occurrences": [{"signature": SIG}] * 1000})
                assert r.status_code == 202, r.text
                acknowledged += 1000
            durable_redis.start()  # the replay begins...
        direct = AnomalyCounter.from_url(store, "team-a")
        try:
            for _ in range(2000):
                if await _counted(direct) > 0:
                    break
                await asyncio.sleep(0.005)
            service.send_signal(signal.SIGKILL)  # ...and the service dies in the middle of it
            service.wait()
            partial = await _counted(direct)
            assert 0 < partial < acknowledged, partial  # it was indeed killed mid-way
            port = free_port()
            service = serve(port)  # a new process, on the same spool
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                await wait_until_up(http)

            async def exact() -> bool:
                return await _counted(direct) == acknowledged

            assert await eventually(exact, within=60), (await _counted(direct), acknowledged)
        finally:
            await direct.aclose()
    finally:
        service.terminate()
        service.wait(15)


async def test_alertmanager_resending_through_an_outage_counts_each_episode_once(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    from datetime import UTC, datetime, timedelta

    from .servers import ServiceServer
    from .test_alertmanager import KEY as AM_KEY
    from .test_alertmanager import RECEIVER, _alert, _payload

    with ServiceServer(_settings(durable_redis, tmp_path)) as server:
        async with server.client(server.token("team-a")) as http:
            assert (await http.get("/v1/projects/team-a/anomalies")).status_code == 200
            started = datetime.now(UTC) - timedelta(minutes=2)
            durable_redis.stop()
            for _ in range(4):  # the group interval and repeat interval go by; an HA pair
                r = await http.post(RECEIVER, json=_payload(_alert("firing", started)))
                assert r.status_code == 200 and r.json()["spooled"] == 1, r.text
            resolved = _alert("resolved", started, datetime.now(UTC))
            r = await http.post(RECEIVER, json=_payload(resolved))
            assert r.status_code == 200
            durable_redis.start()

            async def once() -> bool:
                r = await http.get(f"/v1/projects/team-a/anomalies/{AM_KEY}")
                body = r.json() if r.status_code == 200 else {}
                drained = (await http.get("/readyz")).text == "ok"  # the spool is empty
                return (
                    body.get("count_24h") == 1 and body.get("last_resolved") is not None and drained
                )

            assert await eventually(once, within=20)
            r = await http.post(RECEIVER, json=_payload(_alert("firing", started)))
            assert r.json()["duplicates"] == 1  # and after the replay, still the same episode


async def test_a_real_alertmanager_resending_through_an_outage(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    from datetime import UTC, datetime, timedelta

    from .servers import ServiceServer
    from .test_alertmanager import KEY as AM_KEY
    from .test_alertmanager import LABELS, RECEIVER

    other = {**LABELS, "alertname": "HighLatency"}
    other_key = AnomalyCounter.hash_signature(
        {"alertname": "HighLatency", "service": "db", "namespace": "prod"}
    )
    with ServiceServer(_settings(durable_redis, tmp_path)) as server:
        token = server.token("team-a")
        async with server.client(token) as http:

            async def count(key: str) -> int:
                r = await http.get(f"/v1/projects/team-a/anomalies/{key}")
                return int(r.json()["count_24h"]) if r.status_code == 200 else 0

            async def spooled() -> float:
                for line in (await http.get("/metrics")).text.splitlines():
                    if line.startswith("anomaly_counter_occurrences_total") and "spooled" in line:
                        return float(line.rsplit(" ", 1)[1])
                return 0.0

            with Alertmanager(f"{server.url}{RECEIVER}", token) as am:
                am.push(LABELS, datetime.now(UTC) - timedelta(seconds=30))

                async def first() -> bool:
                    return await count(AM_KEY) == 1

                assert await eventually(first, within=30)
                durable_redis.stop()
                am.push(other, datetime.now(UTC) - timedelta(seconds=10))

                async def resent() -> bool:  # the new alert, and repeats of both, spooled
                    return await spooled() >= 4

                assert await eventually(resent, within=30)
                durable_redis.start()

                async def once_each() -> bool:
                    return await count(other_key) == 1 and await count(AM_KEY) == 1

                assert await eventually(once_each, within=30)
                await asyncio.sleep(2.5)  # more repeats, now straight to the store
                assert await count(other_key) == 1 and await count(AM_KEY) == 1
