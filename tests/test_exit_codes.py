"""Every case of the exit-status table in README.md's "Command line" section, run as a user
runs it: the command in a process of its own, its status, and one line on stderr that names
the problem, never a traceback.

Already tested elsewhere, with the status and the one line (not again here; C is test_cli.py,
SE test_startup_errors.py, ST test_store_errors.py):
- 0, done: every command in C
- 1, several anomalies of that name (listed): C::test_names_history_timeline_and_undoing_a_fix
- 2, a store file that is not an SQLite database:
  SE::test_a_file_that_is_not_a_database_is_one_line_and_exit_2, ::test_every_command_says_so,
  ::test_serve_refuses_to_start_on_it
- 2, a path that cannot hold one: SE::test_an_unusable_path_is_one_line_and_exit_2,
  ::test_serve_refuses_to_start_on_an_unusable_path,
  ::test_an_existing_database_in_an_unwritable_directory
- 2, a read of an SQLite store that is not there:
  C::test_a_read_says_where_it_looked_and_never_makes_a_store
- 2, a port serve cannot listen on (in use): C::test_a_busy_port_is_said_before_serving_and_exits_2
- 2, serve --start-on-spool with --no-spool: SE::test_start_on_spool_needs_a_spool
- 3, a store that cannot be reached: C::test_unreachable_store_exits_3,
  SE::test_no_password_in_what_the_cli_prints (every command),
  ST::test_a_store_that_cannot_be_reached_is_one_line_and_exit_3 (every kind of store URL)
- 3, serve at start, unless --start-on-spool: SE::test_serve_refuses_a_store_it_cannot_reach,
  ::test_serve_starts_on_the_spool_when_told_to, ST::test_serve_says_it_in_one_line_too
- 3, a store that refused the operation (StoreError):
  ST::test_the_cli_says_a_store_error_in_one_line
- 130, serve stopped with Ctrl-C: SE::test_ctrl_c_stops_serve_without_a_traceback

Here: the rest, and the cases test_cli.py checks only as "not 0", or without the one line.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import free_port
from .test_startup_errors import assert_one_line, cli, serve
from .test_store_errors import _listener

KEY = "0123456789abcdef"  # a key no anomaly of the store has


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An SQLite store holding one anomaly (DiskFull), and its directory: nothing below
    changes it."""
    directory = tmp_path_factory.mktemp("exit-codes")
    url = f"sqlite:///{directory}/store.db"
    done = cli("record", "--alert-name", "DiskFull", store=url, cwd=directory)
    assert done.returncode == 0, done.stderr
    yield url, directory


# -- 1: no anomaly of that key or name, no fix to undo (and no such token or dead letter) ----

NOT_THERE = {
    "no anomaly of that key": (["show", KEY], f"no anomaly '{KEY}' in project 'default'"),
    "no anomaly of that name": (["history", "NoSuchAlert"], "no anomaly 'NoSuchAlert'"),
    "a write to no anomaly": (["dispose", "NoSuchAlert", "auto_repair"],
                              "no anomaly 'NoSuchAlert'"),
    "no fix to undo": (["unfix", KEY], f"anomaly {KEY} has no permanent fix in force"),
    "no such token": (["token", "revoke", "tok123"], "no token 'tok123'"),
    "no such dead letter": (["notices", "retry", "n-1"], "no such dead letter"),
}  # fmt: skip


@pytest.mark.parametrize("case", NOT_THERE)
def test_1_what_it_names_is_not_there(store: tuple[str, Path], case: str) -> None:
    args, says = NOT_THERE[case]
    url, directory = store
    assert_one_line(cli(*args, store=url, cwd=directory), 1, says)


# -- 2: bad input or configuration ----------------------------------------------------------

