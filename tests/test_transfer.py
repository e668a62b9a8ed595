"""Moving a project between stores (export and import as JSON lines, anomaly_counter.transfer):
every read answers the same after a move SQLite -> Redis -> Redis Cluster; an import twice is
one; an occurrence re-sent after the move is not counted again; a bad file is refused whole."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
import threading
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from anomaly_counter import AnomalyCounter, Settings, search, validation
from anomaly_counter.cli import main
from anomaly_counter.errors import LimitExceededError
from anomaly_counter.limits import Limits
from anomaly_counter.model import Occurrence
from anomaly_counter.stores.base import Recording, RecordRequest
from anomaly_counter.tokens import new_token
from anomaly_counter.transfer import export_project, import_project
from anomaly_counter.windows import HISTORY

from .conftest import Clock, CounterFactory, RedisServer

PROJECT = "team-a"
BUSY = {"alertname": "PodCrashLoopBackOff", "service": "api", "namespace": "prod"}
IDS = {"alertname": "DiskFull", "service": "db", "namespace": "prod", "reason": "quota"}
FIXED = {"alertname": "CertExpiring", "service": "edge", "namespace": "prod"}
FIXED_NOW = {"alertname": "QueueBacklog", "service": "worker", "namespace": "batch"}
FLAPPY = {"alertname": "LatencyHigh", "service": "api", "namespace": "staging"}
OPEN = {"alertname": "NodeNotReady", "service": "kubelet", "namespace": "kube-system"}
SIGNATURES = (BUSY, IDS, FIXED, FIXED_NOW, FLAPPY, OPEN)
KEYS = [AnomalyCounter.hash_signature(s) for s in SIGNATURES]
BUSY_KEY, IDS_KEY, FIXED_KEY, FIXED_NOW_KEY, FLAPPY_KEY, OPEN_KEY = KEYS


def _counter(url: str, clock: Clock, project: str = PROJECT) -> AnomalyCounter:
    return AnomalyCounter.from_url(url, project, settings=Settings(store_url=url), clock=clock)


def _episode(signature: dict[str, str], at: Any, fingerprint: str) -> Occurrence:
    return Occurrence(signature, at, f"am:{fingerprint}:{int(at.timestamp() * 1000)}", fingerprint)


async def _fill(counter: AnomalyCounter, clock: Clock) -> None:
    """30 days of a project's life: a busy anomaly past its tail (rings), occurrence ids,
    repairs verified and not, dispositions, a fix and its regression, a fix in force,
    resolutions, flapping, an episode still open, tokens."""
    end = clock.now
    start = end - timedelta(days=29, hours=20)
    for day in range(30):
        clock.now = now = start + timedelta(days=day)
        busy = [Occurrence(BUSY, now - timedelta(minutes=7 * k)) for k in range(12)]
        await counter.record_many(busy)  # (360 in all: most pushed out of the tail)
        if day % 3 == 0:
            await counter.record_many([Occurrence(IDS, now, f"ids-{day}")])
        if day == 5:
            await counter.record_many(
                [Occurrence(FIXED, now - timedelta(minutes=m)) for m in (1, 2)]
            )
            await counter.mark_permanent_fix_applied(FIXED_KEY, "rotated the cert", by="alice")
            await counter.record_repair_attempt(BUSY_KEY, "restart_pod", True, by="bob")
            await counter.record_disposition(BUSY_KEY, "auto_repair")
        if day == 8:
            await counter.record_many([Occurrence(FIXED, now)])  # a regression
            await counter.record_repair_attempt(IDS_KEY, "grow_volume", True)  # never back
            await counter.record_disposition(IDS_KEY, "human_approved", by="carol")
            await counter.record_resolution(IDS_KEY, at=now)
    clock.now = now = end - timedelta(hours=3)
    await counter.record_many([Occurrence(FIXED_NOW, now - timedelta(minutes=m)) for m in range(4)])
    await counter.mark_permanent_fix_applied(FIXED_NOW_KEY, "scaled the workers")
    await counter.record_repair_attempt(BUSY_KEY, "restart_pod", False)
    await counter.record_repair_attempt(BUSY_KEY, "rollback", True)
    await counter.record_disposition(BUSY_KEY, "manual_resolved")
    for n in range(8):  # fires and resolves every 5 minutes: flapping
        clock.now = at = end - timedelta(minutes=55 - 5 * n)
        await counter.record_many([_episode(FLAPPY, at, "pod-a")])
        await counter.record_resolution(
            FLAPPY_KEY, at=at + timedelta(minutes=1), episode="pod-a", started=at
        )
    clock.now = end - timedelta(minutes=10)
    await counter.record_many([_episode(OPEN, clock.now, "node-1")])  # still open
    # a late busy hour: more occurrences than the tail keeps (its 1 h and 24 h rings)
    await counter.record_many(
        [Occurrence(BUSY, clock.now - timedelta(seconds=s)) for s in range(0, 3000, 15)]
    )
    # what a spool sends: a numbered write, and one replayed (their write marks)
    await counter.store.record(_recording(counter, clock), _spooled(clock.now))
    for label, scope in (("deploy bot", {}), ("dashboard", {"read_only": True}),
                         ("cleanup", {"admin": True})):  # fmt: skip
        _, record = new_token(PROJECT, 1_700_000_000_000, label, **scope)
        await counter.store.save_token(record)
    clock.now = end


def _spooled(at: datetime) -> list[RecordRequest]:
    signature_json = validation.signature_json(IDS)
    ms = int(at.timestamp() * 1000)
    request = RecordRequest(
        IDS_KEY, IDS, signature_json, ms, None, search.joined_terms(signature_json)
    )
    return [
        replace(request, sequence=("writer1", 7), floor=0),
        replace(request, sequence=("writer1", 8), floor=-1, replayed=f"spool1:{1:024d}"),
    ]


def _recording(counter: AnomalyCounter, clock: Clock) -> Recording:
    return Recording(PROJECT, counter.write_policy, int(clock.now.timestamp() * 1000))


async def _reads(counter: AnomalyCounter, clock: Clock) -> dict[str, Any]:
    """Every read of the project (as of the clock's now)."""
    now = clock.now
    out: dict[str, Any] = {}
    for key in KEYS:
        for back in (timedelta(0), timedelta(minutes=20), timedelta(hours=5), timedelta(days=3),
                     timedelta(days=12), timedelta(days=27)):  # fmt: skip
            out[f"frequency {key} -{back}"] = await counter.get_frequency(key, at=now - back)
        for window in HISTORY:
            out[f"history {key} {window}"] = await counter.history(key, window)
        out[f"timeline {key}"] = await counter.timeline(key)
        out[f"repairs {key}"] = await counter.repair_stats(key)
        out[f"repair history {key}"] = await counter.repair_history(key)
        out[f"dispositions {key}"] = await counter.get_disposition_stats(key)
    for window in ("1h", "24h", "7d", "30d"):
        out[f"top {window}"] = await counter.top(50, window)
    out["chronic"] = await counter.chronic_anomalies()
    out["recommendations"] = await counter.recommendations(KEYS)
    out["disposition summary"] = await counter.disposition_summary()
    out["all dispositions"] = await counter.get_all_disposition_stats()
    out["escalations by day"] = await counter.escalations_by_day()
    out["flapping"] = await counter.flapping_anomalies()
    for word in ("api", "prod", "crash", "quota", "kube"):
        out[f"search {word}"] = await counter.search(word)
    out["tokens"] = await counter.store.list_tokens(PROJECT)
    return out


async def _move(source: AnomalyCounter, target: AnomalyCounter, clock: Clock) -> str:
    buffer = io.StringIO()
    await export_project(source, buffer, tokens=True, now=clock.now)
    buffer.seek(0)
    await import_project(target, buffer, now=clock.now)
    return buffer.getvalue()


def _same(expected: dict[str, Any], actual: dict[str, Any], where: str) -> None:
    different = [name for name in expected if expected[name] != actual[name]]
    if different:
        name = different[0]
        shown = f"{expected[name]!r:.600} != {actual[name]!r:.600}"
        pytest.fail(f"{where}: {len(different)} reads differ, the first {name}: {shown}")


async def test_a_project_moves_sqlite_to_redis_to_cluster_with_identical_answers(
    tmp_path: Path, fresh_redis: RedisServer, fresh_cluster: Any, clock: Clock
) -> None:
    lite = _counter(f"sqlite:///{tmp_path}/source.db", clock)
    single = _counter(fresh_redis.url, clock)
    cluster = _counter(fresh_cluster.url, clock)
    try:
        await _fill(lite, clock)
        expected = await _reads(lite, clock)
        assert expected["flapping"].anomalies and expected["chronic"].anomalies  # (rich enough)
        state = (await lite.store.states(PROJECT, [BUSY_KEY]))[0]
        assert state is not None and any(state.rings)  # (the rings are used)
        text = await _move(lite, single, clock)
        _same(expected, await _reads(single, clock), "sqlite -> redis")
        again = await _move(single, cluster, clock)
        _same(expected, await _reads(cluster, clock), "redis -> cluster")
        # an export of the copy is the export of the original (but for its time)
        assert text.splitlines()[1:] == again.splitlines()[1:]
        # imported twice (asked to replace): the same
        buffer = io.StringIO(again)
        await import_project(cluster, buffer, replace=True, now=clock.now)
        _same(expected, await _reads(cluster, clock), "imported twice")
        # later, the three go on alike: an id counted before the move is not counted again,
        # a new occurrence is, on each
        clock.advance(hours=2)
        for counter in (lite, single, cluster):
            (resent,) = await counter.record_many([Occurrence(IDS, clock.now, "ids-27")])
            spooled = await counter.store.record(_recording(counter, clock), _spooled(clock.now))
            assert resent.duplicate and all(s.duplicate for s in spooled)
            await counter.record_many([Occurrence(BUSY, clock.now)])
        later = await _reads(lite, clock)
        _same(later, await _reads(single, clock), "later, redis")
        _same(later, await _reads(cluster, clock), "later, cluster")
    finally:
        for counter in (lite, single, cluster):
            await counter.aclose()


async def test_an_import_past_max_anomalies_stops_and_says_so(
    tmp_path: Path, make_counter: CounterFactory, clock: Clock
) -> None:
    source = _counter(f"sqlite:///{tmp_path}/source.db", clock)
    try:
        await source.record_many([Occurrence({"alertname": f"A{n}"}) for n in range(40)])
        buffer = io.StringIO()
        await export_project(source, buffer)
    finally:
        await source.aclose()
    target = make_counter(project_limits={PROJECT: Limits(max_anomalies=16)})
    buffer.seek(0)
    with pytest.raises(LimitExceededError, match="again with --replace") as refused:
        await import_project(target, buffer)
    # what it says is what is true: what was written, and the limit
    held = len((await target.top(50, "1h")).anomalies)
    said = re.search(r"may hold (\d+) .* (\d+) anomalies of the file found no room, .* with"
                     r" (\d+) anomalies of the file written", str(refused.value))  # fmt: skip
    assert said is not None, refused.value
    assert [int(n) for n in said.groups()] == [16, 40 - held, held] and 0 < held <= 16


# -- the command line -----------------------------------------------------------------------


def cli(*args: str, store: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: a real process."""
    command = [sys.executable, "-m", "anomaly_counter.cli", "--store", store, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, input=stdin)


def test_export_and_import_on_the_command_line(tmp_path: Path) -> None:
    source, target = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    record = ("--project", "ops", "record", "--alert-name", "X", "--service", "api")
    assert cli(*record, store=source).returncode == 0
    file = tmp_path / "ops.jsonl"
    exported = cli("--project", "ops", "export", "--output", str(file), store=source)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == f"exported 1 anomalies of project ops to {file}\n"
    lines = file.read_text().splitlines()
    assert json.loads(lines[0])["project"] == "ops"
    assert [json.loads(line).get("type") for line in lines[1:]] == ["anomaly", "summary", "end"]
    # from stdin, into the project the file names (and its own when none is named)
    imported = cli("import", "jsonl", "-", "--project", "ops", store=target, stdin=file.read_text())
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == "imported 1 anomalies into project ops\n"
    to_stdout = cli("--project", "ops", "export", store=target)
    assert to_stdout.stdout.splitlines()[1:] == lines[1:]


def run(capsys: Any, *args: str, store: str, stdin: str = "") -> tuple[int, str, str]:
    """The command in this process (quicker): its exit status, stdout and stderr."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            main(["--store", store, *args])
            status = 0
        except SystemExit as exc:
            status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def exported(tmp_path: Path, capsys: Any) -> list[str]:
    """The lines of an export of project ops (two occurrences of one anomaly)."""
    source = f"sqlite:///{tmp_path}/a.db"
    for _ in range(2):
        assert run(capsys, "--project", "ops", "record", "--alert-name", "X", store=source)[0] == 0
    status, out, _ = run(capsys, "--project", "ops", "export", "--tokens", store=source)
    assert status == 0
    return out.splitlines()


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda lines: ['{"hello": 1}', *lines[1:]], "bad.jsonl: line 1: not an anomaly-counter"),
        (lambda lines: ["", *lines[1:]], "line 1: not an anomaly-counter export"),
        (lambda lines: [lines[0].replace('"version":1', '"version":9'), *lines[1:]], "version 9"),
        (lambda lines: [*lines[:2], "{broken", *lines[2:]], "line 3: not an export line"),
        (lambda lines: [lines[0], lines[1].replace('"level":', '"level":"x",'), *lines[2:]],
         "line 2: not an export line"),
        (lambda lines: [*lines[:2], '{"type": "anomaly"}', *lines[2:]], "line 3: not an export"),
        (lambda lines: lines[:-1], "cut short"),
        (lambda lines: [*lines, lines[1]], "line 5: a line after the end line"),
        (lambda lines: [lines[0], *lines[2:]], "end line counts 1 anomalies"),
    ],
)  # fmt: skip
def test_a_bad_file_is_refused_whole(
    tmp_path: Path, capsys: Any, exported: list[str], change: Any, said: str
) -> None:
    target = f"sqlite:///{tmp_path}/b.db"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(change(exported)) + "\n")
    status, _, err = run(capsys, "--project", "ops", "import", "jsonl", str(bad), store=target)
    assert status == 2
    assert said in err and len(err.splitlines()) == 1, err
    _, out, err = run(capsys, "--project", "ops", "--json", "top", store=target)
    assert "nothing was ever recorded there" in err or json.loads(out) == []  # nothing written


