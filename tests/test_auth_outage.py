"""Authentication through an outage: a token keeps the store's last answer for a bounded time,
and the tokens the store vouched for are kept beside the spool (digests only), so a service
restarted while the store is down still takes its known clients' writes onto the spool."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import stat
import time
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from anomaly_counter import AnomalyCounter, Settings
from anomaly_counter.service.known_tokens import FILE_NAME, KnownTokens
from anomaly_counter.stores.base import store_from_url
from anomaly_counter.tokens import TokenRecord, new_token, parse_token

from .conftest import SIG, RedisServer
from .servers import ServeProcess, ServiceServer, eventually, make_token, v1

KEY = AnomalyCounter.hash_signature(SIG)
STORE_TIMEOUT = 0.5
ACK_WITHIN = STORE_TIMEOUT + 0.5  # every acknowledgement during an outage


def _serve(redis: RedisServer, spool: Path, **env: str) -> ServeProcess:
    """``serve`` in a process of its own, configured by environment, with no demo token
    (making one needs the store, and these start during an outage)."""
    settings = {
        "ANOMALY_COUNTER_SPOOL_DIR": str(spool),
        "ANOMALY_COUNTER_STORE_TIMEOUT": str(STORE_TIMEOUT),
        "ANOMALY_COUNTER_START_ON_SPOOL": "true",
    }
    return ServeProcess(redis.url, spool.parent, env={**settings, **env}, demo_token=False)


def _settings(redis: RedisServer, spool: Path, **options: object) -> Settings:
    return Settings(
        store_url=redis.url, store_timeout=STORE_TIMEOUT, spool_dir=str(spool), **options
    )  # type: ignore[arg-type]


async def _timed_write(http: httpx.AsyncClient, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    began = time.monotonic()
    r = await http.post(v1("/occurrences"), json={"signature": SIG}, headers=headers)
    took = time.monotonic() - began
    assert took < ACK_WITHIN, f"answered {r.status_code} in {took:.2f} s"
    return r


def _refused_as_unavailable(r: httpx.Response) -> bool:
    return r.status_code == 503 and r.headers.get("retry-after") is not None


def _known_file(spool: Path) -> dict[str, object]:
    document: dict[str, object] = json.loads((spool / FILE_NAME).read_text())
    return document


def _known_ids(spool: Path) -> set[str]:
    tokens = _known_file(spool)["tokens"]
    assert isinstance(tokens, list)
    return {t["id"] for t in tokens}


def _parts(token: str) -> tuple[str, str]:
    """(id, secret) of a token."""
    parsed = parse_token(token)
    assert parsed is not None
    return parsed


def _token_id(token: str) -> str:
    return _parts(token)[0]


def _stranger() -> str:
    """A well-formed token that no store holds."""
    text, _ = new_token("team-a", 0)
    return text


async def _revoke(settings: Settings, token_id: str) -> None:
    store = store_from_url(settings.store_url, settings)
    try:
        assert await store.revoke_token(token_id)
    finally:
        await store.aclose()


async def test_a_service_restarted_during_an_outage_takes_its_known_clients_writes(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    settings = _settings(durable_redis, spool)
    known, never_seen = make_token(settings, "team-a"), make_token(settings, "team-a")
    stranger = _stranger()
    with _serve(durable_redis, spool) as first:
        async with first.client(known) as http:
            r = await http.post(v1("/occurrences"), json={"signature": SIG})
            assert r.status_code == 200  # the store vouched for the token
    durable_redis.stop()
    with _serve(durable_redis, spool) as second:  # knows no token but by its file
        async with second.client(known) as http:
            for _ in range(5):
                r = await _timed_write(http)
                assert r.status_code == 202 and r.json()["spooled"] is True
            for other in (never_seen, stranger):  # nothing vouches for them: cannot verify
                assert _refused_as_unavailable(await _timed_write(http, other))
            durable_redis.start()

            async def counted() -> bool:
                r = await http.get(v1(f"/anomalies/{KEY}"))
                return r.status_code == 200 and r.json()["count_24h"] == 6

            assert await eventually(counted, within=20)
            r = await http.get(v1("/anomalies"), headers={"Authorization": f"Bearer {never_seen}"})
            assert r.status_code == 200  # the store answers for it again


async def test_a_known_answer_is_kept_no_longer_than_auth_stale_seconds(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    token = make_token(_settings(durable_redis, spool), "team-a")
    with _serve(durable_redis, spool, ANOMALY_COUNTER_AUTH_STALE_SECONDS="2") as server:
        async with server.client(token) as http:
            assert (await http.post(v1("/occurrences"), json={"signature": SIG})).status_code == 200
            verified = time.monotonic()
            durable_redis.stop()
            r = await _timed_write(http)
            assert r.status_code == 202 and time.monotonic() - verified < 2.0
            await asyncio.sleep(2.2 - (time.monotonic() - verified))
            for _ in range(3):
                assert _refused_as_unavailable(await _timed_write(http))  # 503, not 401 or 500
            durable_redis.start()

            async def taken_again() -> bool:
                r = await http.post(v1("/occurrences"), json={"signature": SIG})
                return r.status_code == 200

            assert await eventually(taken_again, within=20)


async def test_the_known_tokens_file_holds_digests_only_readable_by_its_owner(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    settings = _settings(durable_redis, spool)
    writer, reader = make_token(settings, "team-a"), make_token(settings, "team-b", read_only=True)
    with ServiceServer(settings) as server:
        async with server.client(writer) as http:
            assert (await http.post(v1("/occurrences"), json={"signature": SIG})).status_code == 200
            r = await http.get(v1("/anomalies", "team-b"), headers={
                "Authorization": f"Bearer {reader}"})  # fmt: skip
            assert r.status_code == 200
            durable_redis.stop()
            assert (await _timed_write(http)).status_code == 202  # the spool has a record too
    path = spool / FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    tokens = _known_file(spool)["tokens"]
    assert isinstance(tokens, list)
    entries = {t["id"]: t for t in tokens}
    for token, project, read_only in ((writer, "team-a", False), (reader, "team-b", True)):
        token_id, secret = _parts(token)
        entry = entries[token_id]
        assert entry["project"] == project and entry["read_only"] is read_only
        assert entry["digest"] == hashlib.sha256(secret.encode()).hexdigest()
        for file in spool.rglob("*"):
            if file.is_file():
                data = file.read_bytes()
                assert token.encode() not in data and secret.encode() not in data, file.name


async def test_revocation_wins_over_the_known_answer_while_the_store_answers(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    settings = _settings(durable_redis, spool)
    revoked, kept = make_token(settings, "team-a"), make_token(settings, "team-a")
    with ServiceServer(settings) as server:
        for token in (revoked, kept):
            async with server.client(token) as http:
                r = await http.post(v1("/occurrences"), json={"signature": SIG})
                assert r.status_code == 200
    assert _known_ids(spool) == {_token_id(revoked), _token_id(kept)}
    await _revoke(settings, _token_id(revoked))
    with ServiceServer(settings) as server:  # its file vouches for both; the store for one
        async with server.client(revoked) as http:
            r = await http.post(v1("/occurrences"), json={"signature": SIG})
            assert r.status_code == 401
            assert _known_ids(spool) == {_token_id(kept)}  # forgotten on disk too
            durable_redis.stop()
            r = await _timed_write(http)  # not taken in an outage: the store's "unknown" stands
            assert r.status_code in (401, 503), r.status_code  # (cached a few seconds, then 503)
            assert (await _timed_write(http, kept)).status_code == 202


async def test_a_frozen_store_still_acknowledges_known_clients_within_the_store_timeout(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    """A store that does not answer at all: the token's look-up and the write would each wait
    the whole store timeout; the known answer is taken after a short wait instead."""
    spool = tmp_path / "spool"
    settings = _settings(durable_redis, spool)
    token = make_token(settings, "team-a")
    with ServiceServer(settings) as server:
        async with server.client(token) as http:
            assert (await http.post(v1("/occurrences"), json={"signature": SIG})).status_code == 200
    assert durable_redis.process is not None
    durable_redis.process.send_signal(signal.SIGSTOP)
    with ServiceServer(settings) as server:  # nothing cached: each token is looked up
        async with server.client(token) as http:
            for _ in range(4):
                r = await _timed_write(http)
                assert r.status_code == 202
            assert _refused_as_unavailable(await _timed_write(http, _stranger()))
        durable_redis.process.send_signal(signal.SIGCONT)

        async with server.client(token) as http:

            async def counted() -> bool:
                r = await http.get(v1(f"/anomalies/{KEY}"))
                return r.status_code == 200 and r.json()["count_24h"] == 5

            assert await eventually(counted, within=20)


def _record(n: int, project: str = "team-a") -> TokenRecord:
    return TokenRecord(f"{n:016x}", project, hashlib.sha256(str(n).encode()).hexdigest(), 0)


async def _confirm(known: KnownTokens, record: TokenRecord) -> None:
    known.confirm(record)
    await known.save()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_known_tokens_keep_the_recently_used_within_their_bound(tmp_path: Path) -> None:
    clock = Clock()
    known = KnownTokens(tmp_path, 60.0, max_tokens=3, clock=clock)
    for n in range(3):
        await _confirm(known, _record(n))
    assert known.answer(_record(0).token_id) is not None  # used: the most recent now
    await _confirm(known, _record(3))  # one too many: the least recently used goes
    assert len(known) == 3 and known.answer(_record(1).token_id) is None
    clock.now += 59.9
    assert known.answer(_record(0).token_id) == _record(0)
    again = KnownTokens(tmp_path, 60.0, max_tokens=3, clock=clock)  # as a restart reads it
    assert {n for n in range(4) if again.answer(_record(n).token_id)} == {0, 2, 3}
    clock.now += 0.2
    assert again.answer(_record(0).token_id) is None  # past the bound
    assert KnownTokens(tmp_path, 60.0, clock=clock).answer(_record(0).token_id) is None


async def test_known_tokens_are_not_rewritten_for_every_confirmation(tmp_path: Path) -> None:
    clock = Clock()
    known = KnownTokens(tmp_path, 86_400.0, clock=clock)
    await _confirm(known, _record(1))
    path = tmp_path / FILE_NAME
    written = path.stat().st_mtime_ns, path.read_bytes()
    clock.now += 60
    await _confirm(known, _record(1))  # the same answer a minute later: not written
    assert (path.stat().st_mtime_ns, path.read_bytes()) == written
    await _confirm(known, _record(1, "team-b"))  # a changed answer: written at once
    assert b"team-b" in path.read_bytes()
    known.forget(_record(1).token_id)
    await known.save()
    assert _known_file(tmp_path)["tokens"] == []


@pytest.mark.parametrize("damage", ["garbage", "flipped", "unreadable"])
async def test_a_damaged_known_tokens_file_is_ignored_with_a_warning(
    tmp_path: Path, damage: str
) -> None:
    clock = Clock()
    known = KnownTokens(tmp_path, 86_400.0, clock=clock)
    await _confirm(known, _record(1))
    path = tmp_path / FILE_NAME
    if damage == "garbage":
        path.write_bytes(b"\x00\xffnot json")
    elif damage == "flipped":  # still JSON, another project: the checksum says so
        path.write_bytes(path.read_bytes().replace(b"team-a", b"team-c"))
    else:
        path.unlink()
        path.mkdir()
    with capture_logs() as logs:
        again = KnownTokens(tmp_path, 86_400.0, clock=clock)
    assert len(again) == 0
    assert [e["event"] for e in logs] == ["known_tokens_ignored"]
    if damage != "unreadable":
        await _confirm(again, _record(2))  # written afresh
        assert _known_ids(tmp_path) == {_record(2).token_id}


async def test_a_file_that_cannot_be_written_leaves_the_answers_standing(tmp_path: Path) -> None:
    clock = Clock()
    (tmp_path / FILE_NAME).mkdir()  # where the file should go: nothing can replace it
    with capture_logs() as logs:
        known = KnownTokens(tmp_path, 86_400.0, clock=clock)
        await _confirm(known, _record(1))
        await _confirm(known, _record(2))  # tried again later, not at every change
    assert [e["event"] for e in logs] == ["known_tokens_ignored", "known_tokens_unwritable"]
    assert known.answer(_record(1).token_id) == _record(1)
    assert os.listdir(tmp_path) == [FILE_NAME]  # no temporary file left
    (tmp_path / FILE_NAME).rmdir()
    clock.now += 31
    await known.save()
    assert _known_ids(tmp_path) == {_record(1).token_id, _record(2).token_id}
