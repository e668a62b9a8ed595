"""Deleting an anomaly and a whole project (docs/delete.md), on SQLite, Redis and Cluster: the
store is read whole, as a plain client sees it (every key of the Redis servers, every row of
the SQLite file), before and after. Nothing of the deleted is left, and everything else is as
it was, byte for byte (the shared indexes less its entries; the day summary less what it had
put there). Then the command line (its confirmation) and the API (its admin token)."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import sqlite3
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from anomaly_counter import AnomalyCounter, LimitExceededError
from anomaly_counter.errors import AmbiguousAnomalyError, AnomalyNotFoundError
from anomaly_counter.limits import Limits
from anomaly_counter.model import Occurrence
from anomaly_counter.outbox import DeadLetter, Lease, OutboxEntry, Settlement
from anomaly_counter.service.known_tokens import FILE_NAME, KnownTokens
from anomaly_counter.settings import WebhookConfig
from anomaly_counter.stores.base import Store, encode_part, shard_of
from anomaly_counter.tokens import new_token

from .conftest import Clock, CounterFactory
from .servers import ServiceServer, make_token, v1

LABELS = {"service": "api", "namespace": "prod", "reason": "OOMKilled"}
VICTIM_SIG = {"alertname": "VictimAlert", **LABELS, "pod": "victim-pod-1"}
VICTIM = AnomalyCounter.hash_signature(VICTIM_SIG)
SLOT = timedelta(minutes=5)


def _sig(name: str) -> dict[str, str]:
    return {"alertname": name, **LABELS}


def _neighbour() -> dict[str, str]:
    """An anomaly in the victim's shard on Redis (its keys and index entries live beside the
    victim's): sharing every label but the alert name."""
    for i in range(1_000):
        sig = _sig(f"Neighbour{i}")
        if shard_of(AnomalyCounter.hash_signature(sig), 16) == shard_of(VICTIM, 16):
            return sig
    raise AssertionError("no neighbour")


NEIGHBOUR_SIG = _neighbour()
NEIGHBOUR = AnomalyCounter.hash_signature(NEIGHBOUR_SIG)


def _settings(tmp_path: Path, project: str = "team-a") -> dict[str, Any]:
    """A project that keeps notices (a channel nobody sends to) and spools (write marks)."""
    return {
        "project_channels": {project: (WebhookConfig("http://127.0.0.1:9/h"),)},
        "spool_dir": str(tmp_path / f"spool-{project}"),
    }


# -- the store, read whole ----------------------------------------------------------------------


Dump = dict[Any, Any]


def _redis_clients(store_url: str, request: pytest.FixtureRequest) -> list[redis.Redis]:
    if store_url.startswith("redis+cluster"):
        cluster = request.getfixturevalue("fresh_cluster")
        clients = [cluster.client(port) for port in cluster.ports]
        return [c for c in clients if c.execute_command("ROLE")[0] == b"master"]
    return [redis.Redis(port=urlsplit(store_url).port)]


def _dump_redis(clients: list[redis.Redis]) -> Dump:
    """Every key and its value (not its lifetime), as a plain client reads them."""
    out: Dump = {}
    for client in clients:
        for key in client.scan_iter(count=1_000):
            kind = client.type(key)
            value: Any
            if kind == b"string":
                value = client.get(key)
            elif kind == b"hash":
                value = client.hgetall(key)
            elif kind == b"list":
                value = client.lrange(key, 0, -1)
            elif kind == b"zset":
                value = client.zrange(key, 0, -1, withscores=True)
            elif kind == b"stream":
                value = client.xrange(key)
            else:
                raise AssertionError(f"a key of type {kind!r}: {key!r}")
            out[key] = (kind, value)
    return out


def _dump_sqlite(store_url: str) -> Dump:
    """Every row of every table, by table (with the index of its project column)."""
    db = sqlite3.connect(urlsplit(store_url).path)
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out: Dump = {}
        for table in tables:
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            rows = db.execute(f"SELECT * FROM {table}").fetchall()
            where = columns.index("project") if "project" in columns else None
            out[table] = (where, sorted(rows, key=repr))
        return out
    finally:
        db.close()


