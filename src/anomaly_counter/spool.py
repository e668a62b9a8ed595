"""A local durable spool: occurrences accepted while the store cannot take them.

Records are appended to segment files and fsynced before ``append`` returns, so an
acknowledged occurrence survives a crash of the process or the machine. A replayer reads them
back in order, from a checkpoint that it moves forward only after the store took them; replay
is idempotent because each record is replayed with the spool's id and its position, and an
occurrence sent before it was spooled carries its number (stores/write_marks.py), so records
replayed twice after a crash count once.

On disk, each record is ``MAGIC | length (u32) | CRC-32 of the payload (u32) | payload`` (the
payload is JSON). Opening a spool checks every record after the checkpoint: a torn tail (a
record cut short by a crash, never acknowledged) is cut off; a damaged record (a flipped bit)
is skipped by searching for the next MAGIC, and counted as lost. Only what is intact is
replayed; ``SpoolStats.lost`` says how many records were lost.

Room is shared: the spool takes at most ``max_bytes``, or what the disk has free, whichever is
less; and one project's backlog at most ``project_share`` of that room, so that a flood of one
project cannot refuse another's first occurrence. A write that does not fit (including one the
disk refuses half-way) is cut back and refused with SpoolFullError, having stored nothing.

The checkpoint lives in two fixed slots of one small file, rewritten in place (never a new file):
moving it needs no free space, so a spool on a full disk can always record what was replayed,
delete it, and so get its room back. Should the checkpoint still fail to be written (an I/O
error), replay goes on from memory and the write is tried again; only the deletion of replayed
segments waits for it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import secrets
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from .errors import ConfigurationError, SpoolFullError
from .stores.write_marks import Sequencer, spool_position

if TYPE_CHECKING:
    from .settings import Settings

logger = structlog.get_logger("anomaly_counter.spool")

MAGIC = b"ACS1"
_HEADER = struct.Struct("<4sII")
MAX_RECORD_BYTES = 1 << 20
SEGMENT_BYTES = 8 << 20
_CHECKPOINT = "checkpoint"
_ID = "id"
_LEGACY_CHECKPOINT = "checkpoint.json"  # written by versions before the slots
_SLOT_NUMBERS = struct.Struct("<QQQ")  # a checkpoint slot: sequence, segment, offset,
_SLOT_SIZE = _SLOT_NUMBERS.size + 4  # and the CRC-32 of the three (u32)
DISK_RESERVE_BYTES = 16_384
"""Left free on the disk for the file system's own needs (a new segment's first block)."""


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
    # bytes of the records before it (from the checkpoint), by project: peek's to commit's
    consumed: Mapping[str, int] = field(default_factory=dict, compare=False)


def _slot(sequence: int, segment: int, offset: int) -> bytes:
    """A checkpoint slot as written: the three numbers and the CRC-32 of them."""
    numbers = _SLOT_NUMBERS.pack(sequence, segment, offset)
    return numbers + zlib.crc32(numbers).to_bytes(4, "little")


def _segment_name(number: int) -> str:
    return f"segment-{number:012d}.log"


def fsync_directory(path: Path) -> None:
    """Make a directory's entries (files made, renamed, removed) durable."""
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


def spool_of(settings: Settings) -> Spool | None:
    """The spool the settings name (``spool_dir``), or None."""
    if not settings.spool_dir:
        return None
    return Spool(
        settings.spool_dir, settings.spool_max_bytes, project_share=settings.spool_project_share
    )


