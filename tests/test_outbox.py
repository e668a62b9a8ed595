"""The notices outbox (issue 13): each notice written by the store in the same atomic step as
the occurrence that causes it, delivered by whichever service process holds the lease, each
once, in order per anomaly, through crashes, cut replies and a receiver that is down; what
cannot be delivered kept as a dead letter. On SQLite, Redis and Cluster, with a real local HTTP
server standing in for the receiver."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anomaly_counter import AnomalyCounter, Settings
from anomaly_counter.notify.channels import IDEMPOTENCY_HEADER
from anomaly_counter.notify.deliverer import Deliverer
from anomaly_counter.outbox import DeadLetter, Lease, Settlement
from anomaly_counter.settings import WebhookConfig
from anomaly_counter.stores.base import Store

from .conftest import SIG, RedisServer
from .servers import (
    ChatServer,
    FaultyProxy,
    ServeProcess,
    ServiceServer,
    eventually,
    make_token,
)

pytestmark = pytest.mark.timeout(400)


@pytest.fixture
def chat() -> Iterator[ChatServer]:
    server = ChatServer()
    yield server
    server.close()


def _signature(i: int) -> dict[str, str]:
    return {**SIG, "alertname": f"Outboxed{i}"}


def _channels(chat: ChatServer, n: int = 1) -> dict[str, tuple[WebhookConfig, ...]]:
    return {"team-a": tuple(WebhookConfig(f"{chat.url}/hook{i}") for i in range(n))}


# -- the store's part ---------------------------------------------------------------------------


def _nowhere(store_url: str, **options: Any) -> Settings:
    """Settings of project team-a with a channel (so that it keeps notices) that no deliverer
    sends to: the tests drive the store's outbox themselves."""
    channels = {"team-a": (WebhookConfig("http://127.0.0.1:9/h"),)}
    return Settings(store_url=store_url, project_channels=channels, **options)


async def test_a_crossing_is_in_the_outbox_with_its_occurrence(store_url: str) -> None:
    settings = _nowhere(store_url)
    async with AnomalyCounter.from_url(settings=settings, project="team-a") as counter:
        for _ in range(5):
            await counter.record_anomaly(SIG)
        async with AnomalyCounter.from_url(store_url, project="team-b") as quiet:
            for _ in range(3):  # a project without channels keeps no notices
                await quiet.record_anomaly(SIG)
            assert (await quiet.outbox_stats()).depth == 0
        store = counter.store
        key = AnomalyCounter.hash_signature(SIG)
        partitions = range(store.outbox_partitions)
        found = [
            e for p in partitions for e in (await store.outbox_read("team-a", p, ["c"], 10))[0]
        ]
        assert [(e.anomaly_key, e.kind, e.level, e.counts[1]) for e in found] == [
            (key, "escalation", 1, 3),
            (key, "escalation", 2, 5),
        ]
        stats = await counter.outbox_stats()
        assert stats.depth == 2 and stats.oldest_ms is not None and stats.dead == 0


async def test_one_lease_holder_and_a_cursor_per_channel(store_url: str) -> None:
    settings = _nowhere(store_url, notify_lease=0.5, notify_poll=0.1)
    async with AnomalyCounter.from_url(settings=settings, project="team-a") as counter:
        for _ in range(3):
            await counter.record_anomaly(SIG)
        store = counter.store
        key = AnomalyCounter.hash_signature(SIG)
        part = await _partition_with_entries(store)
        assert await store.outbox_lease("team-a", [part], "one", 500) == [Lease.WAITING]
        assert await store.outbox_lease("team-a", [part], "one", 500) == [Lease.WAITING]  # renewed
        assert await store.outbox_lease("team-a", [part], "two", 500) == [Lease.OTHERS]
        (entry,), cursors = await store.outbox_read("team-a", part, ["a", "b"], 10)
        assert entry.anomaly_key == key and cursors == {"a": "", "b": ""}
        assert not await store.outbox_settle(
            "team-a", part, Settlement("two", "a", entry, ["a", "b"])
        )
        assert await store.outbox_settle("team-a", part, Settlement("one", "a", entry, ["a", "b"]))
        entries, cursors = await store.outbox_read("team-a", part, ["a", "b"], 10)
        assert entries == [entry] and cursors == {"a": entry.entry_id, "b": ""}  # b waits
        assert (await counter.outbox_stats()).depth == 1
        await asyncio.sleep(0.8)  # one's lease runs out (it died): two takes over
        assert await store.outbox_lease("team-a", [part], "two", 500) == [Lease.WAITING]
        assert not await store.outbox_settle(
            "team-a", part, Settlement("one", "b", entry, ["a", "b"])
        )
        letter = DeadLetter(entry.key("team-a"), "b", entry, "HTTP 410", 1, 1, 2)
        assert await store.outbox_settle(
            "team-a", part, Settlement("two", "b", entry, ["a", "b"], letter)
        )
        assert (await store.outbox_read("team-a", part, ["a", "b"], 10))[0] == []
        assert await store.outbox_lease("team-a", [part], "two", 500) == [Lease.IDLE]
        stats = await counter.outbox_stats()
        assert (stats.depth, stats.dead) == (0, 1)
        assert await counter.dead_letters() == [letter]
        # sent again: back in the outbox for channel b only, with its notice id
        assert await counter.retry_dead_letters(["nosuch"]) == 0
        assert await counter.retry_dead_letters() == 1
        (again,), _ = await store.outbox_read("team-a", part, ["a", "b"], 10)
        assert again.key("team-a") == entry.key("team-a") and again.only == "b"
        assert again.counts == entry.counts and not again.for_channel("a")
        assert (await counter.outbox_stats()).dead == 0