class Reader:
    """The store of a test read whole: Redis keys, or SQLite rows."""

    def __init__(self, store_url: str, request: pytest.FixtureRequest) -> None:
        self.sqlite = store_url.startswith("sqlite")
        self.url = store_url
        self.clients = [] if self.sqlite else _redis_clients(store_url, request)

    def dump(self) -> Dump:
        return _dump_sqlite(self.url) if self.sqlite else _dump_redis(self.clients)

    def close(self) -> None:
        for client in self.clients:
            client.close()


def _names(value: Any, needle: bytes) -> bool:
    """Whether a value (anything a dump holds) holds the needle."""
    if isinstance(value, bytes):
        return needle in value
    if isinstance(value, str):
        return needle.decode() in value
    if isinstance(value, dict):
        return any(_names(k, needle) or _names(v, needle) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_names(v, needle) for v in value)
    return False


def _without(value: Any, needle: bytes) -> Any:
    """A dumped Redis value less the entries (members, fields, stream entries) naming the
    needle."""
    kind, content = value
    if kind == b"hash":
        return kind, {k: v for k, v in content.items() if not _names((k, v), needle)}
    if kind in (b"zset", b"list", b"stream"):
        return kind, [e for e in content if not _names(e, needle)]
    return value


def _of(project: str, key: bytes) -> bool:
    """Whether a Redis key is one of the project's (its hash tag: ``{<project>.<shard>}``)."""
    return (
        re.search(rb"\{" + re.escape(encode_part(project).encode()) + rb"\.\d+\}", key) is not None
    )


def _grams_of(value: Any, term: bytes) -> Any:
    kind, content = value
    return kind, [(m, s) for m, s in content if m.split(b"\0")[1] != term]


def _redis_expected(before: Dump, key: str, unique_term: bytes) -> Dump:
    """What team-a's deletion of an anomaly leaves: every key as it was, less the anomaly's
    own keys, less its entries in the shard's keys, less the grams of the term only it had;
    the shard's day summary is left out (checked by its figures)."""
    needle = key.encode()
    own = f":a:{encode_part(key)}:".encode()
    shard = f"{{team-a.{shard_of(key, 16)}}}:x:".encode()
    expected = {}
    for name, value in before.items():
        if _of("team-a", name) and own in name:
            continue
        if shard in name:
            if name.endswith(b":x:summary"):
                continue
            value = _without(value, needle)
            if name.endswith(b":x:grams"):
                value = _grams_of(value, unique_term)
            if not value[1] and value[0] != b"stream":  # (Redis drops an empty key; not a stream)
                continue
        expected[name] = value
    return expected


def _sqlite_expected(before: Dump, key: str, unique_term: str) -> Dump:
    """What team-a's deletion of an anomaly leaves: every row as it was, less the rows of
    team-a naming it, less the grams of the term only it had; team-a's day summary rows, its
    outbox count and its anomaly count are left out (checked by their figures)."""
    needle = key.encode()
    expected = {}
    for table, (where, rows) in before.items():
        kept = []
        for row in rows:
            if where is not None and row[where] == "team-a":
                if _names(row, needle) or (table == "search_grams" and row[2] == unique_term):
                    continue
                if table in ("outbox_state", "project_anomalies"):
                    continue
                if table == "day_counts" and row[1] == "":
                    continue
            kept.append(row)
        expected[table] = (where, kept)
    return expected


def _left_out(dump: Dump) -> Dump:
    """The rows _sqlite_expected leaves out (they change by design)."""
    out = {}
    for table, (where, rows) in dump.items():
        out[table] = (
            where,
            [
                r
                for r in rows
                if not (
                    where is not None
                    and r[where] == "team-a"
                    and (
                        table in ("outbox_state", "project_anomalies")
                        or (table == "day_counts" and r[1] == "")
                    )
                )
            ],
        )
    return out


# -- a project full of everything -------------------------------------------------------------


