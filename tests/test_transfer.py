"""Moving a project between stores (export and import as JSON lines, anomaly_counter.transfer):
every read answers the same after a move SQLite -> Redis -> Redis Cluster; an import twice is
one; an occurrence re-sent after the move is not counted again; a bad file is refused whole."""

from __future__ import annotations

import io
import json
import subprocess
import sys
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
        # imported twice: the same
        buffer = io.StringIO(again)
        await import_project(cluster, buffer, now=clock.now)
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
    with pytest.raises(LimitExceededError, match="importing the file again is safe"):
        await import_project(target, buffer)
    assert len((await target.top(50, "1h")).anomalies) <= 16


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