def test_another_projects_export_goes_only_where_it_is_named(
    tmp_path: Path, capsys: Any, exported: list[str]
) -> None:
    target = f"sqlite:///{tmp_path}/b.db"
    text = "\n".join(exported) + "\n"
    status, _, err = run(capsys, "import", "jsonl", "-", store=target, stdin=text)
    assert status == 2  # (into project default)
    assert "is an export of project 'ops', not of 'default'" in err
    assert run(capsys, "import", "jsonl", str(tmp_path / "none.jsonl"), store=target)[0] == 2
    status, out, err = run(
        capsys, "--project", "elsewhere", "--json", "import", "jsonl", "-", store=target, stdin=text
    )
    assert status == 0, err
    assert json.loads(out) == {
        "project": "elsewhere",
        "anomalies": 1,
        "tokens": 0,
        "summary_days": 0,
    }
    _, out, _ = run(capsys, "--project", "elsewhere", "--json", "top", store=target)
    assert [row["count"] for row in json.loads(out)] == [2]


# -- defects found by QA (docs/export-import.md says what an import refuses) -----------------


def _token(capsys: Any, store: str, project: str, *scope: str) -> dict[str, Any]:
    status, out, err = run(capsys, "--project", project, "--json", "token", "create",
                           "--label", "bot", *scope, store=store)  # fmt: skip
    assert status == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def _tokens(capsys: Any, store: str) -> list[dict[str, Any]]:
    status, out, err = run(capsys, "--json", "token", "list", "--all", store=store)
    assert status == 0, err
    listed: list[dict[str, Any]] = json.loads(out)
    return sorted(listed, key=lambda t: (t["project"], t["token_id"]))