async def _entries(store: Store, project: str) -> list[OutboxEntry]:
    found = []
    for partition in range(store.outbox_partitions):
        found += (await store.outbox_read(project, partition, ["c"], 1_000))[0]
    return found


async def _bury(store: Store, project: str, entry: OutboxEntry) -> None:
    """Give up on a notice: its channel's cursor passes it, and it is kept as a dead letter."""
    partition = entry.partition
    assert await store.outbox_lease(project, [partition], "t", 60_000) == [Lease.WAITING]
    letter = DeadLetter(entry.key(project), "c", entry, "HTTP 410", 1, 1, 2)
    assert await store.outbox_settle(project, partition, Settlement("t", "c", entry, ["c"], letter))
    await store.outbox_release(project, partition, "t")


async def _fill(counter: AnomalyCounter, clock: Clock, others: int = 6) -> None:
    """Anomalies with occurrences (ids, write marks), crossings and their notices (some dead),
    repairs (verified), dispositions, a fix and a regression, notes, an incident that flaps;
    the victim and its neighbour share a shard (on Redis) and every label but one."""
    project, store = counter.project_id, counter.store
    for sig in (NEIGHBOUR_SIG, VICTIM_SIG):  # each to REPEAT: a notice each, given up on
        for i in range(3):
            await counter.record_anomaly(sig, occurrence_id=f"{sig['alertname']}-{i}")
    for entry in await _entries(store, project):
        await _bury(store, project, entry)
    t0 = clock.now
    for n in range(8):  # the victim fires and resolves every 5 minutes: it flaps
        clock.now = t0 + n * SLOT
        at = clock.now
        fingerprint = "fp-victim"
        occurrence = Occurrence(VICTIM_SIG, at, f"am:{n}", fingerprint)
        await counter.record_many([occurrence])
        await counter.record_resolution(
            VICTIM, at=at + timedelta(minutes=1), episode=fingerprint, started=at
        )
    for key in (VICTIM, NEIGHBOUR):
        for _ in range(3):
            await counter.record_anomaly(VICTIM_SIG if key == VICTIM else NEIGHBOUR_SIG)
        await counter.record_repair_attempt(key, "restart_pod", True)
        await counter.record_repair_attempt(key, "scale_up", False)
        await counter.record_disposition(key, "auto_repair")
        await counter.record_disposition(key, "human_approved")
        await counter.note_notice(key, "webhook", "escalation", "sent")
    await counter.mark_permanent_fix_applied(VICTIM, "raised the memory limit")
    clock.advance(minutes=1)
    regressed = await counter.record_anomaly(VICTIM_SIG)
    assert regressed.newly_regressed
    for i in range(others):
        for _ in range(i + 1):
            await counter.record_anomaly(_sig(f"Other{i}"), occurrence_id=None)
    victim = await counter.get_frequency(VICTIM)
    assert victim is not None and victim.flapping and victim.escalation_level == "PERMANENT_FIX"


async def _save_tokens(store: Store, project: str) -> None:
    for admin in (False, True):
        await store.save_token(new_token(project, 1, admin=admin)[1])


async def _figures(counter: AnomalyCounter) -> dict[str, Any]:
    """What the project's reads say of its summaries."""
    days = await counter.escalations_by_day(30)
    return {
        "dispositions": await counter.disposition_summary(),
        "escalations": {day: counts for day, counts in days if any(counts.values())},
    }


async def _crossings(counter: AnomalyCounter, key: str) -> dict[Any, dict[str, int]]:
    """The escalations an anomaly's timeline tells, by day and level."""
    found: dict[Any, dict[str, int]] = {}
    for entry in await counter.timeline(key):
        if entry.kind == "escalated" and entry.level:
            day = found.setdefault(entry.at.date(), {})
            day[entry.level] = day.get(entry.level, 0) + 1
    return found


@pytest.fixture
def reader(store_url: str, request: pytest.FixtureRequest) -> Any:
    made = Reader(store_url, request)
    yield made
    made.close()


