"""The reference design's Redis layout, read as the reference itself reads it.

Its keys (seed-notes.md), each under the project prefix ``<project>:`` and, from before that
prefix existed, without it (legacy keys):

- ``anomaly:timeline:<key>``: sorted set of events, member and score the event's time
  (seconds, ``str(timestamp)`` as member: two events in the same instant are one member);
  trimmed to 30 days only when an event is recorded.
- ``anomaly:repair_count:<key>``: every repair attempt counted.
- ``anomaly:repair_history:<key>``: JSON ``{action, success, timestamp}``, newest first, the
  last 100; the time in the naive local time of the reference's host.
- ``anomaly:disposition:<key>``: a count per disposition type, and ``total``; no times. Its
  lifetime is set to 35 days at each disposition, so its TTL tells when the last one was.
- ``anomaly:permanent_fix:<key>``: ``"1"`` for 90 days from the mark.
- ``anomaly:metadata:<key>``: ``signature`` (JSON) from the first event, for 35 days; the
  fix's ``permanent_fix_description`` and ``permanent_fix_time`` (naive local).

Of each kind, the reference reads the prefixed key when there is one and the legacy key
otherwise (an existing hash, list or set is never empty in Redis, so its ``EXISTS``, ``GET``
and ``if not raw`` fallbacks all come to that); so does this reader. Nothing is written to
the source.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio.connection import ConnectionPool
from redis.exceptions import InvalidResponse, ResponseError

from ..errors import (
    ConfigurationError,
    InvalidInputError,
    SourceUnavailableError,
    StoreUnavailableError,
)
from ..redact import redacted
from ..stores.redis_link import Link

KINDS = ("timeline", "repair_count", "repair_history", "disposition", "permanent_fix", "metadata")
DAY_MS = 86_400_000
TTL_MS = 35 * DAY_MS  # the lifetime it gives a disposition hash at each write
FIX_TTL_MS = 90 * DAY_MS  # ... and a fix flag at its mark
_BATCH = 200  # anomalies read per round trip
_SCHEMES = ("redis", "rediss", "unix")
TIMEOUT = 30.0  # seconds a read of the source may wait (its URL's socket_timeout, if given)


@dataclass(frozen=True, slots=True)
class Repair:
    action: str
    success: bool
    at_ms: int
    raw: str  # the entry as stored (its write id is made from it)


@dataclass(slots=True)
class ReferenceAnomaly:
    """What the reference holds of one anomaly, from the keys it reads."""

    key: str
    legacy: set[str] = field(default_factory=set)  # kinds read from a legacy key
    shadowed: set[str] = field(default_factory=set)  # kinds whose legacy key it never reads
    unreadable: set[str] = field(default_factory=set)  # kinds whose key is of another type
    events: list[tuple[str, int]] = field(default_factory=list)  # (member, ms), oldest first
    bad_events: int = 0  # members whose score is not a time (infinite, past year 9999)
    repair_count: int = 0  # its counter of every attempt
    repairs: list[Repair] = field(default_factory=list)  # oldest first
    bad_repairs: int = 0  # entries that are not JSON with an action and a readable time
    dispositions: dict[str, int] = field(default_factory=dict)  # type -> count (no 'total')
    bad_counts: int = 0  # disposition fields whose count is not a whole number >= 0
    dispositions_ms: int | None = None  # the last disposition (from the hash's TTL)
    fix: bool = False
    fix_ms: int | None = None  # when it was marked (metadata, else the flag's TTL)
    fix_description: str | None = None
    signature: dict[str, Any] | None = None  # None: its metadata expired

    @property
    def answered(self) -> bool:
        """Whether any read of the reference answers from it (metadata alone: none)."""
        return bool(self.events or self.bad_events or self.repair_count or self.repairs
                    or self.bad_repairs or self.dispositions or self.bad_counts
                    or self.fix)  # fmt: skip


@dataclass(slots=True)
class Layout:
    """The reference's anomalies of one project, and its server's clock when read."""

    anomalies: list[ReferenceAnomaly]
    now_ms: int
    bad_names: int = 0  # keys of its layout whose anomaly key is not UTF-8 text: not read


def _link(url: str) -> Link:
    """A link to the source at ``url``: told wrong (ConfigurationError) as our stores tell a
    store URL, with our stores' connections (which say when a server does not speak Redis)."""
    shown = redacted(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # (a "[" of an IPv6 address not closed)
        raise ConfigurationError(f"--from: {shown!r}: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigurationError(
            f"--from: {shown!r} is not a Redis URL ({', '.join(s + '://' for s in _SCHEMES)})"
        )
    if parts.scheme != "unix" and not re.fullmatch(r"/?\d*", parts.path):
        # (redis-py would ignore it, and read database 0)
        raise ConfigurationError(f"--from: the path of {shown!r} must be a database number")
    try:
        pool = ConnectionPool.from_url(url)  # (it parses the URL; it opens nothing)
        timeout = pool.connection_kwargs.get("socket_timeout") or TIMEOUT
        return Link(pool, float(timeout), name=f"the reference's Redis at {shown}")
    except ValueError as exc:  # (a port out of range, an option that is not a number)
        raise ConfigurationError(f"--from: {shown!r}: {exc}") from None
    except ConfigurationError as exc:  # (the link's words are a store URL's)
        raise ConfigurationError(f"--from: {exc}".replace("setting store_url: ", "")) from None


async def read_layout(url: str, project: str, zone: tzinfo | None = None) -> Layout:
    """Every anomaly the reference's ``project`` holds at ``url``; its naive local times read
    in ``zone`` (None: this machine's). A URL that is wrong: ConfigurationError; a server that
    is not Redis: InvalidInputError; one that cannot be read: SourceUnavailableError."""
    link = _link(url)
    shown = redacted(url)
    try:
        now_ms = _ms_of_time((await link.round_trip([("TIME",)]))[0])
        found, bad_names = await _scan(link, project)
        anomalies: list[ReferenceAnomaly] = []
        keys = sorted(found)
        for start in range(0, len(keys), _BATCH):
            batch = keys[start : start + _BATCH]
            anomalies += await _read(link, project, batch, found, now_ms, zone)
        return Layout(anomalies, now_ms, bad_names)
    except StoreUnavailableError as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause.__cause__, InvalidResponse):
            raise InvalidInputError(f"--from: {cause}") from None
        raise SourceUnavailableError(
            f"the reference's Redis at {shown} cannot be read: {cause}"
        ) from None
    except InvalidResponse as exc:
        raise InvalidInputError(f"--from: {shown} does not speak Redis ({exc})") from None
    finally:
        await link.aclose()


