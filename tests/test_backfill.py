"""`backfill prometheus` against real Prometheus processes: a known alert history written as
TSDB blocks by promtool, then once end to end with Prometheus evaluating rules and a real
Alertmanager delivering to the receiver, whose episodes the backfill must recognise."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from anomaly_counter import AnomalyCounter, Settings
from anomaly_counter.cli import build_parser
from anomaly_counter.episodes import EpisodeRules
from anomaly_counter.importers.prometheus_cli import command
from anomaly_counter.importers.prometheus_episodes import AlertRule, History, fingerprint
from anomaly_counter.importers.prometheus_syntax import parse_duration, parse_matchers

from .conftest import free_port, require_binary
from .servers import Alertmanager, ChatServer, ServiceServer, eventually, start_until_ready

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
FRACTION = 151  # ms: the test group's evaluations all fall at .151 s, as a real group's do
_CLOCK = int(time.time() * 1000)
NOW = _CLOCK // MINUTE * MINUTE + FRACTION  # the group's latest evaluation
NOW -= MINUTE if NOW > _CLOCK else 0

DISK = {"alertname": "DiskFull", "service": "db", "namespace": "prod", "severity": "page"}
LATENCY = {"alertname": "HighLatency", "service": "api", "namespace": "prod"}
BLINK = {"alertname": "Blinking", "severity": "ticket"}  # + cluster="test" (external)
OLD = {"alertname": "Old", "service": "batch"}
LONG = {"alertname": "LongJob", "service": "etl"}
FLAPPY = {"alertname": "Flappy", "service": "queue"}
FLAPS = 100


def ago(ms: int) -> int:
    return NOW - ms


class Alerts:
    """An alert history as Prometheus writes it: at each evaluation of an active alert, an
    ALERTS sample (pending, then firing) and an ALERTS_FOR_STATE one (activeAt, seconds)."""

    def __init__(self) -> None:
        self.series: dict[str, dict[str, list[tuple[int, str]]]] = {
            "ALERTS": defaultdict(list),
            "ALERTS_FOR_STATE": defaultdict(list),
        }
        self.episodes: list[tuple[dict[str, str], int, int | None]] = []  # labels, fired, ends

    def episode(
        self,
        labels: dict[str, str],
        fired: int,
        last: int,
        *,
        pending: int = 0,
        every: int = MINUTE,
        active: int | None = None,
    ) -> None:
        """Evaluations every ``every`` ms: ``pending`` of them before it fires at ``fired``,
        firing to ``last``; ``active``: its activeAt when earlier than its first sample."""
        first = fired - pending * every
        active_at = first if active is None else active
        for at in range(first, last + 1, every):
            state = "firing" if at >= fired else "pending"
            self.series["ALERTS"][_name({**labels, "alertstate": state})].append((at, "1"))
            self.series["ALERTS_FOR_STATE"][_name(labels)].append((at, str(active_at // 1000)))
        self.episodes.append((labels, fired, None if last >= NOW - every else last + every))

    def openmetrics(self) -> str:
        lines = []
        for metric, series in self.series.items():
            lines.append(f"# TYPE {metric} gauge")
            for name in sorted(series):
                lines += [f"{metric}{name} {v} {t // 1000}.{t % 1000:03d}" for t, v in series[name]]
        return "\n".join([*lines, "# EOF", ""])


def _name(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def history() -> Alerts:
    """Few stretches of time, so that promtool writes few blocks (2 hours each)."""
    alerts = Alerts()
    n1, n2 = {**DISK, "instance": "n1"}, {**DISK, "instance": "n2"}
    for days in (20, 10, 3):  # one instance, three times; a second joins the last time
        alerts.episode(n1, ago(days * DAY), ago(days * DAY - HOUR))
    alerts.episode(n2, ago(3 * DAY - 10 * MINUTE), ago(3 * DAY - 70 * MINUTE))
    for n in range(FLAPS):  # just before: 100 short episodes, 3 minutes apart
        start = ago(3 * DAY + 5 * HOUR) + n * 3 * MINUTE
        alerts.episode(FLAPPY, start, start + MINUTE)
    # with `for: 2m`: two pending evaluations; the second is firing still
    alerts.episode(LATENCY, ago(150 * MINUTE), ago(120 * MINUTE), pending=2)
    alerts.episode(LATENCY, ago(18 * MINUTE), NOW, pending=2)
    alerts.episode(BLINK, ago(110 * MINUTE), ago(106 * MINUTE))
    alerts.episode(BLINK, ago(90 * MINUTE), ago(86 * MINUTE))
    # active 35 days, firing since before the 30 (its samples, one a day, from 30.5 days)
    alerts.episode(OLD, ago(61 * DAY // 2), ago(59 * DAY // 2), every=DAY, active=ago(35 * DAY))
    alerts.episode(LONG, ago(14 * HOUR), ago(10 * HOUR), every=5 * MINUTE)  # evaluated each 5m
    return alerts


HISTORY = history()
FOUND = len(HISTORY.episodes)  # 110
SERIES = 7
TOO_OLD = 1
JOINED = 1


class Prometheus:
    """A Prometheus on a free port over a data directory; ``rules``: a rule file to evaluate."""

    def __init__(self, data: Path, config: dict[str, Any], *extra: str) -> None:
        self.binary = require_binary("prometheus")
        self.port = free_port()
        self.config = data / "prometheus.yml"
        self.config.write_text(json.dumps(config))  # JSON is YAML
        self.arguments = [
            self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=60d",
            "--log.level=warn", *extra,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Prometheus:
        self.process = start_until_ready(self.arguments, self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    promtool = require_binary("promtool")
    data = tmp_path_factory.mktemp("prometheus")
    source = data / "alerts.om"
    source.write_text(HISTORY.openmetrics())
    done = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(source), str(data)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Prometheus(data, {"global": {"evaluation_interval": "1m"}}) as server:
        yield server


def cli(*args: str, store: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "anomaly_counter.cli", "--store", store,
               "--project", "team-a", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def backfill(url: str, *args: str, store: str) -> subprocess.CompletedProcess[str]:
    return cli("--json", "backfill", "prometheus", "--url", url,
               "--external-label", "cluster=test", *args, store=store)  # fmt: skip


async def run(
    url: str, *args: str, store: str, label: str = "cluster=test", settings: Settings | None = None
) -> Any:
    """The command in this process (no interpreter to start): what it prints, as JSON."""
    parsed = build_parser().parse_args(["--store", store, "--project", "team-a", "--json",
        "backfill", "prometheus", "--url", url, "--external-label", label, *args])  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        await command(settings or Settings(), parsed)
    return json.loads(out.getvalue().splitlines()[-1])  # (after the library's own logs)


async def answers(store: str) -> dict[str, dict[str, Any]]:
    """What the store says of every anomaly: counts, times, incidents, and its story."""
    counter = AnomalyCounter.from_url(store, "team-a")
    try:
        found = {}
        for f in (await counter.top(limit=100, window="30d")).anomalies:
            seen = {k: v for k, v in f.to_dict().items() if k not in ("escalated_to", "signature")}
            story = sorted(
                (e.kind, e.at.isoformat()) for e in await counter.timeline(f.anomaly_key)
            )
            found[f.signature.get("alertname") or f.anomaly_key] = {**seen, "story": story}
        return found
    finally:
        await counter.aclose()


def _ms(moment: str) -> int:
    return int(datetime.fromisoformat(moment).timestamp() * 1000)


# -- the parts ---------------------------------------------------------------------------------


def test_fingerprints_are_alertmanagers() -> None:
    """Fingerprints a real Alertmanager (0.25) gave these label sets in its webhooks."""
    assert fingerprint({"alertname": "Blinking", "cluster": "test", "severity": "ticket"}) == (
        "746dc80cc3dbbc7b"
    )
    assert fingerprint({"alertname": "Held", "cluster": "test", "severity": "page"}) == (
        "46d291da5111f407"
    )
    assert fingerprint({}) == "cbf29ce484222325"  # FNV-1a's offset basis: nothing hashed


def test_durations_and_matchers() -> None:
    assert parse_duration("30d").days == 30
    assert parse_duration("1d12h").total_seconds() == 36 * 3600
    assert parse_duration("90m").total_seconds() == 5400
    for wrong in ("", "30", "d", "3 d", "30days", "-1h"):
        with pytest.raises(ValueError):
            parse_duration(wrong)
    assert parse_matchers('{severity="page", team=~"a|b",}') == ('severity="page"', 'team=~"a|b"')
    assert parse_matchers("env!='dev'") == ("env!='dev'",)
    assert parse_matchers(r'{a=~"x,y\"}", b="z"}') == (r'a=~"x,y\"}"', 'b="z"')
    assert parse_matchers("{}") == ()
    for wrong in ("{a=b}", '{a="b"', 'a="b" c="d"', '{__name__="x"}', '{alertstate="pending"}'):
        with pytest.raises(ValueError):
            parse_matchers(wrong)


def _samples(*times: int, active: int | None = None) -> list[tuple[int, float]]:
    return [(t, float(active) if active is not None else 1.0) for t in times]


def test_episodes_from_samples() -> None:
    """One episode per activeAt; it starts at its first firing evaluation (what Prometheus
    sends as startsAt), resolves one evaluation after its last, or fires still."""
    s = 1000
    key = (("alertname", "A"),)
    h = History(step_ms=60 * s)
    # pending at 100, firing 101..103 (a `for` of 1s), a missed evaluation, firing 105; then
    # a new episode activated at 200 that still fires at the end (210)
    active = _samples(*(t * s for t in (100, 101, 102, 103, 105)), active=100)
    active += _samples(*(t * s for t in (200, 201, 209, 210)), active=200)
    firing = _samples(*(t * s for t in (101, 102, 103, 105, 200, 201, 209, 210)))
    h.add({key: active}, {key: firing})
    first, second = h.episodes(end_ms=210 * s + 500, external={"cluster": "x"})
    assert (first.starts_ms, first.ends_ms) == (101 * s, 106 * s)  # one interval (1 s) after
    assert (second.starts_ms, second.ends_ms) == (200 * s, None)
    assert first.labels == {"alertname": "A", "cluster": "x"}
    assert h.look_back_to(100 * s) is None  # (both began firing in the range)
    later = History(step_ms=1_000)  # read from 201 s on: the second was active before
    later.add({key: active[-3:]}, {key: firing[-3:]})
    assert later.look_back_to(201 * s) == 200 * s and later.look_back_to(200 * s) is None


def test_an_alert_that_fires_one_evaluation_in_two() -> None:
    """Seen live: its samples are two seconds apart, but that is the gap between episodes,
    not its interval (1 s): each resolved one second after it fired, and only the last one
    may fire still."""
    key = (("alertname", "A"),)
    h = History(step_ms=1_000)
    states = [(t * 1000 + 487, float(t)) for t in (300, 302, 304)]
    h.add({key: states}, {key: [(ms, 1.0) for ms, _ in states]})
    found = h.episodes(end_ms=304_900, external={})
    assert [(e.starts_ms, e.ends_ms) for e in found] == [
        (300_487, 301_487), (302_487, 303_487), (304_487, None)
    ]  # fmt: skip


def test_a_start_prometheus_did_not_write() -> None:
    """In its first evaluations after it starts, Prometheus sends alerts but writes no ALERTS:
    an alert whose first sample fires already fired at activeAt plus its rule's ``for``."""
    key = (("alertname", "A"),)
    fraction = 151
    for hold, expected in ((None, 169_151), (0, 167_151), (1_000, 168_151), (2_000, 169_151)):
        h = History(step_ms=1_000)
        if hold is not None:
            h.rules = [AlertRule("A", {}, hold), AlertRule("B", {}, 60_000)]
        times = (169_000 + fraction, 170_000 + fraction)
        h.add({key: _samples(*times, active=167)}, {key: _samples(*times)})
        (episode,) = h.episodes(end_ms=300_000, external={})
        assert episode.starts_ms == expected, hold


