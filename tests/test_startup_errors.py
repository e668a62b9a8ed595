"""Start-up errors as one line, never a traceback, and secrets kept out of errors and logs
(issue 11, finding 6): a store file that is not a database, paths that cannot hold one, a
store that cannot be reached when ``serve`` starts, and tokens sent in a URL's query string.

Run as users run them: the CLI and ``serve`` as processes of their own, real exit codes, real
files, real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from anomaly_counter import AnomalyCounter, ConfigurationError, Settings
from anomaly_counter.errors import StoreFileError
from anomaly_counter.service.app import create_app
from anomaly_counter.service.server import uvicorn_config

from .conftest import SIG, free_port
from .servers import ServeProcess, eventually, make_token

KEY = "0123456789abcdef"
EVERY_COMMAND = [
    ["record", "--alert-name", "X"],
    ["show", KEY],
    ["search", "crash"],
    ["history", KEY],
    ["timeline", KEY],
    ["top"],
    ["top", "--level", "REPEAT"],
    ["repairs", KEY],
    ["repair", KEY, "restart_pod", "--success"],
    ["dispositions"],
    ["dispositions", KEY],
    ["dispose", KEY, "auto_repair"],
    ["fix", KEY, "raised the limit"],
    ["unfix", KEY],
    ["replay", "--bundled"],
    ["token", "create"],
    ["token", "list"],
    ["token", "revoke", KEY],
]


def cli(
    *args: str, store: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "anomaly_counter.cli", "--store", store, *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def serve(
    store: str, cwd: Path, *options: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``serve`` that is expected to refuse to start: it must exit by itself, soon."""
    return cli("serve", "--port", str(free_port()), *options, store=store, cwd=cwd, env=env,
               timeout=20)  # fmt: skip


def assert_one_line(done: subprocess.CompletedProcess[str], status: int, *says: str) -> str:
    """The command failed with ``status`` and one line on stderr that says each of ``says``."""
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert done.returncode == status, (done.returncode, done.stderr)
    for text in says:
        assert text in lines[0], lines[0]
    return lines[0]


# -- 1. a file that is not an SQLite database ------------------------------------------------

NOT_A_DATABASE = {
    "random bytes": os.urandom(8192),
    "a text file": b"store_url = 'sqlite:///x.db'\n",
    "an SQLite header, then garbage": b"SQLite format 3\x00" + os.urandom(4080),
}


@pytest.mark.parametrize("content", NOT_A_DATABASE.values(), ids=NOT_A_DATABASE.keys())
def test_a_file_that_is_not_a_database_is_one_line_and_exit_2(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "x.db").write_bytes(content)
    done = cli("top", store="sqlite:///x.db", cwd=tmp_path)
    assert_one_line(done, 2, "sqlite:///x.db is not an SQLite database (file is not a database)")
    assert done.stdout == ""
    assert (tmp_path / "x.db").read_bytes() == content  # left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]  # no -wal, no -shm


@pytest.mark.parametrize("args", EVERY_COMMAND, ids=" ".join)
def test_every_command_says_so(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "x.db").write_text("not a database\n")
    done = cli(*args, store=f"sqlite:///{tmp_path}/x.db", cwd=tmp_path)
    assert_one_line(done, 2, f"sqlite:///{tmp_path}/x.db is not an SQLite database")


def test_serve_refuses_to_start_on_it(tmp_path: Path) -> None:
    (tmp_path / "x.db").write_bytes(os.urandom(8192))
    for options in ((), ("--demo-token",), ("--start-on-spool",)):
        done = serve("sqlite:///x.db", tmp_path, *options)
        assert_one_line(done, 2, "sqlite:///x.db is not an SQLite database")
        assert "http://" not in done.stdout  # never said it serves
    assert not (tmp_path / "anomaly-counter-spool").exists()  # and left nothing behind


