"""Connections to one Redis server, for the hot path of the Redis stores.

The connections are our own: RESP3 on an asyncio transport, commands packed by
``hiredis.pack_command`` and replies parsed by ``hiredis.Reader`` (both public, and in C). redis-py
is used only through its public API: its URL parsing (a pool's ``connection_class`` and
``connection_kwargs`` say where to connect and how), its exception classes, and Sentinel's
``discover_master``. Nothing here depends on how a redis-py release builds its own connections,
so the stores work with any redis-py in the range pyproject.toml admits.

Why not redis-py's connections: its per-command machinery (retry wrapper, response callbacks,
metrics) costs more than a round trip, and on Python 3.11 its ``send_packed_command`` wraps each
write in ``asyncio.wait_for``, which starts a task per write. Here a round trip writes its
packed commands to the transport at once, and waits only for its replies (and, rarely, for a
write the socket could not take), each wait under the store timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.asyncio.connection import ConnectionPool, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.sentinel import MasterNotFoundError, SentinelConnectionPool
from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterDownError,
    ExecAbortError,
    InvalidResponse,
    MasterDownError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ConfigurationError, StoreUnavailableError

UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)

# Error replies, by their first word, as redis-py names them. Those that say the server cannot
# serve (loading its data set, or refusing the credentials) are raised, as redis-py raises them:
# ConnectionError subclasses, so UNAVAILABLE. The others are replies, returned as values.
_ERRORS: dict[str, type[Exception]] = {
    "NOSCRIPT": NoScriptError,
    "MOVED": MovedError,
    "ASK": AskError,
    "TRYAGAIN": TryAgainError,
    "CLUSTERDOWN": ClusterDownError,
    "MASTERDOWN": MasterDownError,
    "CROSSSLOT": ClusterCrossSlotError,
    "READONLY": ReadOnlyError,
    "OOM": OutOfMemoryError,
    "EXECABORT": ExecAbortError,
    "NOPERM": NoPermissionError,
    "LOADING": BusyLoadingError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
}
_MORE = object()  # hiredis: no whole reply yet (not False: RESP3's #f is a reply)
_PUSH = getattr(hiredis, "PushNotification", ())  # out-of-band RESP3 pushes, skipped
_SSL_OPTIONS = frozenset(
    {"ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_data", "ssl_ca_path",
     "ssl_check_hostname", "ssl_min_version", "ssl_ciphers", "ssl_password",
     "ssl_include_verify_flags", "ssl_exclude_verify_flags"}
)  # fmt: skip
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def reply_error(message: str) -> Exception:
    """The exception of an error reply, as redis-py makes it: the class its first word names,
    given the rest of the message (a ResponseError of the whole message for another word)."""
    code, _, rest = message.partition(" ")
    if code == "ERR":
        if rest == "max number of clients reached":
            return RedisConnectionError(rest)
        return ResponseError(rest)
    kind = _ERRORS.get(code)
    return kind(rest) if kind is not None else ResponseError(message)


class Connection(asyncio.Protocol):
    """One connection to a Redis server, speaking RESP3. One task uses it at a time."""

    def __init__(self, address: str, timeout: float, master_only: bool = False) -> None:
        self.address = address
        self._timeout = timeout
        # a Sentinel's master: READONLY means it is a replica now, and the connection is stale
        self._master_only = master_only
        self.stale_master = False
        self._parser = hiredis.Reader(
            notEnoughData=_MORE, replyError=reply_error, protocolError=InvalidResponse
        )
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._failure: Exception | None = None  # why it cannot be used any more
        self._paused = False
        # The store timeout runs from the last write or whole reply, not from the last byte: a
        # server that sends a reply a byte at a time cannot hold a call past it.
        self._deadline = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # (uvloop's: no subclass)
        self._closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._failure is None:
            reason = f": {exc}" if exc else ""
            self._failure = RedisConnectionError(f"Connection to {self.address} lost{reason}")
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- use -----------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Still open, as far as is known without a round trip (a server that closed it, or
        died, has been seen to: the loop reads its end of the connection meanwhile)."""
        return self._failure is None

    @property
    def congested(self) -> bool:
        """More is waiting to be written than the transport holds without asking to wait."""
        return self._paused

    def write(self, packed: Sequence[bytes]) -> None:
        if self._failure is not None:
            raise self._failure
        assert self._transport is not None
        self._transport.write(packed[0] if len(packed) == 1 else b"".join(packed))
        self._progress()

    async def drain(self) -> None:
        """Wait until the transport has passed most of what was written to the socket."""
        while self._paused:
            if self._failure is not None:
                raise self._failure
            await self._wait("writing to")

    async def read_replies(self, count: int) -> list[Any]:
        """The next ``count`` replies; an error reply is returned as its exception, not raised
        (unless it says the server cannot serve: see _ERRORS)."""
        replies: list[Any] = []
        gets = self._parser.gets
        while len(replies) < count:
            reply = gets()
            if reply is _MORE:
                if self._failure is not None:
                    raise self._failure
                await self._wait("reading from")
            elif isinstance(reply, Exception):
                self._progress()
                replies.append(self._error(reply))
            elif not isinstance(reply, _PUSH):
                self._progress()
                replies.append(reply)
        return replies

    def _progress(self) -> None:
        self._deadline = asyncio.get_running_loop().time() + self._timeout

    def _error(self, reply: Exception) -> Exception:
        if isinstance(reply, RedisConnectionError):
            raise reply
        if self._master_only and isinstance(reply, ReadOnlyError):
            # after a failover, the former master serves on as a replica of the new one
            self.stale_master = True
            raise RedisConnectionError(f"{self.address} is no longer the master ({reply})")
        return reply

    async def _wait(self, doing: str) -> None:
        """Until data comes, the connection is lost, or the transport takes writes again; at
        most until the store timeout has passed since the last write or whole reply (then the
        connection is closed: a reply may still come)."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        left = max(0.0, self._deadline - loop.time()) if self._deadline else self._timeout
        timer = loop.call_later(left, self._expire, waiter, doing)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _expire(self, waiter: asyncio.Future[None], doing: str) -> None:
        if waiter.done():
            return
        error = RedisTimeoutError(f"Timeout {doing} {self.address}")
        if self._failure is None:
            self._failure = error
        waiter.set_exception(error)
        self.abort()

    def socket(self) -> Any:
        return self._transport.get_extra_info("socket") if self._transport else None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def closed(self) -> None:
        if self._closed is not None:
            await self._closed


@dataclass(frozen=True)
class _Target:
    """Where a link connects, and how: read once from a redis-py pool's public attributes
    (``connection_class`` and ``connection_kwargs``, which redis-py's URL parsing fills)."""

    host: str
    port: int
    path: str | None  # a Unix socket
    db: int
    username: str | None
    password: str | None
    client_name: str | None
    keepalive: bool
    tls: dict[str, Any] | None  # the ssl_* options, for rediss://
    sentinel: SentinelConnectionPool | None  # a Sentinel's master: found on each connect

    @classmethod
    def of(cls, pool: ConnectionPool) -> _Target:
        options = dict(pool.connection_kwargs)
        kind = pool.connection_class
        unknown = {n for n in options if n.startswith("ssl_")} - _SSL_OPTIONS
        if unknown:
            raise ConfigurationError(
                f"setting store_url: {', '.join(sorted(unknown))} is not supported"
            )
        tls = (
            {n: options[n] for n in _SSL_OPTIONS if options.get(n) is not None}
            if issubclass(kind, SSLConnection)
            else None
        )
        if tls is not None:
            _verify_mode(tls)  # a wrong value is told at once, not at the first connection
        path = options.get("path") if issubclass(kind, UnixDomainSocketConnection) else None
        if issubclass(kind, UnixDomainSocketConnection) and not path:  # (not localhost:6379)
            raise ConfigurationError("setting store_url: a unix:// URL needs the socket's path")
        return cls(
            host=str(options.get("host") or "localhost"),
            port=int(options.get("port") or 6379),
            path=str(path) if path else None,
            db=int(options.get("db") or 0),
            username=options.get("username") or None,
            password=options.get("password") or None,
            client_name=options.get("client_name") or None,
            keepalive=bool(options.get("socket_keepalive", True)),
            tls=tls,
            sentinel=pool if isinstance(pool, SentinelConnectionPool) else None,
        )

    def tls_context(self) -> ssl.SSLContext:
        """The TLS context of the ssl_* options, as redis-py reads them (required certificates
        and a checked host name unless told otherwise)."""
        assert self.tls is not None
        options = self.tls
        context = ssl.create_default_context()
        mode = _verify_mode(options)
        check = options.get("ssl_check_hostname", True)
        if isinstance(check, str):
            check = check.lower() not in ("0", "false", "no", "off", "")
        context.check_hostname = bool(check) and mode != ssl.CERT_NONE
        context.verify_mode = mode
        for flag in options.get("ssl_include_verify_flags") or ():
            context.verify_flags |= flag
        for flag in options.get("ssl_exclude_verify_flags") or ():
            context.verify_flags &= ~flag
        if options.get("ssl_certfile") or options.get("ssl_keyfile"):
            context.load_cert_chain(
                certfile=options.get("ssl_certfile"),  # type: ignore[arg-type]
                keyfile=options.get("ssl_keyfile"),
                password=options.get("ssl_password"),
            )
        if options.get("ssl_ca_certs") or options.get("ssl_ca_path") or options.get("ssl_ca_data"):
            context.load_verify_locations(
                cafile=options.get("ssl_ca_certs"),
                capath=options.get("ssl_ca_path"),
                cadata=options.get("ssl_ca_data"),
            )
        version = options.get("ssl_min_version")
        if version is not None:
            context.minimum_version = (
                ssl.TLSVersion[version] if isinstance(version, str) else ssl.TLSVersion(version)
            )
        if options.get("ssl_ciphers"):
            context.set_ciphers(options["ssl_ciphers"])
        return context

    def handshake(self) -> list[bytes]:
        """HELLO 3 (with AUTH and SETNAME as needed), and SELECT unless database 0."""
        hello: list[Any] = ["HELLO", 3]
        if self.password is not None:
            hello += ["AUTH", self.username or "default", self.password]
        if self.client_name:
            hello += ["SETNAME", self.client_name]
        commands = [tuple(hello)] + ([("SELECT", self.db)] if self.db else [])
        return [hiredis.pack_command(c) for c in commands]


def _verify_mode(options: dict[str, Any]) -> ssl.VerifyMode:
    reqs = options.get("ssl_cert_reqs", "required")
    mode = _CERT_REQS.get(reqs.lower()) if isinstance(reqs, str) else ssl.VerifyMode(reqs)
    if mode is None:
        raise ConfigurationError(
            f"setting store_url: ssl_cert_reqs={reqs!r} is not one of {', '.join(_CERT_REQS)}"
        )
    return mode


class Link:
    """The connections of one server, opened here on first need and kept between round trips.

    ``pool`` is the redis-py pool a client made of the store's URL: only its public
    ``connection_class`` and ``connection_kwargs`` are read (and, for a Sentinel's master, its
    ``sentinel_manager`` and ``service_name``); it never opens a connection."""

    def __init__(self, pool: ConnectionPool, timeout: float, name: str = "redis store") -> None:
        self.name = name
        self._timeout = timeout
        self._target = _Target.of(pool)
        self._tls: ssl.SSLContext | None = None
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()

    def unavailable(self, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(f"{self.name}: {exc}")

    async def round_trip(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send commands on one connection and read their replies (errors as values)."""
        connection = await self.connection()
        try:
            connection.write([hiredis.pack_command(c) for c in commands])
            if connection.congested:
                await connection.drain()
            replies = await connection.read_replies(len(commands))
        except BaseException as exc:
            await self.discard(connection)
            if isinstance(exc, UNAVAILABLE):
                raise self.unavailable(exc) from exc
            raise
        self.give_back(connection)
        return replies

    async def send(self, connection: Connection, packed: list[bytes]) -> None:
        """Write packed commands: to the transport at once; only when it holds more than it
        takes without asking to wait does this wait, under the store timeout."""
        connection.write(packed)
        if connection.congested:
            await connection.drain()

    async def connection(self) -> Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.usable:
                return connection
            self._open.discard(connection)  # closed by the server, or lost, while idle
        try:
            return await self._connect()
        except UNAVAILABLE as exc:
            raise self.unavailable(exc) from exc

    def give_back(self, connection: Connection) -> None:
        if connection.usable:
            self._idle.append(connection)
        else:
            self._open.discard(connection)

    async def discard(self, connection: Connection) -> None:
        """A connection that failed mid-way: a reply may still be on its way, so it is closed
        (a new one is opened when one is next needed)."""
        connection.abort()
        self._open.discard(connection)
        if connection.stale_master:  # a failover: the others lead to the former master too
            for other in self._idle:
                other.abort()
                self._open.discard(other)
            self._idle.clear()

    async def aclose(self) -> None:
        connections = list(self._open)
        self._idle.clear()
        self._open.clear()
        for connection in connections:
            connection.abort()
        with contextlib.suppress(TimeoutError):  # (each closes on the loop's next turn)
            async with asyncio.timeout(1):
                for connection in connections:
                    await connection.closed()

    async def _connect(self) -> Connection:
        target = self._target
        loop = asyncio.get_running_loop()
        host, port = target.host, target.port
        if target.sentinel is not None:
            pool = target.sentinel
            try:
                async with asyncio.timeout(self._timeout):
                    try:
                        found = await pool.sentinel_manager.discover_master(pool.service_name)
                    except RedisError as exc:
                        raise RedisConnectionError(await _sentinels_failed(pool, exc)) from None
            except TimeoutError:
                raise RedisTimeoutError(
                    f"Timeout asking the sentinels for master {pool.service_name!r}"
                ) from None
            host, port = str(found[0]), int(found[1])
        address = target.path or f"{host}:{port}"
        connection = Connection(address, self._timeout, master_only=target.sentinel is not None)
        try:
            async with asyncio.timeout(self._timeout):
                if target.tls is not None and self._tls is None:
                    self._tls = target.tls_context()
                if target.path:
                    await loop.create_unix_connection(
                        lambda: connection, target.path, ssl=self._tls
                    )
                else:
                    await loop.create_connection(
                        lambda: connection, host, port,
                        ssl=self._tls, server_hostname=host if self._tls else None,
                    )  # fmt: skip
                self._open.add(connection)
                if target.keepalive and not target.path:
                    sock = connection.socket()
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                packed = target.handshake()
                connection.write(packed)
                replies = await connection.read_replies(len(packed))
        except BaseException as exc:
            connection.abort()
            self._open.discard(connection)
            if isinstance(exc, TimeoutError) and not isinstance(exc, RedisTimeoutError):
                raise RedisTimeoutError(f"Timeout connecting to {address}") from None
            if isinstance(exc, OSError):
                raise RedisConnectionError(_not_connected(address, exc)) from exc
            if isinstance(exc, InvalidResponse):  # (an HTTP server, say, on a Redis port)
                raise RedisConnectionError(f"{address} does not speak Redis ({exc})") from exc
            if isinstance(exc, AuthenticationError):
                if target.password is None:  # (the server's own text is 200 characters)
                    raise RedisConnectionError(
                        f"{address} wants a password, and the store URL gives none"
                    ) from exc
                raise RedisConnectionError(f"{address} refused the credentials: {exc}") from exc
            raise
        for reply in replies:
            if isinstance(reply, Exception):
                connection.abort()
                self._open.discard(connection)
                raise RedisConnectionError(f"{address} refused the connection's setup: {reply}")
        return connection


def _not_connected(address: str, exc: OSError) -> str:
    """A connection that could not be made, as redis-py says it, but in the system's words
    (asyncio's are "Connect call failed ('127.0.0.1', 6379)")."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno and exc.errno > 0 and not isinstance(exc, ssl.SSLError):
        reason = os.strerror(exc.errno)
    return f"Error {exc.errno} connecting to {address}. {reason}."


async def _sentinels_failed(pool: SentinelConnectionPool, exc: RedisError) -> str:
    """Why no sentinel named the master, in one line. redis-py's MasterNotFoundError holds the
    whole repr of each sentinel's client (1,500 characters) but not why it failed: that is
    asked again of each, with a PING."""
    name = pool.service_name
    if not isinstance(exc, MasterNotFoundError):  # (a sentinel's answer that made no sense)
        return f"no sentinel named master {name!r}: {_cut(str(exc))}"
    sentinels = pool.sentinel_manager.sentinels
    causes = []
    for sentinel in sentinels:
        try:
            await sentinel.ping()
        except RedisError as cause:
            options = sentinel.connection_pool.connection_kwargs
            address = f"{options.get('host')}:{options.get('port')}"
            origin = cause.__context__
            causes.append(
                _not_connected(address, origin) if isinstance(origin, OSError) else str(cause)
            )
    if len(causes) < len(sentinels):
        return f"the sentinels know no master {name!r} that is up"
    more = f" (and {len(causes) - 1} more)" if len(causes) > 1 else ""
    return f"no sentinel answered: {_cut(causes[0])}{more}"


def _cut(text: str, width: int = 120) -> str:
    """A server's or a client's words, cut to fit in a line of ours."""
    return text if len(text) <= width else text[: width - 1] + "…"