class Spool:
    """The spool of one directory; safe to use from several threads of one process (only one
    process may own a directory)."""

    def __init__(
        self, directory: str | os.PathLike[str], max_bytes: int, *, project_share: float = 1.0
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.project_share = project_share
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._owner = open(self.directory / "lock", "a")  # noqa: SIM115 (held while open)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"setting spool_dir: cannot use {self.directory}: {_reason(exc)}"
            ) from None
        try:
            fcntl.flock(self._owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._owner.close()
            raise ConfigurationError(
                f"setting spool_dir: {self.directory} is in use by another process"
            ) from None
        self._lock = threading.Lock()
        self.sequencer = Sequencer()  # numbers this process's writes (stores/write_marks.py)
        self.lost = 0
        self._sizes: dict[int, int] = {}  # bytes of each segment on disk
        self._waiting: Counter[str] = Counter()  # bytes waiting, by project
        self._depth = 0
        self._oldest_ms: int | None = None
        self._refusing = False
        self._unsaved: Position | None = None  # a checkpoint not yet written (an I/O error)
        try:
            self.id = self._identity()
            self._slots, self._sequence, self._checkpoint = self._open_checkpoint()
            self._recover()
            self._active_number = max(self._sizes, default=self._checkpoint.segment)
            self._sizes.setdefault(self._active_number, 0)
            self._active = self._open_active()
        except OSError as exc:
            self._owner.close()
            raise ConfigurationError(
                f"setting spool_dir: cannot use {self.directory}: {_reason(exc)}"
            ) from None

    # -- files ------------------------------------------------------------------------------

    def _path(self, number: int) -> Path:
        return self.directory / _segment_name(number)

    def _segments(self) -> list[int]:
        names = (p.name for p in self.directory.glob("segment-*.log"))
        return sorted(int(n[len("segment-") : -len(".log")]) for n in names)

    def _identity(self) -> str:
        """This spool's id, made once (a new directory is a new spool: its positions start
        again, and the stores must not take them for ones they replayed)."""
        path = self.directory / _ID
        try:
            made = path.read_text().strip()
            if made:
                return made
        except FileNotFoundError:
            pass
        made = secrets.token_hex(8)
        with open(path, "w") as f:
            f.write(made)
            f.flush()
            os.fsync(f.fileno())
        fsync_directory(self.directory)
        return made

    def _open_checkpoint(self) -> tuple[int, int, Position]:
        """The checkpoint file (made, with both slots, when missing), the sequence of its
        newest intact slot, and the position that slot holds."""
        path = self.directory / _CHECKPOINT
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        data = os.pread(fd, 2 * _SLOT_SIZE, 0)
        best: tuple[int, Position] | None = None
        for slot in range(len(data) // _SLOT_SIZE):
            stored = data[slot * _SLOT_SIZE : (slot + 1) * _SLOT_SIZE]
            sequence, segment, offset = _SLOT_NUMBERS.unpack_from(stored)
            intact = _slot(sequence, segment, offset) == stored
            if intact and sequence and (best is None or sequence > best[0]):
                best = (sequence, Position(segment, offset))
        if len(data) < 2 * _SLOT_SIZE:  # new: room for both slots, taken now, while there is
            os.pwrite(fd, bytes(2 * _SLOT_SIZE - len(data)), len(data))
            os.fsync(fd)
            fsync_directory(self.directory)
        if best is None:
            return fd, 0, self._legacy_checkpoint()
        return fd, best[0], best[1]

    def _legacy_checkpoint(self) -> Position:
        try:
            raw = json.loads((self.directory / _LEGACY_CHECKPOINT).read_text())
            return Position(int(raw["segment"]), int(raw["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return Position(0, 0)

    def _write_checkpoint(self, position: Position) -> None:
        """Overwrite the older slot in place (no new block, so a full disk cannot refuse it)."""
        sequence = self._sequence + 1
        slot = _slot(sequence, position.segment, position.offset)
        os.pwrite(self._slots, slot, (sequence % 2) * _SLOT_SIZE)
        os.fdatasync(self._slots)
        self._sequence = sequence

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
            for offset, end, payload in _scan(data, start):
                valid_end = end
                if payload is None:
                    self.lost += 1
                    continue
                record = json.loads(payload)
                self._depth += 1
                self._waiting[_project(record)] += end - offset
                if self._oldest_ms is None:
                    self._oldest_ms = record.get("accepted_ms")
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

    def room(self) -> int:
        """Bytes the spool may hold in all: ``max_bytes``, or less when the disk is fuller."""
        try:
            disk = os.statvfs(self.directory)
        except OSError:
            return self.max_bytes
        free = disk.f_bavail * disk.f_frsize - DISK_RESERVE_BYTES
        return max(0, min(self.max_bytes, self._waiting_bytes() + free))

    def append(self, payloads: list[dict[str, Any]]) -> None:
        """Store records durably (written and fsynced), or raise SpoolFullError having written
        nothing."""
        encoded = [encode(p) for p in payloads]
        records = b"".join(encoded)
        with self._lock:
            room, waiting = self.room(), self._waiting_bytes()
            if waiting + len(records) > room:
                self._refusing = True
                raise SpoolFullError(f"the spool is full ({waiting:,} of {room:,} bytes)")
            added = Counter[str]()
            for payload, record in zip(payloads, encoded, strict=True):
                added[_project(payload)] += len(record)
            for project, size in added.items():
                share = int(room * self.project_share)
                if self._waiting[project] + size > share:
                    raise SpoolFullError(
                        f"project {project}'s share of the spool is full"
                        f" ({self._waiting[project]:,} of {share:,} bytes)"
                    )
            self._write(records)
            self._waiting.update(added)
            self._refusing = False
            if self._depth == 0:
                self._oldest_ms = payloads[0].get("accepted_ms")
            self._depth += len(payloads)

    def _write(self, records: bytes) -> None:
        """Append to the active segment, all or nothing: a write the disk refuses half-way is
        cut off again."""
        try:
            if self._sizes[self._active_number] + len(records) > SEGMENT_BYTES:
                self._rotate()
            written = memoryview(records)
            while written:  # (a raw file may take part of a write)
                written = written[self._active.write(written) or 0 :]
            os.fsync(self._active.fileno())
        except OSError as exc:
            self._refusing = True
            with contextlib.suppress(OSError):  # (it stays torn: recovery cuts it the same)
                os.ftruncate(self._active.fileno(), self._sizes[self._active_number])
            raise SpoolFullError(f"the spool cannot be written ({_reason(exc)})") from None
        self._sizes[self._active_number] += len(records)

    def _open_active(self) -> io.FileIO:
        """Unbuffered: what a write could not put on disk is never left in a buffer."""
        return open(self._path(self._active_number), "ab", buffering=0)

    def _rotate(self) -> None:
        self._active.close()
        self._active_number += 1
        self._sizes[self._active_number] = 0
        self._active = self._open_active()
        fsync_directory(self.directory)

    # -- reading ----------------------------------------------------------------------------

    def peek(
        self, limit: int, after: Position | None = None
    ) -> tuple[list[dict[str, Any]], Position]:
        """Up to ``limit`` of the oldest waiting records (or of those from ``after``, a
        position an earlier peek gave) and the position after them (for ``commit``). Reads one
        segment at most at a time: memory stays bounded whatever the backlog."""
        with self._lock:
            position = self._checkpoint if after is None else after
            records: list[dict[str, Any]] = []
            consumed = Counter[str]()
            while len(records) < limit:
                if position.segment not in self._sizes:
                    if position.segment >= self._active_number:
                        break
                    position = Position(position.segment + 1, 0)
                    continue
                with open(self._path(position.segment), "rb") as f:
                    f.seek(position.offset)
                    data = f.read(self._sizes[position.segment] - position.offset)
                read = 0
                for start, end, payload in _scan(data, 0):
                    if payload is not None:
                        records.append(json.loads(payload))
                        place = spool_position(position.segment, position.offset + start)
                        records[-1]["replayed"] = f"{self.id}:{place}"
                        consumed[_project(records[-1])] += end - start
                    read = end
                    if len(records) >= limit:
                        break
                else:
                    read = len(data)
                position = Position(position.segment, position.offset + read)
                if len(records) >= limit or position.segment >= self._active_number:
                    break
                position = Position(position.segment + 1, 0)  # this segment is read through
            return records, Position(position.segment, position.offset, consumed)

    def any_waiting(self, match: Callable[[dict[str, Any]], bool], page: int = 1_000) -> bool:
        """Whether a waiting record matches (read a page at a time: for rare questions, such as
        whether an anomaly's first occurrence waits here)."""
        position: Position | None = None
        while self._depth:
            records, position = self.peek(page, position)
            if any(match(record) for record in records):
                return True
            if len(records) < page:
                break
        return False

    def commit(self, position: Position, count: int) -> None:
        """The ``count`` records before ``position`` are stored: move the checkpoint past
        them and delete the segments wholly behind it. When it cannot be written, replay goes
        on from memory (``save_checkpoint`` tries again) and the segments stay."""
        with self._lock:
            if (
                position.segment == self._active_number
                and self._sizes[self._active_number] == position.offset
                and not self._active.closed
            ):
                position = self._start_over(position)  # all replayed: the room comes back
            self._checkpoint = position
            self._unsaved = position
            self._depth = max(0, self._depth - count)
            self._waiting.subtract(position.consumed)
            self._waiting = +self._waiting  # (drops the projects with nothing left)
            self._refusing = False
            self._oldest_ms = None  # found again by stats() when asked
            self._save()

    def _start_over(self, position: Position) -> Position:
        """A new, empty active segment, so that the one wholly replayed can go."""
        try:
            self._rotate()
        except OSError:
            return position  # (no room for a new file: the old one stays active)
        return Position(self._active_number, 0, position.consumed)

    def save_checkpoint(self) -> bool:
        """Write a checkpoint that could not be written before; True when none is left."""
        with self._lock:
            return self._save()

    def _save(self) -> bool:
        position = self._unsaved
        if position is None:
            return True
        try:
            self._write_checkpoint(position)
        except OSError as exc:
            logger.warning("spool_checkpoint_failed", error=_reason(exc))
            return False
        self._unsaved = None
        for number in [n for n in self._sizes if n < position.segment]:
            self._path(number).unlink(missing_ok=True)
            del self._sizes[number]
        return True

    @property
    def full(self) -> bool:
        """It refused its last record for want of room (not a project's share), and nothing
        was replayed since."""
        return self._refusing

    @property
    def checkpoint_saved(self) -> bool:
        return self._unsaved is None

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
                self._save()
                self._active.close()
                os.close(self._slots)
                self._owner.close()  # releases the directory


def _project(record: Mapping[str, Any]) -> str:
    return str(record.get("project", ""))


def _reason(exc: BaseException) -> str:
    """An OS error in a few words (its errno's text; never the whole path twice)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno) + (" (the disk is full)" if exc.errno == errno.ENOSPC else "")
    return str(exc)
