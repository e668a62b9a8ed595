"""Fixtures: real redis-server processes on free ports, both stores, a settable clock."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from anomaly_counter import AnomalyCounter, Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_binary(name: str) -> str:
    """A system binary the test needs: skipped on a user's machine without it, never in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}, and CI must run every test (.ci/run installs it)")
        pytest.skip(message)
    return path


def wait_for_ping(port: int, within: float = 10) -> None:
    """Wait until the redis-server on this port answers."""
    client = redis.Redis(port=port)
    deadline = time.monotonic() + within
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
    finally:
        client.close()


@dataclass
class RedisServer:
    """A redis-server process owned by a test fixture."""

    port: int
    directory: str
    process: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = require_binary("redis-server")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.directory, *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_ping(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(free_port(), directory)
        server.start()
        yield server
        server.stop()


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, persisting every write (AOF, fsync always), so that a
    stop and start keeps what it acknowledged."""
    server = RedisServer(
        free_port(), str(tmp_path), extra=["--appendonly", "yes", "--appendfsync", "always"]
    )
    server.start()
    yield server
    if server.process is not None:
        server.process.send_signal(signal.SIGCONT)  # (a test that froze it)
    server.stop()


@pytest.fixture
def fresh_redis(redis_server: RedisServer) -> RedisServer:
    with redis_server.client() as client:
        client.flushall()
    return redis_server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Three primaries with a replica each, shared by the tests that only read and write."""
    from .cluster import LocalCluster

    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def fresh_cluster(redis_cluster: Any) -> Any:
    redis_cluster.flush()
    return redis_cluster


class Clock:
    """A settable clock, so tests can move through days in milliseconds."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 29, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.cluster),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/counter.db"
    if request.param == "cluster":
        return str(request.getfixturevalue("fresh_cluster").url)
    server: RedisServer = request.getfixturevalue("fresh_redis")
    return server.url


CounterFactory = Callable[..., AnomalyCounter]


@pytest.fixture
def service(store_url: str) -> Iterator[Any]:
    """The service on each store, over real HTTP (uvicorn in a thread)."""
    from .servers import ServiceServer  # (servers imports this module)

    with ServiceServer(Settings(store_url=store_url)) as server:
        yield server


@pytest.fixture
async def make_counter(store_url: str, clock: Clock) -> AsyncIterator[CounterFactory]:
    made: list[AnomalyCounter] = []

    def make(project: str = "team-a", **options: Any) -> AnomalyCounter:
        settings = Settings(store_url=store_url, **options)
        counter = AnomalyCounter.from_url(store_url, project, settings=settings, clock=clock)
        made.append(counter)
        return counter

    yield make
    for counter in made:
        await counter.aclose()


SIG = {"alertname": "PodCrashLoopBackOff", "service": "api", "namespace": "prod"}


# Marks by what a test runs on, for a quicker loop (`pytest -m "not cluster"`); `make test`
# runs everything. Tests of the parametrised stores get theirs from store_url's params.
_MARKED_BY_FIXTURE = {
    "redis_server": "redis", "fresh_redis": "redis", "durable_redis": "redis",
    "redis_cluster": "cluster", "fresh_cluster": "cluster",
}  # fmt: skip
_MARKED_BY_MODULE = {"test_sentinel": "redis", "test_cluster": "cluster",
                     "test_dashboard": "browser", "test_alertmanager": "alertmanager"}  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        marks = {mark for fixture, mark in _MARKED_BY_FIXTURE.items() if fixture in names}
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in _MARKED_BY_MODULE:
            marks.add(_MARKED_BY_MODULE[module])
        for mark in sorted(marks):
            item.add_marker(mark)


# A test that mostly waits (a receiver down for two minutes) is marked ``background(<param id
# part>)``: its matching cases run in a pytest process of their own, started as soon as the run
# is collected, so that the rest of the run goes on meanwhile; each case then reports that
# process's outcome in its place. (The process itself runs them in the usual way.)
_BACKGROUND_CHILD = "ANOMALY_COUNTER_TESTS_IN_BACKGROUND"
_background: list[subprocess.Popen[bytes]] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    if os.environ.get(_BACKGROUND_CHILD) or session.config.option.collectonly:
        return
    for item in session.items:
        marker = item.get_closest_marker("background")
        callspec = getattr(item, "callspec", None)
        if marker is None or (callspec is not None and marker.args[0] not in callspec.id):
            continue
        _run_in_background(item)


def _run_in_background(item: pytest.Item) -> None:
    log = Path(tempfile.mkdtemp(prefix="background-")) / "pytest.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", item.nodeid],
            stdout=out, stderr=subprocess.STDOUT, cwd=item.config.rootpath,
            env={**os.environ, _BACKGROUND_CHILD: "1"},
        )  # fmt: skip
    _background.append(process)

    def runtest() -> None:
        returncode = process.wait()
        if returncode != 0:
            tail = log.read_text(errors="replace")[-6000:]
            pytest.fail(f"in its own pytest process (exit {returncode}):\n{tail}", pytrace=False)

    item.runtest = runtest  # type: ignore[method-assign]


def pytest_sessionfinish(session: pytest.Session) -> None:
    for process in _background:  # (a run stopped early: none is left behind)
        if process.poll() is None:
            process.kill()
            process.wait()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--screenshots",
        metavar="DIR",
        default="",
        help="save the dashboard's pages as PNGs here (make screenshots: docs/screenshots)",
    )