async def _partition_with_entries(store: Store) -> int:
    for partition in range(store.outbox_partitions):
        if (await store.outbox_read("team-a", partition, ["a"], 10))[0]:
            return partition
    raise AssertionError("no notice in the outbox")


async def test_a_full_outbox_counts_what_it_could_not_keep(store_url: str) -> None:
    settings = _nowhere(store_url, outbox_max=20)
    async with AnomalyCounter.from_url(settings=settings, project="team-a") as counter:
        await counter.record_many([{"signature": _signature(i)} for i in range(60)] * 3)
        stats = await counter.outbox_stats()
    # 60 crossings: what the outbox holds (its bound, split among the store's partitions and
    # rounded up on Redis: at most 32 there) and what overflowed add up to all of them
    assert stats.depth + stats.overflowed == 60
    if store_url.startswith("sqlite"):
        assert (stats.depth, stats.overflowed) == (20, 40)
    else:
        assert 20 <= stats.depth <= 32 and stats.overflowed >= 28


# -- delivery ----------------------------------------------------------------------------------


async def test_a_crossing_whose_reply_was_cut_is_announced_once(
    fresh_redis: RedisServer, chat: ChatServer, tmp_path: Path
) -> None:
    """The write of the third occurrence lands but its reply is lost: the service spools it,
    the replay finds it counted (no crossing in its answer), and the outbox still has the
    crossing's notice, written by the same script call."""
    proxy = FaultyProxy(fresh_redis.port)
    await proxy.start()
    settings = Settings(
        store_url=f"redis://127.0.0.1:{proxy.port}/0",
        spool_dir=str(tmp_path / "spool"),
        project_channels=_channels(chat),
        notify_backoff=0.01,
        store_timeout=0.5,
    )
    try:
        with ServiceServer(settings) as server:
            # (made through Redis itself: the proxy runs on this test's loop)
            token = make_token(Settings(store_url=fresh_redis.url), "team-a")
            async with server.client(token) as http:
                for _ in range(2):
                    r = await http.post("/v1/projects/team-a/occurrences", json={"signature": SIG})
                    assert r.status_code == 200
                proxy.loss = 1.0  # every reply from Redis is lost on the way back
                r = await http.post("/v1/projects/team-a/occurrences", json={"signature": SIG})
                assert r.status_code == 202 and r.json()["spooled"], r.text  # (kept: 202)
                assert proxy.cut >= 1
                proxy.loss = 0.0

                async def counted() -> bool:
                    r = await http.get(f"/v1/projects/team-a/anomalies/{SIG_KEY}")
                    return r.status_code == 200 and r.json()["count_24h"] == 3

                assert await eventually(counted, within=20)

            async def arrived() -> bool:  # (polled on this loop: the proxy runs on it)
                return len(chat.received) >= 1

            assert await eventually(arrived, within=20)
            await asyncio.sleep(1.0)  # nothing more comes
    finally:
        await proxy.stop()
    received = chat.received
    assert len(received) == 1
    assert received[0].json()["level"] == "REPEAT" and received[0].json()["counts"]["24h"] == 3


SIG_KEY = AnomalyCounter.hash_signature(SIG)


