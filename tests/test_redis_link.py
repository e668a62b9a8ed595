"""The Redis stores' own connections (stores/redis_link.py): TLS, Unix sockets, ACL users and
database numbers on a real server; error replies as redis-py names them; and no use of
redis-py's private internals anywhere in the package (issue 12: a redis-py release changed
them under us; CI also runs the Redis tests against the newest redis-py in range)."""

from __future__ import annotations

import ast
import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import redis.asyncio
import redis.asyncio.sentinel
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)

import anomaly_counter
from anomaly_counter import AnomalyCounter, Settings, StoreUnavailableError
from anomaly_counter.errors import ConfigurationError
from anomaly_counter.stores.redis_link import UNAVAILABLE, reply_error

from .conftest import SIG, RedisServer, free_port, require_binary
from .servers import FaultyProxy

PACKAGE = Path(anomaly_counter.__file__).parent


def _redis_private_names() -> set[str]:
    """The private attribute names of redis-py's clients, pools and connections (class
    attributes and what a new instance sets), which our code must not touch."""
    objects: list[object] = [
        redis.asyncio.Redis(),
        redis.asyncio.ConnectionPool(),
        redis.asyncio.connection.Connection(),
        redis.asyncio.connection.SSLConnection(),
        redis.asyncio.connection.UnixDomainSocketConnection(),
        redis.asyncio.sentinel.Sentinel([("localhost", 26379)]),
    ]
    names: set[str] = set()
    for thing in objects:
        for name in [*dir(type(thing)), *vars(thing)]:
            if name.startswith("_") and not name.startswith("__"):
                names.add(name)
    return names


def _ours(node: ast.expr) -> bool:
    """``self``, ``cls`` or ``super()``: an attribute of our own classes."""
    if isinstance(node, ast.Call):
        node = node.func
        return isinstance(node, ast.Name) and node.id == "super"
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


