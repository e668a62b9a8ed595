"""Every error a store answers with reaches callers as one of ours (issue 12: a Lua
``ResponseError`` and SQLite's ``IntegrityError`` escaped unwrapped): StoreUnavailableError when
the store cannot take it for now (a replica, loading, out of memory), StoreError when a retry
cannot help (a permission, a constraint). Real servers and files, no doubles."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from anomaly_counter import AnomalyCounter, Settings, StoreError, StoreUnavailableError

from .conftest import SIG, RedisServer, free_port
from .servers import ServiceServer, v1
from .test_startup_errors import assert_one_line, cli, serve


@pytest.fixture
def denied_user(fresh_redis: RedisServer) -> Iterator[str]:
    """A Redis user who may do everything but run scripts: the URL that logs in as it."""
    with fresh_redis.client() as client:
        client.execute_command("ACL", "SETUSER", "noscripts", "on", ">pw", "~*", "+@all",
                               "-evalsha", "-eval", "-script")  # fmt: skip
    yield f"redis://noscripts:pw@127.0.0.1:{fresh_redis.port}/0"
    with fresh_redis.client() as client:
        client.execute_command("ACL", "DELUSER", "noscripts")


async def test_a_command_the_store_denies_is_a_store_error(denied_user: str) -> None:
    settings = Settings(store_url=denied_user, strict=True)
    async with AnomalyCounter.from_url(settings=settings) as counter:
        with pytest.raises(StoreError, match=r"redis store: .*permissions") as raised:
            await counter.record_anomaly(SIG)
        assert "pw" not in str(raised.value)


def test_the_cli_says_a_store_error_in_one_line(denied_user: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "anomaly_counter.cli", "--store", denied_user, "record",
         "--alert-name", "X"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "error: store error: redis store:" in done.stderr and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


async def test_the_api_answers_500_with_no_detail_of_the_store(denied_user: str) -> None:
    with ServiceServer(Settings(store_url=denied_user)) as server:
        async with server.client(server.token("team-a")) as http:
            r = await http.post(v1("/occurrences"), json={"signature": SIG})
            assert r.status_code == 500
            assert r.json() == {"detail": "the store refused the operation (see the service's log)"}


async def test_a_replica_is_unavailable_for_now(fresh_redis: RedisServer, tmp_path: Path) -> None:
    replica = RedisServer(free_port(), str(tmp_path), extra=["--replicaof", "127.0.0.1",
                                                             str(fresh_redis.port)])  # fmt: skip
    replica.start()
    try:
        settings = Settings(store_url=replica.url, strict=True)
        async with AnomalyCounter.from_url(settings=settings) as counter:
            with pytest.raises(StoreUnavailableError, match="read only replica"):
                await counter.record_anomaly(SIG)
        with_spool = Settings(store_url=replica.url, spool_dir=str(tmp_path / "spool"))
        async with AnomalyCounter.from_url(settings=with_spool) as counter:
            assert (await counter.record_anomaly(SIG)).spooled  # kept until it can be written
    finally:
        replica.stop()


async def test_a_constraint_sqlite_enforces_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "counter.db"
    async with AnomalyCounter.from_url(f"sqlite:///{path}") as counter:
        await counter.record_anomaly(SIG)  # (the file and its tables)
    with sqlite3.connect(path) as db:  # a rule of the deployment's: no new anomalies
        db.execute(
            "CREATE TRIGGER frozen BEFORE INSERT ON anomalies"
            " BEGIN SELECT RAISE(ABORT, 'frozen'); END"
        )
    settings = Settings(store_url=f"sqlite:///{path}", strict=True)
    async with AnomalyCounter.from_url(settings=settings) as counter:
        with pytest.raises(StoreError, match="frozen"):
            await counter.record_anomaly({**SIG, "alertname": "Other"})
        assert (await counter.record_anomaly(SIG)).count_24h == 2  # the rest still works


# -- a store that cannot be reached: one line naming it, exit 3, soon ------------------------
#
# Tried as a new user would, with every kind of store URL: a closed port printed a line, but a
# Sentinel that could not be reached printed "Timeout asking the sentinels" after the whole
# store timeout (redis-py retried each sentinel, a second apart) and, with a longer timeout,
# 2,000 characters of its clients' reprs; a server that is not Redis (HTTP, garbage) printed a
# traceback; a wrong password did not say which server refused it; a Cluster with several
# seeds repeated every seed's failure.

TIMEOUT = 0.5  # store_timeout for these: each case waits at most about this long
ENV = {"ANOMALY_COUNTER_STORE_TIMEOUT": str(TIMEOUT)}
# characters of the line besides the URL, which is as long as the user made it (200 in all
# for redis://:***@127.0.0.1:6379/0)
LONGEST = 170


@contextlib.contextmanager
def _listener(answer: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server on a free port that answers each connection with ``answer``."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve_forever() -> None:
        with contextlib.suppress(OSError):  # (closed at the end)
            while True:
                connection, _ = server.accept()
                held.append(connection)
                answer(connection)

    threading.Thread(target=serve_forever, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for connection in held:
            connection.close()


def _garbage(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.recv(1024)
        connection.sendall(b"\x00\xffnot a redis reply\r\n")


def _silence(connection: socket.socket) -> None:
    """Take the connection, and never say anything."""


@contextlib.contextmanager
def _http_server() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def guarded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A redis-server of its own that wants the password "right" (a real one: Redis's own
    answer to a wrong password, and to none)."""
    server = RedisServer(free_port(), str(tmp_path_factory.mktemp("guarded")))
    server.start()
    with server.client() as client:
        client.config_set("requirepass", "right")
    yield server.port
    server.stop()


