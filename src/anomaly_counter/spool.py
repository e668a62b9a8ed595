"""A local durable spool: occurrences accepted while the store cannot take them.

Records are appended to segment files and fsynced before ``append`` returns, so an
acknowledged occurrence survives a crash of the process or the machine. A replayer reads them
back in order, from a checkpoint that it moves forward only after the store took them; replay
is idempotent because every spooled occurrence carries an occurrence id (one is made when it
has none), so records replayed twice after a crash count once.

On disk, each record is ``MAGIC | length (u32) | CRC-32 of the payload (u32) | payload`` (the
payload is JSON). Opening a spool checks every record after the checkpoint: a torn tail (a
record cut short by a crash, never acknowledged) is cut off; a damaged record (a flipped bit)
is skipped by searching for the next MAGIC, and counted as lost. Only what is intact is
replayed; ``SpoolStats.lost`` says how many records were lost.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AnomalyCounterError, ConfigurationError

MAGIC = b"ACS1"
_HEADER = struct.Struct("<4sII")
MAX_RECORD_BYTES = 1 << 20
SEGMENT_BYTES = 8 << 20
_CHECKPOINT = "checkpoint.json"


class SpoolFullError(AnomalyCounterError):
    """The spool holds its maximum: the occurrence was refused, not stored anywhere."""


@dataclass(frozen=True, slots=True)
class SpoolStats:
    depth: int  # records waiting to be replayed
    size_bytes: int  # bytes of segments still on disk
    oldest_ms: int | None  # accepted_ms of the oldest waiting record
    lost: int  # damaged records skipped since the spool was opened


@dataclass(frozen=True, slots=True)
class Position:
    segment: int
    offset: int


def _segment_name(number: int) -> str:
    return f"segment-{number:012d}.log"


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode(payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > MAX_RECORD_BYTES:
        raise ValueError(f"spool record of {len(body)} bytes is over {MAX_RECORD_BYTES}")
    return _HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body


def _scan(data: bytes, start: int) -> Iterator[tuple[int, int, bytes | None]]:
    """(offset, end, payload) of each record from ``start``; payload None for a damaged span
    (its end is where the next MAGIC starts). A torn tail ends the scan."""
    offset = start
    while offset < len(data):
        if len(data) - offset < _HEADER.size:
            return  # torn header
        magic, length, crc = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if magic == MAGIC and length <= MAX_RECORD_BYTES and end <= len(data):
            body = data[offset + _HEADER.size : end]
            if zlib.crc32(body) == crc:
                yield offset, end, body
                offset = end
                continue
        elif magic == MAGIC and length <= MAX_RECORD_BYTES and data.find(MAGIC, offset + 1) < 0:
            return  # torn: the last record was cut short (never acknowledged)
        following = data.find(MAGIC, offset + 1)
        if following < 0:
            yield offset, len(data), None
            return
        yield offset, following, None
        offset = following


class Spool:
    """The spool of one directory; safe to use from several threads of one process (only one
    process may own a directory)."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._owner = open(self.directory / "lock", "a")  # noqa: SIM115 (held while open)
        try:
            fcntl.flock(self._owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._owner.close()
            raise ConfigurationError(
                f"setting spool_dir: {self.directory} is in use by another process"
            ) from None
        self._lock = threading.Lock()
        self.lost = 0
        self._checkpoint = self._read_checkpoint()
        self._sizes: dict[int, int] = {}  # bytes of each segment on disk
        self._depth = 0
        self._oldest_ms: int | None = None
        self._refusing = False
        self._recover()
        self._active_number = max(self._sizes, default=self._checkpoint.segment)
        self._sizes.setdefault(self._active_number, 0)
        self._active = open(self._path(self._active_number), "ab")  # noqa: SIM115 (kept open)

    # -- files ------------------------------------------------------------------------------

    def _path(self, number: int) -> Path:
        return self.directory / _segment_name(number)

    def _segments(self) -> list[int]:
        names = (p.name for p in self.directory.glob("segment-*.log"))
        return sorted(int(n[len("segment-") : -len(".log")]) for n in names)

    def _read_checkpoint(self) -> Position:
        try:
            raw = json.loads((self.directory / _CHECKPOINT).read_text())
            return Position(int(raw["segment"]), int(raw["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return Position(0, 0)

    def _write_checkpoint(self, position: Position) -> None:
        temporary = self.directory / f"{_CHECKPOINT}.tmp"
        with open(temporary, "w") as f:
            json.dump({"segment": position.segment, "offset": position.offset}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.directory / _CHECKPOINT)
        _fsync_directory(self.directory)
        self._checkpoint = position

    def _recover(self) -> None:
        """Count what waits, cut torn tails off, count damaged records as lost."""
        for number in self._segments():
            path = self._path(number)
            if number < self._checkpoint.segment:
                path.unlink()  # wholly replayed before a crash
                continue
            data = path.read_bytes()
            start = self._checkpoint.offset if number == self._checkpoint.segment else 0
            valid_end = start
            for _, end, payload in _scan(data, start):
                valid_end = end
                if payload is None:
                    self.lost += 1
                    continue
                self._depth += 1
                if self._oldest_ms is None:
                    self._oldest_ms = json.loads(payload).get("accepted_ms")
            if valid_end < len(data):  # a torn tail: never acknowledged
                with open(path, "r+b") as f:
                    f.truncate(valid_end)
                    os.fsync(f.fileno())
            self._sizes[number] = min(valid_end, len(data))

    def _waiting_bytes(self) -> int:
        first = self._checkpoint.segment
        waiting = sum(n for k, n in self._sizes.items() if k >= first) - self._checkpoint.offset
        return max(0, waiting)

    # -- writing ----------------------------------------------------------------------------

    def append(self, payloads: list[dict[str, Any]]) -> None:
        """Store records durably (written and fsynced), or raise SpoolFullError having written
        nothing."""
        records = b"".join(encode(p) for p in payloads)
        with self._lock:
            if self._waiting_bytes() + len(records) > self.max_bytes:
                self._refusing = True
                raise SpoolFullError(
                    f"the spool is full ({self._waiting_bytes():,} of {self.max_bytes:,} bytes)"
                )
            if self._sizes[self._active_number] + len(records) > SEGMENT_BYTES:
                self._rotate()
            self._active.write(records)
            self._active.flush()
            os.fsync(self._active.fileno())
            self._sizes[self._active_number] += len(records)
            self._refusing = False
            if self._depth == 0:
                self._oldest_ms = payloads[0].get("accepted_ms")
            self._depth += len(payloads)

    def _rotate(self) -> None:
        self._active.close()
        self._active_number += 1
        self._sizes[self._active_number] = 0
        self._active = open(self._path(self._active_number), "ab")  # noqa: SIM115
        _fsync_directory(self.directory)

    # -- reading ----------------------------------------------------------------------------

    def peek(self, limit: int) -> tuple[list[dict[str, Any]], Position]:
        """Up to ``limit`` of the oldest waiting records and the position after them (for
        ``commit``). Reads one segment at most at a time: memory stays bounded whatever the
        backlog."""
        with self._lock:
            position = self._checkpoint
            records: list[dict[str, Any]] = []
            while len(records) < limit:
                if position.segment not in self._sizes:
                    if position.segment >= self._active_number:
                        break
                    position = Position(position.segment + 1, 0)
                    continue
                with open(self._path(position.segment), "rb") as f:
                    f.seek(position.offset)
                    data = f.read(self._sizes[position.segment] - position.offset)
                for _, end, payload in _scan(data, 0):
                    if payload is not None:
                        records.append(json.loads(payload))
                    consumed = end
                    if len(records) >= limit:
                        break
                else:
                    consumed = len(data)
                position = Position(position.segment, position.offset + consumed)
                if len(records) >= limit or position.segment >= self._active_number:
                    break
                position = Position(position.segment + 1, 0)  # this segment is read through
            return records, position

    def commit(self, position: Position, count: int) -> None:
        """The ``count`` records before ``position`` are stored: move the checkpoint past
        them and delete the segments wholly behind it."""
        with self._lock:
            self._write_checkpoint(position)
            for number in [n for n in self._sizes if n < position.segment]:
                self._path(number).unlink(missing_ok=True)
                del self._sizes[number]
            self._depth = max(0, self._depth - count)
            self._refusing = False
            self._oldest_ms = None  # found again by stats() when asked

    @property
    def full(self) -> bool:
        """It refused its last record, and nothing was replayed since."""
        return self._refusing

    @property
    def depth(self) -> int:
        """Records waiting to be replayed (cheap: no I/O)."""
        return self._depth

    def stats(self) -> SpoolStats:
        oldest = self._oldest_ms
        if oldest is None and self._depth:
            records, _ = self.peek(1)
            oldest = records[0].get("accepted_ms") if records else None
        with self._lock:
            self._oldest_ms = oldest
            return SpoolStats(self._depth, self._waiting_bytes(), oldest, self.lost)

    def close(self) -> None:
        with self._lock:
            if not self._active.closed:
                self._active.close()
                self._owner.close()  # releases the directory