def _redis_names(tree: ast.Module) -> set[str]:
    """The names a module binds to redis-py's modules and classes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] == "redis":
                names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "redis":
                    names.add((alias.asname or alias.name).split(".")[0])
    return names


def _internals_used(path: Path, private: set[str]) -> Iterator[str]:
    tree = ast.parse(path.read_text(), str(path))
    theirs = _redis_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            modules = []
        for module in modules:
            parts = module.split(".")
            if parts[0] in ("redis", "hiredis") and any(p.startswith("_") for p in parts):
                yield f"{node.lineno}: imports {module}"
        if isinstance(node, ast.ClassDef):  # (a subclass depends on their insides)
            for base in node.bases:
                root = base
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in theirs:
                    yield f"{node.lineno}: subclasses {ast.unparse(base)}"
        if isinstance(node, ast.Attribute) and node.attr in private and not _ours(node.value):
            yield f"{node.lineno}: {ast.unparse(node)}"


def test_no_private_redis_py_internals_in_the_package() -> None:
    private = _redis_private_names()
    assert {"_writer", "_reader", "_parser"} <= private  # (what the check looks for)
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{use}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for use in _internals_used(path, private)
    ]
    assert not found, "redis-py internals used:\n" + "\n".join(found)


def test_error_replies_are_redis_py_exceptions() -> None:
    assert isinstance(reply_error("NOSCRIPT No matching script."), NoScriptError)
    assert isinstance(reply_error("READONLY You can't write against a replica."), ReadOnlyError)
    moved = reply_error("MOVED 3999 127.0.0.1:6381")
    assert isinstance(moved, MovedError)
    assert (moved.slot_id, moved.host, moved.port) == (3999, "127.0.0.1", 6381)
    ask = reply_error("ASK 12 [::1]:7000")
    assert isinstance(ask, AskError) and (ask.host, ask.port) == ("[::1]", 7000)
    loading = reply_error("LOADING Redis is loading the dataset in memory")
    assert isinstance(loading, BusyLoadingError) and isinstance(loading, UNAVAILABLE)
    err = reply_error("ERR wrong number of arguments for 'get' command")
    assert type(err) is ResponseError and str(err).startswith("wrong number")
    other = reply_error("WRONGTYPE Operation against a key holding the wrong kind of value")
    assert type(other) is ResponseError and str(other).startswith("WRONGTYPE ")


class _Certificates:
    """A CA and a server certificate for localhost and 127.0.0.1, made by openssl."""

    def __init__(self, directory: Path) -> None:
        openssl = require_binary("openssl")
        self.ca, self.cert, self.key = (
            directory / "ca.crt",
            directory / "s.crt",
            directory / "s.key",
        )
        ca_key, request = directory / "ca.key", directory / "s.csr"
        (directory / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        for command in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", self.ca,
             "-days", "2", "-subj", "/CN=test-ca"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key, "-out", request,
             "-subj", "/CN=localhost"],
            ["x509", "-req", "-in", request, "-CA", self.ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", self.cert, "-days", "2", "-extfile", directory / "ext.cnf"],
        ):  # fmt: skip
            subprocess.run([openssl, *map(str, command)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def secured_redis() -> Iterator[tuple[RedisServer, int, Path, _Certificates]]:
    """A redis-server on TLS (port) and a Unix socket, with an ACL user ``app``."""
    directory = Path(tempfile.mkdtemp(prefix="rl"))  # (a short path: a socket's is limited)
    try:
        certificates = _Certificates(directory)
        tls_port, socket = free_port(), directory / "redis.sock"
        server = RedisServer(free_port(), str(directory), extra=[
            "--tls-port", str(tls_port), "--tls-cert-file", str(certificates.cert),
            "--tls-key-file", str(certificates.key), "--tls-ca-cert-file", str(certificates.ca),
            "--tls-auth-clients", "no", "--unixsocket", str(socket),
        ])  # fmt: skip
        server.start()
        with server.client() as client:
            client.execute_command("ACL", "SETUSER", "app", "on", ">p@ss", "~*", "+@all")
        yield server, tls_port, socket, certificates
        server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _count(url: str) -> int:
    settings = Settings(store_url=url, strict=True, store_timeout=2.0)
    async with AnomalyCounter.from_url(url, "team-a", settings=settings) as counter:
        return (await counter.record_anomaly(SIG)).count_24h


async def test_tls_unix_sockets_users_and_databases(
    secured_redis: tuple[RedisServer, int, Path, _Certificates],
) -> None:
    _, tls_port, socket, certificates = secured_redis
    ca = f"ssl_ca_certs={certificates.ca}"
    assert await _count(f"rediss://localhost:{tls_port}/2?{ca}") == 1
    assert await _count(f"rediss://app:p%40ss@127.0.0.1:{tls_port}/2?{ca}") == 2
    assert await _count(f"rediss://127.0.0.1:{tls_port}/2?ssl_cert_reqs=none") == 3
    assert await _count(f"unix://app:p%40ss@{socket}?db=5") == 1
    assert await _count(f"unix://{socket}?db=5") == 2
    for database, keys in ((0, 0), (2, 1), (5, 1)):
        with redis.Redis(unix_socket_path=str(socket), db=database) as client:
            assert len(client.keys("*:s")) == keys, database  # an anomaly's signature key
    for refused in (
        f"rediss://localhost:{tls_port}/0",  # a certificate of an unknown CA
        f"unix://app:wrong@{socket}?db=5",
        f"redis://127.0.0.1:{tls_port}/0",  # no TLS on a TLS port
    ):
        with pytest.raises(StoreUnavailableError):
            await _count(refused)
    with pytest.raises(ConfigurationError, match="ssl_cert_reqs"):
        AnomalyCounter.from_url(f"rediss://localhost:{tls_port}/0?ssl_cert_reqs=maybe")
    with pytest.raises(ConfigurationError, match="ssl_bogus"):
        AnomalyCounter.from_url(f"rediss://localhost:{tls_port}/0?ssl_bogus=1")


async def test_connections_the_server_closed_while_idle_are_not_used(
    fresh_redis: RedisServer,
) -> None:
    settings = Settings(store_url=fresh_redis.url, strict=True)
    async with AnomalyCounter.from_url(settings=settings) as counter:
        await asyncio.gather(*(counter.record_anomaly(SIG) for _ in range(5)))
        with fresh_redis.client() as client:
            assert client.client_kill_filter(_type="normal", skipme=True) >= 1
        await asyncio.sleep(0.1)  # (the loop sees them closed)
        assert (await counter.record_anomaly(SIG)).count_24h == 6  # strict: no error


async def test_a_server_that_trickles_its_reply_cannot_hold_a_call_past_the_timeout(
    fresh_redis: RedisServer,
) -> None:
    proxy = FaultyProxy(fresh_redis.port)
    await proxy.start()
    settings = Settings(store_url=f"redis://127.0.0.1:{proxy.port}/0", store_timeout=0.3)
    counter = AnomalyCounter.from_url(settings=replace(settings, strict=True))
    try:
        key = (await counter.record_anomaly(SIG)).anomaly_key
        proxy.trickle = 0.05  # a byte every 50 ms: each wait is short, the reply takes seconds
        began = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="Timeout"):
            await counter.get_frequency(key)
        assert time.monotonic() - began < 1.0
    finally:
        await counter.aclose()
        await proxy.stop()