async def test_the_library_raises_a_named_error(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    path.write_text("not a database\n")
    url = f"sqlite:///{path}"
    for strict in (False, True):  # never answered as "degraded": retrying cannot help
        async with AnomalyCounter.from_url(url, "team-a", strict=strict) as counter:
            with pytest.raises(StoreFileError, match="is not an SQLite database") as raised:
                await counter.record_anomaly(SIG)
            assert isinstance(raised.value, ConfigurationError)
            with pytest.raises(StoreFileError):
                await counter.top_anomalies()


# -- 2. paths that cannot hold a database ----------------------------------------------------


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Path]:
    """A directory this process cannot create files in: by its mode, or for root (whom modes
    do not stop) by the immutable attribute."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    if os.geteuid() != 0:
        directory.chmod(0o555)
        yield directory
        directory.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(directory)]).returncode != 0:
        pytest.skip("running as root, and no way to make a directory unwritable")
    try:
        yield directory
    finally:
        subprocess.run([chattr, "-i", str(directory)], check=True)


def _unusable(tmp_path: Path, case: str, unwritable: Path) -> tuple[str, str]:
    """(store URL, what the error must say) of each kind of unusable path."""
    if case == "a NUL in the path":
        return "sqlite:///%00x.db", "NUL"
    if case == "a directory":
        (tmp_path / "d").mkdir()
        return f"sqlite:///{tmp_path}/d", f"sqlite:///{tmp_path}/d is a directory"
    if case == "under a regular file":
        (tmp_path / "f").write_text("")
        return (
            f"sqlite:///{tmp_path}/f/sub/x.db",
            f"sqlite:///{tmp_path}/f/sub/x.db is under {tmp_path}/f, which is not a directory",
        )
    assert case == "in an unwritable directory"
    return f"sqlite:///{unwritable}/x.db", f"{unwritable} is not writable"


UNUSABLE = ["a NUL in the path", "a directory", "under a regular file",
            "in an unwritable directory"]  # fmt: skip


@pytest.mark.parametrize("case", UNUSABLE)
@pytest.mark.parametrize("command", [["top"], ["record", "--alert-name", "X"]], ids=" ".join)
def test_an_unusable_path_is_one_line_and_exit_2(
    tmp_path: Path, unwritable: Path, case: str, command: list[str]
) -> None:
    url, says = _unusable(tmp_path, case, unwritable)
    assert_one_line(cli(*command, store=url, cwd=tmp_path), 2, says)


@pytest.mark.parametrize("case", UNUSABLE)
def test_serve_refuses_to_start_on_an_unusable_path(
    tmp_path: Path, unwritable: Path, case: str
) -> None:
    url, says = _unusable(tmp_path, case, unwritable)
    done = serve(url, tmp_path)
    assert_one_line(done, 2, says)
    assert "http://" not in done.stdout


def test_an_existing_database_in_an_unwritable_directory(tmp_path: Path) -> None:
    """SQLite's WAL keeps files beside the database: the directory must be writable too."""
    assert (
        cli("record", "--alert-name", "X", store="sqlite:///d/x.db", cwd=tmp_path).returncode == 0
    )
    for leftover in ("x.db-wal", "x.db-shm"):
        (tmp_path / "d" / leftover).unlink(missing_ok=True)
    with contextlib.ExitStack() as undo:
        if os.geteuid() != 0:
            (tmp_path / "d").chmod(0o555)
            undo.callback((tmp_path / "d").chmod, 0o755)
        else:
            chattr = shutil.which("chattr")
            if chattr is None or subprocess.run([chattr, "+i", str(tmp_path / "d")]).returncode:
                pytest.skip("running as root, and no way to make a directory unwritable")
            undo.callback(subprocess.run, [chattr, "-i", str(tmp_path / "d")], check=True)
        done = cli("top", store="sqlite:///d/x.db", cwd=tmp_path)
    assert_one_line(done, 2, "sqlite:///d/x.db is in d, which is not writable")


# -- 3. serve checks its store at start ------------------------------------------------------


def test_serve_refuses_a_store_it_cannot_reach(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: a typo in the port
    done = serve(f"redis://:secret@127.0.0.1:{port}/0", tmp_path)
    line = assert_one_line(done, 3, f"redis://:***@127.0.0.1:{port}/0", "--start-on-spool")
    assert "secret" not in done.stdout + done.stderr, line
    assert "http://" not in done.stdout  # never said it serves
    assert not (tmp_path / "anomaly-counter-spool").exists()


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_serve_starts_on_the_spool_when_told_to(tmp_path: Path, how: str) -> None:
    port, store_port = free_port(), free_port()
    store = f"redis://:secret@127.0.0.1:{store_port}/0"
    flag = ["--start-on-spool"] if how == "flag" else []
    env = {"ANOMALY_COUNTER_START_ON_SPOOL": "true"} if how == "environment" else {}
    command = [sys.executable, "-m", "anomaly_counter.cli", "--store", store, "serve",
               "--port", str(port), *flag]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, **env},
    )  # fmt: skip
    try:
        ready = None
        for _ in range(300):
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz")
                break
            except httpx.HTTPError:
                assert process.poll() is None, "serve did not start"
                time.sleep(0.05)
        assert ready is not None and ready.status_code == 200
        assert ready.text.startswith("on spool")
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=15)
    assert "Traceback" not in output
    assert "secret" not in output
    (warning,) = [line for line in output.splitlines() if "store_unreachable_at_start" in line]
    assert f"redis://:***@127.0.0.1:{store_port}/0" in warning and "warning" in warning


