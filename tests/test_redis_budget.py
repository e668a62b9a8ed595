"""Redis cost budgets: one command per occurrence, and bounded memory per anomaly."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from anomaly_counter import AnomalyCounter, timeline

from .conftest import SIG, Clock, RedisServer


class Monitor:
    """Commands clients send, seen through MONITOR (commands run inside scripts excluded)."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.commands: list[str] = []

    def __enter__(self) -> Monitor:
        self._stopper = self.server.client()
        self._stopper.ping()  # connected before monitoring: it will send only the stop marker
        self._client = self.server.client()
        self._monitor = self._client.monitor().__enter__()
        self._thread = threading.Thread(target=self._collect)
        self._thread.start()
        time.sleep(0.05)
        return self

    def _collect(self) -> None:
        for entry in self._monitor.listen():
            if entry["command"] == "ECHO monitor-stop":
                return
            name = entry["command"].split(" ")[0].upper()
            # commands run by scripts, and a new connection's handshake, are not round trips
            if entry.get("client_type") != "lua" and name not in ("HELLO", "CLIENT"):
                self.commands.append(name)

    def __exit__(self, *exc: object) -> None:
        self._stopper.echo("monitor-stop")
        self._stopper.close()
        self._thread.join(timeout=10)
        self._monitor.__exit__(None, None, None)
        self._client.close()


async def test_record_anomaly_is_one_command(fresh_redis: RedisServer) -> None:
    key = AnomalyCounter.hash_signature(SIG)
    async with AnomalyCounter.from_url(fresh_redis.url, "team-a") as counter:
        await counter.record_anomaly(SIG)  # loads the script once
        await counter.record_many([{"signature": {"alertname": "new"}}])  # and admit's
        await counter.get_frequency(key)
        with Monitor(fresh_redis) as record:
            await counter.record_anomaly(SIG, occurrence_id="a")
            await asyncio.sleep(0.05)
        with Monitor(fresh_redis) as read:
            await counter.get_frequency(key)
            await asyncio.sleep(0.05)
        with Monitor(fresh_redis) as batch:
            await counter.record_many([{"signature": SIG}] * 100)
            await asyncio.sleep(0.05)
        spread = [{"signature": {"alertname": f"A{i}"}} for i in range(100)]
        with Monitor(fresh_redis) as new_batch:
            await counter.record_many(spread)
            await asyncio.sleep(0.05)
        with Monitor(fresh_redis) as spread_batch:
            await counter.record_many(spread)
            await asyncio.sleep(0.05)
    assert record.commands == ["EVALSHA"]
    assert read.commands == ["EVALSHA"]
    # one anomaly's occurrences stay in one chunk, and one chunk makes one script call on a
    # single server, whatever shards it touches; a batch spread over the project goes in two
    # chunks of 50, pipelined
    assert batch.commands == ["EVALSHA"]
    assert spread_batch.commands == ["EVALSHA", "EVALSHA"]
    # new anomalies: room is made for them first (max_anomalies), one call more, once
    assert new_batch.commands == ["EVALSHA"] * 3


async def test_memory_of_one_anomaly_is_bounded(fresh_redis: RedisServer) -> None:
    now = datetime.now(UTC)
    start = now - timedelta(days=30) + timedelta(minutes=1)
    total = 30_000
    step = (now - start) / total
    async with AnomalyCounter.from_url(fresh_redis.url, "team-a") as counter:
        batch = []
        for i in range(total):
            batch.append({"signature": SIG, "at": start + step * i})
            if len(batch) == 1000:
                await counter.record_many(batch)
                batch.clear()
        frequency = await counter.get_frequency(AnomalyCounter.hash_signature(SIG))
    assert frequency is not None and abs(frequency.count_30d - total) <= total // 60
    with fresh_redis.client() as client:
        keys = [k for k in client.keys("*") if b":a:" in k]
        used = {k.decode(): client.memory_usage(k, samples=0) or 0 for k in keys}
    assert 3 <= len(keys) <= 8, used  # meta, tail, signature, milestones, the rings in use
    assert sum(used.values()) <= 16 * 1024, used