async def test_an_anomaly_is_deleted_whole_and_nothing_else_moves(
    make_counter: CounterFactory, clock: Clock, tmp_path: Path, reader: Reader, store_url: str
) -> None:
    counter = make_counter(**_settings(tmp_path))
    await _fill(counter, clock)
    other = make_counter("team-b", **_settings(tmp_path, "team-b"))
    await _fill(other, clock, others=2)  # the same anomalies (keys) in another project
    await _save_tokens(counter.store, "team-a")
    await _save_tokens(counter.store, "team-b")
    summary, victim = await _figures(counter), await counter.get_disposition_stats(VICTIM)
    crossings = await _crossings(counter, VICTIM)
    assert victim["total"] == 2 and sum(sum(c.values()) for c in crossings.values()) == 3
    assert len((await counter.search("victimalert")).anomalies) == 1
    before = reader.dump()

    deleted = await counter.delete_anomaly("VictimAlert")  # by its name
    assert deleted.anomaly_key == VICTIM and deleted.signature == VICTIM_SIG

    after = reader.dump()
    needle = VICTIM.encode()
    if reader.sqlite:
        named = [(t, r) for t, (w, rows) in after.items() for r in rows
                 if w is not None and r[w] == "team-a" and _names(r, needle)]  # fmt: skip
        assert named == []
        assert _left_out(after) == _sqlite_expected(before, VICTIM, "victimalert")
        grams = {r[2] for r in after["search_grams"][1] if r[0] == "team-a"}
    else:
        mine = {k: v for k, v in after.items() if _of("team-a", k)}
        assert [k for k in mine if encode_part(VICTIM).encode() in k] == []
        assert [k for k, v in mine.items() if _names(v, needle)] == []
        its_summary = f"{{team-a.{shard_of(VICTIM, 16)}}}:x:summary".encode()
        assert {k: v for k, v in after.items() if not k.endswith(its_summary)} == _redis_expected(
            before, VICTIM, b"victimalert"
        )
        grams = {m.split(b"\0")[1].decode() for k, (_, v) in mine.items()
                 if k.endswith(b":x:grams") for m, _ in v}  # fmt: skip
    assert (
        "victimalert" not in grams and {"api", "prod", NEIGHBOUR_SIG["alertname"].lower()} <= grams
    )

    # the summary less exactly what the victim had put there
    now = await _figures(counter)
    assert now["dispositions"] == {
        kind: n - victim[kind] for kind, n in summary["dispositions"].items()
    }
    for day, counts in summary["escalations"].items():
        less = crossings.get(day, {})
        assert now["escalations"].get(day, dict.fromkeys(counts, 0)) == {
            level: n - less.get(level, 0) for level, n in counts.items()
        }
    # and every read agrees
    assert await counter.get_frequency(VICTIM) is None
    assert await counter.timeline(VICTIM) == []
    assert await counter.repair_stats(VICTIM) == {}
    assert (await counter.search("victimalert")).anomalies == []
    assert {f.anomaly_key for f in (await counter.search("api prod")).anomalies} >= {NEIGHBOUR}
    assert VICTIM not in {f.anomaly_key for f in (await counter.search("api")).anomalies}
    assert VICTIM not in {f.anomaly_key for f in (await counter.top(100, "30d")).anomalies}
    assert (await counter.flapping_anomalies()).anomalies == []
    assert VICTIM not in {f.anomaly_key for f in (await counter.chronic_anomalies()).anomalies}
    assert VICTIM not in {e.anomaly_key for e in await _entries(counter.store, "team-a")}
    assert {d.entry.anomaly_key for d in await counter.dead_letters()} == {NEIGHBOUR}
    # ... while the same anomaly of team-b is whole
    assert (await other.get_frequency(VICTIM)) is not None
    assert len((await other.search("victimalert")).anomalies) == 1
    settled = reader.dump()  # (reads lower stale ranking scores: a write of theirs)
    with pytest.raises(AnomalyNotFoundError):
        await counter.delete_anomaly(VICTIM)
    assert reader.dump() == settled