def _ms_of_time(reply: Any) -> int:
    if isinstance(reply, Exception):
        raise SourceUnavailableError(f"the reference's Redis refused TIME: {reply}")
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


def _glob(text: str) -> str:
    """``text`` as a SCAN pattern matching itself only."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


async def _scan(link: Link, project: str) -> tuple[dict[str, dict[str, set[bool]]], int]:
    """Anomaly key -> kind -> which sides hold a key of it (True: prefixed); and how many keys
    had a name that is not UTF-8 text (no anomaly key of ours: not read, reported)."""
    found: dict[str, dict[str, set[bool]]] = {}
    bad_names = 0
    for prefixed, head in ((True, f"{project}:anomaly:"), (False, "anomaly:")):
        cursor: Any = b"0"
        while True:
            scan = ("SCAN", cursor, "MATCH", _glob(head) + "*", "COUNT", 1000)
            (reply,) = await link.round_trip([scan])
            if isinstance(reply, Exception):
                raise SourceUnavailableError(f"the reference's Redis refused SCAN: {reply}")
            cursor, names = reply
            for raw in names:
                try:
                    name = raw.decode("utf-8")
                except UnicodeDecodeError:
                    bad_names += 1
                    continue
                kind, _, key = name[len(head) :].partition(":")
                if kind in KINDS and key:
                    found.setdefault(key, {}).setdefault(kind, set()).add(prefixed)
            if cursor in (b"0", 0, "0"):
                break
    return found, bad_names


def _name(project: str, kind: str, key: str, prefixed: bool) -> str:
    return f"{project}:anomaly:{kind}:{key}" if prefixed else f"anomaly:{kind}:{key}"


async def _read(
    link: Link,
    project: str,
    keys: Sequence[str],
    found: dict[str, dict[str, set[bool]]],
    now_ms: int,
    zone: tzinfo | None,
) -> list[ReferenceAnomaly]:
    commands: list[tuple[Any, ...]] = []
    asked: list[tuple[ReferenceAnomaly, str, bool]] = []
    anomalies = []
    for key in keys:
        anomaly = ReferenceAnomaly(key)
        anomalies.append(anomaly)
        for kind, sides in found[key].items():
            read = [True, False] if kind == "metadata" else [True in sides]
            if kind != "metadata":
                if not read[0]:
                    anomaly.legacy.add(kind)
                elif False in sides:
                    anomaly.shadowed.add(kind)
            for prefixed in read:
                if prefixed not in sides:
                    continue
                name = _name(project, kind, key, prefixed)
                if kind == "timeline":
                    commands.append(("ZRANGE", name, 0, -1, "WITHSCORES"))
                elif kind in ("repair_count", "permanent_fix"):
                    commands.append(("GET", name))
                elif kind == "repair_history":
                    commands.append(("LRANGE", name, 0, -1))
                else:
                    commands.append(("HGETALL", name))
                asked.append((anomaly, kind, prefixed))
                if kind in ("disposition", "permanent_fix"):
                    commands.append(("PTTL", name))
                    asked.append((anomaly, kind + ":ttl", prefixed))
    replies = await link.round_trip(commands) if commands else []
    metadata: dict[str, dict[bool, dict[bytes, bytes]]] = {}
    for (anomaly, kind, prefixed), reply in zip(asked, replies, strict=True):
        if isinstance(reply, ResponseError):  # (WRONGTYPE: not a key the reference made)
            anomaly.unreadable.add(kind.partition(":")[0])
        elif isinstance(reply, Exception):
            raise SourceUnavailableError(f"the reference's Redis refused a read: {reply}")
        elif reply is not None:
            if kind == "metadata":
                metadata.setdefault(anomaly.key, {})[prefixed] = dict(_fields(reply))
            else:
                _take(anomaly, kind, reply, now_ms, zone)
    for anomaly in anomalies:
        _take_metadata(anomaly, metadata.get(anomaly.key, {}), zone)
    return anomalies


def _take(
    anomaly: ReferenceAnomaly, kind: str, reply: Any, now_ms: int, zone: tzinfo | None
) -> None:
    if kind == "timeline":
        for member, score in _pairs(reply):
            at_ms = _score_ms(score)
            if at_ms is None:
                anomaly.bad_events += 1
            else:
                anomaly.events.append((member.decode("utf-8", "backslashreplace"), at_ms))
    elif kind == "repair_count":
        anomaly.repair_count = _int(reply)
    elif kind == "repair_history":
        for raw in reversed(reply):
            repair = _repair(raw, zone)
            if repair is None:
                anomaly.bad_repairs += 1
            else:
                anomaly.repairs.append(repair)
    elif kind == "disposition":
        for name, value in _fields(reply):
            count = _count(value)
            if name == b"total":
                continue
            if count is None:
                anomaly.bad_counts += 1
            else:  # (a name not UTF-8 is no type of the five: reported as unknown)
                anomaly.dispositions[name.decode("utf-8", "backslashreplace")] = count
    elif kind == "disposition:ttl":
        anomaly.dispositions_ms = now_ms - (TTL_MS - reply) if reply >= 0 else None
    elif kind == "permanent_fix":
        anomaly.fix = reply == b"1"  # (what the reference takes for applied)
    elif kind == "permanent_fix:ttl" and reply >= 0:
        anomaly.fix_ms = now_ms - (FIX_TTL_MS - reply)


def _take_metadata(
    anomaly: ReferenceAnomaly, sides: dict[bool, dict[bytes, bytes]], zone: tzinfo | None
) -> None:
    """The signature, and the fix's description and time, from the prefixed hash if it has
    them, else from the legacy one (a fix writes the prefixed hash only)."""
    for prefixed in (True, False):
        fields = sides.get(prefixed, {})
        if anomaly.signature is None and b"signature" in fields:
            anomaly.signature = _signature(fields[b"signature"])
        described = fields.get(b"permanent_fix_description")
        if anomaly.fix and anomaly.fix_description is None and described is not None:
            anomaly.fix_description = described.decode("utf-8", "replace")
            marked = _local_ms(fields.get(b"permanent_fix_time", b""), zone)
            if marked is not None:
                anomaly.fix_ms = marked


def _int(raw: Any) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0


def _count(raw: Any) -> int | None:
    """A disposition count as HINCRBY leaves it; None for anything else (-3, "abc")."""
    try:
        count = int(raw)
    except (TypeError, ValueError):
        return None
    return count if count >= 0 else None


def _pairs(reply: Any) -> list[tuple[bytes, Any]]:
    """ZRANGE WITHSCORES's (member, score) pairs: pairs in RESP3, flat in RESP2."""
    if reply and not isinstance(reply[0], list):
        return list(zip(reply[::2], reply[1::2], strict=True))
    return [(member, score) for member, score in reply]