BAD_INPUT = {
    "an unknown command": (["frobnicate"], "invalid choice: 'frobnicate'"),
    "an unknown option": (["top", "--bogus"], "unrecognized arguments: --bogus"),
    "a flag's value": (["top", "--limit", "many"], "argument --limit: invalid int value: 'many'"),
    "a missing argument": (["search"], "the following arguments are required: query"),
    "a value the library refuses": (["top", "--limit", "0"], "limit must be"),
    "a time without a zone": (["record", "--alert-name", "X", "--at", "2026-11-28T01:00:00"],
                              "has no time zone"),
    "a command without what it needs": (["notices", "retry"], "name the notices to retry"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUT)
def test_2_a_flag_or_an_argument(store: tuple[str, Path], case: str) -> None:
    args, says = BAD_INPUT[case]
    url, directory = store
    assert_one_line(cli(*args, store=url, cwd=directory), 2, says)


SETTINGS_FILES = {
    "not there": (None, "setting config: cannot read"),
    "not TOML": ("x = [\n", "setting config: cannot read"),
    "an unknown setting": ("nosuch = 1\n", "unknown setting 'nosuch'"),
    "a value of the wrong kind": ("thresholds = 3\n", "setting thresholds must be a table"),
}


@pytest.mark.parametrize("case", SETTINGS_FILES)
def test_2_a_settings_file(store: tuple[str, Path], tmp_path: Path, case: str) -> None:
    content, says = SETTINGS_FILES[case]
    url, _ = store
    config = tmp_path / "settings.toml"
    if content is not None:
        config.write_text(content)
    assert_one_line(cli("--config", str(config), "top", store=url, cwd=tmp_path), 2, says)


def test_2_a_setting_from_the_environment(store: tuple[str, Path]) -> None:
    url, directory = store
    done = cli("top", store=url, cwd=directory, env={"ANOMALY_COUNTER_STORE_TIMEOUT": "soon"})
    assert_one_line(done, 2, "setting ANOMALY_COUNTER_STORE_TIMEOUT must be a float, got 'soon'")


STORE_URLS = {
    "an unknown scheme": ("mongodb://:secret@db/x", "unknown scheme 'mongodb'"),
    "a Redis path that is not a database": ("redis://:secret@127.0.0.1:6379/abc",
                                            "must be a database number"),
    "a port that is not a number": ("redis://:secret@127.0.0.1:port/0", "Port could not be cast"),
    "a Sentinel URL without its master": ("redis+sentinel://:secret@127.0.0.1:26379",
                                          "is not redis+sentinel://host:port"),
    "an IPv6 bracket not closed": ("redis://:secret@[::1", "Invalid IPv6 URL"),
    "a socket URL without its path": ("unix://", "a unix:// URL needs the socket's path"),
    "a cluster node that is not host:port": ("redis+cluster://:secret@node:x",
                                             "cluster node address 'node:x' is not host:port"),
    "a TLS option's value": ("rediss://:secret@127.0.0.1:6380/0?ssl_cert_reqs=maybe",
                             "ssl_cert_reqs='maybe' is not one of"),
}  # fmt: skip


@pytest.mark.parametrize("case", STORE_URLS)
def test_2_a_store_url(tmp_path: Path, case: str) -> None:
    url, says = STORE_URLS[case]
    done = cli("top", store=url, cwd=tmp_path)
    assert_one_line(done, 2, "setting store_url: ", says)
    assert "secret" not in done.stdout + done.stderr


STREAMS = {
    "not JSON": ('{"offset_s": 1, "type": "alert", "signature": {"alertname": "A"}}\n\nnot json\n',
                 "line 3: not JSON"),
    "a field missing": ('{"offset_s": 0, "type": "repair", "signature": {"alertname": "A"}}\n',
                        "line 1: missing or unknown field 'action'"),
    "not an object": ("[1, 2]\n", "line 1: not a JSON object"),
}  # fmt: skip


@pytest.mark.parametrize("case", STREAMS)
def test_2_a_line_of_a_replay_stream(tmp_path: Path, case: str) -> None:
    content, says = STREAMS[case]
    (tmp_path / "events.jsonl").write_text(content)
    done = cli("replay", "events.jsonl", store="sqlite:///replayed.db", cwd=tmp_path)
    assert_one_line(done, 2, says)


@pytest.mark.parametrize(
    ("host", "says"),
    [("192.0.2.1", "Cannot assign requested address (setting host, or --host)"),  # TEST-NET-1
     ("no-such-host.invalid", "cannot listen on no-such-host.invalid:")],
    ids=["an address of another machine", "a name that does not resolve"],
)  # fmt: skip
def test_2_an_address_serve_cannot_listen_on(tmp_path: Path, host: str, says: str) -> None:
    done = serve("sqlite:///x.db", tmp_path, "--host", host)
    assert_one_line(done, 2, says)
    assert done.stdout == ""  # said before anything of serving


# -- 3: a store that cannot be used for now --------------------------------------------------


def test_3_a_store_file_another_process_holds_locked(tmp_path: Path) -> None:
    """A store file that cannot be opened for a reason that may pass."""
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN EXCLUSIVE")  # (a rollback journal: nobody else may even read)
        done = cli("top", store=f"sqlite:///{path}", cwd=tmp_path,
                   env={"ANOMALY_COUNTER_STORE_TIMEOUT": "0.3"})  # fmt: skip
    finally:
        holder.close()
    assert_one_line(done, 3, f"store unavailable: sqlite:///{path}: ", "database is locked")


def test_3_the_store_is_down_and_the_spool_full(tmp_path: Path) -> None:
    done = cli("record", "--alert-name", "X", store=f"redis://:secret@127.0.0.1:{free_port()}/0",
               cwd=tmp_path, env={"ANOMALY_COUNTER_SPOOL_DIR": str(tmp_path / "spool"),
                                  "ANOMALY_COUNTER_SPOOL_MAX_BYTES": "1"})  # fmt: skip
    assert_one_line(done, 3, "store unavailable: redis://:***@127.0.0.1:", "the spool is full")
    assert "secret" not in done.stdout + done.stderr


# -- 130: stopped with Ctrl-C ----------------------------------------------------------------


def test_130_ctrl_c_stops_a_command_waiting_for_its_store(tmp_path: Path) -> None:
    connected = threading.Event()
    with _listener(lambda _: connected.set()) as port:  # (a store that never answers)
        process = subprocess.Popen(
            [sys.executable, "-m", "anomaly_counter.cli", "--store",
             f"redis://127.0.0.1:{port}/0", "record", "--alert-name", "X"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
            env={**os.environ, "ANOMALY_COUNTER_STORE_TIMEOUT": "60"},
            # (as a terminal has it: a shell that runs the tests in the background ignores it)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        try:
            assert connected.wait(30), "the command never reached its store"
            process.send_signal(signal.SIGINT)
            output, errors = process.communicate(timeout=15)
        finally:
            process.kill()
    done = subprocess.CompletedProcess(process.args, process.returncode, output, errors)
    assert_one_line(done, 130, "anomaly-counter: stopped (Ctrl-C)")