@pytest.mark.background("sqlite")  # (two minutes of waiting: beside the rest of the run)
async def test_killed_with_100_notices_queued_and_the_receiver_down(
    store_url: str, chat: ChatServer, tmp_path: Path
) -> None:
    """The service is SIGKILLed with 100 notices waiting while the receiver answers 503; a new
    process takes over the lease and, once the receiver is back, sends every notice once and
    each anomaly's in order. The receiver stays down ``down_for`` seconds (2 minutes on
    SQLite; the backoff is the same code on every store, so the others take 10 s)."""
    down_for = 120.0 if store_url.startswith("sqlite") else 10.0
    config = tmp_path / "settings.toml"
    config.write_text(
        f'store_url = "{store_url}"\n'
        "notify_backoff = 0.05\nnotify_max_pause = 2.0\nnotify_lease = 3.0\n"
        f'[projects.team-a.notify]\nwebhook = {{ url = "{chat.url}/hook" }}\n'
    )
    env = {"ANOMALY_COUNTER_CONFIG": str(config)}
    chat.down = 503
    began = asyncio.get_running_loop().time()
    with ServeProcess(store_url, tmp_path, env=env) as first:
        async with first.client(first.token) as http:
            # 40 anomalies: 20 cross into REPEAT and ESCALATE (2 notices), 20 into REPEAT, ESCALATE
            # and PERMANENT_FIX (3): 100 notices
            batch = [{"signature": _signature(i)} for i in range(20)] * 5
            batch += [{"signature": _signature(i)} for i in range(20, 40)] * 10
            r = await http.post(
                "/v1/projects/team-a/occurrences/batch", json={"occurrences": batch}
            )
            assert r.status_code == 200, r.text
        assert len(chat.wait_for(5)) >= 5  # being tried, and failing
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
    token = first.token
    with ServeProcess(store_url, tmp_path, env=env, demo_token=False) as second:
        async with second.client(token) as http:
            r = await http.get("/v1/projects/team-a/notices/dead")
            assert r.json()["outbox"]["depth"] == 100  # all still there

            async def reported() -> bool:
                text = (await http.get("/metrics")).text
                return 'anomaly_counter_outbox_depth{project="team-a"} 100.0' in text and (
                    'anomaly_counter_outbox_oldest_age_seconds{project="team-a"} 0.0' not in text
                )

            assert await eventually(reported)
        await asyncio.sleep(max(0.0, down_for - (asyncio.get_running_loop().time() - began)))
        tried = len(chat.received)
        chat.down = None  # the receiver is back

        async def delivered() -> bool:
            return sum(1 for r in chat.received if r.status == 200) >= 100

        assert await eventually(delivered, within=60)
        await asyncio.sleep(1.5)  # nothing more comes
        async with second.client(token) as http:
            r = await http.get("/v1/projects/team-a/notices/dead")
            assert r.json()["outbox"]["depth"] == 0 and r.json()["letters"] == []
    sent = [r for r in chat.received if r.status == 200]
    ids = collections.Counter(r.headers[IDEMPOTENCY_HEADER] for r in sent)
    assert len(sent) == 100 and len(ids) == 100  # each notice once
    levels: dict[str, list[str]] = collections.defaultdict(list)
    for r in sent:
        levels[r.json()["anomaly_key"]].append(r.json()["level"])
    assert sorted(len(v) for v in levels.values()) == [2] * 20 + [3] * 20
    for sequence in levels.values():  # in order for each anomaly
        assert sequence == ["REPEAT", "ESCALATE", "PERMANENT_FIX"][: len(sequence)]
    assert tried > 100  # (it was tried, and failed, while down)


async def test_a_deliverer_on_its_own_sends_what_another_process_wrote(
    store_url: str, chat: ChatServer
) -> None:
    """A process that wrote notices and died before sending any: a deliverer of another
    process (the library's, here) sends them."""
    settings = Settings(
        store_url=store_url, project_channels=_channels(chat, 2), notify_poll=0.1,
        notify_backoff=0.01,
    )  # fmt: skip
    async with AnomalyCounter.from_url(settings=settings, project="team-a") as writer:
        await writer.record_many([{"signature": _signature(i)} for i in range(5)] * 3)
    async with AnomalyCounter.from_url(settings=settings, project="team-a") as counter:
        deliverer = Deliverer(settings, lambda project: counter)
        await deliverer.start()
        try:

            async def arrived() -> bool:  # (polled on this loop: the deliverer runs on it)
                return len(chat.received) >= 10

            assert await eventually(arrived)
            await asyncio.sleep(0.5)
        finally:
            await deliverer.stop()
        assert (await counter.outbox_stats()).depth == 0
    assert len(chat.received) == 10  # 5 notices x 2 channels
    assert sorted({r.path for r in chat.received}) == ["/hook0", "/hook1"]