@pytest.fixture(scope="module")
def unreachable(guarded_redis: int) -> Iterator[dict[str, tuple[str, str]]]:
    """Each kind of store that cannot be used: (URL, what its line must say of the cause)."""
    closed, other = free_port(), free_port()  # nothing listens on these
    with _listener(_garbage) as garbage, _listener(_silence) as silent, _http_server() as http:
        yield {
            "closed port": (f"redis://:secret@127.0.0.1:{closed}/0",
                            f"connecting to 127.0.0.1:{closed}. Connection refused"),
            "TLS, closed port": (f"rediss://:secret@127.0.0.1:{closed}/0",
                                 f"connecting to 127.0.0.1:{closed}. Connection refused"),
            "no such socket": ("unix:///nonexistent.sock",
                               "connecting to /nonexistent.sock. No such file or directory"),
            "sentinels, closed ports": (
                f"redis+sentinel://:secret@127.0.0.1:{closed},127.0.0.1:{other}/mymaster",
                f"no sentinel answered: Error 111 connecting to 127.0.0.1:{closed}. Connection"
                " refused",
            ),
            "cluster, closed ports": (
                f"redis+cluster://:secret@127.0.0.1:{closed},127.0.0.1:{other}",
                "no node gave the slot map: Error 111 connecting to 127.0.0.1:",
            ),
            "wrong password": (f"redis://:secret@127.0.0.1:{guarded_redis}/0",
                               f"127.0.0.1:{guarded_redis} refused the credentials"),
            "no password": (f"redis://127.0.0.1:{guarded_redis}/0",
                            f"127.0.0.1:{guarded_redis} wants a password"),
            # (resolved or not in time: either way, the name is said)
            "no such host": ("redis://:secret@no-such-host.invalid:6379/0",
                             "connecting to no-such-host.invalid:6379"),
            "not Redis: garbage": (f"redis://:secret@127.0.0.1:{garbage}/0",
                                   f"127.0.0.1:{garbage} does not speak Redis"),
            "not Redis: HTTP": (f"redis://:secret@127.0.0.1:{http}/0",
                                f"127.0.0.1:{http} does not speak Redis"),
            "sentinel that is HTTP": (f"redis+sentinel://127.0.0.1:{http}/mymaster",
                                      "no sentinel named master 'mymaster': Protocol error"),
            "cluster node that is HTTP": (f"redis+cluster://127.0.0.1:{http}",
                                          f"127.0.0.1:{http} does not speak Redis"),
            "silent": (f"redis://:secret@127.0.0.1:{silent}/0",
                       f"Timeout connecting to 127.0.0.1:{silent}"),
            "TLS to a server without": (f"rediss://:right@127.0.0.1:{guarded_redis}/0",
                                        f"Timeout connecting to 127.0.0.1:{guarded_redis}"),
        }  # fmt: skip


CASES = ["closed port", "TLS, closed port", "no such socket", "sentinels, closed ports",
         "cluster, closed ports", "wrong password", "no password", "no such host",
         "not Redis: garbage", "not Redis: HTTP", "sentinel that is HTTP",
         "cluster node that is HTTP", "silent", "TLS to a server without"]  # fmt: skip


def _shown(url: str) -> str:
    return url.replace(":secret@", ":***@").replace(":right@", ":***@")


@pytest.mark.parametrize("case", CASES)
def test_a_store_that_cannot_be_reached_is_one_line_and_exit_3(
    tmp_path: Path, unreachable: dict[str, tuple[str, str]], case: str
) -> None:
    url, cause = unreachable[case]
    started = time.monotonic()
    done = cli("top", store=url, cwd=tmp_path, env=ENV)
    took = time.monotonic() - started
    line = assert_one_line(done, 3, f"store unavailable: {_shown(url)}: ", cause)
    assert len(line) - len(_shown(url)) <= LONGEST, (len(line), line)
    assert "secret" not in done.stdout + done.stderr and "right" not in line
    assert took < TIMEOUT + 5, took  # (a process's start, and at most one store timeout)


@pytest.mark.parametrize("case", ["sentinels, closed ports", "cluster, closed ports",
                                  "not Redis: HTTP"])  # fmt: skip
def test_serve_says_it_in_one_line_too(
    tmp_path: Path, unreachable: dict[str, tuple[str, str]], case: str
) -> None:
    url, cause = unreachable[case]
    done = serve(url, tmp_path, env=ENV)
    line = assert_one_line(done, 3, _shown(url), cause, "--start-on-spool")
    assert len(line) - len(_shown(url)) <= LONGEST + 70, line  # (and how to start it anyway)
    assert "secret" not in done.stdout + done.stderr and "http://" not in done.stdout