async def test_a_deleted_anomaly_takes_no_room_under_max_anomalies(
    make_counter: CounterFactory,
) -> None:
    # 16 on Redis is one in each of its 16 shards: a full project, however it is filled
    counter = make_counter(project_limits={"team-a": Limits(max_anomalies=16)})
    stored, refused = [], []
    for i in range(200):
        try:
            stored.append((await counter.record_anomaly(_sig(f"A{i}"))).anomaly_key)
        except LimitExceededError:
            refused.append(_sig(f"A{i}"))
    assert len(stored) == 16
    gone = stored[3]
    later = next(s for s in refused if shard_of(AnomalyCounter.hash_signature(s), 16)
                 == shard_of(gone, 16))  # fmt: skip
    with pytest.raises(LimitExceededError):
        await counter.record_anomaly(later)
    await counter.delete_anomaly(gone)
    assert (await counter.record_anomaly(later)).count_1h == 1
    with pytest.raises(LimitExceededError):  # (and the room it left is taken)
        await counter.record_anomaly(next(s for s in refused if s is not later))


async def test_a_name_must_name_one_anomaly(make_counter: CounterFactory) -> None:
    counter = make_counter()
    for name in ("DiskFull", "DiskSlow"):
        await counter.record_anomaly(_sig(name))
    with pytest.raises(AmbiguousAnomalyError):
        await counter.delete_anomaly("api")
    with pytest.raises(AnomalyNotFoundError):
        await counter.delete_anomaly("NoSuchAlert")
    assert (await counter.delete_anomaly("diskfull")).signature["alertname"] == "DiskFull"
    assert [f.signature["alertname"] for f in (await counter.top(10)).anomalies] == ["DiskSlow"]


async def test_a_project_is_deleted_whole_and_again_harmlessly(
    make_counter: CounterFactory, clock: Clock, tmp_path: Path, reader: Reader, store_url: str
) -> None:
    counter = make_counter(**_settings(tmp_path))
    await _fill(counter, clock)
    other = make_counter("team-b", **_settings(tmp_path, "team-b"))
    await _fill(other, clock, others=2)
    await _save_tokens(counter.store, "team-a")
    await _save_tokens(counter.store, "team-b")
    alike = make_counter("team-a.1")  # (its keys' tags start as team-a's do: {team-a.1.<shard>})
    for name in ("Keep", "Keep", "Also"):
        await alike.record_anomaly(_sig(name))
    held = (await counter.top(1_000, "30d")).anomalies
    # an earlier deletion cut short: one anomaly's state gone, the rest of it still there
    if reader.sqlite:
        db = sqlite3.connect(urlsplit(store_url).path)
        with db:
            db.execute("DELETE FROM anomalies WHERE project = 'team-a' AND anomaly_key = ?",
                       (NEIGHBOUR,))  # fmt: skip
        db.close()
    else:
        for client in reader.clients:
            for key in client.scan_iter(match=b"*" + encode_part(NEIGHBOUR).encode() + b":m"):
                if _of("team-a", key):
                    client.delete(key)
    before = reader.dump()

    deleted = await counter.delete_project()
    assert deleted.anomalies == len(held) - 1  # (the one cut short had no state left)

    after = reader.dump()
    if reader.sqlite:
        left = [(t, r) for t, (w, rows) in after.items() for r in rows
                if w is not None and r[w] == "team-a"]  # fmt: skip
        assert left == []
        theirs = {t: (w, [r for r in rows if w is None or r[w] != "team-a"])
                  for t, (w, rows) in before.items()}  # fmt: skip
        assert after == theirs
    else:
        assert [k for k in after if _of("team-a", k)] == []
        tokens = [json.loads(v) for k, (_, h) in after.items() if k.endswith(b":tokens")
                  for v in h.values()]  # fmt: skip
        assert {t["project"] for t in tokens} == {"team-b"}
        theirs = {k: v for k, v in before.items() if not _of("team-a", k)}
        mine = [k for k in theirs if k.endswith(b":tokens")]
        for k in mine:  # the shared tokens hash, less team-a's
            kind, fields = theirs[k]
            theirs[k] = (kind, {f: v for f, v in fields.items()
                                if json.loads(v)["project"] != "team-a"})  # fmt: skip
        assert after == theirs
    assert (await counter.top(10)).anomalies == [] and await counter.dead_letters() == []
    assert await counter.store.list_tokens("team-a") == []
    assert (await counter.outbox_stats()).depth == 0
    assert len((await other.top(100, "30d")).anomalies) == 4
    assert len((await alike.top(100, "30d")).anomalies) == 2
    settled = reader.dump()  # (reads lower stale ranking scores: a write of theirs)
    again = await counter.delete_project()
    assert again.anomalies == 0 and reader.dump() == settled