def test_an_import_never_takes_another_projects_tokens(tmp_path: Path, capsys: Any) -> None:
    store = f"sqlite:///{tmp_path}/one.db"
    assert run(capsys, "--project", "payments", "record", "--alert-name", "X", store=store)[0] == 0
    _token(capsys, store, "payments")
    victim = _token(capsys, store, "victim", "--admin")
    file = tmp_path / "payments.jsonl"
    status, _, err = run(capsys, "--project", "payments", "export", "--tokens", "--output",
                         str(file), store=store)  # fmt: skip
    assert status == 0, err
    before = _tokens(capsys, store)
    # a copy of the project, with its tokens: refused whole, the tokens stay where they are
    status, _, err = run(capsys, "--project", "payments-staging", "import", "jsonl", str(file),
                         store=store)  # fmt: skip
    assert status == 2 and "export it without --tokens" in err and len(err.splitlines()) == 1
    assert _tokens(capsys, store) == before
    status, out, err = run(capsys, "--project", "payments-staging", "--json", "top", store=store)
    assert json.loads(out) == []
    # a crafted file naming another project's token id: refused, that token untouched
    lines = file.read_text().splitlines()
    mine = json.loads(next(line for line in lines if '"type":"token"' in line))
    crafted = {**mine, "token_id": victim["token_id"], "admin": True}
    lines = [line if '"type":"token"' not in line else json.dumps(crafted) for line in lines]
    lines[1:-1] = [line for line in lines[1:-1] if '"type":"anomaly"' not in line]
    lines[0] = lines[0].replace('"payments"', '"attacker"')
    lines[-1] = json.dumps({"type": "end", "anomalies": 0, "tokens": 1})
    (tmp_path / "crafted.jsonl").write_text("\n".join(lines) + "\n")
    status, _, err = run(capsys, "--project", "attacker", "import", "jsonl",
                         str(tmp_path / "crafted.jsonl"), store=store)  # fmt: skip
    assert status == 2 and "belongs to another project" in err, err
    assert _tokens(capsys, store) == before
    # into its own project (again): its own tokens, kept
    status, _, err = run(capsys, "--project", "payments", "import", "jsonl", "--replace",
                         str(file), store=store)  # fmt: skip
    assert status == 0, err
    assert _tokens(capsys, store) == before