async def test_memory_with_a_full_timeline_is_bounded(fresh_redis: RedisServer) -> None:
    """The busiest anomaly's counting state and a timeline filled past both of its bounds:
    under 16 KB in all (its write ids, kept for deduplication, apart)."""
    now = datetime.now(UTC)
    start = now - timedelta(days=30) + timedelta(minutes=1)
    key = AnomalyCounter.hash_signature(SIG)
    async with AnomalyCounter.from_url(fresh_redis.url, "team-a") as counter:
        for first in range(0, 30_000, 1000):
            await counter.record_many(
                [{"signature": SIG, "at": start + (now - start) * i / 30_000}
                 for i in range(first, first + 1000)]
            )  # fmt: skip
        for i in range(250):
            await counter.record_resolution(key, at=now - timedelta(minutes=250 - i), by="t" * 16)
            await counter.note_notice(key, "telegram", "escalation", "sent")
        for i in range(70):
            await counter.mark_permanent_fix_applied(key, f"fix {i}: " + "x" * 300, by="oncall")
        assert len(await counter.timeline(key)) >= 100
    with fresh_redis.client() as client:
        keys = [k for k in client.keys("*") if b":a:" in k and not k.endswith(b":i")]
        used = {k.decode(): client.memory_usage(k, samples=0) or 0 for k in keys}
    assert sum(used.values()) <= 16 * 1024, used


async def test_an_anomaly_whose_tail_was_lost_carries_on(fresh_redis: RedisServer) -> None:
    """A tail key gone on its own (a maxmemory policy evicts any key) must not break the
    anomaly's scripts: its times are lost, the counting goes on."""
    start = datetime.now(UTC) - timedelta(minutes=300)
    busy, quiet = SIG, {**SIG, "alertname": "Quiet"}
    async with AnomalyCounter.from_url(fresh_redis.url, "team-a") as counter:
        # one a minute: the tail holds the last 128 minutes, so the 1 h count reads into it
        await counter.record_many(
            [{"signature": busy, "at": start + timedelta(minutes=i)} for i in range(300)]
        )
        await counter.record_many([{"signature": quiet, "at": start}] * 5)
        with fresh_redis.client() as client:
            assert client.delete(*[k for k in client.keys("*") if k.endswith(b":t")]) == 2
        for signature in (busy, quiet):  # a full tail, and one with room left
            key = AnomalyCounter.hash_signature(signature)
            read = await counter.get_frequency(key)
            assert read is not None and read.count_1h <= 305
            after = await counter.record_anomaly(signature)
            assert 1 <= after.count_1h <= 306
            again = await counter.record_anomaly(signature)
            assert again.count_1h == after.count_1h + 1


