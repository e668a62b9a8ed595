"""Redis Cluster: three primaries with a replica each, real redis-server processes on loopback.

The contract suite runs on the shared cluster through the ``store_url`` fixture; the tests here
change the cluster under load (slots moved by redis-cli and key by key, a primary killed) and
check that every acknowledged occurrence of every anomaly is counted exactly once."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anomaly_counter import AnomalyCounter, Settings
from anomaly_counter.errors import ConfigurationError
from anomaly_counter.stores.base import store_from_url

from .cluster import LocalCluster
from .servers import eventually
from .test_faults import Load

SIGS = [{"alertname": f"Alert{i}", "service": "api", "namespace": "prod"} for i in range(48)]
KEYS = [AnomalyCounter.hash_signature(sig) for sig in SIGS]


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of the test's own, for tests that move slots or kill nodes."""
    cluster = LocalCluster(tmp_path / "cluster")
    yield cluster
    cluster.stop()


class SpreadLoad(Load):
    """Writers recording occurrences of 48 anomalies (spread over every primary) as fast as
    they can, alone and in batches; counts what was acknowledged, per anomaly."""

    def __init__(self, counter: AnomalyCounter, writers: int = 6) -> None:
        super().__init__(counter, writers)
        self.per_key = dict.fromkeys(KEYS, 0)
        self.spooled = 0

    async def _write(self) -> None:
        while not self._stop.is_set():
            if random.random() < 0.3:
                chosen = random.sample(range(len(SIGS)), 5)
                results = await self.counter.record_many([{"signature": SIGS[i]} for i in chosen])
            else:
                chosen = [random.randrange(len(SIGS))]
                results = [await self.counter.record_anomaly(SIGS[chosen[0]])]
            for i, result in zip(chosen, results, strict=True):
                assert result.spooled or not result.degraded  # stored, or safe in the spool
                self.per_key[KEYS[i]] += 1
                self.spooled += result.spooled
            await asyncio.sleep(0.002)

    async def check_exact(self, url: str, spool_of: AnomalyCounter, within: float = 60) -> None:
        assert sum(self.per_key.values()) > 200
        project = spool_of.project_id
        reader = AnomalyCounter.from_url(url, project, settings=Settings(store_url=url))
        counted: dict[str, int] = {}
        try:

            async def exact() -> bool:
                for key in KEYS:
                    frequency = await reader.get_frequency(key)
                    counted[key] = frequency.count_30d if frequency else 0
                drained = spool_of.spool is None or spool_of.spool.depth == 0
                return counted == self.per_key and drained

            if not await eventually(exact, within=within):
                acknowledged = self.per_key.items()
                wrong = {k: (counted[k], n) for k, n in acknowledged if counted[k] != n}
                depth = spool_of.spool.depth if spool_of.spool else None
                pytest.fail(f"counted, acknowledged: {wrong}; spool depth {depth}")
        finally:
            await reader.aclose()


def _settings(cluster: LocalCluster, tmp_path: Path, **options: Any) -> Settings:
    options.setdefault("store_timeout", 2.0)
    return Settings(store_url=cluster.url, spool_dir=str(tmp_path / "spool"), **options)


def _error_count(cluster: LocalCluster, name: str) -> int:
    """How many times the live nodes answered an error (INFO errorstats)."""
    total = 0
    for port in cluster.processes:
        for line in cluster.command(port, "INFO", "errorstats").splitlines():
            if line.startswith(f"errorstat_{name}:count="):
                total += int(line.split("=")[1])
    return total


async def test_a_project_spreads_over_every_primary_and_an_anomaly_stays_on_one(
    fresh_cluster: LocalCluster,
) -> None:
    async with AnomalyCounter.from_url(fresh_cluster.url, "team-a") as counter:
        for _ in range(3):
            await counter.record_many([{"signature": sig} for sig in SIGS])
        await counter.record_repair_attempt(KEYS[0], "restart_pod", False)
        await counter.record_disposition(KEYS[0], "auto_repair")
        top = await counter.top_anomalies(limit=48)
        assert len(top) == 48 and all(row["count"] == 3 for row in top)
        summary, rows = await counter.get_all_disposition_stats()
        assert summary["auto_repair"] == 1 and rows[0]["anomaly_key"] == KEYS[0]
    owner: dict[str, int] = {}
    for port in fresh_cluster.primary_ports():
        with fresh_cluster.client(port) as client:
            names = [k.decode() for k in client.scan_iter(count=1000)]
        assert names, f"primary {port} holds nothing of a 16-shard project"
        for name in names:
            if ":a:" in name:
                anomaly = name.rsplit(":", 1)[0]
                assert owner.setdefault(anomaly, port) == port, f"{anomaly} split across nodes"
    assert len(owner) == 48


async def test_scripts_are_loaded_again_on_primaries_that_lost_them(
    fresh_cluster: LocalCluster,
) -> None:
    async with AnomalyCounter.from_url(fresh_cluster.url, "team-a") as counter:
        await counter.record_many([{"signature": sig} for sig in SIGS])
        for port in fresh_cluster.primary_ports():  # as a restarted or promoted primary
            with fresh_cluster.client(port) as client:
                client.script_flush()
        results = await counter.record_many([{"signature": sig} for sig in SIGS])
        assert all(r.count_24h == 2 and not r.degraded for r in results)