class _Changing(io.StringIO):
    """A file that another writer changes once it was read through (between two readings)."""

    def __init__(self, first: str, then: str) -> None:
        super().__init__(first)
        self._then: str | None = then

    def seek(self, position: int, whence: int = 0) -> int:
        if position == 0 and whence == 0 and self._then is not None and self.tell() > 0:
            text, self._then = self._then, None
            super().seek(0)
            self.truncate()
            self.write(text)
        return super().seek(position, whence)


async def test_an_import_reads_its_file_once(make_counter: CounterFactory) -> None:
    """Seen by an attacker: the checks read the file, then the writes read it again; a token
    line added in between took another project's token."""
    victim = make_counter("victim")
    _, record = new_token("victim", 1_700_000_000_000, "ci", admin=True)
    await victim.store.save_token(record)
    attacker = make_counter("attacker")
    await attacker.record_anomaly({"alertname": "Mine"})
    clean = io.StringIO()
    await export_project(attacker, clean)
    lines = clean.getvalue().splitlines()
    forged = {"type": "token", "token_id": record.token_id, "digest": "a" * 64,
              "created_ms": 1, "label": "pwn", "read_only": False, "admin": True}  # fmt: skip
    swapped = [*lines[:-1], json.dumps(forged), json.dumps({**json.loads(lines[-1]), "tokens": 1})]
    source = _Changing("\n".join(lines) + "\n", "\n".join(swapped) + "\n")
    await import_project(make_counter("copy"), source, name="f", explicit=True)
    assert await victim.store.get_token(record.token_id) == record