def test_a_look_back_moves_known_starts_only() -> None:
    key, other = (("alertname", "A"),), (("alertname", "B"),)
    h = History(step_ms=1_000)
    h.add({key: _samples(50_000, 51_000, active=40)}, {key: _samples(50_000, 51_000)})
    h.add(
        {key: _samples(40_000, 41_000, 42_000, active=40), other: _samples(41_000, active=41)},
        {key: _samples(41_000, 42_000), other: _samples(41_000)},
        known_only=True,
    )
    (episode,) = h.episodes(end_ms=100_000, external={})
    assert (episode.starts_ms, episode.ends_ms) == (41_000, 52_000)


def test_without_alerts_for_state_gaps_split_episodes() -> None:
    key = (("alertname", "A"),)
    h = History(step_ms=1_000)
    h.add({}, {key: _samples(10_000, 11_000, 12_000, 20_000, 21_000)})
    found = h.episodes(end_ms=100_000, external={})
    assert [(e.starts_ms, e.ends_ms, e.split_by_gaps) for e in found] == [
        (10_000, 13_000, True), (20_000, 22_000, True)
    ]  # fmt: skip


# -- the command, against Prometheus ------------------------------------------------------------


async def test_backfill_counts_the_history_once(prometheus: Prometheus, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/b.db"
    done = backfill(prometheus.url, store=store)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress where stderr is not a terminal
    summary = json.loads(done.stdout)
    assert summary == {
        "series": SERIES, "episodes": FOUND, "recorded": FOUND - TOO_OLD,
        "counted": FOUND - TOO_OLD - JOINED, "joined": JOINED, "already_there": 0,
        "too_old": TOO_OLD, "refused": 0, "resolutions": FOUND - TOO_OLD - 1, "skipped_series": 0,
        "skipped_samples": 0, "dry_run": False,
    }  # fmt: skip
    first = await answers(store)
    assert "Old" not in first
    disk = first["DiskFull"]
    assert [disk[f"count_{w}"] for w in ("1h", "24h", "7d", "30d")] == [0, 0, 1, 3]
    assert disk["instances"] == 2 and disk["firing"] == 0  # n2 joined n1's incident
    assert _ms(disk["last_resolved"]) == ago(3 * DAY - 70 * MINUTE) + MINUTE  # n2's end
    latency = first["HighLatency"]
    assert [latency[f"count_{w}"] for w in ("1h", "24h", "7d", "30d")] == [1, 2, 2, 2]
    assert latency["firing"] == 1  # the one firing now is recorded firing
    assert _ms(latency["first_seen"]) == ago(150 * MINUTE)  # when it fired, not activeAt
    assert _ms(latency["last_resolved"]) == ago(120 * MINUTE) + MINUTE
    long = first["LongJob"]
    assert _ms(long["last_resolved"]) == ago(10 * HOUR) + 5 * MINUTE  # its own interval
    assert first["Flappy"]["count_7d"] == FLAPS and not first["Flappy"]["flapping"]

    summary = await run(prometheus.url, store=store)
    assert (summary["recorded"], summary["already_there"]) == (0, FOUND - TOO_OLD)
    assert await answers(store) == first


async def test_dry_run_prints_and_stores_nothing(prometheus: Prometheus, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/dry.db"
    done = cli("backfill", "prometheus", "--url", prometheus.url, "--dry-run", store=store)
    assert done.returncode == 0, done.stderr
    *lines, last = done.stdout.splitlines()
    assert len(lines) == FOUND - TOO_OLD
    assert last == (
        f"dry run: {FOUND} episodes in {SERIES} series; {FOUND - TOO_OLD} to record, 1 too old"
        " (over 30 days); nothing stored"
    )
    assert re.fullmatch(
        r'\S+Z  HighLatency \{namespace="prod",service="api"\}  firing', lines[-1]
    ), lines[-1]
    assert "resolved" in lines[0]
    # 12 hours back: the job that fired 14 hours ago and ran 4 is found from its start
    episodes = (await run(prometheus.url, "--since", "12h", "--dry-run", store=store))["episodes"]
    assert [e["alertname"] for e in episodes] == [
        "LongJob", "HighLatency", "Blinking", "Blinking", "HighLatency"
    ]  # fmt: skip
    assert _ms(episodes[0]["at"]) == ago(14 * HOUR)
    assert episodes[1]["occurrence_id"].endswith(f":{ago(150 * MINUTE)}")  # when it fired
    assert episodes[2]["occurrence_id"] == f"am:746dc80cc3dbbc7b:{ago(110 * MINUTE)}"
    assert not await asyncio.to_thread(os.path.exists, f"{tmp_path}/dry.db")


def test_errors_say_one_line_and_store_nothing(prometheus: Prometheus, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/e.db"
    chat = ChatServer()  # answers every POST with {"ok": true}
    try:
        cases = [
            (["--url", f"http://127.0.0.1:{free_port()}"], 3, "cannot reach Prometheus"),
            (["--url", chat.url], 2, "is not a Prometheus API"),
            (["--url", prometheus.url, "--match", '{a=~"("}'], 2, "refused"),
            (["--url", prometheus.url, "--since", "31d"], 2, "at most 30d"),
        ]
        for args, status, words in cases:
            done = cli("backfill", "prometheus", *args, store=store)
            assert done.returncode == status, (args, done.stderr)
            assert len(done.stderr.splitlines()) == 1 and words in done.stderr, done.stderr
            assert done.stdout == ""
    finally:
        chat.close()
    assert not Path(f"{tmp_path}/e.db").exists()


@pytest.mark.parametrize(
    ("option", "words"),
    [
        (["--match", "{severity=page}"], "not a label matcher"),
        (["--match", '{alertstate="pending"}'], "alertstate cannot be matched"),
        (["--since", "yesterday"], "not a duration"),
        (["--since", "0m"], "above 0"),
        (["--step", "100ms"], "1s to 1d"),
        (["--external-label", "cluster"], "NAME=VALUE"),
        (["--url", "prometheus:9090"], "not an http(s) URL"),
        # seen by an attacker: each of these was a traceback
        (["--url", "http://127.0.0.1:99999"], "port must be 1 to 65535"),
        (["--url", "http://127.0.0.1:0"], "port must be 1 to 65535"),
        (["--url", "http://127.0.0.1/\x01"], "is not an http(s) URL"),
        (["--url", "http://127.0.0.1:9090?x=1"], "without a query (?) or fragment (#)"),
        (["--url", "http://127.0.0.1:9090/#top"], "without a query (?) or fragment (#)"),
        (["--since", "99999999999999999999d"], "too long a duration"),
        (["--step", "99999999999999999999999s"], "too long a duration"),
        (["--external-label", "cluster=x\udcff"], "is not UTF-8 text"),
        (["--match", '{a="x\udcff"}'], "is not UTF-8 text"),
    ],
)
def test_bad_options_are_one_line_and_status_2(
    option: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = [] if option[0] == "--url" else ["--url", "http://127.0.0.1:9090"]
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["backfill", "prometheus", *url, *option])
    assert stopped.value.code == 2
    said = capsys.readouterr().err
    assert len(said.splitlines()) == 1 and words in said, said
    assert "Traceback" not in said


async def test_an_interrupted_run_run_again_ends_as_one_clean_run(
    prometheus: Prometheus, tmp_path: Path
) -> None:
    clean, broken = f"sqlite:///{tmp_path}/clean.db", f"sqlite:///{tmp_path}/broken.db"
    await run(prometheus.url, store=clean)
    shown = _killed_midway(prometheus.url, broken)
    assert b"reading Prometheus: 5/5 chunks, 7 series" in shown
    assert re.search(rb"\x1b\[Kseries [0-7]/7, 110 episodes, [1-9]\d* recorded", shown), shown
    summary = await run(prometheus.url, store=broken)
    assert 5 <= summary["already_there"] < FOUND - TOO_OLD  # the run before stopped midway
    assert summary["already_there"] + summary["recorded"] == FOUND - TOO_OLD
    assert await answers(broken) == await answers(clean)


def _killed_midway(url: str, store: str) -> bytes:
    """Run it one episode per write, stderr on a terminal, and kill it (SIGKILL) once its
    progress says some episodes are in: what the terminal showed."""
    command = [sys.executable, "-m", "anomaly_counter.cli", "--store", store, "--project",
               "team-a", "backfill", "prometheus", "--url", url,
               "--external-label", "cluster=test", "--batch-size", "1"]  # fmt: skip
    terminal, side = pty.openpty()
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=side
    )
    os.close(side)
    shown = b""
    try:
        while process.poll() is None:
            if select.select([terminal], [], [], 10)[0]:
                shown += os.read(terminal, 65536)
            recorded = [int(n) for n in re.findall(rb" (\d+) recorded", shown)]
            if recorded and recorded[-1] >= 5:
                process.kill()
                break
    finally:
        process.wait(10)
        os.close(terminal)
    assert process.returncode == -9, shown  # killed, not finished
    return shown


def _iso_ms(ms: int) -> str:
    """A time as Alertmanager's webhook writes the startsAt it got from Prometheus."""
    moment = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{moment}.{ms % 1000:03d}Z"


async def test_the_receiver_does_not_count_backfilled_episodes_again(
    prometheus: Prometheus, tmp_path: Path
) -> None:
    """The history, delivered afterwards by Alertmanager (fingerprint and startsAt as its
    webhook gives them), finds every episode there already, even counting instances."""
    store = f"sqlite:///{tmp_path}/r.db"
    await run(prometheus.url, store=store)
    before = await answers(store)
    alerts = []
    for labels, fired, ends in HISTORY.episodes:
        sent = {**labels, "cluster": "test"}
        alerts.append({
            "status": "firing" if ends is None else "resolved", "labels": sent,
            "annotations": {}, "startsAt": _iso_ms(fired),
            "endsAt": _iso_ms(ends) if ends is not None else "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": fingerprint(sent),
        })  # fmt: skip
    blink = [a for a in alerts if a["labels"]["alertname"] == "Blinking"]
    assert blink[0]["fingerprint"] == "746dc80cc3dbbc7b"  # (a real Alertmanager's)
    settings = Settings(store_url=store, episodes=EpisodeRules(count="instances"))
    with ServiceServer(settings) as service:
        async with service.client(service.token("team-a")) as http:
            r = await http.post("/v1/projects/team-a/alertmanager", json={
                "version": "4", "status": "firing", "receiver": "counter", "alerts": alerts,
            })  # fmt: skip
            assert r.status_code == 200, r.text
            answer = r.json()
    assert (answer["counted"], answer["joined"], answer["too_old"]) == (0, 0, TOO_OLD)
    assert answer["duplicates"] == FOUND - TOO_OLD
    assert await answers(store) == before


# -- end to end: Prometheus evaluating rules, Alertmanager, the receiver, then the backfill ----


@pytest.mark.alertmanager
async def test_ids_match_what_a_real_alertmanager_delivers(tmp_path: Path) -> None:
    """Prometheus evaluates every second a rule that fires one second in two and one with a
    `for` of 1s; a real Alertmanager delivers to the receiver (counting instances, so that an
    id the backfill got wrong would count twice). Then Alertmanager stops, and the backfill
    must find every episode the receiver has, and count only the others."""
    store = f"sqlite:///{tmp_path}/live.db"
    settings = Settings(store_url=store, episodes=EpisodeRules(count="instances"))
    rules = tmp_path / "rules.yml"
    rules.write_text(json.dumps({"groups": [{"name": "live", "interval": "1s", "rules": [
        {"alert": "Blink", "expr": "vector(time() % 2) < 1", "labels": {"severity": "page"}},
        {"alert": "Held", "expr": "vector(time() % 4) < 3", "for": "1s"},
    ]}]}))  # fmt: skip
    with ServiceServer(settings) as service:
        token = service.token("team-a")
        async with service.client(token) as http:

            async def received() -> int:
                r = await http.get("/v1/projects/team-a/anomalies", params={"window": "1h"})
                return sum(a["count_1h"] for a in r.json()["anomalies"])

            with Alertmanager(f"{service.url}/v1/projects/team-a/alertmanager", token) as am:
                config = {
                    "global": {"evaluation_interval": "1s", "external_labels": {"env": "e2e"}},
                    "rule_files": [str(rules)],
                    "alerting": {"alertmanagers": [
                        {"static_configs": [{"targets": [f"127.0.0.1:{am.port}"]}]}
                    ]},
                }  # fmt: skip
                data = Path(tempfile.mkdtemp(prefix="prometheus-", dir=tmp_path))
                with Prometheus(data, config) as live:
                    assert await eventually(lambda: _at_least(received, 3), within=20)
                    assert am.process is not None
                    am.process.terminate()  # no more deliveries: the receiver's stay put
                    am.process.wait(10)
                    await asyncio.sleep(0.3)
                    before = await received()
                    summary = await run(live.url, "--step", "1s", "--since", "1h", store=store,
                                        label="env=e2e", settings=settings)  # fmt: skip
    assert summary["already_there"] == before, (summary, before)
    assert summary["counted"] == summary["episodes"] - before, summary
    assert summary["joined"] == summary["too_old"] == 0


async def _at_least(check: Any, n: int) -> bool:
    return bool(await check() >= n)
