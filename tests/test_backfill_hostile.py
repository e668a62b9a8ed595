"""`backfill prometheus` against answers no Prometheus sends and options no one should give:
a stub HTTP server (a real one, in a thread) pretends to be Prometheus; each case ends in a
skipped and counted sample or series, or one line and exit status 2 or 3, never a traceback,
and nothing stored that should not be."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from anomaly_counter.cli import main
from anomaly_counter.errors import SourceUnavailableError
from anomaly_counter.importers.prometheus_api import Prometheus

from .test_backfill import answers, run

Answer = tuple[int, dict[str, str], bytes]  # status, headers, body


class StubPrometheus:
    """Answers as ``answer(method, path, form)`` says, in a thread; ``hang``: answer nothing
    until the stub closes."""

    def __init__(self, answer: Callable[[str, str, dict[str, str]], Answer]) -> None:
        self.answer = answer
        self.hang = False
        self.closing = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                if outer.hang:
                    outer.closing.wait(10)
                    return
                status, headers, text = outer.answer(method, urlsplit(self.path).path, form)
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def do_GET(self) -> None:
                self._reply("GET")

            def do_POST(self) -> None:
                self._reply("POST")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Callable[[Callable[[str, str, dict[str, str]], Answer]], StubPrometheus]]:
    started: list[StubPrometheus] = []

    def start(answer: Callable[[str, str, dict[str, str]], Answer]) -> StubPrometheus:
        started.append(StubPrometheus(answer))
        return started[-1]

    yield start
    for server in started:
        server.close()


def _json(value: Any, status: int = 200) -> Answer:
    return status, {}, json.dumps(value).encode()


def matrix(
    state: list[dict[str, Any]], firing: list[dict[str, Any]], rules: bytes | None = None
) -> Callable[[str, str, dict[str, str]], Answer]:
    """A Prometheus whose ALERTS_FOR_STATE and ALERTS{alertstate="firing"} are these series
    (whatever the time asked), with these rules (raw JSON) or none."""

    def answer(method: str, path: str, form: dict[str, str]) -> Answer:
        if path == "/api/v1/rules":
            return (200, {}, rules) if rules else _json({"status": "error"}, 404)
        result = state if form["query"].startswith("ALERTS_FOR_STATE") else firing
        return _json({"status": "success", "data": {"resultType": "matrix", "result": result}})

    return answer


def cli(*args: str | bytes, store: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "anomaly_counter.cli", "--store", store,
               "--project", "team-a", "backfill", "prometheus", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def in_process(*args: str, store: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main`` in this process (no interpreter to start): its exit status, stdout, stderr."""
    status = 0
    try:
        main(["--store", store, "--project", "team-a", "backfill", "prometheus", *args])
    except SystemExit as stopped:
        status = int(stopped.code or 0)
    said = capsys.readouterr()
    assert "Traceback" not in said.err
    return status, said.out, said.err


NOW_S = time.time() // 60 * 60
T0 = NOW_S - 30 * 60  # the good alert activated and fired half an hour ago


def _series(labels: dict[str, Any], *samples: list[Any]) -> dict[str, Any]:
    return {"metric": labels, "values": list(samples)}


def hostile_series() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    good = {"alertname": "Good", "service": "api"}
    state = [
        _series(good, [T0, str(int(T0))], [T0 + 60, str(int(T0))]),
        _series({"alertname": "NaN"}, [T0, "NaN"], [T0 + 60, "NaN"]),  # 2 samples
        _series({"alertname": "Inf"}, [T0, "+Inf"], [T0 + 60, "-Inf"]),  # 2 samples
        _series({"alertname": "Number", "code": 5}, [T0, str(int(T0))]),  # a series
        _series({"alertname": "Surrogate\ud800"}, [T0, str(int(T0))]),  # a series
        _series({"alertname": "Late"}, [1e15, str(int(T0))], ["Infinity", "1"], ["x"]),  # 3
        {"metric": {"alertname": "NoValues"}},  # a series
    ]
    firing = [
        _series(good, [T0, "1"], [T0 + 60, "1"]),
        _series({"alertname": "NaN"}, [T0, "1"]),  # its activeAt unknown: split by gaps
        _series({"alertname": "Inf"}, [T0, "1"]),
        _series({"alertname": "Number", "code": 5}, [T0, "1"]),  # a series
        _series({"alertname": "Surrogate\ud800"}, [T0, "1"]),  # a series
        _series({"alertname": "Late"}, [1e15, "1"], [T0, "NaN"]),  # 2 samples
    ]
    return state, firing


