"""Redis Cluster: three primaries with a replica each, real redis-server processes on loopback.

The contract suite runs on the shared cluster through the ``store_url`` fixture; the tests here
change the cluster under load (slots moved by redis-cli and key by key, a primary killed) and
check that every acknowledged occurrence of every anomaly is counted exactly once."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio.connection import SSLConnection

from anomaly_counter import AnomalyCounter, Settings
from anomaly_counter.errors import ConfigurationError
from anomaly_counter.stores.base import store_from_url
from anomaly_counter.stores.redis_cluster import parse_cluster_url

from .cluster import LocalCluster
from .conftest import free_port
from .servers import ChatServer, eventually, make_token, wait_until_up
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


def _command_calls(cluster: LocalCluster) -> dict[str, int]:
    """Calls per command on the primaries since their statistics were reset."""
    calls: dict[str, int] = {}
    for port in cluster.primary_ports():
        for line in cluster.command(port, "INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, _, fields = line[len("cmdstat_") :].partition(":")
                calls[name] = calls.get(name, 0) + int(fields.split(",")[0].split("=")[1])
    return calls


async def test_project_figures_cost_what_they_return_not_what_the_project_holds(
    fresh_cluster: LocalCluster,
) -> None:
    """2,000 anomalies over 16 slots on 3 primaries: the top 5 and the disposition summary read
    a few index entries of each shard, never scan the keyspace, and run no cross-slot script."""
    async with AnomalyCounter.from_url(fresh_cluster.url, "wide") as counter:
        many = [{"alertname": "Wide", "service": f"s{i}"} for i in range(2000)]
        for start in range(0, 2000, 500):
            await counter.record_many([{"signature": sig} for sig in many[start : start + 500]])
        chronic = many[:5]
        await counter.record_many([{"signature": sig} for sig in chronic for _ in range(20)])
        await counter.record_disposition(counter.hash_signature(chronic[0]), "auto_repair")
        await counter.top_anomalies(limit=5)  # the first query lowers stale index entries
        for port in fresh_cluster.primary_ports():
            fresh_cluster.command(port, "CONFIG", "RESETSTAT")
        top = await counter.top_anomalies(limit=5)
        summary, _ = await counter.get_all_disposition_stats(limit=5)
    assert [row["count"] for row in top] == [21] * 5
    assert summary["auto_repair"] == 1
    calls = _command_calls(fresh_cluster)
    assert not {"scan", "keys"} & set(calls), calls
    assert calls["zrevrange"] <= 2 * 16 + 8, calls  # a first page per shard, a few more
    assert calls["evalsha"] <= 40, calls  # the candidates read, not the 2,000
    # the summary reads one hash per shard; (commands run by scripts count too: the reads of
    # the one anomaly with day counters, once per query)
    assert calls["hgetall"] == 16 + 2, sorted(calls.items())


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
    seeds, options = parse_cluster_url("rediss+cluster://ops:p%40ss@a:7000,[::1]:7001")
    assert seeds == [("a", 7000), ("::1", 7001)]
    assert options["username"] == "ops" and options["password"] == "p@ss"
    assert options["connection_class"] is SSLConnection


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
    victim = own_cluster.primary_ports()[0]
    settings = _settings(own_cluster, tmp_path, min_replicas=1, store_timeout=1.0)
    # the URL names the victim alone: the client finds the others from the slot map it read
    settings = replace(settings, store_url=f"redis+cluster://127.0.0.1:{victim}")
    counter = AnomalyCounter.from_url(settings=settings)
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


async def test_two_service_processes_on_the_cluster_count_once_and_tell_once(
    fresh_cluster: LocalCluster, tmp_path: Path
) -> None:
    """Two `anomaly-counter serve` processes (each with its own spool) share the cluster, as
    replicas behind a load balancer would: clients send to both at once. Every occurrence is
    counted once, and each crossing of each anomaly is told once, by one of them."""
    chat = ChatServer()
    config = tmp_path / "counter.toml"
    hook = f'webhook = {{ url = "{chat.url}/hook" }}'
    config.write_text(f"notify_backoff = 0.01\n[projects.team-a.notify]\n{hook}\n")
    token = make_token(Settings(store_url=fresh_cluster.url), "team-a")
    services = [_serve(fresh_cluster.url, config, tmp_path / f"spool-{n}") for n in range(2)]
    anomalies, each = SIGS[:12], 12  # each anomaly crosses 3, 5 and 10
    headers = {"Authorization": f"Bearer {token}"}
    try:
        clients = [httpx.AsyncClient(base_url=url, headers=headers) for _, url in services]
        for http in clients:
            await wait_until_up(http)

        async def sender(http: httpx.AsyncClient, share: int) -> None:
            for _ in range(share):
                for sig in anomalies:
                    r = await http.post("/v1/projects/team-a/occurrences", json={"signature": sig})
                    assert r.status_code == 200, r.text

        # four senders, two per process, interleaved: 12 occurrences of each anomaly in all
        await asyncio.gather(*(sender(clients[i % 2], each // 4) for i in range(4)))
        received = await asyncio.to_thread(chat.wait_for, 3 * len(anomalies), 20)
        await asyncio.sleep(0.5)  # a second notice of any crossing would arrive by now
        for http in clients:
            await http.aclose()
    finally:
        for process, _ in services:
            process.terminate()
            process.wait(15)
        chat.close()
    told: dict[tuple[str, str], int] = {}
    for notice in chat.received:
        body = notice.json()
        told[body["anomaly_key"], body["level"]] = (
            told.get((body["anomaly_key"], body["level"]), 0) + 1
        )
    expected = {(AnomalyCounter.hash_signature(sig), level): 1 for sig in anomalies
                for level in ("REPEAT", "ESCALATE", "PERMANENT_FIX")}  # fmt: skip
    assert told == expected, (len(received), told)
    async with AnomalyCounter.from_url(fresh_cluster.url, "team-a") as reader:
        for sig in anomalies:
            frequency = await reader.get_frequency(AnomalyCounter.hash_signature(sig))
            assert frequency is not None and frequency.count_24h == each


def _serve(url: str, config: Path, spool: Path) -> tuple[subprocess.Popen[bytes], str]:
    """An `anomaly-counter serve` process of its own, and its base URL."""
    port = free_port()
    env = {**os.environ, "ANOMALY_COUNTER_CONFIG": str(config),
           "ANOMALY_COUNTER_SPOOL_DIR": str(spool)}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "anomaly_counter.cli", "--store", url, "serve", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return process, f"http://127.0.0.1:{port}"


def test_the_shared_cluster_is_three_primaries_with_a_replica_each(
    fresh_cluster: LocalCluster,
) -> None:
    nodes = fresh_cluster.nodes()
    assert sum("master" in n["flags"] for n in nodes) == 3, nodes
    assert sum("slave" in n["flags"] for n in nodes) == 3