async def test_a_channel_that_is_down_delays_only_its_own_notices(store_url: str) -> None:
    """Slack answers 503 all along; the webhook still gets every notice at once, in order."""
    down, up = ChatServer(), ChatServer()
    down.down = 503
    settings = Settings(
        store_url=store_url,
        project_channels={
            "team-a": (WebhookConfig(f"{down.url}/down"), WebhookConfig(f"{up.url}/up"))
        },
        notify_backoff=0.05, notify_max_pause=0.2, notify_poll=0.1,
    )  # fmt: skip
    try:
        with ServiceServer(settings) as server:
            await _record_all(server, [_signature(i) for i in range(3)], 10)  # 9 notices
            assert len(up.wait_for(9, timeout=15)) == 9
            assert len(down.wait_for(12, timeout=15)) >= 12  # still trying...
            # ...each anomaly's first notice, again and again: the next ones wait behind it
            assert {r.json()["level"] for r in down.received} == {"REPEAT"}
    finally:
        down.close()
        up.close()
    for key in {r.json()["anomaly_key"] for r in up.received}:
        levels = [r.json()["level"] for r in up.received if r.json()["anomaly_key"] == key]
        assert levels == ["REPEAT", "ESCALATE", "PERMANENT_FIX"]


async def test_a_dead_letter_of_a_channel_no_longer_configured_is_left(
    store_url: str, chat: ChatServer
) -> None:
    """The webhook's URL changed after its notice died: sending it again would reach nobody
    (the old channel's cursor is not read any more), so it stays in the list, and says why."""
    old = Settings(
        store_url=store_url, project_channels=_channels(chat), notify_backoff=0.01,
        notify_attempts=1,
    )  # fmt: skip
    chat.down = 500
    with ServiceServer(old) as server:
        token = server.token("team-a")
        await _record_all(server, [SIG], 3)
        async with server.client(token) as http:

            async def dead() -> bool:
                r = await http.get("/v1/projects/team-a/notices/dead")
                return len(r.json()["letters"]) == 1

            assert await eventually(dead)
    chat.down = None
    moved = Settings(
        store_url=store_url,
        project_channels={"team-a": (WebhookConfig(f"{chat.url}/moved"),)},
    )
    with ServiceServer(moved) as server:
        async with server.client(token) as http:
            r = await http.post("/v1/projects/team-a/notices/dead/retry", json={})
            assert r.status_code == 200
            (letter,) = (await http.get("/v1/projects/team-a/notices/dead")).json()["letters"]
            assert r.json() == {"retried": 0, "left": [letter["notice_id"]]}


async def _record_all(server: ServiceServer, signatures: list[dict[str, str]], n: int) -> None:
    async with server.client(server.token("team-a")) as http:
        for _ in range(n):
            for signature in signatures:
                r = await http.post(
                    "/v1/projects/team-a/occurrences", json={"signature": signature}
                )
                assert r.status_code == 200, r.text


async def test_three_service_processes_send_each_notice_once(
    store_url: str, chat: ChatServer, tmp_path: Path
) -> None:
    """Three `serve` processes on one store, each with its own spool and deliverer, writing
    the same anomalies at once: every notice once, in order for each anomaly."""
    config = tmp_path / "settings.toml"
    config.write_text(
        f'store_url = "{store_url}"\nnotify_backoff = 0.05\nnotify_poll = 0.2\n'
        f'[projects.team-a.notify]\nwebhook = {{ url = "{chat.url}/hook" }}\n'
    )
    env = {"ANOMALY_COUNTER_CONFIG": str(config)}
    places = [tmp_path / f"p{i}" for i in range(3)]
    for place in places:
        place.mkdir()
    with (
        ServeProcess(store_url, places[0], env=env) as one,
        ServeProcess(store_url, places[1], env=env, demo_token=False) as two,
        ServeProcess(store_url, places[2], env=env, demo_token=False) as three,
    ):
        signatures = [_signature(i) for i in range(6)]

        async def write(server: ServeProcess) -> None:
            async with server.client(one.token) as http:
                for _ in range(4):
                    for signature in signatures:
                        r = await http.post(
                            "/v1/projects/team-a/occurrences", json={"signature": signature}
                        )
                        assert r.status_code == 200, r.text

        await asyncio.gather(write(one), write(two), write(three))  # 12 of each anomaly

        async def delivered() -> bool:
            return len(chat.received) >= 18  # 6 anomalies x REPEAT, ESCALATE, PERMANENT_FIX

        assert await eventually(delivered, within=20)
        await asyncio.sleep(1.5)  # nothing more comes
    ids = collections.Counter(r.headers[IDEMPOTENCY_HEADER] for r in chat.received)
    assert len(chat.received) == 18 and len(ids) == 18
    for key in {r.json()["anomaly_key"] for r in chat.received}:
        levels = [r.json()["level"] for r in chat.received if r.json()["anomaly_key"] == key]
        assert levels == ["REPEAT", "ESCALATE", "PERMANENT_FIX"]