SKIPPED_SERIES, SKIPPED_SAMPLES = 5, 9


async def test_malformed_samples_and_series_are_skipped_and_counted(
    stub: Callable[..., StubPrometheus], tmp_path: Path
) -> None:
    """NaN and infinite activeAt values, a numeric label value, a label that is not UTF-8,
    a time of 1e15 s or "Infinity", a series without samples: each skipped and counted; the
    rest recorded."""
    server = stub(matrix(*hostile_series()))
    store = f"sqlite:///{tmp_path}/h.db"
    dry = await run(server.url, "--since", "1h", "--dry-run", store=store)
    assert dry["summary"]["skipped_series"] == SKIPPED_SERIES
    assert dry["summary"]["skipped_samples"] == SKIPPED_SAMPLES
    assert sorted(e["alertname"] for e in dry["episodes"]) == ["Good", "Inf", "NaN"]
    assert not (tmp_path / "h.db").exists()
    summary = await run(server.url, "--since", "1h", store=store)
    assert (summary["episodes"], summary["recorded"], summary["refused"]) == (3, 3, 0)
    assert (summary["skipped_series"], summary["skipped_samples"]) == (5, 9)
    assert sorted(await answers(store)) == ["Good", "Inf", "NaN"]


def test_the_summary_line_names_what_was_skipped(
    stub: Callable[..., StubPrometheus], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = stub(matrix(*hostile_series()))
    status, out, _ = in_process("--url", server.url, "--since", "1h", "--dry-run",
                                store=f"sqlite:///{tmp_path}/s.db", capsys=capsys)  # fmt: skip
    assert status == 0
    assert out.splitlines()[-1] == (
        "dry run: 3 episodes in 3 series; 3 to record; skipped as malformed: 5 series,"
        " 9 samples; nothing stored"
    )


async def test_odd_rules_are_not_trusted(stub: Callable[..., StubPrometheus]) -> None:
    """A rule's `for` of 1e400 (infinite once parsed), or a label value that is not a string:
    the rules API tells nothing then; a sound answer is read."""
    rule = {"type": "alerting", "name": "A", "labels": {"severity": "page"}, "duration": 120}

    def rules(*listed: dict[str, Any]) -> bytes:
        return json.dumps({"data": {"groups": [{"rules": list(listed)}]}}).encode()

    infinite = rules({**rule, "duration": 0}).replace(b'"duration": 0', b'"duration": 1e400')
    for odd, expected in (
        (infinite, []),
        (rules(rule, {**rule, "labels": {"a": 1}}), []),
        (rules(rule, {**rule, "duration": "NaN"}), []),
        (rules(rule), [("A", 120_000)]),
    ):
        server = stub(matrix([], [], rules=odd))
        prometheus = Prometheus(server.url)
        try:
            rules = await prometheus.alert_rules()
        finally:
            await prometheus.aclose()
        assert [(r.name, r.hold_ms) for r in rules] == expected, odd


def _redirect(to: str) -> Callable[[str, str, dict[str, str]], Answer]:
    def answer(method: str, path: str, form: dict[str, str]) -> Answer:
        if path.startswith("/prom/"):  # where it redirects to: a Prometheus
            if method == "GET" and path.endswith("/query"):
                return _json({"status": "error", "errorType": "bad_data",
                              "error": "parse error: no expression found"}, 400)  # fmt: skip
            return _json({"status": "success", "data": {"resultType": "matrix", "result": []}})
        return 302, {"Location": to + path}, b""

    return answer


def test_redirects_are_said(
    stub: Callable[..., StubPrometheus], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A redirect to itself (a loop), and one elsewhere (httpx would have turned the POST
    into a GET): one line that says it redirected, and where, exit status 2."""
    loop = stub(_redirect(""))
    elsewhere = stub(_redirect("/prom"))
    store = f"sqlite:///{tmp_path}/r.db"
    for server, where in ((loop, "/api/v1/query"), (elsewhere, "/prom/api/v1/query")):
        status, _, said = in_process("--url", server.url, store=store, capsys=capsys)
        assert status == 2, said
        assert len(said.splitlines()) == 1, said
        assert "redirected the query (HTTP 302 to " + where in said, said
    assert not (tmp_path / "r.db").exists()


async def test_a_prometheus_that_never_answers_is_waited_for_once(
    stub: Callable[..., StubPrometheus],
) -> None:
    """The rules request times out as a query does: one wait, and the message says it."""
    server = stub(matrix([], []))
    server.hang = True
    prometheus = Prometheus(server.url, timeout=1.0)
    began = time.monotonic()
    try:
        with pytest.raises(SourceUnavailableError, match="did not answer within 1 s"):
            await prometheus.alert_rules()
    finally:
        await prometheus.aclose()
    assert time.monotonic() - began < 5  # (one wait of 1 s; generous for a busy machine)


def test_a_prometheus_clock_ahead_is_taken_as_the_receiver_takes_it(
    stub: Callable[..., StubPrometheus], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An alert that fired 10 minutes after our clock: the receiver records it at 5 minutes
    from now, and so does the backfill, saying its real start and why."""
    fired = NOW_S + 10 * 60
    labels = {"alertname": "Ahead", "service": "api"}
    server = stub(
        matrix([_series(labels, [fired, str(int(fired))])], [_series(labels, [fired, "1"])])
    )
    store = f"sqlite:///{tmp_path}/a.db"
    status, _, said = in_process("--url", server.url, "--since", "1h", store=store, capsys=capsys)
    assert status == 0, said
    real = datetime.fromtimestamp(fired, UTC).isoformat(timespec="milliseconds")
    assert "Prometheus's clock ahead of it?" in said and real in said, said
    assert "refused" not in said


def test_a_clock_ahead_keeps_the_real_start_in_the_id(
    stub: Callable[..., StubPrometheus], tmp_path: Path
) -> None:
    fired = NOW_S + 10 * 60
    labels = {"alertname": "Ahead", "service": "api"}
    server = stub(
        matrix([_series(labels, [fired, str(int(fired))])], [_series(labels, [fired, "1"])])
    )
    done = cli("--url", server.url, "--since", "1h", store=f"sqlite:///{tmp_path}/i.db")
    assert done.returncode == 0, done.stderr
    assert "1 recorded (1 counted" in done.stdout, done.stdout
    done = cli(
        "--url", server.url, "--since", "1h", "--dry-run", store=f"sqlite:///{tmp_path}/i.db"
    )
    (line, _) = done.stdout.splitlines()
    assert line.startswith(datetime.fromtimestamp(fired, UTC).strftime("%Y-%m-%dT")), line


def test_a_url_httpx_cannot_use_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A host idna refuses (``xn--``): said before anything is sent, the store not made."""
    status, out, said = in_process("--url", "http://xn--:9090", store=f"sqlite:///{tmp_path}/x.db",
                                   capsys=capsys)  # fmt: skip
    assert status == 2 and out == "", said
    assert len(said.splitlines()) == 1 and "cannot use 'http://xn--:9090'" in said, said
    assert not (tmp_path / "x.db").exists()


def test_argv_bytes_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    """As a shell passes `cluster=$(printf 'x\\xff')`: raw bytes in argv."""
    done = cli("--url", "http://127.0.0.1:9", "--external-label", b"cluster=x\xff",
               store=f"sqlite:///{tmp_path}/u.db")  # fmt: skip
    assert done.returncode == 2 and "is not UTF-8 text" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
