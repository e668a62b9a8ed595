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
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from ..errors import ConfigurationError, StoreUnavailableError
from ..redact import redacted

KINDS = ("timeline", "repair_count", "repair_history", "disposition", "permanent_fix", "metadata")
DAY_MS = 86_400_000
TTL_MS = 35 * DAY_MS  # the lifetime it gives a disposition hash at each write
FIX_TTL_MS = 90 * DAY_MS  # ... and a fix flag at its mark
_BATCH = 200  # anomalies read per pipeline
_SCHEMES = ("redis", "rediss", "unix")


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
    repair_count: int = 0  # its counter of every attempt
    repairs: list[Repair] = field(default_factory=list)  # oldest first
    bad_repairs: int = 0  # entries that are not JSON with an action and a readable time
    dispositions: dict[str, int] = field(default_factory=dict)  # type -> count (no 'total')
    dispositions_ms: int | None = None  # the last disposition (from the hash's TTL)
    fix: bool = False
    fix_ms: int | None = None  # when it was marked (metadata, else the flag's TTL)
    fix_description: str | None = None
    signature: dict[str, Any] | None = None  # None: its metadata expired

    @property
    def answered(self) -> bool:
        """Whether any read of the reference answers from it (metadata alone: none)."""
        return bool(self.events or self.repair_count or self.repairs or self.bad_repairs
                    or self.dispositions or self.fix)  # fmt: skip


@dataclass(slots=True)
class Layout:
    """The reference's anomalies of one project, and its server's clock when read."""

    anomalies: list[ReferenceAnomaly]
    now_ms: int


def check_url(url: str) -> str:
    """A Redis URL the reference may live at (``redis://``, ``rediss://``, ``unix://``)."""
    if urlsplit(url).scheme not in _SCHEMES:
        raise ConfigurationError(
            f"--from: {redacted(url)!r} is not a Redis URL"
            f" ({', '.join(s + '://' for s in _SCHEMES)})"
        )
    return url


async def read_layout(url: str, project: str, zone: tzinfo | None = None) -> Layout:
    """Every anomaly the reference's ``project`` holds at ``url``; its naive local times read
    in ``zone`` (None: this machine's)."""
    client = aioredis.Redis.from_url(check_url(url))
    try:
        now_ms = _ms_of_time(await client.time())
        found = await _scan(client, project)
        anomalies: list[ReferenceAnomaly] = []
        keys = sorted(found)
        for start in range(0, len(keys), _BATCH):
            batch = keys[start : start + _BATCH]
            anomalies += await _read(client, project, batch, found, now_ms, zone)
        return Layout(anomalies, now_ms)
    except (RedisError, OSError) as exc:
        raise StoreUnavailableError(
            f"the reference's Redis at {redacted(url)} cannot be read: {exc}"
        ) from exc
    finally:
        await client.aclose()


def _ms_of_time(reply: Any) -> int:
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


def _glob(text: str) -> str:
    """``text`` as a SCAN pattern matching itself only."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


async def _scan(client: aioredis.Redis, project: str) -> dict[str, dict[str, set[bool]]]:
    """Anomaly key -> kind -> which sides hold a key of it (True: prefixed)."""
    found: dict[str, dict[str, set[bool]]] = {}
    for prefixed, head in ((True, f"{project}:anomaly:"), (False, "anomaly:")):
        async for raw in client.scan_iter(match=_glob(head) + "*", count=1000):
            name = raw.decode("utf-8", "surrogateescape")
            kind, _, key = name[len(head) :].partition(":")
            if kind in KINDS and key:
                found.setdefault(key, {}).setdefault(kind, set()).add(prefixed)
    return found


def _name(project: str, kind: str, key: str, prefixed: bool) -> str:
    return f"{project}:anomaly:{kind}:{key}" if prefixed else f"anomaly:{kind}:{key}"


async def _read(
    client: aioredis.Redis,
    project: str,
    keys: Sequence[str],
    found: dict[str, dict[str, set[bool]]],
    now_ms: int,
    zone: tzinfo | None,
) -> list[ReferenceAnomaly]:
    pipe = client.pipeline(transaction=False)
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
                    pipe.zrange(name, 0, -1, withscores=True)
                elif kind in ("repair_count", "permanent_fix"):
                    pipe.get(name)
                elif kind == "repair_history":
                    pipe.lrange(name, 0, -1)
                else:
                    pipe.hgetall(name)
                asked.append((anomaly, kind, prefixed))
                if kind in ("disposition", "permanent_fix"):
                    pipe.pttl(name)
                    asked.append((anomaly, kind + ":ttl", prefixed))
    replies = await pipe.execute(raise_on_error=False)
    metadata: dict[str, dict[bool, dict[bytes, bytes]]] = {}
    for (anomaly, kind, prefixed), reply in zip(asked, replies, strict=True):
        if isinstance(reply, ResponseError):  # (WRONGTYPE: not a key the reference made)
            anomaly.unreadable.add(kind.partition(":")[0])
        elif isinstance(reply, Exception):
            raise reply
        elif reply is not None:
            if kind == "metadata":
                metadata.setdefault(anomaly.key, {})[prefixed] = reply
            else:
                _take(anomaly, kind, reply, now_ms, zone)
    for anomaly in anomalies:
        _take_metadata(anomaly, metadata.get(anomaly.key, {}), zone)
    return anomalies


def _take(
    anomaly: ReferenceAnomaly, kind: str, reply: Any, now_ms: int, zone: tzinfo | None
) -> None:
    if kind == "timeline":
        anomaly.events = [
            (m.decode("utf-8", "backslashreplace"), round(float(s) * 1000)) for m, s in reply
        ]
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
        anomaly.dispositions = {
            name.decode(): _int(value) for name, value in reply.items() if name != b"total"
        }
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
    except (UnicodeDecodeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone) if zone is not None else moment.astimezone()
    return round(moment.astimezone(UTC).timestamp() * 1000)
