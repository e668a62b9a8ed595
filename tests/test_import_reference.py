"""``import reference``: history written by the reference design's own code into a real Redis,
imported into each store, then every answer of ours compared with the reference's own answer
on the same data (both APIs have the same names); again: nothing changes; a dry run writes
nothing. What cannot be equal (the reference's layout lost it, or it is one of its defects) is
named in ``DIFFERENCES`` and checked to differ exactly so (docs/import-reference.md)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from anomaly_counter import AnomalyCounter, Settings
from anomaly_counter.importers import reference as importer
from anomaly_counter.importers.reference import import_reference
from anomaly_counter.limits import Limits
from anomaly_counter.signature import hash_signature

from . import reference_design
from .conftest import RedisServer

SOURCE_PROJECT = "teamx"
ACTIONS = ("restart_pod", "scale_up", "rollback", "never_tried")
DISPOSITIONS = ("auto_repair", "human_approved", "manual_resolved", "cold_start_trust",
                "timeout_ignored")  # fmt: skip
SIGNATURES = {
    "busy": {"alert_name": "PodCrashLoopBackOff", "service": "api", "namespace": "prod",
             "error_type": "OOMKilled", "pod": "api-7f9c"},
    # the aliases: the same key from both libraries
    "repairs": {"alertname": "KubeJobFailed", "job": "backup", "namespace": "ops",
                "reason": "BackoffLimitExceeded"},
    "fixed": {"alert_name": "DiskPressure", "service": "db", "namespace": "prod"},
    "expired": {"alert_name": "NodeNotReady", "service": "kubelet", "namespace": "kube-system"},
    "old": {"alert_name": "CertExpiring", "service": "ingress", "namespace": "prod"},
    "gone": {"alert_name": "BackupMissed", "service": "backup", "namespace": "ops"},
    "legacy": {"alert_name": "HighLatency", "service": "web", "namespace": "prod"},
    "shadowed": {"alert_name": "QueueBacklog", "service": "worker", "namespace": "prod"},
}  # fmt: skip
KEYS = {name: hash_signature(signature) for name, signature in SIGNATURES.items()}


@dataclass
class Source:
    """The reference design over its Redis (db 1 of the test's server), and its data's now."""

    module: types.ModuleType
    counter: Any  # the reference's AnomalyCounter, of project SOURCE_PROJECT
    client: aioredis.Redis
    url: str
    now: datetime

    def at(self, moment: datetime) -> Any:
        reference_design.set_now(self.module, moment)
        return self.counter


async def _record(source: Source, counter: Any, name: str, *ago: timedelta) -> None:
    for offset in ago:
        source.at(source.now - offset)
        await counter.record_anomaly(SIGNATURES[name])


async def _build(source: Source) -> None:
    """The reference's history, made by its own methods at chosen times."""
    ref, now = source.counter, source.now
    d, h, m = (
        (lambda n: timedelta(days=n)),
        (lambda n: timedelta(hours=n)),
        (lambda n: timedelta(minutes=n)),
    )
    # two events in the same instant (30 minutes ago): one member of its set
    await _record(source, ref, "busy", d(20), d(6), d(3), h(20), h(5), m(50), m(30), m(30), m(10))
    for kind in ("human_approved", "human_approved", "manual_resolved", "cold_start_trust",
                 "timeout_ignored", "auto_repair"):  # fmt: skip
        await ref.record_disposition(KEYS["busy"], kind)
    await _record(source, ref, "repairs", d(2), d(1))
    for i in range(105):  # its history keeps the last 100; its counter counts all
        source.at(now - d(2) + m(10 * i))
        action = "restart_pod" if i % 2 else "scale_up"
        ok = i % 10 == 1 if action == "restart_pod" else i % 8 != 0
        await ref.record_repair_attempt(KEYS["repairs"], action, ok)
    await ref.record_repair_attempt(KEYS["repairs"], "rollback", True)
    await _record(source, ref, "fixed", d(10), d(5))
    source.at(now - d(3))
    await ref.mark_permanent_fix_applied(KEYS["fixed"], "resized the volume")
    await _record(source, ref, "fixed", d(2), h(1))  # after the fix: a regression for us
    await ref.record_disposition(KEYS["fixed"], "manual_resolved")
    await _record(source, ref, "expired", d(4), h(2))
    for _ in range(2):
        await ref.record_disposition(KEYS["expired"], "cold_start_trust")
    # its metadata expires (35 days after its first event, in the reference)
    await source.client.pexpire(f"{SOURCE_PROJECT}:anomaly:metadata:{KEYS['expired']}", 1)
    await _record(source, ref, "old", d(40), d(31), d(29))  # the reference trims at 30 days
    await _record(source, ref, "gone", d(45), d(33))  # only when it records: both stay
    # Legacy keys: the reference's code under a project "legacy", its keys renamed to the
    # unprefixed names they had before the prefix (the layout its fallbacks read).
    old = source.module.AnomalyCounter(source.client, project_id="legacy")
    await _record(source, old, "legacy", d(3), h(2), h(1))
    for ok in (False, True, False):
        await old.record_repair_attempt(KEYS["legacy"], "restart_pod", ok)
    await old.record_disposition(KEYS["legacy"], "human_approved")
    await _record(source, old, "shadowed", d(6), d(5), d(4), d(3), d(2))
    for _ in range(2):
        await old.record_repair_attempt(KEYS["shadowed"], "scale_up", True)
    await old.record_disposition(KEYS["shadowed"], "auto_repair")
    async for name in source.client.scan_iter(match="legacy:*"):
        await source.client.rename(name, name[len(b"legacy:") :])
    # ... and the same anomaly in the prefixed keys: those are what the reference reads
    await _record(source, ref, "shadowed", m(90), m(40))
    await ref.record_disposition(KEYS["shadowed"], "manual_resolved")
    expiring = f"{SOURCE_PROJECT}:anomaly:metadata:{KEYS['expired']}"
    while await source.client.exists(expiring):  # noqa: ASYNC110 (Redis tells no event of it)
        await asyncio.sleep(0.005)
    source.at(now)


@pytest.fixture
async def source(fresh_redis: RedisServer) -> AsyncIterator[Source]:
    module = reference_design.load()
    url = f"redis://127.0.0.1:{fresh_redis.port}/1"  # (the stores under test use db 0)
    client = aioredis.Redis.from_url(url)
    now = datetime.now(UTC).replace(microsecond=0)
    made = Source(module, module.AnomalyCounter(client, SOURCE_PROJECT), client, url, now)
    await _build(made)
    yield made
    await client.aclose()


def _ours(store_url: str, project: str, now: datetime) -> AnomalyCounter:
    settings = Settings(store_url=store_url)
    return AnomalyCounter.from_url(store_url, project, settings=settings, clock=lambda: now)


# What the reference answers that the import cannot give back, and how ours differs:
DIFFERENCES = {
    # its counter counted 6 attempts more than its history (the last 100) still tells apart
    ("repairs", "auto_repair_count"): lambda theirs, mine, base: mine == theirs - 6,
    # it still holds an event 40 days old (it trims only when it records): past our retention
    ("old", "first_seen"): lambda theirs, mine, base: (
        (theirs, mine) == (base - timedelta(days=40), base - timedelta(days=29))
    ),
}


def _aware(moment: datetime) -> datetime:
    return moment.astimezone(UTC)  # (the reference's times are naive, local)


def _with(stats: dict[str, Any], more: tuple[int, int]) -> dict[str, Any]:
    total, success = stats["total"] + more[0], stats["success"] + more[1]
    return {**stats, "total": total, "success": success, "success_rate": success / total}


async def _compare(
    ref: Any,
    ours: AnomalyCounter,
    base: datetime,
    dropped: dict[tuple[str, str], tuple[int, int]] | None = None,
) -> None:
    """Every answer both define, anomaly by anomaly; differences only as DIFFERENCES says
    (``base``: the time the history was made at), and ``dropped``: attempts (total, success)
    of an anomaly's action that the reference's history let go of (it keeps the last 100)
    since they were imported, which ours still counts (every attempt of 30 days)."""
    dropped = dropped or {}
    for name, key in KEYS.items():
        theirs, mine = await ref.get_frequency(key), await ours.get_frequency(key)
        if name == "gone":  # only events past 30 days: it answers zeros, we know none
            assert mine is None and (theirs.count_30d, theirs.escalation_level) == (0, None)
        else:
            assert theirs is not None and mine is not None, name
            for figure in ("count_1h", "count_24h", "count_7d", "count_30d", "escalation_level",
                           "permanent_fix_applied", "auto_repair_count", "human_approved_count",
                           "manual_resolved_count", "cold_start_trust_count",
                           "total_resolution_count", "first_seen", "last_seen"):  # fmt: skip
                a, b = getattr(theirs, figure), getattr(mine, figure)
                if isinstance(a, datetime):
                    a, b = _aware(a), b
                differs = DIFFERENCES.get((name, figure))
                assert differs(a, b, base) if differs else a == b, (name, figure, a, b)
        mine_dispositions = await ours.get_disposition_stats(key)
        del mine_dispositions["timeout_ignored"]  # (counted by both, told by ours only: D8)
        assert await ref.get_disposition_stats(key) == mine_dispositions, name
        theirs_stats = await ref.get_all_repair_stats(key)
        for (dropped_from, action), more in dropped.items():
            if dropped_from == name:
                theirs_stats[action] = _with(theirs_stats[action], more)
        assert theirs_stats == {
            action: {k: stats[k] for k in ("total", "success", "success_rate")}
            for action, stats in (await ours.get_all_repair_stats(key)).items()
        }, name
        for action in ACTIONS:
            rate = await ours.get_repair_success_rate(key, action)
            theirs_rate = await ref.get_repair_success_rate(key, action)
            if (name, action) in dropped:
                theirs_rate = _with(theirs_rate, dropped[(name, action)])
            assert theirs_rate == {
                k: rate[k] for k in ("action", "total", "success", "success_rate")
            }, (name, action)
            assert await ref.should_skip_action(key, action) == await ours.should_skip_action(
                key, action
            ), (name, action)
    # The project's dispositions: the reference sums its prefixed hashes only once any exists
    # (D7), so it leaves out the anomaly known by legacy keys alone; we count that one too.
    summary, rows = await ref.get_all_disposition_stats()
    our_summary, our_rows = await ours.get_all_disposition_stats()
    legacy = await ref.get_disposition_stats(KEYS["legacy"])
    assert {k: summary[k] + legacy[k] for k in summary} == {k: our_summary[k] for k in summary}
    theirs_by_key = {row["anomaly_key"]: row for row in rows}
    mine_by_key = {row["anomaly_key"]: {k: row[k] for k in rows[0]} for row in our_rows}
    # ... and it finds an alert name only in the metadata under the prefix it scanned
    assert theirs_by_key.pop(KEYS["shadowed"])["alert_name"] == ""
    assert mine_by_key.pop(KEYS["shadowed"])["alert_name"] == "QueueBacklog"
    assert mine_by_key.pop(KEYS["legacy"])["alert_name"] == "HighLatency"
    assert theirs_by_key == mine_by_key


async def _state(ours: AnomalyCounter) -> dict[str, Any]:
    """Everything our store tells of the imported anomalies, timelines included."""
    seen: dict[str, Any] = {"all": await ours.get_all_disposition_stats()}
    for key in KEYS.values():
        frequency = await ours.get_frequency(key)
        seen[key] = (
            frequency.to_dict() if frequency else None,
            await ours.get_all_repair_stats(key),
            await ours.get_disposition_stats(key),
            await ours.get_repair_history(key),
            [e.to_dict() for e in await ours.timeline(key)],
            await ours.history(key, "30d"),
        )
    return seen


async def test_import_answers_as_the_reference_and_again_changes_nothing(
    source: Source, store_url: str
) -> None:
    now = source.now
    ours = _ours(store_url, "imported", now)
    try:
        report = await import_reference(ours, source.url, source_project=SOURCE_PROJECT, now=now)
        assert report.found == len(KEYS)
        assert dict(report.imported) == {"anomalies": 7, "occurrences": 22, "repairs": 105,
                                         "dispositions": 11, "fixes": 1}  # fmt: skip
        assert dict(report.skipped) == {
            ("occurrences", "older than 30 days: past our retention"): 4,
            ("repairs", "counted by the reference but no longer in its history (it keeps the"
             " last 100)"): 6,
        }  # fmt: skip
        assert report.notes["anomalies without labels (metadata expired): stored under their"
                            " key, no signature"] == 1  # fmt: skip
        await _compare(source.counter, ours, now)
        fixed = await ours.get_frequency(KEYS["fixed"])
        assert fixed is not None and fixed.regressed  # it came back after the fix
        assert fixed.permanent_fix is not None
        assert fixed.permanent_fix.description == "resized the volume"
        assert fixed.permanent_fix.at == now - timedelta(days=3)
        unlabeled = await ours.get_frequency(KEYS["expired"])
        assert unlabeled is not None and unlabeled.signature == {}
        assert (await ours.get_frequency(KEYS["busy"])).signature == SIGNATURES["busy"]  # type: ignore[union-attr]
        assert (await ours.outbox_stats()).depth == 0  # history: no notices

        before = await _state(ours)
        again = await import_reference(ours, source.url, source_project=SOURCE_PROJECT, now=now)
        assert sum(again.imported.values()) == 0
        assert dict(again.present) == {"anomalies": 7, "occurrences": 22, "repairs": 105,
                                       "dispositions": 11, "fixes": 1}  # fmt: skip
        assert await _state(ours) == before
    finally:
        await ours.aclose()


async def test_a_later_import_past_the_dedup_horizon_adds_only_what_is_new(
    source: Source, store_url: str
) -> None:
    now = source.now
    first = _ours(store_url, "imported", now)
    await import_reference(first, source.url, source_project=SOURCE_PROJECT, now=now)
    await first.aclose()
    # The reference keeps running for 8 days (past our 7-day dedup horizon: the ids of the
    # first import may be forgotten), then the import runs again.
    later = now + timedelta(days=8)
    ref = source.at(later - timedelta(minutes=20))
    await ref.record_anomaly(SIGNATURES["busy"])
    await ref.record_repair_attempt(KEYS["repairs"], "rollback", False)
    await ref.record_disposition(KEYS["fixed"], "human_approved")
    source.at(later)
    ours = _ours(store_url, "imported", later)
    try:
        report = await import_reference(ours, source.url, source_project=SOURCE_PROJECT, now=later)
        assert dict(report.imported) == {"anomalies": 3, "occurrences": 1, "repairs": 1,
                                         "dispositions": 1, "fixes": 0}  # fmt: skip
        # the reference's history let its oldest attempt (a successful scale_up) go
        await _compare(source.counter, ours, now, dropped={("repairs", "scale_up"): (1, 1)})
        before = await _state(ours)
        again = await import_reference(ours, source.url, source_project=SOURCE_PROJECT, now=later)
        assert sum(again.imported.values()) == 0
        assert await _state(ours) == before
    finally:
        await ours.aclose()


@pytest.mark.sqlite
async def test_a_dry_run_reports_the_same_and_writes_nothing(
    source: Source, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/counter.db"
    ours = _ours(url, "imported", source.now)
    try:
        dry = await import_reference(
            ours, source.url, source_project=SOURCE_PROJECT, now=source.now, dry_run=True
        )
        assert [await ours.get_frequency(key) for key in KEYS.values()] == [None] * len(KEYS)
        assert (await ours.get_all_disposition_stats())[1] == []
        done = await import_reference(
            ours, source.url, source_project=SOURCE_PROJECT, now=source.now
        )
        assert dry.to_dict() == {**done.to_dict(), "dry_run": True}
    finally:
        await ours.aclose()


@pytest.mark.sqlite
async def test_a_second_import_keeps_the_unlabeled_note(source: Source, tmp_path: Path) -> None:
    ours = _ours(f"sqlite:///{tmp_path}/counter.db", "imported", source.now)
    try:
        first = await import_reference(
            ours, source.url, source_project=SOURCE_PROJECT, now=source.now
        )
        again = await import_reference(
            ours, source.url, source_project=SOURCE_PROJECT, now=source.now
        )
    finally:
        await ours.aclose()
    assert first.notes[importer.UNLABELED] == 1
    assert again.notes == first.notes and sum(again.imported.values()) == 0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "anomaly_counter.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=os.environ)


@pytest.mark.sqlite
def test_the_command_line(source: Source, tmp_path: Path) -> None:
    db = tmp_path / "counter.db"
    store = f"sqlite:///{db}"
    common = ("--store", store, "--project", "payments", "import", "reference", "--from",
              source.url, "--source-project", SOURCE_PROJECT)  # fmt: skip
    dry = _cli(*common, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "Dry run: nothing was written." in dry.stdout and not db.exists()
    assert "repair attempts          105              0" in dry.stdout
    done = _cli(*common, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["project"] == "payments" and report["imported"]["occurrences"] == 22
    again = json.loads(_cli("--json", *common).stdout)
    assert sum(again["imported"].values()) == 0
    wrong = _cli(*common[:6], "--from", "http://example.invalid/")
    assert wrong.returncode == 2 and "not a Redis URL" in wrong.stderr
    down = _cli(*common[:6], "--from", "redis://127.0.0.1:1/0")
    assert down.returncode == 3 and "cannot be read" in down.stderr


@pytest.mark.sqlite
async def test_what_is_not_imported_is_reported(fresh_redis: RedisServer, tmp_path: Path) -> None:
    module = reference_design.load()
    url = f"redis://127.0.0.1:{fresh_redis.port}/1"
    client = aioredis.Redis.from_url(url)
    now = datetime.now(UTC).replace(microsecond=0)
    project = "a*[x]"  # its keys' prefix, as a SCAN pattern, would also match "abcx:..."
    ref = module.AnomalyCounter(client, project)
    reference_design.set_now(module, now - timedelta(hours=1))
    await module.AnomalyCounter(client, "abcx").record_anomaly(SIGNATURES["legacy"])
    busy, fixed = KEYS["busy"], KEYS["fixed"]
    await ref.record_anomaly(SIGNATURES["busy"])
    for action in ("restart_pod", "restart_pod", "restart_pod", "scale_up", "scale_up",
                   "rollback"):  # fmt: skip
        await ref.record_repair_attempt(busy, action, True)
    await client.lpush(f"{project}:anomaly:repair_history:{busy}", "not json")
    await ref.record_disposition(busy, "human_approved")
    await client.hincrby(f"{project}:anomaly:disposition:{busy}", "surprise", 2)
    await ref.record_anomaly(SIGNATURES["repairs"])
    await ref.mark_permanent_fix_applied(fixed, "resized")  # a fix alone, its metadata gone:
    await client.delete(f"{project}:anomaly:metadata:{fixed}")  # timed by its flag's lifetime
    await ref.record_repair_attempt("f" * 16, "restart_pod", False)  # one anomaly too many
    await client.set(f"{project}:anomaly:timeline:{'0' * 16}", "not a sorted set")
    await client.hset(f"{project}:anomaly:metadata:{'1' * 16}", "signature", "{}")
    await client.aclose()
    store_url = f"sqlite:///{tmp_path}/counter.db"
    settings = Settings(store_url=store_url, limits=Limits(max_anomalies=3, max_actions=2))
    ours = AnomalyCounter.from_url(store_url, "imported", settings=settings, clock=lambda: now)
    try:
        report = await import_reference(ours, url, source_project=project, now=now)
        assert report.found == 6
        assert dict(report.skipped) == {
            ("anomalies", importer.UNREADABLE): 1,
            ("anomalies", importer.METADATA_ONLY): 1,
            ("anomalies", importer.REFUSED): 1,
            ("repairs", importer.BAD_REPAIRS): 1,
            ("repairs", importer.MAX_ACTIONS): 1,
            ("dispositions", importer.UNKNOWN_TYPES): 2,
        }
        assert await ours.get_frequency(KEYS["legacy"]) is None  # (of project abcx)
        assert set(await ours.get_all_repair_stats(busy)) == {"restart_pod", "scale_up"}
        assert (await ours.get_disposition_stats(busy))["total"] == 1
        marked = await ours.get_frequency(KEYS["repairs"])
        assert marked is not None and not marked.permanent_fix_applied
        stored = await ours.store.read("imported", [fixed], 0, int(now.timestamp() * 1000))
        assert stored[0] is not None and stored[0].fix_description == importer.NO_DESCRIPTION
        assert abs(stored[0].fix_at_ms - now.timestamp() * 1000) < 60_000  # type: ignore[operator]
    finally:
        await ours.aclose()


def test_the_anomaly_key_is_the_references() -> None:
    """Occurrences are imported under the reference's keys: ours are the same function."""
    module = reference_design.load()
    odd = [{}, {"alertname": "X"}, {"alert_name": "X", "alertname": "Y", "job": "j"},
           {"alert_name": "Überlast", "service": "日本", "namespace": 'q"uote\\'},
           {"alert_name": 5, "service": None, "reason": 1.5, "error_type": True}]  # fmt: skip
    for signature in [*SIGNATURES.values(), *odd]:
        assert module.AnomalyCounter.hash_signature(signature) == hash_signature(signature)
