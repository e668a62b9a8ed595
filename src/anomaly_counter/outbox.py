"""The notices outbox, as data: what a store keeps between the write that causes a notice and
its delivery (no I/O here; the stores keep it, ``notify.deliverer`` sends it).

A notice is written by the store in the same atomic step as the occurrence that causes it (a
crossing into a level, or the first occurrence after a permanent fix), so an answer lost on the
way back cannot lose it. Each project's outbox is split in partitions (the store's shards: one
on SQLite, 16 on Redis); an anomaly's notices are all in one partition, in order. A deliverer
holds a partition's lease while it sends; each channel has its own cursor (the last entry it
settled: delivered, or put in the dead-letter list), so a channel that is down delays only its
own notices. An entry is deleted once every channel's cursor has passed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

KINDS = {"e": "escalation", "r": "regression", "f": "flapping", "s": "flapping_stopped"}
"""The kinds of notice, by the one-letter code the stores keep (a flapping one's level is its
percent of changes in tenths)."""
KIND_CODES = {name: code for code, name in KINDS.items()}


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One notice waiting in the outbox."""

    partition: int
    entry_id: str  # the store's id, ordered within the partition ("<ms>-<seq>" or a number)
    anomaly_key: str
    kind: str  # "escalation", "regression", "flapping" or "flapping_stopped"
    level: int  # the level crossed into (0 for a regression; flapping: percent in tenths)
    at_ms: int  # the occurrence's time
    counts: tuple[int, int, int, int]  # its anomaly's counts (1h, 24h, 7d, 30d) at that time
    written_ms: int = 0  # when it was put in the outbox (dead letters count from it)
    notice_id: str = ""  # set when it came back from the dead-letter list: the id it had
    only: str = ""  # ... and then the one channel it goes to

    def key(self, project: str) -> str:
        """The notice's idempotency key: the same on every try, from every process."""
        return self.notice_id or f"{project}/{self.partition}/{self.entry_id}"

    def for_channel(self, channel: str) -> bool:
        return not self.only or self.only == channel

    def fields(self) -> dict[str, Any]:
        """The entry as plain data (a dead letter keeps it, to send it again)."""
        return {
            "partition": self.partition,
            "entry_id": self.entry_id,
            "anomaly_key": self.anomaly_key,
            "kind": self.kind,
            "level": self.level,
            "at_ms": self.at_ms,
            "counts": list(self.counts),
            "written_ms": self.written_ms,
            "notice_id": self.notice_id,
            "only": self.only,
        }

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> OutboxEntry:
        counts = tuple(int(c) for c in data["counts"])
        if len(counts) != 4:
            raise ValueError("an outbox entry has four counts")
        return cls(
            partition=int(data["partition"]),
            entry_id=str(data["entry_id"]),
            anomaly_key=str(data["anomaly_key"]),
            kind=str(data["kind"]),
            level=int(data["level"]),
            at_ms=int(data["at_ms"]),
            counts=(counts[0], counts[1], counts[2], counts[3]),
            written_ms=int(data.get("written_ms", data["at_ms"])),
            notice_id=str(data.get("notice_id", "")),
            only=str(data.get("only", "")),
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A notice one channel could not deliver within the bound (or refused for good)."""

    notice_id: str  # the entry's idempotency key (OutboxEntry.key)
    channel: str  # the channel's id (Channel.ident)
    entry: OutboxEntry
    error: str  # the last failure
    attempts: int
    first_failed_ms: int
    dead_ms: int

    def fields(self) -> dict[str, Any]:
        return {
            "notice_id": self.notice_id,
            "channel": self.channel,
            "entry": self.entry.fields(),
            "error": self.error,
            "attempts": self.attempts,
            "first_failed_ms": self.first_failed_ms,
            "dead_ms": self.dead_ms,
        }

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> DeadLetter:
        return cls(
            notice_id=str(data["notice_id"]),
            channel=str(data["channel"]),
            entry=OutboxEntry.from_fields(data["entry"]),
            error=str(data["error"]),
            attempts=int(data["attempts"]),
            first_failed_ms=int(data["first_failed_ms"]),
            dead_ms=int(data["dead_ms"]),
        )


class Lease(IntEnum):
    """What taking a partition's lease found."""

    OTHERS = 0  # another deliverer holds it
    IDLE = 1  # held, and the partition has no notice
    WAITING = 2  # held, and notices wait in it


class Settlement(NamedTuple):
    """What a deliverer settles: ``channel``'s cursor moves to ``entry`` (delivered, or
    ``dead``: then kept as a dead letter), and the entries all of ``channels`` passed go."""

    holder: str  # the lease holder settling (nothing is done unless it still holds it)
    channel: str
    entry: OutboxEntry
    channels: Sequence[str]  # every channel of the project, by ident
    dead: DeadLetter | None = None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """A project's outbox at a glance (``/metrics``, the API, the CLI)."""

    depth: int  # notices waiting (for at least one channel)
    oldest_ms: int | None  # when the oldest waiting notice was written
    overflowed: int  # notices not written because the outbox was full (ever)
    dead: int  # notices in the dead-letter list
    dead_overflowed: int = 0  # dead letters not kept because the list was full (ever)


def later(a: str, b: str) -> bool:
    """Whether entry id ``a`` comes after ``b`` ("" comes before all)."""
    return _order(a) > _order(b)


def _order(entry_id: str) -> tuple[int, int]:
    if not entry_id:
        return (-1, -1)
    ms, _, seq = entry_id.partition("-")
    return (int(ms), int(seq or 0))