def _fields(reply: Any) -> list[tuple[bytes, Any]]:
    """HGETALL's fields: a map in RESP3, flat in RESP2."""
    if isinstance(reply, dict):
        return list(reply.items())
    return list(zip(reply[::2], reply[1::2], strict=True))


def _score_ms(score: Any) -> int | None:
    """A timeline score (seconds) in milliseconds; None when it is no time a date can have
    (``+inf``, ``1e300``: the reference never writes one)."""
    try:
        seconds = float(score)
        if not math.isfinite(seconds):
            return None
        datetime.fromtimestamp(seconds, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return round(seconds * 1000)


def _signature(raw: bytes) -> dict[str, Any] | None:
    try:
        signature = json.loads(raw)
    except ValueError:
        return None
    return signature if isinstance(signature, dict) else None


def _repair(raw: bytes, zone: tzinfo | None) -> Repair | None:
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("action"), str):
        return None
    at_ms = _local_ms(str(entry.get("timestamp", "")).encode(), zone)
    if at_ms is None:
        return None
    # (the reference counts a success by the value's truth, as here)
    raw_text = raw.decode("utf-8", "backslashreplace")
    return Repair(entry["action"], bool(entry.get("success")), at_ms, raw_text)


def _local_ms(text: bytes, zone: tzinfo | None) -> int | None:
    """Milliseconds of a time the reference wrote with ``datetime.now().isoformat()``: naive,
    in its host's local time (``zone``; None: this machine's)."""
    try:
        moment = datetime.fromisoformat(text.decode())
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zone) if zone is not None else moment.astimezone()
        return round(moment.astimezone(UTC).timestamp() * 1000)
    except (UnicodeDecodeError, ValueError, OverflowError, OSError):
        return None  # (not a time, or one no zone can move: "0001-01-01T00:00:00")