def test_export_output_never_replaces_the_store_nor_what_is_not_a_file(
    tmp_path: Path, capsys: Any
) -> None:
    database = tmp_path / "big.db"
    store = f"sqlite:///{database}"
    assert run(capsys, "record", "--alert-name", "X", store=store)[0] == 0
    for output in (database, Path(f"{database}-wal"), tmp_path / "link.db"):
        if output.name == "link.db":
            output.symlink_to(database)
        status, _, err = run(capsys, "export", "--output", str(output), store=store)
        assert status == 2 and "the store's own file" in err and len(err.splitlines()) == 1
    assert run(capsys, "--json", "top", store=store)[1].count('"count"') == 1  # (intact)
    assert database.read_bytes().startswith(b"SQLite format 3")
    # seen by an attacker: the file written before the rename was <output>.partial, opened
    # as it was: the store under that name, or a link to it there, was emptied
    for name in ("x.jsonl", "o.jsonl"):
        beside = tmp_path / f"{name}.partial"
        if name == "x.jsonl":
            beside.write_bytes(database.read_bytes())  # a store of that name
            target, url = beside, f"sqlite:///{beside}"
        else:
            beside.symlink_to(database)
            target, url = database, store
        status, out, err = run(capsys, "export", "--output", str(tmp_path / name), store=url)
        assert status == 0 and "exported 1 anomalies" in out, err
        assert target.read_bytes().startswith(b"SQLite format 3")
        assert run(capsys, "--json", "top", store=url)[1].count('"count"') == 1
    # a device: written through (and a full disk is an error), not renamed over
    status, _, err = run(capsys, "export", "--output", "/dev/full", store=store)
    assert status == 2 and "cannot write /dev/full" in err and len(err.splitlines()) == 1
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    # a symbolic link to a file: the file it names is written, the link stays
    (tmp_path / "real.jsonl").write_text("")
    (tmp_path / "via.jsonl").symlink_to(tmp_path / "real.jsonl")
    assert run(capsys, "export", "--output", str(tmp_path / "via.jsonl"), store=store)[0] == 0
    assert (tmp_path / "via.jsonl").is_symlink()
    assert (tmp_path / "real.jsonl").read_text().count("\n") == 4
    # a FIFO: written through to its reader
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    read: list[str] = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_text()))
    reader.start()
    status, _, err = run(capsys, "export", "--output", str(fifo), store=store)
    reader.join(10)
    assert status == 0, err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and read[0].count("\n") == 4


