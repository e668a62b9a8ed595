"""The tokens the store vouched for, kept to answer for them while the store cannot.

Each entry is what the store said of a token (its id, project, read-only and admin flags and
the SHA-256 digest of its secret: the store's record, never the token) and when it said so. An entry
answers only while the store errs, and only for ``max_age`` seconds after the store last
confirmed it; when the store answers, its answer replaces the entry (or removes it: a token
the store does not know is forgotten here too).

With a directory (the spool's: a spool directory belongs to one process, so one writer), the
entries are kept in ``known-tokens.json`` there, so that a service restarted during an outage
still knows its clients. The file is replaced atomically (a temporary file, fsynced, renamed),
readable by its owner only, at most ``max_tokens`` entries; it is written when an entry comes
or goes or changes, and for confirmations alone at most once per ``REFRESH_SECONDS`` (an entry
is then at most that much older on disk than in memory, which only shortens its life). A file
that cannot be read or fails its checksum is ignored with a warning: the service starts
knowing no token, as it would without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ..spool import fsync_directory
from ..tokens import TokenRecord
from ..validation import PROJECT_ID

logger = structlog.get_logger("anomaly_counter.service.auth")

FILE_NAME = "known-tokens.json"
MAX_TOKENS = 10_000  # about 1.5 MB on disk
REFRESH_SECONDS = 300.0
RETRY_SECONDS = 30.0  # after a failed write (a full disk): the next try
_FORMAT = 1
_TOKEN_ID = re.compile(r"[0-9a-f]{16}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


class DamagedFileError(ValueError):
    """The file is not one this module wrote, or not as it wrote it."""


@dataclass(slots=True)
class _Entry:
    record: TokenRecord
    confirmed_ms: int  # when the store last gave this answer (wall clock)


class KnownTokens:
    """The store's last answers for the tokens it knows, least recently used first."""

    def __init__(
        self,
        directory: str | os.PathLike[str] | None,
        max_age: float,
        *,
        max_tokens: int = MAX_TOKENS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(directory) / FILE_NAME if directory else None
        self.max_age = max_age
        self._max_tokens = max_tokens
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._changes = 0  # every change made, counted
        self._saved = 0  # the change the file holds
        self._saved_at = float("-inf")
        self._retry_at = float("-inf")
        self._saving = asyncio.Lock()
        if self.path is not None:
            self._load(self.path)

    def __len__(self) -> int:
        return len(self._entries)

    def answer(self, token_id: str) -> TokenRecord | None:
        """The store's last answer for a token, if it is less than ``max_age`` old."""
        entry = self._entries.get(token_id)
        if entry is None or self._now_ms() - entry.confirmed_ms >= self.max_age * 1000:
            return None
        self._entries.move_to_end(token_id)
        return entry.record

    @property
    def unsaved(self) -> bool:
        """Whether the file lags behind (``save`` writes it)."""
        return self.path is not None and self._saved < self._changes

    def confirm(self, record: TokenRecord) -> None:
        """The store has just answered this record for its token."""
        entry = self._entries.get(record.token_id)
        changed = entry is None or _fields(entry.record) != _fields(record)
        self._entries[record.token_id] = _Entry(record, self._now_ms())
        self._entries.move_to_end(record.token_id)
        if len(self._entries) > self._max_tokens:
            self._entries.popitem(last=False)
        if changed or self._clock() - self._saved_at >= REFRESH_SECONDS:
            self._changes += 1

    def forget(self, token_id: str) -> None:
        """The store does not know this token (revoked, or never made)."""
        if self._entries.pop(token_id, None) is not None:
            self._changes += 1

    async def save(self) -> None:
        """Write the file, if it lags behind (never raises: a failure is logged, and the write
        tried again ``RETRY_SECONDS`` later)."""
        if not self.unsaved or self._clock() < self._retry_at:
            return
        wanted = self._changes
        path = self.path
        assert path is not None  # (unsaved)
        async with self._saving:  # one write at a time; one write covers every change before it
            if self._saved >= wanted:
                return
            changes, data = self._changes, self._encode()
            try:
                await asyncio.to_thread(_write_atomically, path, data)
            except OSError as exc:  # the answer stands; only the next restart is poorer for it
                logger.warning("known_tokens_unwritable", path=str(path), error=str(exc))
                self._retry_at = self._clock() + RETRY_SECONDS
                return
            self._saved, self._saved_at = changes, self._clock()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- the file ---------------------------------------------------------------------------

    def _encode(self) -> bytes:
        tokens = [
            {"id": e.record.token_id, "project": e.record.project, "digest": e.record.digest,
             "read_only": e.record.read_only, "admin": e.record.admin,
             "confirmed_ms": e.confirmed_ms}
            for e in self._entries.values()
        ]  # fmt: skip
        document = {"format": _FORMAT, "sha256": _checksum(tokens), "tokens": tokens}
        return json.dumps(document, separators=(",", ":")).encode()

    def _load(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning("known_tokens_ignored", path=str(path), error=str(exc))
            return
        try:
            entries = _decode(data)
        except (ValueError, UnicodeDecodeError) as exc:  # (JSONDecodeError is a ValueError)
            logger.warning("known_tokens_ignored", path=str(path), error=f"damaged: {exc}")
            return
        now_ms = self._now_ms()
        for entry in entries[-self._max_tokens :]:
            # a time ahead of this clock (it was set back) counts as now, not as later
            entry.confirmed_ms = min(entry.confirmed_ms, now_ms)
            if now_ms - entry.confirmed_ms < self.max_age * 1000:
                self._entries[entry.record.token_id] = entry


def _fields(record: TokenRecord) -> tuple[str, str, str, bool, bool]:
    """What of a record the file keeps (a change in any is written at once)."""
    return record.token_id, record.project, record.digest, record.read_only, record.admin


def _checksum(tokens: list[dict[str, Any]]) -> str:
    canonical = json.dumps(tokens, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _decode(data: bytes) -> list[_Entry]:
    document = json.loads(data.decode())
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise DamagedFileError("not a known-tokens file of this version")
    tokens = document.get("tokens")
    if not isinstance(tokens, list) or document.get("sha256") != _checksum(tokens):
        raise DamagedFileError("checksum mismatch")
    return [_entry(raw) for raw in tokens]


def _entry(raw: object) -> _Entry:
    if not isinstance(raw, dict):
        raise DamagedFileError("an entry is not an object")
    token_id, project, digest = raw.get("id"), raw.get("project"), raw.get("digest")
    read_only, confirmed_ms = raw.get("read_only"), raw.get("confirmed_ms")
    admin = raw.get("admin", False)  # (absent from files written before the admin scope)
    if not (
        isinstance(token_id, str)
        and _TOKEN_ID.fullmatch(token_id)
        and isinstance(project, str)
        and PROJECT_ID.fullmatch(project)
        and isinstance(digest, str)
        and _DIGEST.fullmatch(digest)
        and isinstance(read_only, bool)
        and isinstance(admin, bool)
        and isinstance(confirmed_ms, int)
        and not isinstance(confirmed_ms, bool)
    ):
        raise DamagedFileError("an entry has a missing or malformed field")
    # (created_ms and label are not kept: nothing that checks a request reads them)
    record = TokenRecord(token_id, project, digest, 0, "", read_only, admin)
    return _Entry(record, confirmed_ms)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f"{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # (a temporary file left by an older run may have another mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)  # (its room, on a full disk)
        raise
    fsync_directory(path.parent)
