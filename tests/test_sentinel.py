"""Sentinel: one master, one replica, three sentinels, all redis-server processes on loopback.
The master is killed under load; the counter follows the failover to the new master, and with
min_replicas=1 and a spool every acknowledged occurrence is counted exactly once."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from anomaly_counter import AnomalyCounter, Settings

from .conftest import RedisServer, free_port, require_binary
from .servers import eventually
from .test_faults import KEY, Load

MASTER = "counter-master"


class Sentinels:
    def __init__(self, directory: Path, master_port: int, count: int = 3) -> None:
        self.binary = require_binary("redis-server")
        self.ports = [free_port() for _ in range(count)]
        self.processes: list[subprocess.Popen[bytes]] = []
        for port in self.ports:
            config = directory / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
            )
            self.processes.append(
                subprocess.Popen(
                    [self.binary, str(config), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    if client.sentinel_master(MASTER)["num-other-sentinels"] >= count - 1:
                        break
                except (redis.ConnectionError, redis.ResponseError, KeyError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("sentinels did not find each other")
                time.sleep(0.1)
            client.close()

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        return f"redis+sentinel://{hosts}/{MASTER}"

    def master_port(self) -> int:
        client = redis.Redis(port=self.ports[0])
        try:
            return int(client.sentinel_get_master_addr_by_name(MASTER)[1])
        finally:
            client.close()

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(10)


def _wait_for_link(replica: RedisServer) -> None:
    client = replica.client()
    deadline = time.monotonic() + 20
    try:
        while client.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync")
            time.sleep(0.05)
    finally:
        client.close()


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, Sentinels]]:
    master = RedisServer(free_port(), str(tmp_path / "m"))
    replica = RedisServer(free_port(), str(tmp_path / "r"))
    for server in (master, replica):
        Path(server.directory).mkdir()
    replica.extra = ["--replicaof", "127.0.0.1", str(master.port)]
    master.start()
    replica.start()
    _wait_for_link(replica)
    sentinels = Sentinels(tmp_path, master.port)
    try:
        yield master, replica, sentinels
    finally:
        sentinels.stop()
        replica.stop()
        master.stop()


async def test_a_failover_under_load_loses_and_doubles_nothing(
    sentinel_setup: tuple[RedisServer, RedisServer, Sentinels], tmp_path: Path
) -> None:
    master, replica, sentinels = sentinel_setup
    settings = Settings(
        store_url=sentinels.url,
        store_timeout=1.0,  # replicas have half of it to confirm each write
        min_replicas=1,
        spool_dir=str(tmp_path / "spool"),
    )
    counter = AnomalyCounter.from_url(settings=settings)
    try:
        with Load(counter, writers=4) as load:
            await asyncio.sleep(1.0)
            assert master.process is not None
            master.process.kill()  # the master dies; the replica has what was acknowledged
            master.process.wait()
            for _ in range(150):
                if sentinels.master_port() == replica.port:
                    break
                await asyncio.sleep(0.1)
            assert sentinels.master_port() == replica.port  # failed over
            # the old master comes back as a replica of the new one (as its orchestrator
            # would bring it back), so that min_replicas=1 can be met again. It comes back
            # empty, and with priority 0, as the README asks: else a second failover (the
            # sentinels lose a ping to the busy new master for down-after's 1 s, seen here
            # about once in 30 runs on a loaded machine) promotes the empty node, and a
            # whole-data resync from it wipes what the new master held
            master.extra = [
                "--replicaof", "127.0.0.1", str(replica.port), "--replica-priority", "0",
            ]  # fmt: skip
            master.start()
            await asyncio.sleep(2.0)
            await load.finish()
        assert load.acknowledged > 100
        reader = AnomalyCounter.from_url(sentinels.url)
        try:

            async def exact() -> bool:
                frequency = await reader.get_frequency(KEY)
                drained = counter.spool is not None and counter.spool.depth == 0
                return (
                    frequency is not None and frequency.count_24h == load.acknowledged and drained
                )

            if not await eventually(exact, within=90):
                frequency = await reader.get_frequency(KEY)
                depth = counter.spool.depth if counter.spool else None
                pytest.fail(
                    f"counted {frequency.count_24h if frequency else None},"
                    f" acknowledged {load.acknowledged}, spool depth {depth}"
                )
        finally:
            await reader.aclose()
    finally:
        await counter.aclose()