_BIG = 10**20
_ANOMALY_CHANGES: list[tuple[str, Any]] = [
    ("incident", "garbage"),
    ("flap", "garbage"),
    ("flap", "1,2,3"),
    ("first_seen", -(10**15)),
    ("last_seen", _BIG),
    ("level", 99),
    ("key", "two\nlines"),
    ("key", "nul\x00"),
    ("key", "k" * 10_000),
    ("key", ""),
    ("signature", "not json"),
    ("signature", "[1,2,3]"),
    ("signature", '{"service": "x", "bad": [1]}'),
    ("state", {"tail": [_BIG], "evicted_max": None, "newest": None, "rings": [[], [], [], []]}),
    ("state", {"tail": [1], "evicted_max": None, "newest": 1, "rings": [[[-5, 1]], [], [], []]}),
    ("state", {"tail": [], "evicted_max": None, "newest": None, "rings": [[], [], [], []]}),
    ("repairs", [{"action": "a", "success": True, "at_ms": _BIG, "until_ms": None,
                  "back_ms": None}]),
    ("repairs", [{"action": "a\n", "success": True, "at_ms": 1, "until_ms": None,
                  "back_ms": None}]),
    ("scores", {"1h": _BIG}),
    ("open_episodes", {"fp": [_BIG, 1]}),
    ("marks", {"w1": ["1-1", _BIG]}),
    ("ids", {"not hex": 1}),
    ("days", [[-1, "d:auto_repair", 1]]),
    ("timeline", ["garbage"]),
    ("timeline", ["f\x1f" + str(_BIG)]),
    ("fix", {"at": _BIG, "description": "d", "by": None}),
    # seen by an attacker on a second pass: each imported, and the library then misbehaved
    ("key", "0000000000000000"),  # (not its signature's: the next occurrence split it)
    ("first_seen", 4_102_444_800_000),  # (later than its last_seen)
    ("state", {"tail": [1], "evicted_max": None, "newest": 1,
               "rings": [[[i, 1] for i in range(200)], [], [], []]}),
    ("timeline", lambda entries: entries * 201),
    ("repairs", [{"action": "a", "success": True, "at_ms": 1, "until_ms": None,
                  "back_ms": None}] * 101),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), _ANOMALY_CHANGES)