# -- the command line ---------------------------------------------------------------------------


def _cli(
    store: str, *args: str, tty: str | None = None, project: str | None = "team-a"
) -> subprocess.CompletedProcess[str]:
    """The command, with stdin not a terminal; or (``tty``: what is typed) a terminal."""
    named = ["--project", project] if project else []
    command = [sys.executable, "-m", "anomaly_counter.cli", "--store", store, *named, *args]
    if tty is None:
        return subprocess.run(command, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)  # fmt: skip
    main, terminal = pty.openpty()
    try:
        os.write(main, tty.encode() + b"\n")
        return subprocess.run(command, capture_output=True, text=True, timeout=60,
                              stdin=terminal)  # fmt: skip
    finally:
        os.close(main)
        os.close(terminal)


async def test_the_command_line_asks_first(
    make_counter: CounterFactory, store_url: str, reader: Reader
) -> None:
    counter = make_counter()
    for name in ("Keep", "Drop"):
        for _ in range(3):
            await counter.record_anomaly(_sig(name))
    drop = AnomalyCounter.hash_signature(_sig("Drop"))
    before = reader.dump()
    for args in (["delete", "anomaly", "Drop"], ["delete", "project"]):
        refused = _cli(store_url, *args)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "stdin is not a terminal" in refused.stderr and "--yes" in refused.stderr
    wrong = _cli(store_url, "delete", "anomaly", "Drop", tty="yes")
    assert wrong.returncode == 2 and "not confirmed: nothing was deleted" in wrong.stderr
    assert f"Type its key ({drop}) to confirm" in wrong.stderr and "Drop api prod" in wrong.stderr
    assert reader.dump() == before  # nothing of it was deleted
    typed = _cli(store_url, "delete", "anomaly", "Drop", tty=drop)
    assert typed.returncode == 0, typed.stderr
    assert typed.stdout == f"deleted anomaly {drop} (Drop api prod OOMKilled) of project 'team-a'\n"
    assert [f.signature["alertname"] for f in (await counter.top(10)).anomalies] == ["Keep"]
    gone = _cli(store_url, "delete", "anomaly", drop, "--yes")
    assert gone.returncode == 1 and f"no anomaly '{drop}'" in gone.stderr
    for tty in ("NoSuchAlert", None):  # (on a terminal, or not: said, not asked first)
        nothing = _cli(store_url, "delete", "anomaly", "NoSuchAlert", tty=tty)
        assert nothing.returncode == 1 and "Type" not in nothing.stderr
        assert "no anomaly 'NoSuchAlert' in project 'team-a'" in nothing.stderr
    unnamed = _cli(store_url, "delete", "project", "--yes", project=None)  # (not 'default')
    assert unnamed.returncode == 2 and "name the project to delete" in unnamed.stderr
    wrong = _cli(store_url, "delete", "project", tty="team-b")
    assert wrong.returncode == 2 and (await counter.top(10)).anomalies != []
    done = _cli(store_url, "--json", "delete", "project", "--yes")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"deleted": "project", "project": "team-a", "anomalies": 1}
    assert (await counter.top(10)).anomalies == []


