"""Redis Cluster store (``redis+cluster://host:port,host:port,...``).

The same keys and scripts as the one-server store: all of an anomaly's keys and its project
shard's indexes share one hash tag, so each script call touches one slot and runs on one
primary. Commands are routed here, by slot, to the primary that serves it, the commands for
each primary going out together and all primaries at once:

- MOVED (the slot has a new owner): the command did not run; it is sent to the owner named,
  and after a few of them the whole slot map is read again.
- ASK (the slot is being moved and the key is already gone): sent once to the node named,
  after ASKING.
- TRYAGAIN (a multi-key call during the move of its slot), CLUSTERDOWN (a failover under way),
  READONLY (a stale map names a former primary): the command did not run; it is sent again
  after a short, growing pause, until the store timeout.
- NOSCRIPT (a primary that lost the scripts: restarted, or flushed): the scripts are loaded
  on that primary and the command sent again. Every primary gets the scripts before its first
  command, in the same round trip, so a new or promoted primary never answers NOSCRIPT.
- A lost connection: the command may or may not have run, so it is never sent again here;
  the call fails with StoreUnavailableError (the spool retries it with its ids) and the slot
  map is read again before the next call.

A script call declares every key its script may touch (see ``_declared``): while a slot moves,
the server then runs a call only where all of its keys are, or answers TRYAGAIN, so a call
never writes half on each side of a move.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from redis.asyncio.connection import Connection, ConnectionPool, SSLConnection
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    TryAgainError,
)

from ..backoff import pauses
from ..errors import ConfigurationError, StoreUnavailableError
from .redis import (
    ANOMALY_KEYS,
    OUTBOX_KEYS,
    SCAN_PAGE,
    SHARD_KEYS,
    RedisScripts,
    connection_options,
    raise_errors,
)
from .redis_link import Link

if TYPE_CHECKING:
    from ..settings import Settings

SLOTS = 16384
_SIBLINGS = tuple(s for s in ANOMALY_KEYS if s != "m")
_RETRYABLE = (TryAgainError, ClusterDownError, ReadOnlyError)
_NOT_RUN = (AskError, NoScriptError, *_RETRYABLE)  # replies of commands that did not run
_FIRST_PAUSE, _LONGEST_PAUSE = 0.005, 0.1
_MOVES_PER_REFRESH = 16

Address = tuple[str, int]


def parse_cluster_url(url: str) -> tuple[list[Address], dict[str, Any]]:
    """The seed nodes and connection options of ``redis+cluster://[user:password@]host:port,
    host:port,...`` (``rediss+cluster://`` for TLS)."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts or parts.path.strip("/") or parts.query:
        raise ValueError(f"{url!r} is not redis+cluster://host:port[,host:port...]")
    seeds: list[Address] = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"cluster node address {host!r} is not host:port")
        seeds.append((name.strip("[]"), int(port)))
    options: dict[str, Any] = {}
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    if parts.scheme == "rediss+cluster":
        options["connection_class"] = SSLConnection
    return seeds, options


def _slot_of(command: tuple[Any, ...]) -> int | None:
    """The slot a command's keys live in (the first key's: a command holds one slot), or None
    for a command without keys."""
    name = command[0]
    if name == "EVALSHA":
        key = command[3] if command[2] else None
    elif name in ("PING", "SCRIPT"):
        key = None
    else:
        key = command[1]
    if key is None:
        return None
    return int(key_slot(key.encode() if isinstance(key, str) else key))


def _declared(keys: Sequence[str]) -> list[str]:
    """A script call's keys, followed by every other key its scripts may touch: the siblings
    of each anomaly (meta key ``...:m``) named, their shard's indexes and notices outbox, and
    for an outbox call (``...:x:ob``) the outbox's other keys. The scripts read KEYS by
    position, so the extra names come last."""
    declared = list(keys)
    seen = set(keys)
    for key in keys:
        shard = key[: key.index("}") + 1] + ":x:" if "}" in key else ""
        if key.endswith(":x:ob"):  # an outbox call: the outbox's other keys
            names: tuple[str, ...] = tuple(shard + o for o in OUTBOX_KEYS)
        elif key.endswith(":m"):  # an anomaly: its siblings, its shard's indexes and outbox
            base = key[:-1]
            names = (
                *(base + s for s in _SIBLINGS),
                *(shard + i for i in (*SHARD_KEYS, *OUTBOX_KEYS)),
            )
        else:
            continue
        for name in names:
            if name not in seen:
                seen.add(name)
                declared.append(name)
    return declared