def test_start_on_spool_needs_a_spool(tmp_path: Path) -> None:
    done = serve("sqlite:///x.db", tmp_path, "--start-on-spool", "--no-spool")
    assert_one_line(done, 2, "--start-on-spool", "--no-spool")


# -- 4. tokens in a URL's query string -------------------------------------------------------


ROUTES = [("GET", "/v1/projects/team-a/anomalies"), ("GET", "/healthz"),
          ("POST", "/v1/projects/team-a/occurrences")]  # fmt: skip


def _queries(token: str) -> list[str]:
    encoded = token.replace("_", "%5F")
    return [f"token={token}", f"window=24h&access_token={token}", f"x={encoded}", token,
            f"q=Bearer+{token}"]  # fmt: skip


async def test_a_token_in_the_query_is_refused_and_never_logged(tmp_path: Path) -> None:
    with ServeProcess(f"sqlite:///{tmp_path}/a.db", tmp_path, "--access-log") as server:
        token = server.token
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            for query in _queries(token):
                for method, path in ROUTES:
                    r = await http.request(
                        method, f"{path}?{query}", json={"signature": SIG},
                        headers={"Authorization": f"Bearer {token}"},
                    )  # fmt: skip
                    assert r.status_code == 400, (method, path, query, r.text)
                    assert "Authorization header" in r.json()["detail"]
                    assert token not in r.text and token.split("_")[2] not in r.text
            fine = await http.get(
                "/v1/projects/team-a/anomalies?window=7d",
                headers={"Authorization": f"Bearer {token}"},
            )
            assert fine.status_code == 200  # a query without a token is served as ever

        async def logged_all() -> bool:
            return "window=7d" in "".join(server.output)

        assert await eventually(logged_all)
    # (what serve printed before its log begins shows the demo token: that is its job)
    logged = "".join(server.output).split("INFO:", 1)[1]
    access = [line for line in logged.splitlines() if '" 400' in line]
    assert len(access) == len(ROUTES) * len(_queries(token)), logged  # each refusal logged...
    assert token.split("_")[2] not in logged  # ...without the token
    assert 'GET /v1/projects/team-a/anomalies?window=7d HTTP/1.1" 200' in logged


async def test_the_in_process_server_hides_tokens_from_its_access_log(tmp_path: Path) -> None:
    """The tests' servers and ``serve`` share ``uvicorn_config``: the log's guard is there."""
    settings = Settings(store_url=f"sqlite:///{tmp_path}/a.db")
    token = make_token(settings, "team-a")
    port = free_port()
    config = uvicorn_config(create_app(settings), settings, access_log=True, log_level="info",
                            host="127.0.0.1", port=port)  # fmt: skip
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    access = logging.getLogger("uvicorn.access")
    keep = Keep()
    access.addHandler(keep)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            r = await http.get(f"/v1/projects/team-a/anomalies?window=24h&token={token}")
            assert r.status_code == 400 and token not in r.text
    finally:
        server.should_exit = True
        thread.join(10)
        access.removeHandler(keep)
    (line,) = [x for x in lines if "/v1/projects/team-a/anomalies" in x]
    assert token.split("_", 2)[2] not in line  # (the whole secret: it may hold "_" itself)
    assert "?window=24h&token=***" in line


# -- 5. no password in what the CLI prints ---------------------------------------------------


@pytest.mark.parametrize("args", EVERY_COMMAND, ids=" ".join)
def test_no_password_in_what_the_cli_prints(tmp_path: Path, args: list[str]) -> None:
    port = free_port()
    done = cli(*args, store=f"redis://:secret@127.0.0.1:{port}/0", cwd=tmp_path)
    assert_one_line(done, 3, f"127.0.0.1:{port}")
    assert "secret" not in done.stdout + done.stderr


# -- and Ctrl-C ------------------------------------------------------------------------------


def test_ctrl_c_stops_serve_without_a_traceback(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "anomaly_counter.cli", "--store", "sqlite:///x.db", "serve",
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                assert process.poll() is None, "serve did not start"
                time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=15)
    assert "Application shutdown complete" in output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert process.returncode == 130