def test_cluster_urls_are_checked() -> None:
    for url in ("redis+cluster://", "redis+cluster://host", "redis+cluster://h:1/0"):
        with pytest.raises(ConfigurationError, match="store_url"):
            store_from_url(url, Settings(store_url=url))


async def test_resharding_under_load_loses_and_doubles_nothing(
    own_cluster: LocalCluster, tmp_path: Path
) -> None:
    """redis-cli moves slots of one primary, every one the anomalies use among them, to
    another while writers record: MOVED and ASK redirections and TRYAGAIN answers are
    followed, and nothing is lost or counted twice."""
    source, target = own_cluster.primary_ports()[:2]
    counter = AnomalyCounter.from_url(settings=_settings(own_cluster, tmp_path))
    try:
        with SpreadLoad(counter) as load:
            await asyncio.sleep(0.5)
            # redis-cli takes a primary's slots from its lowest: enough to reach its last used
            used, first = own_cluster.used_slots(source), own_cluster.first_slot(source)
            reshard = own_cluster.reshard(source, target, slots=max(used) - first + 1)
            await asyncio.to_thread(reshard.wait, 300)
            assert reshard.returncode == 0, own_cluster.reshard_log()
            await asyncio.sleep(0.5)
            await load.finish()
        assert not own_cluster.used_slots(source)  # it gave away every slot in use
        assert _error_count(own_cluster, "MOVED") > 0
        await load.check_exact(own_cluster.url, counter)
    finally:
        await counter.aclose()


async def test_slots_moved_key_by_key_under_load(own_cluster: LocalCluster, tmp_path: Path) -> None:
    """The slots the anomalies live in are moved slowly, one key at a time, so that writes
    meet them half moved (ASK, then TRYAGAIN until the slot is whole again)."""
    primaries = own_cluster.primary_ports()
    target = primaries[0]
    counter = AnomalyCounter.from_url(settings=_settings(own_cluster, tmp_path))
    try:
        with SpreadLoad(counter) as load:
            await asyncio.sleep(0.5)
            for source in primaries[1:]:
                await asyncio.to_thread(_move_used_slots, own_cluster, source, target)
            await asyncio.sleep(0.5)
            await load.finish()
        assert own_cluster.primary_ports() == [target]
        assert _error_count(own_cluster, "ASK") > 0
        assert _error_count(own_cluster, "TRYAGAIN") > 0
        await load.check_exact(own_cluster.url, counter)
    finally:
        await counter.aclose()


def _move_used_slots(cluster: LocalCluster, source: int, target: int) -> None:
    """Move every slot of `source` that holds keys to `target`, as redis-cli does, but one key
    at a time with a pause between keys; then give `target` the empty slots too."""
    source_id, target_id = cluster.node_id(source), cluster.node_id(target)
    used = cluster.used_slots(source)
    assert used
    with cluster.client(source) as src, cluster.client(target) as dst:
        for slot in used:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10):
                for key in keys:
                    src.execute_command("MIGRATE", "127.0.0.1", target, key, 0, 5000)
                    time.sleep(0.01)
            for client in (dst, src):
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    moved = cluster.reshard(source, target, slots=16384)  # the rest, empty: quick
    assert moved.wait(120) == 0, cluster.reshard_log()
    cluster.wait_until_ok()


async def test_a_primary_killed_under_load_fails_over_without_loss(
    own_cluster: LocalCluster, tmp_path: Path
) -> None:
    """A primary dies (SIGKILL); its replica is promoted after the node timeout. With
    min_replicas=1 every acknowledged write had reached the replica; what comes in meanwhile
    waits in the spool and is counted once when the slots have a primary again."""
    settings = _settings(own_cluster, tmp_path, min_replicas=1, store_timeout=1.0)
    counter = AnomalyCounter.from_url(settings=settings)
    victim = own_cluster.primary_ports()[0]
    try:
        with SpreadLoad(counter) as load:
            await asyncio.sleep(1.0)
            own_cluster.kill(victim)
            deadline = time.monotonic() + 30
            while victim in own_cluster.primary_ports() or len(own_cluster.primary_ports()) < 3:
                assert time.monotonic() < deadline, "no replica took over"
                await asyncio.sleep(0.2)
            # the old primary comes back (as an orchestrator would restart it) and joins as a
            # replica of the new one, so that min_replicas=1 can be met there again
            own_cluster.start_node(victim)
            await asyncio.to_thread(own_cluster.wait_until_ok, 60)
            await asyncio.to_thread(own_cluster.wait_for_replicas, 60)
            await asyncio.sleep(2.0)
            await load.finish()
        assert load.spooled > 0  # the outage was felt, and bridged
        await load.check_exact(own_cluster.url, counter, within=90)
    finally:
        await counter.aclose()


def test_the_shared_cluster_is_three_primaries_with_a_replica_each(
    fresh_cluster: LocalCluster,
) -> None:
    nodes = fresh_cluster.nodes()
    assert sum("master" in n["flags"] for n in nodes) == 3, nodes
    assert sum("slave" in n["flags"] for n in nodes) == 3