def test_an_anomaly_line_the_library_would_not_write_is_refused(
    tmp_path: Path, capsys: Any, exported: list[str], field: str, value: Any
) -> None:
    anomaly = json.loads(exported[1])
    anomaly[field] = value(anomaly[field]) if callable(value) else value
    _refused_whole(tmp_path, capsys, [exported[0], json.dumps(anomaly), *exported[2:]], "line 2")


@pytest.mark.parametrize(
    "days", [{"-1": {"e:1": 1}}, {"20000": {"e:1": _BIG}}, {"x": {"e:1": 1}}, {"1": {"": 1}}]
)
def test_a_summary_line_out_of_range_is_refused(
    tmp_path: Path, capsys: Any, exported: list[str], days: dict[str, Any]
) -> None:
    summary = json.dumps({"type": "summary", "days": days})
    _refused_whole(tmp_path, capsys, [*exported[:2], summary, *exported[3:]], "line 3")


def test_a_token_line_out_of_range_is_refused(tmp_path: Path, capsys: Any) -> None:
    token = {"type": "token", "token_id": "0123456789abcdef", "digest": "ab" * 32,
             "created_ms": _BIG, "label": "x", "read_only": False, "admin": False}  # fmt: skip
    header = {"format": "anomaly-counter-export", "version": 1, "project": "ops"}
    end = {"type": "end", "anomalies": 0, "tokens": 1}
    lines = [json.dumps(header), json.dumps(token), json.dumps(end)]
    _refused_whole(tmp_path, capsys, lines, "line 2")


def test_a_token_twice_is_refused(tmp_path: Path, capsys: Any) -> None:
    """Seen by an attacker: a token listed twice was counted as two."""
    token = {"type": "token", "token_id": "0123456789abcdef", "digest": "ab" * 32,
             "created_ms": 1, "label": "x", "read_only": False, "admin": False}  # fmt: skip
    header = {"format": "anomaly-counter-export", "version": 1, "project": "ops"}
    end = {"type": "end", "anomalies": 0, "tokens": 2}
    lines = [json.dumps(header), json.dumps(token), json.dumps(token), json.dumps(end)]
    bad = tmp_path / "twice.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    status, _, err = run(capsys, "--project", "ops", "import", "jsonl", str(bad),
                         store=f"sqlite:///{tmp_path}/t.db")  # fmt: skip
    assert status == 2 and "line 3: token 0123456789abcdef a second time" in err, err


def test_a_token_both_read_only_and_admin_is_refused(tmp_path: Path, capsys: Any) -> None:
    """Seen by an attacker: listed as a viewer's, it could delete."""
    token = {"type": "token", "token_id": "0123456789abcdef", "digest": "ab" * 32,
             "created_ms": 1, "label": "x", "read_only": True, "admin": True}  # fmt: skip
    header = {"format": "anomaly-counter-export", "version": 1, "project": "ops"}
    end = {"type": "end", "anomalies": 0, "tokens": 1}
    lines = [json.dumps(header), json.dumps(token), json.dumps(end)]
    _refused_whole(tmp_path, capsys, lines, "line 2")


def test_an_anomaly_holding_more_than_the_project_keeps_is_refused(
    tmp_path: Path, capsys: Any, exported: list[str]
) -> None:
    """Seen by an attacker: 100,000 occurrence times were stored as given."""
    anomaly = json.loads(exported[1])
    times = list(range(1_700_000_000_000, 1_700_000_000_000 + 200))
    anomaly["state"] = {"tail": times, "evicted_max": None, "newest": times[-1],
                        "rings": [[], [], [], []]}  # fmt: skip
    anomaly["first_seen"], anomaly["last_seen"] = times[0], times[-1]
    bad = tmp_path / "big.jsonl"
    bad.write_text("\n".join([exported[0], json.dumps(anomaly), *exported[2:]]) + "\n")
    target = f"sqlite:///{tmp_path}/b.db"
    status, _, err = run(capsys, "--project", "ops", "import", "jsonl", str(bad), store=target)
    assert status == 2 and len(err.splitlines()) == 1, err
    assert "line 2: anomaly" in err and "holds 200 occurrence times" in err and "128" in err


