"""``import reference`` on hostile input: junk under the reference's key names is skipped and
reported (never a traceback), absurd counts are bounded, and a ``--from`` URL that is wrong,
unreachable or not Redis is told in one line with exit 2 or 3, naming the source only."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis

from anomaly_counter.errors import ConfigurationError, InvalidInputError, SourceUnavailableError
from anomaly_counter.importers import reference as importer
from anomaly_counter.importers.reference import import_reference

from . import reference_design
from .conftest import RedisServer, free_port
from .servers import ChatServer
from .test_import_reference import KEYS, SIGNATURES, SOURCE_PROJECT, _cli, _ours

P = f"{SOURCE_PROJECT}:anomaly"
TAIPEI = ZoneInfo("Asia/Taipei")  # (year 1 at midnight there is in year 0 in UTC)


async def _with_junk(redis: RedisServer, now: datetime) -> str:
    """One anomaly recorded by the reference itself, with junk beside it under its key names;
    the URL of that source."""
    url = f"redis://127.0.0.1:{redis.port}/1"
    client = aioredis.Redis.from_url(url)
    module = reference_design.load()
    ref = module.AnomalyCounter(client, SOURCE_PROJECT)
    busy = KEYS["busy"]
    reference_design.set_now(module, now - timedelta(hours=1))
    await ref.record_anomaly(SIGNATURES["busy"])
    await ref.record_repair_attempt(busy, "restart_pod", True)
    await ref.record_disposition(busy, "human_approved")
    await client.zadd(f"{P}:timeline:{busy}", {"inf": float("inf"), "huge": 1e300})
    await client.zadd(f"{P}:timeline:{'2' * 16}", {"x": float("inf")})  # junk alone
    # a key name that is not UTF-8 (it stopped every project's import, dry runs too)
    await client.zadd(f"{P}:timeline:".encode() + b"\xff\xfe", {"x": now.timestamp()})
    await client.hset(f"{P}:disposition:{busy}", b"\xff\xfe", 3)
    await client.hset(f"{P}:disposition:{busy}", "auto_repair", -3)
    await client.hset(f"{P}:disposition:{busy}", "manual_resolved", "many")
    year_one = {"action": "scale_up", "success": True, "timestamp": "0001-01-01T00:00:00"}
    await client.lpush(f"{P}:repair_history:{busy}", json.dumps(year_one))
    await client.incr(f"{P}:repair_count:{busy}")
    await client.aclose()
    return url


@pytest.mark.sqlite
async def test_junk_under_the_reference_keys_is_skipped_and_reported(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    url = await _with_junk(fresh_redis, now)
    ours = _ours(f"sqlite:///{tmp_path}/counter.db", "imported", now)
    try:
        report = await import_reference(
            ours, url, source_project=SOURCE_PROJECT, now=now, zone=TAIPEI
        )
        assert dict(report.skipped) == {
            ("occurrences", importer.BAD_EVENTS): 3,
            ("dispositions", importer.UNKNOWN_TYPES): 3,
            ("dispositions", importer.BAD_COUNTS): 2,
            ("repairs", importer.BAD_REPAIRS): 1,
            ("anomalies", importer.BAD_KEY): 1,
        }
        assert report.imported["occurrences"] == 1 and report.imported["repairs"] == 1
        assert all(n >= 0 for n in [*report.imported.values(), *report.present.values()])
        frequency = await ours.get_frequency(KEYS["busy"])
        assert frequency is not None and frequency.count_1h == 1
        assert (await ours.get_disposition_stats(KEYS["busy"]))["total"] == 1
    finally:
        await ours.aclose()
    cli = _cli("--store", f"sqlite:///{tmp_path}/cli.db", "--project", "p", "import",
               "reference", "--from", url, "--source-project", SOURCE_PROJECT,
               "--source-timezone", "Asia/Taipei")  # fmt: skip
    assert cli.returncode == 0 and not cli.stderr, cli.stderr
    assert "already there" in cli.stdout and "-3" not in cli.stdout
    assert importer.BAD_EVENTS in cli.stdout and importer.BAD_COUNTS in cli.stdout


@pytest.mark.sqlite
async def test_an_absurd_disposition_count_is_bounded(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    url = f"redis://127.0.0.1:{fresh_redis.port}/1"
    client = aioredis.Redis.from_url(url)
    module = reference_design.load()
    reference_design.set_now(module, now - timedelta(hours=1))
    await module.AnomalyCounter(client, SOURCE_PROJECT).record_disposition(
        KEYS["busy"], "auto_repair"
    )
    await client.hset(f"{P}:disposition:{KEYS['busy']}", "auto_repair", 100_000_000)
    await client.aclose()
    ours = _ours(f"sqlite:///{tmp_path}/counter.db", "imported", now)
    try:
        started = time.monotonic()
        report = await import_reference(
            ours, url, source_project=SOURCE_PROJECT, now=now, dry_run=True
        )
        assert time.monotonic() - started < 2  # (it planned 100 million writes: 1.5 GB)
    finally:
        await ours.aclose()
    assert report.imported["dispositions"] == importer.MAX_DISPOSITIONS
    past = 100_000_000 - importer.MAX_DISPOSITIONS
    assert report.skipped == {("dispositions", importer.PAST_BOUND): past}


async def test_a_wrong_source_url_is_told_as_a_store_url_is(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    ours = _ours(f"sqlite:///{tmp_path}/never-made.db", "p", datetime.now(UTC))
    port = fresh_redis.port
    for url, words in (
        ("redis://127.0.0.1:99999/0", "Port out of range"),
        ("redis://[::1", "Invalid IPv6 URL"),
        (f"redis://127.0.0.1:{port}/0?socket_timeout=abc", "socket_timeout"),
        (f"redis://127.0.0.1:{port}/abc", "must be a database number"),  # (not db 0)
        ("http://127.0.0.1/", "not a Redis URL"),
    ):
        with pytest.raises(ConfigurationError, match=words):
            await import_reference(ours, url, dry_run=True, target_empty=True)
    with pytest.raises(SourceUnavailableError, match=re.escape("Redis at redis://127.0.0.1:1/0 ")):
        await import_reference(ours, "redis://127.0.0.1:1/0", dry_run=True, target_empty=True)
    chat = ChatServer()
    try:
        http = f"redis://127.0.0.1:{chat.server.server_address[1]}/0"
        with pytest.raises(InvalidInputError, match="does not speak Redis"):
            await import_reference(ours, http, dry_run=True, target_empty=True)
    finally:
        chat.close()
        await ours.aclose()


def test_the_command_line_tells_a_wrong_source_in_one_line(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/k.db"
    common = ("--store", store, "--project", "p", "import", "reference", "--from")
    chat = ChatServer()
    try:
        cases = (
            ("redis://127.0.0.1:99999/0", 2, "Port out of range"),
            ("redis://[::1", 2, "Invalid IPv6 URL"),
            (f"redis://127.0.0.1:{fresh_redis.port}/0?socket_timeout=abc", 2, "socket_timeout"),
            (f"redis://127.0.0.1:{fresh_redis.port}/abc", 2, "must be a database number"),
            (f"redis://127.0.0.1:{free_port()}/0", 3, "the reference's Redis at"),
            (f"redis://127.0.0.1:{chat.server.server_address[1]}/0", 2, "does not speak Redis"),
        )
        for url, status, words in cases:
            done = _cli(*common, url)
            assert (done.returncode, done.stdout) == (status, ""), (url, done.stderr)
            assert words in done.stderr and done.stderr.count("\n") == 1, (url, done.stderr)
            assert "sqlite" not in done.stderr and "store unavailable" not in done.stderr
    finally:
        chat.close()
    assert not (tmp_path / "k.db").exists()