class _SlotMap:
    """Which primary serves each slot, as CLUSTER SLOTS last said, and a link per node."""

    def __init__(self, seeds: list[Address], options: dict[str, Any], timeout: float) -> None:
        self._seeds = seeds
        self._options = options
        self._timeout = timeout
        self._owners: list[Address | None] = [None] * SLOTS
        self._replicas: set[Address] = set()  # asked too: after a failover, primaries now
        self._links: dict[Address, Link] = {}
        self._stale = True
        self._moves = 0
        self._refreshing: asyncio.Lock | None = None

    def link(self, address: Address) -> Link:
        link = self._links.get(address)
        if link is None:
            options = dict(self._options)
            connection_class = options.pop("connection_class", Connection)
            pool = ConnectionPool(
                connection_class=connection_class,
                host=address[0],
                port=address[1],
                **options,
            )
            name = f"redis cluster node {address[0]}:{address[1]}"
            link = self._links[address] = Link(pool, self._timeout, name)
        return link

    def mark_stale(self) -> None:
        self._stale = True

    def moved(self, slot: int, address: Address) -> None:
        """A MOVED answer: that slot's owner is known at once. One moved slot is often one of
        many, so every _MOVES_PER_REFRESH of them the whole map is read again (not at each:
        a node asked in the middle of a move may not know of it yet, and its older map would
        undo what the MOVED said)."""
        self._owners[slot] = address
        self._moves += 1
        if self._moves % _MOVES_PER_REFRESH == 0:
            self._stale = True

    async def owner(self, slot: int) -> Address:
        if self._stale:
            await self.refresh()
        address = self._owners[slot]
        if address is None:
            raise StoreUnavailableError(f"redis cluster: no node serves slot {slot}")
        return address

    async def primaries(self) -> list[Address]:
        if self._stale:
            await self.refresh()
        return sorted({a for a in self._owners if a is not None})

    async def refresh(self) -> None:
        """Read the slot map from the first node that answers: known primaries first, then
        known replicas, then the seeds (each in a shuffled order, so that one dead node does
        not delay every refresh)."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        stale_when_asked = self._stale
        async with self._refreshing:
            if stale_when_asked and not self._stale:
                return  # another caller has just read it
            known = sorted({a for a in self._owners if a is not None})
            replicas = sorted(self._replicas - set(known))
            seeds = [s for s in self._seeds if s not in known and s not in replicas]
            for group in (known, replicas, seeds):
                random.shuffle(group)
            failures = []
            for address in (*known, *replicas, *seeds):
                try:
                    (reply,) = await self.link(address).round_trip([("CLUSTER", "SLOTS")])
                except StoreUnavailableError as exc:
                    failures.append(str(exc.__cause__ or exc))  # (it names the node)
                    continue
                if isinstance(reply, Exception):
                    failures.append(f"{address[0]}:{address[1]}: {reply}")
                    continue
                self._owners, self._replicas = _owners_from(reply, address)
                self._stale = False
                return
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise StoreUnavailableError(
                f"redis cluster: no node gave the slot map: {failures[0]}{more}"
            )

    async def aclose(self) -> None:
        for link in self._links.values():
            await link.aclose()


def _owners_from(reply: Sequence[Any], asked: Address) -> tuple[list[Address | None], set[Address]]:
    """The primary of every slot, and the replicas, from a CLUSTER SLOTS reply."""
    owners: list[Address | None] = [None] * SLOTS
    replicas: set[Address] = set()
    for entry in reply:
        start, end = int(entry[0]), int(entry[1])
        nodes = [_address(node, asked) for node in entry[2:]]
        for slot in range(start, end + 1):
            owners[slot] = nodes[0]
        replicas.update(nodes[1:])
    return owners, replicas


def _address(node: Sequence[Any], asked: Address) -> Address:
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    return (host or asked[0], int(node[1]))  # an empty host: the node asked


class RedisClusterStore(RedisScripts):
    """Store on Redis Cluster (``redis+cluster://host:port,host:port,...``)."""

    _calls_by_slot = True

    def __init__(self, slots: _SlotMap, settings: Settings) -> None:
        super().__init__(settings)
        self._slots = slots
        self._loaded: set[Address] = set()  # nodes given the scripts (until one says NOSCRIPT)

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> RedisClusterStore:
        try:
            seeds, options = parse_cluster_url(url)
        except ValueError as exc:
            raise ConfigurationError(f"setting store_url: {exc}") from exc
        options.update(connection_options(settings))
        return cls(_SlotMap(seeds, options, settings.store_timeout), settings)

    async def _eval(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        return await super()._eval(name, [(_declared(keys), args) for keys, args in calls])

    async def _run(self, commands: Sequence[tuple[Any, ...]], replicate: bool) -> list[Any]:
        slots = [_slot_of(command) for command in commands]
        replies: list[Any] = [None] * len(commands)
        asked: dict[int, Address] = {}  # command -> the node an ASK named
        todo = list(range(len(commands)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        waits = pauses(_FIRST_PAUSE, _LONGEST_PAUSE, jitter="half")
        while True:
            by_node: dict[Address, list[int]] = {}
            for i in todo:
                address = asked.get(i) or await self._node_for(slots[i])
                by_node.setdefault(address, []).append(i)
            results = await asyncio.gather(
                *(
                    self._node_trip(address, commands, positions, asked, replicate)
                    for address, positions in by_node.items()
                ),
                return_exceptions=True,
            )
            asked = {}
            again: list[int] = []
            refused: list[Exception] = []
            for (address, positions), result in zip(by_node.items(), results, strict=True):
                if isinstance(result, BaseException):
                    self._slots.mark_stale()
                    raise result
                for i, reply in zip(positions, result, strict=True):
                    if isinstance(reply, MovedError):  # (a subclass of AskError)
                        self._slots.moved(reply.slot_id, (reply.host, reply.port))
                    elif isinstance(reply, AskError):
                        asked[i] = (reply.host, reply.port)
                    elif isinstance(reply, _RETRYABLE):
                        refused.append(reply)
                        if not isinstance(reply, TryAgainError):  # a failover: a new map
                            self._slots.mark_stale()
                    elif isinstance(reply, NoScriptError):  # restarted, or flushed
                        self._loaded.discard(address)
                    else:
                        replies[i] = reply
                        continue
                    again.append(i)
            if not again:
                return replies
            if loop.time() > deadline:
                raise StoreUnavailableError(
                    f"redis cluster: {len(again)} commands still redirected or refused after "
                    f"{self._timeout} s" + (f" ({refused[0]})" if refused else "")
                )
            if refused:
                await asyncio.sleep(next(waits))
            todo = again

    async def _node_for(self, slot: int | None) -> Address:
        if slot is not None:
            return await self._slots.owner(slot)
        primaries = await self._slots.primaries()
        if not primaries:
            raise StoreUnavailableError("redis cluster: no primary known")
        return primaries[0]

    async def _node_trip(
        self,
        address: Address,
        commands: Sequence[tuple[Any, ...]],
        positions: Sequence[int],
        asked: dict[int, Address],
        replicate: bool,
    ) -> list[Any]:
        """Send one node its commands (each one an ASK sent here after ASKING), then, for
        writes, the WAIT of min_replicas; the replies to the commands, in order."""
        sent: list[tuple[Any, ...]] = []
        for i in positions:
            if i in asked:
                sent.append(("ASKING",))
            sent.append(commands[i])
        wait = self._wait if replicate else []
        # a node not known to have the scripts gets them first, in the same round trip
        loads = (
            []
            if address in self._loaded
            else [("SCRIPT", "LOAD", s) for s in self._sources.values()]
        )
        raw = await self._slots.link(address).round_trip([*loads, *sent, *wait])
        if loads:
            raise_errors(raw[: len(loads)])
            del raw[: len(loads)]
            self._loaded.add(address)
        waited = raw.pop() if wait else None
        replies = [
            reply for command, reply in zip(sent, raw, strict=True) if command[0] != "ASKING"
        ]
        self._check_replicated(waited, replies, _NOT_RUN)
        return replies

    async def ping(self) -> None:
        """Every primary answers (a slot range whose primary is down is a store that cannot
        take all writes: the service reports it and spools)."""
        primaries = await self._slots.primaries()
        results = await asyncio.gather(
            *(self._slots.link(a).round_trip([("PING",)]) for a in primaries),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                self._slots.mark_stale()
                raise result

    async def aclose(self) -> None:
        await self._slots.aclose()

    # -- deleting --

    async def _scan(self, match: str) -> AsyncIterator[list[bytes]]:
        """The keys that match a pattern on every primary (each holds its slots' keys)."""
        for address in await self._slots.primaries():
            link, cursor = self._slots.link(address), b"0"
            while True:
                (reply,) = await link.round_trip(
                    [("SCAN", cursor, "MATCH", match, "COUNT", SCAN_PAGE)]
                )
                raise_errors([reply])
                cursor, keys = reply
                if keys:
                    yield keys
                if int(cursor) == 0:
                    break