async def test_scripts_are_loaded_again_after_a_flush(fresh_redis: RedisServer) -> None:
    async with AnomalyCounter.from_url(fresh_redis.url, "team-a") as counter:
        await counter.record_anomaly(SIG)
        with fresh_redis.client() as client:
            client.script_flush()
        assert (await counter.record_anomaly(SIG)).count_24h == 2
        with fresh_redis.client() as client:
            client.script_flush()
        spread = [{"signature": {"alertname": f"A{i % 30}"}} for i in range(120)]
        results = await counter.record_many(spread)  # three chunks, pipelined
        assert [r.count_24h for r in results] == [i // 30 + 1 for i in range(120)]
        with fresh_redis.client() as client:
            client.script_flush()
        assert (await counter.get_frequency(AnomalyCounter.hash_signature(SIG))).count_24h == 2  # type: ignore[union-attr]


async def test_project_figures_scan_nothing_and_cost_what_they_return(
    fresh_redis: RedisServer,
) -> None:
    async with AnomalyCounter.from_url(fresh_redis.url, "team-a") as counter:
        batch = [{"signature": {"alertname": f"A{i}"}} for i in range(2000)]
        batch += [{"signature": {"alertname": f"A{i}"}} for i in range(10) for _ in range(i)]
        await counter.record_many(batch)
        for i in range(10):
            for _ in range(i):
                await counter.record_disposition(
                    AnomalyCounter.hash_signature({"alertname": f"A{i}"}), "human_approved"
                )
        await counter.top_anomalies(limit=5)  # loads the scripts
        await counter.get_all_disposition_stats(limit=5)
        with Monitor(fresh_redis) as top:
            rows = await counter.top_anomalies(limit=5)
            await asyncio.sleep(0.05)
        with Monitor(fresh_redis) as summary:
            _, by_anomaly = await counter.get_all_disposition_stats(limit=5)
            await asyncio.sleep(0.05)
    assert [r["alert_name"] for r in rows] == ["A9", "A8", "A7", "A6", "A5"]
    assert [r["alert_name"] for r in by_anomaly] == ["A9", "A8", "A7", "A6", "A5"]
    for monitor in (top, summary):
        assert not {"SCAN", "KEYS"} & set(monitor.commands)
        # 2,000 anomalies in the project; a query reads one page of each of the 16 shards, one
        # batch of 16 candidates, and lowers at most those 16 stale index entries
        assert len(monitor.commands) <= 16 + 16 + 16 + 16, monitor.commands


async def test_chronic_and_search_read_what_they_find(fresh_redis: RedisServer) -> None:
    """2,000 anomalies in the project, 3 of them chronic: the chronic listing reads the chronic
    index and those 3; a search reads index entries for what it finds. Neither scans."""
    async with AnomalyCounter.from_url(fresh_redis.url, "team-a") as counter:
        await counter.record_many(
            [{"signature": {"alertname": f"Quiet{i}", "pod": f"p{i}"}} for i in range(2000)]
        )
        for name in ("LoudA", "LoudB", "LoudC"):
            await counter.record_many([{"signature": {"alertname": name}}] * 4)
        await counter.chronic_anomalies()  # loads the scripts
        with Monitor(fresh_redis) as chronic:
            listed = await counter.chronic_anomalies()
            await asyncio.sleep(0.05)
        with Monitor(fresh_redis) as found:
            loud = await counter.search("loud")
            await asyncio.sleep(0.05)
        # a query of 8 long words, each of many distinct characters, costs a bounded number
        # of commands (tried as an attacker would: it once cost ~32,000 per request)
        attack = " ".join("".join(chr(0x20000 + 63 * w + i) for i in range(63)) for w in range(8))
        with Monitor(fresh_redis) as hostile:
            assert (await counter.search(attack)).total == 0
            await asyncio.sleep(0.05)
        # an anomaly that expired (its keys gone) leaves the chronic index when met
        with fresh_redis.client() as client:
            gone = AnomalyCounter.hash_signature({"alertname": "LoudC"})
            client.delete(*[k for k in client.keys("*") if f":a:{gone}:".encode() in k])
        assert (await counter.chronic_anomalies()).total == 2
        assert len(await counter.store.chronic("team-a")) == 2
    assert sorted(f.signature["alertname"] for f in listed.anomalies) == ["LoudA", "LoudB", "LoudC"]
    assert len(hostile.commands) <= 8 * (16 * 3 + 16 * 2) + 8, len(hostile.commands)
    assert loud.total == 3
    for monitor in (chronic, found):
        assert not {"SCAN", "KEYS"} & set(monitor.commands)
    # 16 shard reads of the chronic index, then the 3 anomalies
    assert chronic.commands == ["ZRANGE"] * 16 + ["EVALSHA"] * 3
    # gram counts and ranges of 16 shards, the anomalies of the 3 terms found, their reads
    assert len(found.commands) <= 16 * 3 + 16 * 2 + 3 + 3, found.commands


async def test_anomalies_first_seen_before_search_are_indexed_later(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    """An anomaly recorded by a version without the search index (as an upgraded deployment
    holds them) is indexed at an occurrence of the next hour, by that occurrence's labels."""
    from anomaly_counter import Settings

    clock = Clock()
    for url in (fresh_redis.url, f"sqlite:///{tmp_path}/old.db"):
        settings = Settings(store_url=url)
        async with AnomalyCounter.from_url(url, "team-a", settings=settings, clock=clock) as c:
            await c.record_anomaly(SIG)
            if url.startswith("redis"):  # as the older version left it
                with fresh_redis.client() as client:
                    for key in client.keys("*:x:terms") + client.keys("*:x:grams"):
                        client.delete(key)
                    for key in client.keys("*:a:*:m"):
                        client.hdel(key, "ix")
            else:
                db = c.store._connection()  # type: ignore[attr-defined]
                db.execute("DELETE FROM search_terms")
                db.execute("UPDATE anomalies SET indexed = 0")
            assert (await c.search("crashloop")).total == 0
            clock.advance(hours=1, minutes=1)
            await c.record_anomaly(SIG)
            assert (await c.search("crashloop")).total == 1, url


def _lifetimes(server: RedisServer) -> dict[str, int]:
    with server.client() as client:
        return {k.decode(): client.ttl(k) for k in client.keys("*")}


async def test_every_key_lives_as_long_as_what_counts_on_it(fresh_redis: RedisServer) -> None:
    """Found by a review: a fixed anomaly's state is kept for the fix's 90 days, but its
    signature went after the 35 days of a quiet anomaly (shown without labels, found by no
    search); and the escalations by day, written by an escalation within the hour after the
    lifetimes were set, had no lifetime at all (kept forever)."""
    key = AnomalyCounter.hash_signature(SIG)
    async with AnomalyCounter.from_url(fresh_redis.url, "team-a") as counter:
        for _ in range(3):
            await counter.record_anomaly(SIG)  # REPEAT: one escalation, counted by day
        lifetimes = _lifetimes(fresh_redis)
        assert all(ttl > 0 for ttl in lifetimes.values()), lifetimes  # none kept forever
        await counter.record_disposition(key, "auto_repair")
        await counter.record_repair_attempt(key, "restart_pod", success=True)
        await counter.mark_permanent_fix_applied(key, "raised the pool size")
        lifetimes = _lifetimes(fresh_redis)
    assert all(ttl > 0 for ttl in lifetimes.values()), lifetimes
    (meta,) = [name for name in lifetimes if name.endswith(":m")]
    state = lifetimes[meta]
    assert state > 80 * 86_400  # the fix's validity
    shown_or_found_by = [name for name in lifetimes if name.endswith(":s") or ":x:" in name]
    assert len(shown_or_found_by) >= 6, lifetimes
    for name in shown_or_found_by:
        assert lifetimes[name] >= state - 5, (name, lifetimes)


async def test_a_timeline_whose_size_was_lost_stays_in_its_budget(
    fresh_redis: RedisServer,
) -> None:
    """Found by a review: the timeline's byte count lives in the anomaly's hash; with it lost
    (an eviction, a hand edit) the next entries counted from zero and the routine part grew
    past its budget until the entry cap."""
    key = AnomalyCounter.hash_signature(SIG)
    async with AnomalyCounter.from_url(fresh_redis.url, "team-a") as counter:
        await counter.record_anomaly(SIG)
        for _ in range(20):
            await counter.record_repair_attempt(key, "a" * 60, success=True, by="x" * 60)
        with fresh_redis.client() as client:
            (meta,) = [k for k in client.keys("*") if k.endswith(b":m")]
            assert client.hdel(meta, "lb") == 1
        for _ in range(120):
            await counter.record_repair_attempt(key, "a" * 60, success=True, by="x" * 60)
        with fresh_redis.client() as client:
            routine = client.lrange(meta[:-1] + b"l", 0, -1)
            held = sum(len(entry) for entry in routine)
            assert held <= timeline.ROUTINE_BYTES
            assert int(client.hget(meta, "lb") or 0) == held


def test_constants_reach_the_scripts_byte_for_byte(fresh_redis: RedisServer) -> None:
    """Found by a review: a character escaped as `\\31` before a digit read as another one."""
    from anomaly_counter.stores.redis import _lua_string

    text = "\x1f1 \x002-é:x"
    with fresh_redis.client() as client:
        assert client.eval(f"return {_lua_string(text)}", 0) == text.encode()