def test_an_admin_token_is_made_and_listed(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/t.db"
    made = _cli(store, "--json", "token", "create", "--admin", "--label", "ops")
    assert made.returncode == 0 and json.loads(made.stdout)["admin"] is True
    listed = json.loads(_cli(store, "--json", "token", "list").stdout)
    assert [(t["label"], t["access"], t["admin"]) for t in listed] == [("ops", "admin", True)]
    both = _cli(store, "token", "create", "--admin", "--read-only")
    assert both.returncode == 2 and "read-only or admin, not both" in both.stderr


def test_a_store_made_before_the_admin_scope_takes_admin_tokens(tmp_path: Path) -> None:
    """A tokens table of an earlier version (no admin column) gets the column on opening."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE tokens (token_id TEXT PRIMARY KEY, project TEXT NOT NULL, digest"
               " TEXT NOT NULL, created_ms INTEGER NOT NULL, label TEXT NOT NULL DEFAULT '',"
               " read_only INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID")  # fmt: skip
    db.execute("INSERT INTO tokens VALUES ('0123456789abcdef', 'team-a', 'd', 1, 'old', 0)")
    db.commit()
    db.close()
    made = _cli(f"sqlite:///{path}", "--json", "token", "create", "--admin")
    assert made.returncode == 0, made.stderr
    listed = json.loads(_cli(f"sqlite:///{path}", "--json", "token", "list").stdout)
    assert sorted(t["access"] for t in listed) == ["admin", "write"]


async def test_the_admin_scope_is_kept_through_an_outage(tmp_path: Path) -> None:
    """The tokens a service keeps for an outage (known-tokens.json) keep the admin scope; a
    file written before the scope existed reads as it was (no admin token)."""
    known = KnownTokens(tmp_path, 3_600)
    admin, writer = (new_token("team-a", 1, admin=a)[1] for a in (True, False))
    for record in (admin, writer):
        known.confirm(record)
    await known.save()
    again = KnownTokens(tmp_path, 3_600)
    assert again.answer(admin.token_id) == replace(admin, created_ms=0)
    assert again.answer(writer.token_id) == replace(writer, created_ms=0)
    path = tmp_path / FILE_NAME
    document = json.loads(path.read_text())
    for entry in document["tokens"]:
        del entry["admin"]
    canonical = json.dumps(document["tokens"], sort_keys=True, separators=(",", ":"))
    document["sha256"] = hashlib.sha256(canonical.encode()).hexdigest()
    path.write_text(json.dumps(document))
    earlier = KnownTokens(tmp_path, 3_600).answer(admin.token_id)
    assert earlier is not None and not earlier.admin


# -- the API ------------------------------------------------------------------------------------


async def test_the_api_deletes_only_with_an_admin_token(
    service: ServiceServer, make_counter: CounterFactory
) -> None:
    writer, admin = service.token("team-a"), make_token(service.settings, "team-a", admin=True)
    stranger = make_token(service.settings, "team-b", admin=True)
    async with service.client(writer) as http:
        for name in ("Keep", "Drop"):
            for _ in range(3):
                await http.post(v1("/occurrences"), json={"signature": _sig(name)})
    other = make_counter("team-b")
    await other.record_anomaly(_sig("Drop"))
    drop = AnomalyCounter.hash_signature(_sig("Drop"))
    for token in (writer, stranger):
        async with service.client(token) as http:
            for path in (v1(f"/anomalies/{drop}"), "/v1/projects/team-a"):
                r = await http.delete(path)
                assert r.status_code == 403, (path, r.text)
    async with service.client(admin) as http:
        r = await http.delete(v1("/anomalies/Drop"))
        assert r.status_code == 200, r.text
        assert r.json() == {"project": "team-a", "anomaly_key": drop, "signature": _sig("Drop")}
        assert (await http.get(v1(f"/anomalies/{drop}"))).status_code == 404
        assert (await http.delete(v1(f"/anomalies/{drop}"))).status_code == 404
        r = await http.delete("/v1/projects/team-a")
        assert r.status_code == 200 and r.json() == {"project": "team-a", "anomalies": 1}
        # its tokens went with it, this one too: refused at once
        assert (await http.get(v1("/anomalies"))).status_code == 401
    async with service.client(writer) as http:
        assert (await http.get(v1("/anomalies"))).status_code == 401
    assert (await other.get_frequency(drop)) is not None
