"""Connections to one Redis server, for the hot path of the Redis stores.

redis-py keeps the connections (pooling, authentication, timeouts, TLS); this module sends
packed commands on them and reads the replies itself, skipping redis-py's per-command
machinery (retry wrapper, response callbacks, metrics), which costs more than a round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import StoreUnavailableError

UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)

_PACKING: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def hiredis_packing(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """The connection class with commands packed by hiredis, in C: redis-py's asyncio
    connections pack in Python, which costs more than the whole server-side script."""
    if base in _PACKING:
        return _PACKING[base]

    class HiredisPacking(base):  # type: ignore[valid-type,misc]
        def pack_command(self, *args: Any) -> list[bytes]:
            if isinstance(args[0], str) and " " in args[0]:
                args = (*args[0].split(), *args[1:])
            return [hiredis.pack_command(args)]

    HiredisPacking.__name__ = f"HiredisPacking{base.__name__}"
    _PACKING[base] = HiredisPacking
    return HiredisPacking


async def read_reply(connection: AbstractConnection) -> Any:
    """One reply; an error reply is returned as its exception, not raised."""
    try:
        return await connection.read_response()
    except ResponseError as exc:
        return exc


class Link:
    """The connections of one server: taken from redis-py's pool, and kept here between round
    trips (taking one from the pool and giving it back costs a lock and bookkeeping)."""

    def __init__(self, pool: ConnectionPool, timeout: float, name: str = "redis store") -> None:
        self.pool = pool
        self.name = name
        self._timeout = timeout
        self._idle: list[AbstractConnection] = []

    def unavailable(self, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(f"{self.name}: {exc}")

    async def round_trip(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send commands on one connection and read their replies (errors as values)."""
        connection = await self.connection()
        try:
            await self.send(connection, [hiredis.pack_command(c) for c in commands])
            replies = [await read_reply(connection) for _ in commands]
        except BaseException as exc:
            await self.discard(connection)
            if isinstance(exc, UNAVAILABLE):
                raise self.unavailable(exc) from exc
            raise
        self.give_back(connection)
        return replies

    async def send(self, connection: AbstractConnection, packed: list[bytes]) -> None:
        """Write packed commands. redis-py's send_packed_command wraps every write in
        asyncio.wait_for, which on Python 3.11 starts a task per write: more than the rest of a
        call costs. Here the bytes go to the transport at once, and only a write the socket
        could not take whole waits, under the store timeout."""
        if not connection.is_connected:
            await connection.connect()  # type: ignore[no-untyped-call]
        writer = connection._writer  # redis-py 8.1 (pinned): the connection's StreamWriter
        assert writer is not None
        writer.writelines(packed)
        if writer.transport.get_write_buffer_size():
            try:
                async with asyncio.timeout(self._timeout):
                    await writer.drain()
            except TimeoutError:
                await connection.disconnect(nowait=True)
                raise RedisTimeoutError(f"timeout writing to the {self.name}") from None

    async def connection(self) -> AbstractConnection:
        if self._idle:
            return self._idle.pop()
        try:
            connection: AbstractConnection = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        except UNAVAILABLE as exc:
            raise self.unavailable(exc) from exc
        return connection

    def give_back(self, connection: AbstractConnection) -> None:
        self._idle.append(connection)

    async def discard(self, connection: AbstractConnection) -> None:
        """A connection that failed mid-way: a reply may still be on its way, so it is closed
        (the pool opens a new one when it is next needed)."""
        await connection.disconnect()
        await self.pool.release(connection)

    async def aclose(self) -> None:
        while self._idle:
            await self.pool.release(self._idle.pop())
        await self.pool.disconnect()
