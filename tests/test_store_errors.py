"""Every error a store answers with reaches callers as one of ours (issue 12: a Lua
``ResponseError`` and SQLite's ``IntegrityError`` escaped unwrapped): StoreUnavailableError when
the store cannot take it for now (a replica, loading, out of memory), StoreError when a retry
cannot help (a permission, a constraint). Real servers and files, no doubles."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from anomaly_counter import AnomalyCounter, Settings, StoreError, StoreUnavailableError

from .conftest import SIG, RedisServer, free_port
from .servers import ServiceServer, v1


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