def _refused_whole(tmp_path: Path, capsys: Any, lines: list[str], where: str) -> None:
    target = f"sqlite:///{tmp_path}/b.db"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    status, _, err = run(capsys, "--project", "ops", "import", "jsonl", str(bad), store=target)
    assert status == 2, err
    assert f"bad.jsonl: {where}: not an export line" in err and len(err.splitlines()) == 1, err
    _, out, err = run(capsys, "--project", "ops", "--json", "top", store=target)
    assert "nothing was ever recorded there" in err or json.loads(out) == []  # nothing written


def test_an_import_over_anomalies_the_project_holds_needs_replace(
    tmp_path: Path, capsys: Any, exported: list[str]
) -> None:
    target = f"sqlite:///{tmp_path}/b.db"
    text = "\n".join(exported) + "\n"
    assert run(capsys, "--project", "ops", "record", "--alert-name", "X", store=target)[0] == 0
    status, _, err = run(capsys, "--project", "ops", "import", "jsonl", "-", store=target,
                         stdin=text)  # fmt: skip
    assert status == 2 and "holds 1 of the anomalies" in err and "--replace" in err
    _, out, _ = run(capsys, "--project", "ops", "--json", "top", store=target)
    assert [row["count"] for row in json.loads(out)] == [1]  # (its own, untouched)
    status, _, err = run(capsys, "--project", "ops", "import", "jsonl", "--replace", "-",
                         store=target, stdin=text)  # fmt: skip
    assert status == 0, err
    _, out, _ = run(capsys, "--project", "ops", "--json", "top", store=target)
    assert [row["count"] for row in json.loads(out)] == [2]  # (the file's)


def test_an_import_reads_a_pipe_by_its_name(tmp_path: Path, exported: list[str]) -> None:
    store = f"sqlite:///{tmp_path}/b.db"
    text = "\n".join(exported) + "\n"
    done = cli("--project", "ops", "import", "jsonl", "/dev/stdin", store=store, stdin=text)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "imported 1 anomalies into project ops\n"


def test_the_max_anomalies_refusal_says_what_was_written(
    tmp_path: Path, store_url: str, capsys: Any
) -> None:
    source = f"sqlite:///{tmp_path}/a.db"
    for n in range(11):
        assert run(capsys, "--project", "ops", "record", "--alert-name", f"A{n}",
                   store=source)[0] == 0  # fmt: skip
    text = run(capsys, "--project", "ops", "export", store=source)[1]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANOMALY_COUNTER_LIMIT_MAX_ANOMALIES", "5")
        status, _, err = run(capsys, "--project", "ops", "import", "jsonl", "-", store=store_url,
                             stdin=text)  # fmt: skip
    assert status == 2 and len(err.splitlines()) == 1, err
    _, out, _ = run(capsys, "--project", "ops", "--json", "top", "--limit", "50", store=store_url)
    held = len(json.loads(out)) if out else 0
    assert f"may hold 5 distinct anomalies (limit max_anomalies): {11 - held} anomalies" in err
    assert f"stopped with {held} anomalies of the file written" in err, (held, err)


def test_the_project_named_by_the_environment_counts_as_named(
    tmp_path: Path, capsys: Any, exported: list[str]
) -> None:
    store = f"sqlite:///{tmp_path}/b.db"
    text = "\n".join(exported) + "\n"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANOMALY_COUNTER_PROJECT", "ops")
        status, out, err = run(capsys, "import", "jsonl", "-", store=store, stdin=text)
    assert status == 0, err
    assert out == "imported 1 anomalies into project ops\n"


def test_an_empty_export_says_so(tmp_path: Path, capsys: Any) -> None:
    """Seen by a careless operator: `export --project Demo` (the project is `demo`) wrote an
    empty export, exit 0, and said nothing."""
    store = f"sqlite:///{tmp_path}/e.db"
    assert run(capsys, "--project", "demo", "record", "--alert-name", "X", store=store)[0] == 0
    out_file = str(tmp_path / "x.jsonl")
    status, out, err = run(capsys, "--project", "Demo", "export", "--output", out_file, store=store)
    assert status == 0 and "exported 0 anomalies" in out
    assert "project 'Demo'" in err and "holds nothing" in err and len(err.splitlines()) == 1
    status, _, err = run(capsys, "--project", "demo", "export", "--output", out_file, store=store)
    assert status == 0 and err == ""
