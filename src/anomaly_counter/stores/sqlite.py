"""The embedded default store: one SQLite file, WAL mode, one transaction per occurrence.

Safe with several processes on one host (SQLite's own locking, ``BEGIN IMMEDIATE`` so writers
queue instead of failing, for at most ``store_timeout``). ``synchronous=FULL``: a committed
occurrence survives a power cut.

Calls run on the caller's thread when they need not wait: a transaction takes a fraction of a
millisecond on a local disk, less than handing it to a worker thread and back costs (measured:
40 % more records a second this way). That first try never waits on a lock (its connection's
busy timeout is zero); a call that would wait (another process holds the write lock, or
another caller this connection) goes to a worker thread, on a connection of its own that waits
up to ``store_timeout``, and the event loop serves everything else meanwhile. A service under
heavy load belongs on Redis.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from .. import timeline
from ..deletion import summary_share
from ..episodes import FlapState, IncidentState
from ..errors import ConfigurationError, StoreError, StoreFileError, StoreUnavailableError
from ..limits import anomaly_limit_error
from ..model import EscalationLevel
from ..outbox import KIND_CODES, KINDS, DeadLetter, Lease, OutboxEntry, OutboxStats, Settlement
from ..policy import Thresholds, crossing, level_for
from ..ranking import index_bound
from ..search import GROUP_SEP, TERM_SEP, grams_of, indexed, joined_terms, lookup
from ..tokens import TokenRecord
from ..windows import WindowState
from .base import (
    ANOMALY_TTL_SECONDS,
    DAY_MS,
    FIX_VALIDITY_MS,
    INDEXES,
    REPAIR_HISTORY_LENGTH,
    RETENTION_DAYS,
    AnomalyWrite,
    Chunks,
    Recording,
    RecordRequest,
    Resolution,
    Snapshot,
    Store,
    WritePolicy,
    blank_snapshot,
    day_of,
    dispositions_from,
    id_digest,
    repairs_from,
)
from .image import SCORE_NAMES, AnomalyImage
from .write_marks import numbered_marks

if TYPE_CHECKING:
    from ..settings import Settings

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS anomalies (
    project TEXT NOT NULL,
    anomaly_key TEXT NOT NULL,
    signature TEXT,
    first_seen INTEGER,
    last_seen INTEGER,
    level INTEGER NOT NULL DEFAULT 0,
    state BLOB,
    fix_at INTEGER,
    fix_description TEXT,
    fix_by TEXT,
    regressed_at INTEGER,
    ids_count INTEGER NOT NULL DEFAULT 0,
    score_1h INTEGER NOT NULL DEFAULT 0,
    score_24h INTEGER NOT NULL DEFAULT 0,
    score_7d INTEGER NOT NULL DEFAULT 0,
    score_30d INTEGER NOT NULL DEFAULT 0,
    score_dispositions INTEGER NOT NULL DEFAULT 0,
    has_days INTEGER NOT NULL DEFAULT 0,  -- any repair or disposition counted yet
    indexed INTEGER NOT NULL DEFAULT 0,  -- in the search index
    touched INTEGER NOT NULL,
    resolved_at INTEGER,  -- the latest resolution of one of its episodes
    verify_until INTEGER,  -- the latest end of its repairs' verification windows
    incident TEXT,  -- its current incident (episodes.IncidentState.encode_head)
    flap TEXT,  -- its flapping state (episodes.FlapState.encode)
    flap_leave INTEGER,  -- while it flaps: when it stops if nothing more happens
    PRIMARY KEY (project, anomaly_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS anomalies_1h ON anomalies (project, score_1h DESC, anomaly_key);
CREATE INDEX IF NOT EXISTS anomalies_24h ON anomalies (project, score_24h DESC, anomaly_key);
CREATE INDEX IF NOT EXISTS anomalies_7d ON anomalies (project, score_7d DESC, anomaly_key);
CREATE INDEX IF NOT EXISTS anomalies_30d ON anomalies (project, score_30d DESC, anomaly_key);
CREATE INDEX IF NOT EXISTS anomalies_dispositions
    ON anomalies (project, score_dispositions DESC, anomaly_key);
CREATE INDEX IF NOT EXISTS anomalies_touched ON anomalies (touched);
CREATE INDEX IF NOT EXISTS anomalies_chronic ON anomalies (project, level) WHERE level > 0;
-- The open episodes of each anomaly's incident (at most max_open): fingerprint, start, and
-- when Alertmanager last sent it.
CREATE TABLE IF NOT EXISTS open_episodes (
    project TEXT NOT NULL,
    anomaly_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    seen_ms INTEGER NOT NULL,
    PRIMARY KEY (project, anomaly_key, fingerprint)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS occurrence_ids (
    project TEXT NOT NULL,
    anomaly_key TEXT NOT NULL,
    digest TEXT NOT NULL,
    seen_at INTEGER NOT NULL,
    PRIMARY KEY (project, anomaly_key, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS occurrence_ids_age ON occurrence_ids (project, anomaly_key, seen_at);
-- What spools and their writers sent that may come again (see stores/write_marks.py): per
-- anomaly, 'w<writer>' holds its unsettled numbers, 'u<writer>' those replayed, 'r<spool>' the
-- highest position replayed.
CREATE TABLE IF NOT EXISTS write_marks (
    project TEXT NOT NULL,
    anomaly_key TEXT NOT NULL,
    field TEXT NOT NULL,
    held TEXT NOT NULL,
    touched INTEGER NOT NULL,
    PRIMARY KEY (project, anomaly_key, field)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS write_marks_touched ON write_marks (touched);
-- Day-bucketed counters: 't:<action>' / 's:<action>' (repair attempts / successes) and
-- 'd:<type>' (dispositions); the project's own summary rows use the anomaly key ''.
CREATE TABLE IF NOT EXISTS day_counts (
    project TEXT NOT NULL,
    anomaly_key TEXT NOT NULL,
    day INTEGER NOT NULL,
    name TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (project, anomaly_key, day, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    read_only INTEGER NOT NULL DEFAULT 0,
    admin INTEGER NOT NULL DEFAULT 0  -- may delete the project's data (docs/delete.md)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS repair_history (
    project TEXT NOT NULL,
    anomaly_key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    action TEXT NOT NULL,
    success INTEGER NOT NULL,
    at INTEGER NOT NULL,
    until_ms INTEGER,  -- verified until then (verification.py)
    back_ms INTEGER,  -- the anomaly's first occurrence after it, up to until_ms
    PRIMARY KEY (project, anomaly_key, seq)
) WITHOUT ROWID;
-- The story of each anomaly: entries as anomaly_counter.timeline encodes them, in two parts
-- (1: milestones, 0: the rest), each bounded on its own.
CREATE TABLE IF NOT EXISTS timeline (
    project TEXT NOT NULL,
    anomaly_key TEXT NOT NULL,
    part INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (project, anomaly_key, part, seq)
) WITHOUT ROWID;
-- How many anomalies (with an occurrence) each project holds, for max_anomalies. A missing row
-- is counted again from the anomalies (files of earlier versions; after housekeeping).
CREATE TABLE IF NOT EXISTS project_anomalies (
    project TEXT PRIMARY KEY,
    n INTEGER NOT NULL
) WITHOUT ROWID;
-- The notices outbox (anomaly_counter.outbox): each notice written in the transaction of the
-- occurrence that causes it; per project its lease ('lease': holder, until) and each channel's
-- cursor ('c:<channel>': the last entry it settled); and the dead letters.
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- (never used again, so a notice id stays one's)
    project TEXT NOT NULL,
    anomaly_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    level INTEGER NOT NULL,
    at INTEGER NOT NULL,
    counts TEXT NOT NULL,
    written INTEGER NOT NULL,
    notice_id TEXT NOT NULL DEFAULT '',
    only TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS outbox_by_project ON outbox (project, id);
CREATE TABLE IF NOT EXISTS outbox_state (
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    until INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (project, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    project TEXT NOT NULL,
    notice_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    dead_ms INTEGER NOT NULL,
    letter TEXT NOT NULL,
    PRIMARY KEY (project, notice_id, channel)
) WITHOUT ROWID;
-- Search (anomaly_counter.search): term -> anomalies, and gram -> terms.
CREATE TABLE IF NOT EXISTS search_terms (
    project TEXT NOT NULL,
    term TEXT NOT NULL,
    anomaly_key TEXT NOT NULL,
    PRIMARY KEY (project, term, anomaly_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS search_terms_by_anomaly ON search_terms (project, anomaly_key);
CREATE TABLE IF NOT EXISTS search_grams (
    project TEXT NOT NULL,
    gram BLOB NOT NULL,
    term TEXT NOT NULL,
    PRIMARY KEY (project, gram, term)
) WITHOUT ROWID;
"""
_ADDED_COLUMNS = (  # columns of files made by earlier versions
    ("anomalies", "resolved_at", "INTEGER"),
    ("anomalies", "fix_by", "TEXT"),
    ("anomalies", "indexed", "INTEGER NOT NULL DEFAULT 0"),
    ("tokens", "read_only", "INTEGER NOT NULL DEFAULT 0"),
    ("anomalies", "verify_until", "INTEGER"),
    ("repair_history", "until_ms", "INTEGER"),
    ("repair_history", "back_ms", "INTEGER"),
    ("anomalies", "incident", "TEXT"),
    ("anomalies", "flap", "TEXT"),
    ("anomalies", "flap_leave", "INTEGER"),
    ("tokens", "admin", "INTEGER NOT NULL DEFAULT 0"),
)
_ADDED_INDEXES = (  # on added columns: made once they are there
    "CREATE INDEX IF NOT EXISTS anomalies_flapping ON anomalies (project, flap_leave)"
    " WHERE flap_leave IS NOT NULL",
)

_COLUMNS = {name: f"score_{name}" for name in INDEXES}
_WINDOW_COLUMNS = ("score_1h", "score_24h", "score_7d", "score_30d")
_PAGE = 200
_GRAM_COUNT_CAP = 10_000
_HOUR_MS = 3_600_000
_HOUSEKEEPING_EVERY_MS = _HOUR_MS
_HOUSEKEEPING_STEP = 1_000  # anomalies forgotten in one write's transaction at most


class SQLiteStore(Store):
    """Store on one SQLite file."""

    def __init__(self, path: str, settings: Settings) -> None:
        self._path = path
        self._settings = settings
        self._busy_timeout = settings.store_timeout
        # [0] for the caller's thread (never waits), [1] for a worker thread (waits): each
        # connection serves one caller at a time, so that no statement lands in another's
        # transaction
        self._dbs: list[sqlite3.Connection | None] = [None, None]
        self._locks = (threading.Lock(), threading.Lock())
        self._local = threading.local()  # which of the two the running call uses
        self._last_housekeeping = 0
        self.create = True
        """Whether the file is made when it is not there (False: a reader's, which must not
        make a store out of a mistyped path: StoreFileError instead)."""

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> SQLiteStore:
        return cls(sqlite_path(url), settings)

    # -- plumbing -----------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        waits = int(getattr(self._local, "waits", True))
        db = self._dbs[waits]
        if db is None:
            db = self._open(self._busy_timeout if waits else 0.0)
            self._dbs[waits] = db
        return db

    def _open(self, busy_timeout: float) -> sqlite3.Connection:
        """A connection to the file, made ready; ``StoreFileError`` when the file cannot be
        used as it is (another process holding a lock is no such error: the caller waits)."""
        if not self.create and self._path != ":memory:" and not Path(self._path).exists():
            shown = "sqlite:///" + self._path
            problem = _path_problem(Path(self._path))
            raise StoreFileError(
                f"{shown} {problem}"
                if problem
                else f"no store at {shown}: nothing was ever recorded there; check --store"
                " (or the store_url setting)"
            )
        try:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self._path,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,  # one counter may serve several loops, and workers
            )
        except (ValueError, OSError, sqlite3.Error) as exc:  # (ValueError: a NUL in the path)
            raise self._unusable(exc) from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            for table, column, kind in _ADDED_COLUMNS:
                columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            for statement in _ADDED_INDEXES:
                db.execute(statement)
        except BaseException as exc:
            db.close()
            if isinstance(exc, sqlite3.Error) and not (
                isinstance(exc, sqlite3.OperationalError) and _busy(exc)
            ):
                raise self._unusable(exc) from exc
            raise
        return db

    def _unusable(self, exc: Exception) -> StoreFileError | StoreUnavailableError:
        """What the file failed on (when opened, or a page found damaged later), in one line
        naming it: a ``StoreFileError`` when the file or its path cannot be used as they are,
        else ``StoreUnavailableError``."""
        shown = "sqlite:///" + "".join(
            c if c.isprintable() else f"%{ord(c):02X}" for c in self._path
        )
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if isinstance(exc, ValueError):
            return StoreFileError(f"{shown}: a file name cannot hold a NUL character ({exc})")
        if code == sqlite3.SQLITE_NOTADB:
            return StoreFileError(f"{shown} is not an SQLite database ({exc})")
        if code == sqlite3.SQLITE_CORRUPT:
            return StoreFileError(f"{shown} is a damaged SQLite database ({exc})")
        problem = _path_problem(Path(self._path)) if self._path != ":memory:" else None
        if problem is not None:
            return StoreFileError(f"{shown} {problem}")
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if code == sqlite3.SQLITE_READONLY or (
            isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        ):
            return StoreFileError(f"{shown} cannot be written ({reason})")
        return StoreUnavailableError(f"{shown} cannot be opened ({reason})")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            if self._locks[0].acquire(blocking=False):
                try:
                    self._local.waits = False
                    return fn(*args)
                except sqlite3.OperationalError as exc:
                    if not _busy(exc):
                        raise
                finally:
                    self._local.waits = True
                    self._locks[0].release()
            return await asyncio.to_thread(self._waiting, fn, *args)
        except (sqlite3.OperationalError, OSError) as exc:
            raise StoreUnavailableError(f"sqlite store {self._path}: {exc}") from exc
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError) as exc:  # (a bug: not the file)
            raise StoreError(f"sqlite store {self._path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:  # (a page damaged after it opened)
            raise self._unusable(exc) from None

    def _waiting(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._locks[1].acquire(timeout=self._busy_timeout):
            raise sqlite3.OperationalError("database is locked (by this process's other calls)")
        try:
            self._local.waits = True
            return fn(*args)
        finally:
            self._locks[1].release()

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # (never left open: a retry elsewhere would wait on it)
                db.execute("ROLLBACK")
            raise
        return result

    # -- occurrences --------------------------------------------------------------------------

    async def record(
        self, recording: Recording, requests: Sequence[RecordRequest]
    ) -> list[Snapshot]:
        return await self._run(self._write, self._recording(recording, requests))

    async def record_chunks(
        self, recording: Recording, chunks: Chunks, *, whole: Sequence[str] | None = None
    ) -> AsyncIterator[list[Snapshot]]:
        if whole is None:
            async for snapshots in super().record_chunks(recording, chunks):
                yield snapshots
            return
        # a whole batch is one transaction: a refusal anywhere rolls all of it back
        sizes: list[int] = []
        requests: list[RecordRequest] = []
        for chunk in chunks:
            sizes.append(len(chunk))
            requests.extend(chunk)
        work = self._recording(recording, requests, whole=True)
        snapshots = await self._run(self._write, work)
        for size in sizes:
            yield snapshots[:size]
            snapshots = snapshots[size:]

    def _recording(
        self, recording: Recording, requests: Sequence[RecordRequest], whole: bool = False
    ) -> Callable[[sqlite3.Connection], list[Snapshot]]:
        project, policy, now_ms = recording

        def work(db: sqlite3.Connection) -> list[Snapshot]:
            last_housekeeping = self._last_housekeeping
            self._housekeeping(db, now_ms, policy.dedup_horizon_ms)
            snapshots = []
            try:
                for request in requests:
                    snapshots.append(self._record_one(db, project, request, policy, now_ms))
                    if whole and snapshots[-1].refused:
                        raise anomaly_limit_error(project, policy.max_anomalies)
            except BaseException:
                # its deletes are rolled back with the batch: they are done again next time
                self._last_housekeeping = last_housekeeping
                raise
            return snapshots

        return work

    def _record_one(
        self,
        db: sqlite3.Connection,
        project: str,
        request: RecordRequest,
        policy: WritePolicy,
        now_ms: int,
    ) -> Snapshot:
        key, at = request.anomaly_key, request.at_ms
        row = db.execute(
            "SELECT first_seen, last_seen, level, state, fix_at, regressed_at, ids_count,"
            " has_days, indexed, touched, fix_description, fix_by,"
            " score_1h, score_24h, score_7d, score_30d, verify_until"
            " FROM anomalies WHERE project = ? AND anomaly_key = ?",
            (project, key),
        ).fetchone()
        is_new = row is None
        if is_new and not self._room_for(db, project, policy.max_anomalies):
            return blank_snapshot(key, refused=True)  # a new anomaly past the limit: nothing stored
        if row is None:
            row = (None, None, 0, None, None, None, 0, 0, 0, None, None, None, 0, 0, 0, 0, None)
        first_seen, last_seen, level, blob, fix_at, regressed_at, ids_count, has_days = row[:8]
        indexed, row_touched, fix_record, bounds = row[8], row[9], row[10:12], row[12:16]
        verify_until = row[16]
        if self._marked_before(db, project, request, now_ms):
            snapshot = self._snapshot(db, project, key, at, now_ms, episodes=False)
            assert snapshot is not None  # a mark is only noted with its occurrence
            snapshot.duplicate = True
            return snapshot
        if request.occurrence_id is not None and request.sequence is None:
            digest = id_digest(request.occurrence_id)
            seen = db.execute(
                "SELECT 1 FROM occurrence_ids WHERE project = ? AND anomaly_key = ?"
                " AND digest = ? AND seen_at >= ?",
                (project, key, digest, now_ms - policy.dedup_horizon_ms),
            ).fetchone()
            if seen is not None:
                # seen again: the horizon runs from the last delivery
                db.execute(
                    "UPDATE occurrence_ids SET seen_at = ? WHERE project = ? AND anomaly_key = ?"
                    " AND digest = ?",
                    (now_ms, project, key, digest),
                )
                if request.episode:  # Alertmanager sent it again: still open
                    db.execute(
                        "UPDATE open_episodes SET seen_ms = max(seen_ms, ?) WHERE project = ?"
                        " AND anomaly_key = ? AND fingerprint = ?",
                        (now_ms, project, key, request.episode),
                    )
                snapshot = self._snapshot(db, project, key, at, now_ms, episodes=False)
                assert snapshot is not None  # an id is only remembered with its occurrence
                snapshot.duplicate = True
                return snapshot
            ids_count = self._remember_id(db, project, key, digest, ids_count, policy, now_ms)
        joined, marks = False, list[int]()  # (marks: its changes for flapping)
        if request.episode and not is_new:
            joined, marks = self._episode(db, project, request, policy, now_ms)
        if joined:  # joined the incident in progress: not a recurrence (its id is remembered)
            db.execute(
                "UPDATE anomalies SET ids_count = ? WHERE project = ? AND anomaly_key = ?",
                (ids_count, project, key),
            )
            if marks:
                self._flap_step(db, project, key, marks, now_ms, policy)
            snapshot = self._snapshot(db, project, key, at, now_ms, episodes=False)
            assert snapshot is not None
            snapshot.joined = True
            return snapshot
        state = (
            WindowState.from_bytes(blob, policy.tail_capacity)
            if blob is not None
            else WindowState(policy.tail_capacity)
        )
        state.add(at)
        if verify_until is not None and at <= verify_until:  # a repair may be verified by it
            db.execute(
                "UPDATE repair_history SET back_ms = ? WHERE project = ? AND anomaly_key = ?"
                " AND until_ms IS NOT NULL AND at < ? AND ? <= until_ms"
                " AND (back_ms IS NULL OR back_ms > ?)",
                (at, project, key, at, at, at),
            )
            # only the windows still open and not falsified are watched from now on
            (verify_until,) = db.execute(
                "SELECT max(until_ms) FROM repair_history WHERE project = ? AND anomaly_key = ?"
                " AND back_ms IS NULL",
                (project, key),
            ).fetchone()
            values_extra = {"verify_until": verify_until}
        else:
            values_extra = {}
        counts_at = state.counts(at)
        counts_newest = counts_at if state.newest == at else state.counts(state.newest)
        new_level = level_for(counts_newest[1], _thresholds(policy.thresholds))
        escalated = crossing(EscalationLevel(level), new_level)
        fix_in_force = fix_at is not None and now_ms - fix_at < FIX_VALIDITY_MS
        newly_regressed = fix_in_force and at >= fix_at and regressed_at is None
        if newly_regressed:
            regressed_at = at
        first_ever = first_seen is None
        first_seen = at if first_seen is None else min(first_seen, at)
        last_seen = at if last_seen is None else max(last_seen, at)
        # Index scores move only when a count passes them, and `touched` by the hour, so most
        # writes leave the indexes' pages alone (fewer pages to the WAL per commit).
        touched = now_ms - now_ms % _HOUR_MS
        values: dict[str, Any] = {
            "first_seen": first_seen, "last_seen": last_seen, "state": state.to_bytes(),
            "regressed_at": regressed_at, "ids_count": ids_count,
        }  # fmt: skip
        if new_level != level or is_new:  # (the chronic index is on it: only when it moves)
            values["level"] = int(new_level)
        if first_ever:  # the signature of the first occurrence is the one kept (and searched)
            values["signature"] = request.signature_json
        if not indexed:  # (one first seen by a version without search: by this occurrence)
            values["indexed"] = 1
        for column, count, bound in zip(_WINDOW_COLUMNS, counts_newest, bounds, strict=True):
            if count > bound:
                values[column] = index_bound(count)
        if row_touched != touched:
            values["touched"] = touched
        values.update(values_extra)
        if is_new:
            values.update(project=project, anomaly_key=key)
            values.update({c: values.get(c, 0) for c in _WINDOW_COLUMNS}, touched=touched)
            db.execute(_insert_sql(tuple(values)), tuple(values.values()))
        else:
            # Only the columns that changed: SQLite rewrites an index whenever an UPDATE
            # assigns one of its columns, so most writes leave the five indexes alone.
            db.execute(_update_sql(tuple(values)), (*values.values(), project, key))
        # the story, in the same transaction
        if not indexed:
            self._index(db, project, key, request.search_terms)
        if request.episode and is_new:  # (its first episode starts its first incident)
            _, marks = self._episode(db, project, request, policy, now_ms)
        if first_ever:
            self._tell(db, project, key, timeline.encode("first_seen", at))
        if escalated:
            self._tell(db, project, key, timeline.encode("escalated", at, int(escalated),
                                                          counts_newest[1]))  # fmt: skip
            self._bump(db, project, "", day_of(at), [f"e:{int(escalated)}"])
            self._prune_days(db, project, "", now_ms)
        if newly_regressed:
            self._tell(db, project, key, timeline.encode("regressed", at))
        if policy.outbox_max and escalated:  # the notices, in the same transaction
            self._post(db, project, key, "e", int(escalated), at, counts_at, now_ms, policy)
        if policy.outbox_max and newly_regressed:
            self._post(db, project, key, "r", 0, at, counts_at, now_ms, policy)
        if marks:  # it fired (or fired and resolved): changes for flapping
            self._flap_step(db, project, key, marks, now_ms, policy)
        days = self._day_totals(db, project, key, now_ms) if has_days else {}
        snapshot = _make_snapshot(key, counts_at, first_seen, last_seen, fix_at, days, now_ms)
        snapshot.escalated_to = int(escalated or 0)
        snapshot.regressed_ms = regressed_at if snapshot.fix_at_ms is not None else None
        snapshot.newly_regressed = newly_regressed
        if snapshot.fix_at_ms is not None:
            snapshot.fix_description, snapshot.fix_by = fix_record
        return snapshot

    # -- episodes: incidents and flapping (anomaly_counter.episodes) -------------------------

    @staticmethod
    def _incident(db: sqlite3.Connection, project: str, key: str) -> IncidentState:
        """The anomaly's incident with its open episodes."""
        row = db.execute(
            "SELECT incident FROM anomalies WHERE project = ? AND anomaly_key = ?",
            (project, key),
        ).fetchone()
        episodes = db.execute(
            "SELECT fingerprint, start_ms, seen_ms FROM open_episodes"
            " WHERE project = ? AND anomaly_key = ?",
            (project, key),
        ).fetchall()
        head = row[0] if row is not None else None
        return IncidentState.decode(head, {fp: (s, seen) for fp, s, seen in episodes})

    @staticmethod
    def _save_incident(
        db: sqlite3.Connection,
        project: str,
        key: str,
        incident: IncidentState,
        before: IncidentState,
    ) -> None:
        """Write what changed of an incident since ``before`` (a copy as it was read): its
        head, and its open episodes that came, went or were seen again."""
        head = incident.encode_head()
        if head != before.encode_head():
            db.execute(
                "UPDATE anomalies SET incident = ? WHERE project = ? AND anomaly_key = ?",
                (head, project, key),
            )
        gone = [(project, key, fp) for fp in before.open if fp not in incident.open]
        db.executemany(
            "DELETE FROM open_episodes WHERE project = ? AND anomaly_key = ? AND fingerprint = ?",
            gone,
        )
        changed = [
            (project, key, fp, start, seen)
            for fp, (start, seen) in incident.open.items()
            if before.open.get(fp) != (start, seen)
        ]
        db.executemany(
            "INSERT OR REPLACE INTO open_episodes"
            " (project, anomaly_key, fingerprint, start_ms, seen_ms) VALUES (?, ?, ?, ?, ?)",
            changed,
        )

    def _episode(
        self,
        db: sqlite3.Connection,
        project: str,
        request: RecordRequest,
        policy: WritePolicy,
        now_ms: int,
    ) -> tuple[bool, list[int]]:
        """A new episode into its anomaly's incident: whether it joined the one in progress
        (it counts as no recurrence), and its changes for flapping (IncidentState.fire)."""
        rules, key = policy.episodes, request.anomaly_key
        incident = self._incident(db, project, key)
        before = replace(incident, open=dict(incident.open))
        incident.expire(now_ms, rules.open_ms)
        starts, marks = incident.fire(
            request.episode, request.at_ms, request.ends_ms, now_ms, rules
        )
        self._save_incident(db, project, key, incident, before)
        return not starts and rules.count == "incidents", marks

    def _flap_step(
        self,
        db: sqlite3.Connection,
        project: str,
        key: str,
        marks: Sequence[int],
        now_ms: int,
        policy: WritePolicy,
    ) -> bool:
        """Changes at these times (none: the sweep's look as of now), then the thresholds:
        starting or stopping to flap is told in the timeline and the outbox (at the latest
        change, or now), and the project's flapping index follows. True when it stopped."""
        rules = policy.episodes
        (stored,) = db.execute(
            "SELECT flap FROM anomalies WHERE project = ? AND anomaly_key = ?", (project, key)
        ).fetchone()
        flap = FlapState.decode(stored)
        for at_ms in marks:
            flap.mark(at_ms, rules.slot_ms)
        change = flap.evaluate(now_ms, rules.flap_start, rules.flap_stop)
        leave = flap.leave_at(rules.flap_stop) if flap.flapping else None
        db.execute(
            "UPDATE anomalies SET flap = ?, flap_leave = ? WHERE project = ? AND anomaly_key = ?",
            (flap.encode(), leave, project, key),
        )
        if change is None:
            return False
        when = max(marks) if marks else now_ms
        percent = flap.percent_text(now_ms)
        self._tell(db, project, key, timeline.encode("flapping", when, change, percent))
        if policy.outbox_max:
            (blob,) = db.execute(
                "SELECT state FROM anomalies WHERE project = ? AND anomaly_key = ?",
                (project, key),
            ).fetchone()
            counts = WindowState.from_bytes(blob, 1 << 30).counts(when) if blob else (0, 0, 0, 0)
            kind = "f" if change else "s"
            level = round(float(percent) * 10)
            self._post(db, project, key, kind, level, when, counts, now_ms, policy)
        return not change

    def _post(
        self,
        db: sqlite3.Connection,
        project: str,
        key: str,
        kind: str,
        level: int,
        at: int,
        counts: Sequence[int],
        now_ms: int,
        policy: WritePolicy,
    ) -> None:
        """Put a notice in the project's outbox (in the occurrence's transaction), or count it
        as overflowed when the outbox holds ``outbox_max`` already."""
        if self._held(db, project) >= policy.outbox_max:
            self._bump_state(db, project, "overflow")
            return
        self._bump_state(db, project, "held")
        db.execute(
            "INSERT INTO outbox (project, anomaly_key, kind, level, at, counts, written)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (project, key, kind, level, at, ",".join(map(str, counts)), now_ms),
        )

    @staticmethod
    def _bump_state(db: sqlite3.Connection, project: str, name: str, by: int = 1) -> None:
        """Add to one of the outbox's counts: 'held' (its entries: counted, so that a crossing
        does not count the outbox), 'overflow', 'dead_overflow'."""
        db.execute(
            "INSERT INTO outbox_state (project, name, value) VALUES (?, ?, ?)"
            " ON CONFLICT (project, name) DO UPDATE SET value = CAST(value AS INTEGER) + ?",
            (project, name, str(by), by),
        )

    def _held(self, db: sqlite3.Connection, project: str) -> int:
        """The outbox's entries, as counted on each write (counted from the table once, when
        the count is missing)."""
        row = db.execute(
            "SELECT value FROM outbox_state WHERE project = ? AND name = 'held'", (project,)
        ).fetchone()
        if row is not None:
            return int(row[0])
        (held,) = db.execute("SELECT count(*) FROM outbox WHERE project = ?", (project,)).fetchone()
        db.execute(
            "INSERT INTO outbox_state (project, name, value) VALUES (?, 'held', ?)",
            (project, str(held)),
        )
        return int(held)

    @staticmethod
    def _state(db: sqlite3.Connection, project: str, name: str) -> int:
        row = db.execute(
            "SELECT value FROM outbox_state WHERE project = ? AND name = ?", (project, name)
        ).fetchone()
        return int(row[0]) if row else 0

    def _room_for(self, db: sqlite3.Connection, project: str, limit: int) -> bool:
        """Count one more anomaly of the project (with occurrences, or known by a repair, a
        disposition or a fix only), unless it holds ``limit`` already."""
        row = db.execute("SELECT n FROM project_anomalies WHERE project = ?", (project,)).fetchone()
        if row is None:
            row = db.execute(
                "SELECT COUNT(*) FROM anomalies WHERE project = ?", (project,)
            ).fetchone()
        if row[0] >= limit:
            return False
        db.execute(
            "INSERT INTO project_anomalies (project, n) VALUES (?, ?)"
            " ON CONFLICT (project) DO UPDATE SET n = excluded.n",
            (project, row[0] + 1),
        )
        return True

    def _first_event(self, db: sqlite3.Connection, project: str, write: AnomalyWrite) -> bool:
        """Room for the anomaly (or LimitExceededError), then True the first time this write
        reaches it (False for a retry of one applied)."""
        self._claim(db, project, write.anomaly_key)
        return self._first_write(db, project, write.anomaly_key, write.write_id, write.now_ms)

    def _claim(self, db: sqlite3.Connection, project: str, key: str) -> None:
        """A repair, disposition or fix of an anomaly the project does not hold yet makes it:
        room is taken for it, or the write is refused (and its transaction rolled back)."""
        held = db.execute(
            "SELECT 1 FROM anomalies WHERE project = ? AND anomaly_key = ?", (project, key)
        ).fetchone()
        limit = self._settings.limits_for(project).max_anomalies
        if held is None and not self._room_for(db, project, limit):
            raise anomaly_limit_error(project, limit)

    # -- the story ----------------------------------------------------------------------------

    def _tell(self, db: sqlite3.Connection, project: str, key: str, entry: str) -> None:
        """Add a timeline entry, and drop the oldest of its part past the part's bounds."""
        milestone = timeline.is_milestone(entry)
        where = (project, key, int(milestone))
        seq = db.execute(
            "SELECT coalesce(max(seq), 0) + 1 FROM timeline WHERE project = ? AND anomaly_key = ?"
            " AND part = ?",
            where,
        ).fetchone()[0]
        db.execute("INSERT INTO timeline VALUES (?, ?, ?, ?, ?)", (*where, seq, entry))
        sizes = db.execute(
            "SELECT seq, length(CAST(entry AS BLOB)) FROM timeline WHERE project = ?"
            " AND anomaly_key = ? AND part = ? ORDER BY seq DESC LIMIT ?",
            (*where, timeline.MAX_ENTRIES + 1),
        ).fetchall()
        keep = timeline.kept([size for _, size in sizes], milestone)
        if keep < len(sizes):
            db.execute(
                "DELETE FROM timeline WHERE project = ? AND anomaly_key = ? AND part = ?"
                " AND seq <= ?",
                (*where, sizes[keep][0]),
            )

    def _index(self, db: sqlite3.Connection, project: str, key: str, terms: str) -> None:
        """Index an anomaly under its search terms, and a fingerprint term new to the project
        under its grams (see anomaly_counter.search)."""
        fingerprint, _, others = terms.partition(GROUP_SEP)
        for term in fingerprint.split(TERM_SEP) if fingerprint else ():
            grams = grams_of(term)
            known = db.execute(
                "SELECT 1 FROM search_grams WHERE project = ? AND gram = ? AND term = ?",
                (project, grams[0], term),
            ).fetchone()
            if known is None:
                db.executemany(
                    "INSERT OR IGNORE INTO search_grams VALUES (?, ?, ?)",
                    [(project, gram, term) for gram in grams],
                )
        every = [t for t in (*fingerprint.split(TERM_SEP), *others.split(TERM_SEP)) if t]
        db.executemany(
            "INSERT OR IGNORE INTO search_terms VALUES (?, ?, ?)",
            [(project, term, key) for term in every],
        )

    def _marked_before(
        self, db: sqlite3.Connection, project: str, request: RecordRequest, now_ms: int
    ) -> bool:
        """A replayed or numbered occurrence counted before (see write_marks); when not, its
        mark is noted."""
        key = request.anomaly_key
        if request.replayed:
            spool, position = request.replayed.split(":")
            held = self._mark(db, project, key, "r" + spool)
            if held is not None and position <= held:
                return True
            self._note_mark(db, project, key, "r" + spool, position, now_ms)
        if request.sequence is None:
            return False
        writer, number = request.sequence
        seen, held, late = numbered_marks(
            self._mark(db, project, key, "w" + writer) or "",
            self._mark(db, project, key, "u" + writer) or "",
            number,
            request.floor,
        )
        for field, value in (("w", held), ("u", late)):
            if value is not None:
                self._note_mark(db, project, key, field + writer, value, now_ms)
        return seen

    @staticmethod
    def _mark(db: sqlite3.Connection, project: str, key: str, field: str) -> str | None:
        row = db.execute(
            "SELECT held FROM write_marks WHERE project = ? AND anomaly_key = ? AND field = ?",
            (project, key, field),
        ).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _note_mark(
        db: sqlite3.Connection, project: str, key: str, field: str, held: str, now_ms: int
    ) -> None:
        db.execute(
            "INSERT OR REPLACE INTO write_marks VALUES (?, ?, ?, ?, ?)",
            (project, key, field, held, now_ms),
        )

    def _remember_id(
        self,
        db: sqlite3.Connection,
        project: str,
        key: str,
        digest: str,
        ids_count: int,
        policy: WritePolicy,
        now_ms: int,
    ) -> int:
        db.execute(
            "INSERT OR REPLACE INTO occurrence_ids VALUES (?, ?, ?, ?)",
            (project, key, digest, now_ms),
        )
        expired = db.execute(
            "DELETE FROM occurrence_ids WHERE project = ? AND anomaly_key = ? AND seen_at < ?",
            (project, key, now_ms - policy.dedup_horizon_ms),
        ).rowcount
        ids_count = max(0, ids_count + 1 - expired)
        if ids_count > policy.dedup_max_ids:
            # Memory stays bounded: the oldest ids are forgotten early (documented trade-off).
            db.execute(
                "DELETE FROM occurrence_ids WHERE (project, anomaly_key, digest) IN"
                " (SELECT project, anomaly_key, digest FROM occurrence_ids"
                " WHERE project = ? AND anomaly_key = ? ORDER BY seen_at LIMIT ?)",
                (project, key, ids_count - policy.dedup_max_ids),
            )
            ids_count = policy.dedup_max_ids
        return ids_count

    def _snapshot(
        self,
        db: sqlite3.Connection,
        project: str,
        key: str,
        at: int,
        now_ms: int,
        episodes: bool = True,
    ) -> Snapshot | None:
        """The anomaly as a read answers it; ``episodes`` False: as a write answers it, without
        the incident and flapping figures (the reads')."""
        row = db.execute(
            "SELECT first_seen, last_seen, state, fix_at, signature, resolved_at,"
            " fix_description, fix_by, regressed_at, has_days, incident, flap FROM anomalies"
            " WHERE project = ? AND anomaly_key = ?",
            (project, key),
        ).fetchone()
        if row is None:
            return None
        first_seen, last_seen, blob, fix_at, signature, resolved_at = row[:6]
        fix_description, fix_by, regressed_at, has_days, incident, flap = row[6:]
        state = WindowState.from_bytes(blob, 1 << 30) if blob is not None else None
        counts = state.counts(at) if state is not None else (0, 0, 0, 0)
        days = self._day_totals(db, project, key, now_ms) if has_days else {}
        snapshot = _make_snapshot(key, counts, first_seen, last_seen, fix_at, days, now_ms)
        snapshot.signature = json.loads(signature) if signature else {}
        snapshot.resolved_ms = resolved_at
        if snapshot.fix_at_ms is not None:
            snapshot.fix_description, snapshot.fix_by = fix_description, fix_by
            snapshot.regressed_ms = regressed_at
        if incident and episodes:
            snapshot.instances = IncidentState.decode(incident, {}).instances
            (snapshot.firing,) = db.execute(
                "SELECT count(*) FROM open_episodes WHERE project = ? AND anomaly_key = ?",
                (project, key),
            ).fetchone()
        snapshot.flap = (flap or "") if episodes else ""
        return snapshot

    async def read(
        self, project: str, anomaly_keys: Sequence[str], at_ms: int, now_ms: int
    ) -> list[Snapshot | None]:
        def work() -> list[Snapshot | None]:
            db = self._connection()
            return [self._snapshot(db, project, key, at_ms, now_ms) for key in anomaly_keys]

        return await self._run(work)

    # -- repairs and dispositions -------------------------------------------------------------

    def _day_totals(
        self, db: sqlite3.Connection, project: str, key: str, now_ms: int
    ) -> dict[str, int]:
        rows = db.execute(
            "SELECT name, sum(n) FROM day_counts WHERE project = ? AND anomaly_key = ?"
            " AND day >= ? GROUP BY name",
            (project, key, day_of(now_ms) - RETENTION_DAYS),
        )
        return {name: int(n) for name, n in rows}

    def _bump(
        self, db: sqlite3.Connection, project: str, key: str, day: int, names: Sequence[str]
    ) -> None:
        for name in names:
            db.execute(
                "INSERT INTO day_counts VALUES (?, ?, ?, ?, 1) ON CONFLICT"
                " (project, anomaly_key, day, name) DO UPDATE SET n = n + 1",
                (project, key, day, name),
            )

    def _prune_days(self, db: sqlite3.Connection, project: str, key: str, now_ms: int) -> None:
        db.execute(
            "DELETE FROM day_counts WHERE project = ? AND anomaly_key = ? AND day < ?",
            (project, key, day_of(now_ms) - RETENTION_DAYS),
        )

    def _touch(self, db: sqlite3.Connection, project: str, key: str, now_ms: int) -> None:
        """Keep the anomaly (and note it has day counters) after a repair or disposition."""
        db.execute(
            "INSERT INTO anomalies (project, anomaly_key, has_days, touched) VALUES (?, ?, 1, ?)"
            " ON CONFLICT (project, anomaly_key) DO UPDATE SET has_days = 1,"
            " touched = excluded.touched",
            (project, key, now_ms - now_ms % _HOUR_MS),
        )

    def _first_write(
        self, db: sqlite3.Connection, project: str, key: str, write_id: str, now_ms: int
    ) -> bool:
        """True the first time a write id reaches this anomaly (kept with occurrence ids)."""
        if not write_id:
            return True
        cursor = db.execute(
            "INSERT OR IGNORE INTO occurrence_ids (project, anomaly_key, digest, seen_at)"
            " VALUES (?, ?, ?, ?)",
            (project, key, id_digest(write_id), now_ms),
        )
        return cursor.rowcount > 0

    async def record_repair(
        self, project: str, write: AnomalyWrite, action: str, success: bool, until_ms: int = 0
    ) -> None:
        anomaly_key, at_ms, now_ms, _, by = write

        def work(db: sqlite3.Connection) -> None:
            if not self._first_event(db, project, write):
                return
            self._tell(
                db, project, anomaly_key, timeline.encode("repair", at_ms, action, success, by)
            )
            names = [f"t:{action}", f"s:{action}"] if success else [f"t:{action}"]
            self._bump(db, project, anomaly_key, day_of(at_ms), names)
            self._prune_days(db, project, anomaly_key, now_ms)
            seq = db.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM repair_history"
                " WHERE project = ? AND anomaly_key = ?",
                (project, anomaly_key),
            ).fetchone()[0]
            back = self._first_after(db, project, anomaly_key, at_ms) if until_ms else None
            db.execute(
                "INSERT INTO repair_history (project, anomaly_key, seq, action, success, at,"
                " until_ms, back_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (project, anomaly_key, seq, action, int(success), at_ms, until_ms or None,
                 back if back is not None and back <= until_ms else None),
            )  # fmt: skip
            db.execute(
                "DELETE FROM repair_history WHERE project = ? AND anomaly_key = ? AND seq <= ?",
                (project, anomaly_key, seq - REPAIR_HISTORY_LENGTH),
            )
            self._touch(db, project, anomaly_key, now_ms)
            if until_ms and (back is None or back > until_ms):  # watched until its window ends
                db.execute(
                    "UPDATE anomalies SET verify_until = max(coalesce(verify_until, 0), ?)"
                    " WHERE project = ? AND anomaly_key = ?",
                    (until_ms, project, anomaly_key),
                )

        await self._run(self._write, work)

    @staticmethod
    def _first_after(db: sqlite3.Connection, project: str, key: str, at_ms: int) -> int | None:
        """The anomaly's first occurrence its state holds after ``at_ms`` (or None)."""
        row = db.execute(
            "SELECT state FROM anomalies WHERE project = ? AND anomaly_key = ?", (project, key)
        ).fetchone()
        if row is None or row[0] is None:
            return None
        state = WindowState.from_bytes(row[0], 1 << 30)
        if state.evicted_max > at_ms:  # pushed out of the tail: came back by then at the latest
            return state.evicted_max
        position = bisect.bisect_right(state.tail, at_ms)
        return state.tail[position] if position < len(state.tail) else None

    async def repair_stats(
        self, project: str, anomaly_key: str, now_ms: int
    ) -> dict[str, tuple[int, int]]:
        def work() -> dict[str, tuple[int, int]]:
            return repairs_from(self._day_totals(self._connection(), project, anomaly_key, now_ms))

        return await self._run(work)

    async def repair_history(self, project: str, anomaly_key: str) -> list[dict[str, Any]]:
        def work() -> list[dict[str, Any]]:
            rows = self._connection().execute(
                "SELECT action, success, at, until_ms, back_ms FROM repair_history"
                " WHERE project = ? AND anomaly_key = ? ORDER BY seq DESC",
                (project, anomaly_key),
            )
            return [
                {"action": a, "success": bool(s), "at_ms": t, "until_ms": u, "back_ms": b}
                for a, s, t, u, b in rows
            ]

        return await self._run(work)

    async def repair_histories(
        self, project: str, anomaly_keys: Sequence[str]
    ) -> list[list[dict[str, Any]]]:
        def work() -> list[list[dict[str, Any]]]:
            db = self._connection()
            found: dict[str, list[dict[str, Any]]] = {key: [] for key in anomaly_keys}
            keys = list(found)
            for start in range(0, len(keys), _PAGE):  # (within SQLite's bound on variables)
                page = keys[start : start + _PAGE]
                rows = db.execute(
                    "SELECT anomaly_key, action, success, at, until_ms, back_ms"
                    " FROM repair_history WHERE project = ? AND anomaly_key IN"
                    f" ({', '.join('?' * len(page))}) ORDER BY anomaly_key, seq DESC",
                    (project, *page),
                )
                for key, a, ok, t, u, b in rows:
                    found[key].append(
                        {"action": a, "success": bool(ok), "at_ms": t, "until_ms": u, "back_ms": b}
                    )
            return [found[key] for key in anomaly_keys]

        return await self._run(work)

    async def record_disposition(self, project: str, write: AnomalyWrite, disposition: str) -> None:
        anomaly_key, at_ms, now_ms, _, by = write

        def work(db: sqlite3.Connection) -> None:
            if not self._first_event(db, project, write):
                return
            self._tell(
                db, project, anomaly_key, timeline.encode("disposition", at_ms, disposition, by)
            )
            day = day_of(at_ms)
            self._bump(db, project, anomaly_key, day, [f"d:{disposition}"])
            self._bump(db, project, "", day, [f"d:{disposition}"])
            self._prune_days(db, project, anomaly_key, now_ms)
            self._prune_days(db, project, "", now_ms)
            self._touch(db, project, anomaly_key, now_ms)
            total = dispositions_from(self._day_totals(db, project, anomaly_key, now_ms))["total"]
            db.execute(
                "UPDATE anomalies SET score_dispositions = ? WHERE project = ? AND anomaly_key = ?",
                (total, project, anomaly_key),
            )

        await self._run(self._write, work)

    async def disposition_stats(
        self, project: str, anomaly_key: str, now_ms: int
    ) -> dict[str, int]:
        def work() -> dict[str, int]:
            return dispositions_from(
                self._day_totals(self._connection(), project, anomaly_key, now_ms)
            )

        return await self._run(work)

    async def disposition_summary(self, project: str, now_ms: int) -> dict[str, int]:
        return await self.disposition_stats(project, "", now_ms)

    async def summary_days(self, project: str, now_ms: int) -> dict[int, dict[str, int]]:
        def work() -> dict[int, dict[str, int]]:
            rows = self._connection().execute(
                "SELECT day, name, n FROM day_counts WHERE project = ? AND anomaly_key = ''"
                " AND day >= ?",
                (project, day_of(now_ms) - RETENTION_DAYS),
            )
            days: dict[int, dict[str, int]] = {}
            for day, name, n in rows:
                days.setdefault(int(day), {})[name] = int(n)
            return days

        return await self._run(work)

    async def repair_stats_many(
        self, project: str, anomaly_keys: Sequence[str], now_ms: int
    ) -> list[dict[str, tuple[int, int]]]:
        def work() -> list[dict[str, tuple[int, int]]]:
            db = self._connection()
            return [repairs_from(self._day_totals(db, project, k, now_ms)) for k in anomaly_keys]

        return await self._run(work)

    # -- index --------------------------------------------------------------------------------

    async def candidates(self, project: str, index: str) -> AsyncIterator[tuple[str, int]]:
        column = _COLUMNS[index]
        sql_first = (
            f"SELECT anomaly_key, {column} FROM anomalies WHERE project = ? AND {column} > 0"
            f" ORDER BY {column} DESC, anomaly_key LIMIT ?"
        )
        sql_next = (
            f"SELECT anomaly_key, {column} FROM anomalies WHERE project = ? AND {column} > 0"
            f" AND ({column} < ? OR ({column} = ? AND anomaly_key > ?))"
            f" ORDER BY {column} DESC, anomaly_key LIMIT ?"
        )

        def page(after: tuple[str, int] | None) -> list[tuple[str, int]]:
            db = self._connection()
            if after is None:
                return db.execute(sql_first, (project, _PAGE)).fetchall()
            key, score = after
            return db.execute(sql_next, (project, score, score, key, _PAGE)).fetchall()

        after: tuple[str, int] | None = None
        while True:
            rows = await self._run(page, after)
            for key, score in rows:
                yield key, score
            if len(rows) < _PAGE:
                return
            after = rows[-1]

    async def chronic(self, project: str) -> list[tuple[str, int]]:
        def work() -> list[tuple[str, int]]:
            rows = self._connection().execute(
                "SELECT anomaly_key, level FROM anomalies WHERE project = ? AND level > 0",
                (project,),
            )
            return [(key, int(level)) for key, level in rows]

        return await self._run(work)

    async def refresh_index(
        self, project: str, index: str, entries: Sequence[tuple[str, int, int]]
    ) -> None:
        if index == "chronic":
            return  # the anomaly's own row: it leaves the index with the anomaly
        column = _COLUMNS[index]

        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                f"UPDATE anomalies SET {column} = ? WHERE project = ? AND anomaly_key = ?"
                f" AND {column} = ?",
                [(current, project, key, bound) for key, bound, current in entries],
            )

        if entries:
            await self._run(self._write, work)

    # -- permanent fixes ----------------------------------------------------------------------

    async def mark_fix(self, project: str, write: AnomalyWrite, description: str) -> None:
        anomaly_key, at_ms, now_ms, _, by = write

        def work(db: sqlite3.Connection) -> None:
            if not self._first_event(db, project, write):
                return
            db.execute(
                "INSERT INTO anomalies (project, anomaly_key, fix_at, fix_description, fix_by,"
                " touched) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (project, anomaly_key) DO UPDATE"
                " SET fix_at = excluded.fix_at, fix_description = excluded.fix_description,"
                " fix_by = excluded.fix_by, regressed_at = NULL, touched = excluded.touched",
                # (written now, whenever it was marked: 35 days from now before it is forgotten)
                (project, anomaly_key, at_ms, description, by or None, now_ms),
            )
            self._tell(db, project, anomaly_key, timeline.encode("fix", at_ms, description, by))

        await self._run(self._write, work)

    async def undo_fix(self, project: str, write: AnomalyWrite) -> bool:
        anomaly_key, at_ms, now_ms, write_id, by = write

        def work(db: sqlite3.Connection) -> bool:
            # The id is remembered only with an undo that happened: a retry of one whose
            # answer was lost finds it and says so; a retry of a refusal is refused again.
            if (
                write_id
                and db.execute(
                    "SELECT 1 FROM occurrence_ids WHERE project = ? AND anomaly_key = ?"
                    " AND digest = ?",
                    (project, anomaly_key, id_digest(write_id)),
                ).fetchone()
            ):
                return True
            undone = db.execute(
                "UPDATE anomalies SET fix_at = NULL, fix_description = NULL, fix_by = NULL,"
                " regressed_at = NULL WHERE project = ? AND anomaly_key = ? AND fix_at >= ?",
                (project, anomaly_key, now_ms - FIX_VALIDITY_MS + 1),
            ).rowcount
            if not undone:
                return False
            self._first_write(db, project, anomaly_key, write_id, now_ms)
            self._tell(db, project, anomaly_key, timeline.encode("fix_undone", at_ms, by))
            return True

        return await self._run(self._write, work)

    async def resolve(self, recording: Recording, resolution: Resolution) -> None:
        project, policy, now_ms = recording
        key, at_ms, by, episode, started_ms = resolution

        def work(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT resolved_at FROM anomalies WHERE project = ? AND anomaly_key = ?"
                " AND first_seen IS NOT NULL",
                (project, key),
            ).fetchone()
            if row is None:  # (an anomaly never seen: nothing to resolve)
                return
            if row[0] is None or row[0] < at_ms:  # a re-sent resolution is not told again
                db.execute(
                    "UPDATE anomalies SET resolved_at = ? WHERE project = ? AND anomaly_key = ?",
                    (at_ms, project, key),
                )
                self._tell(db, project, key, timeline.encode("resolved", at_ms, by))
            incident = self._incident(db, project, key)
            before = replace(incident, open=dict(incident.open))
            marks = incident.resolve(episode, started_ms, at_ms)
            self._save_incident(db, project, key, incident, before)
            if marks:  # it closed the last open episode: a change for flapping
                self._flap_step(db, project, key, marks, now_ms, policy)

        await self._run(self._write, work)

    async def flapping(self, project: str) -> list[tuple[str, int]]:
        def work() -> list[tuple[str, int]]:
            rows = self._connection().execute(
                "SELECT anomaly_key, flap_leave FROM anomalies WHERE project = ?"
                " AND flap_leave IS NOT NULL ORDER BY flap_leave DESC, anomaly_key",
                (project,),
            )
            return [(str(key), int(leave)) for key, leave in rows]

        return await self._run(work)

    async def sweep(self, recording: Recording, limit: int) -> int:
        project, policy, now_ms = recording

        def work(db: sqlite3.Connection) -> int:
            due = db.execute(
                "SELECT anomaly_key FROM anomalies WHERE project = ?"
                " AND flap_leave IS NOT NULL AND flap_leave <= ? ORDER BY flap_leave LIMIT ?",
                (project, now_ms, limit),
            ).fetchall()
            return sum(self._flap_step(db, project, key, (), now_ms, policy) for (key,) in due)

        return await self._run(self._write, work)

    # -- the story ----------------------------------------------------------------------------

    async def states(self, project: str, anomaly_keys: Sequence[str]) -> list[WindowState | None]:
        def work() -> list[WindowState | None]:
            db = self._connection()
            states: list[WindowState | None] = []
            for key in anomaly_keys:
                row = db.execute(
                    "SELECT state FROM anomalies WHERE project = ? AND anomaly_key = ?",
                    (project, key),
                ).fetchone()
                blob = row[0] if row else None
                states.append(WindowState.from_bytes(blob, 1 << 30) if blob else None)
            return states

        return await self._run(work)

    async def timeline(self, project: str, anomaly_key: str) -> list[str]:
        def work() -> list[str]:
            rows = self._connection().execute(
                "SELECT entry FROM timeline WHERE project = ? AND anomaly_key = ?"
                " ORDER BY part DESC, seq DESC",
                (project, anomaly_key),
            )
            return [entry for (entry,) in rows]

        return await self._run(work)

    async def note(self, project: str, anomaly_key: str, entry: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            known = db.execute(
                "SELECT 1 FROM anomalies WHERE project = ? AND anomaly_key = ?",
                (project, anomaly_key),
            ).fetchone()
            if known:
                self._tell(db, project, anomaly_key, entry)

        await self._run(self._write, work)

    async def search(
        self, project: str, word: str, limit: int
    ) -> tuple[list[tuple[str, str]], bool]:
        prefix, grams = lookup(word)
        part = indexed(word)

        def work() -> list[tuple[str, str]]:
            db = self._connection()
            if grams:  # the rarest of the word's grams, counted only as far as it matters
                counts = [
                    db.execute(
                        "SELECT count(*) FROM (SELECT 1 FROM search_grams WHERE project = ?"
                        " AND gram = ? LIMIT ?)",
                        (project, gram, _GRAM_COUNT_CAP),
                    ).fetchone()[0]
                    for gram in grams
                ]
                rarest = grams[counts.index(min(counts))]
                low, high = rarest, rarest + b"\x00"
            else:  # a short word: the grams it starts
                low, high = prefix, prefix + b"\xff"
            holding = db.execute(
                "SELECT t.term, t.anomaly_key FROM (SELECT DISTINCT term FROM search_grams"
                " WHERE project = ? AND gram >= ? AND gram < ? AND instr(term, ?)) AS g"
                " JOIN search_terms AS t ON t.project = ? AND t.term = g.term LIMIT ?",
                (project, low, high, part, project, limit + 1),
            ).fetchall()
            starting = db.execute(
                "SELECT term, anomaly_key FROM search_terms WHERE project = ? AND term >= ?"
                " AND term < ? LIMIT ?",
                (project, part, _after_prefix(part), limit + 1),
            ).fetchall()
            return list(dict.fromkeys([*holding, *starting]))

        found = await self._run(work)
        return found[:limit], len(found) > limit

    async def forget_terms(self, project: str, entries: Sequence[tuple[str, str]]) -> None:
        def work(db: sqlite3.Connection) -> None:
            for term, key in entries:
                db.execute(
                    "DELETE FROM search_terms WHERE project = ? AND term = ? AND anomaly_key = ?",
                    (project, term, key),
                )
                self._forget_orphan(db, project, term)

        if entries:
            await self._run(self._write, work)

    def _forget_orphan(self, db: sqlite3.Connection, project: str, term: str) -> None:
        """Drop the grams of a term that no anomaly holds any more."""
        held = db.execute(
            "SELECT 1 FROM search_terms WHERE project = ? AND term = ? LIMIT 1", (project, term)
        ).fetchone()
        if held is None:
            db.executemany(
                "DELETE FROM search_grams WHERE project = ? AND gram = ? AND term = ?",
                [(project, gram, term) for gram in grams_of(term)],
            )

    # -- API tokens ---------------------------------------------------------------------------

    async def save_token(self, record: TokenRecord) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO tokens (token_id, project, digest, created_ms, label, read_only,"
                " admin) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.token_id,
                    record.project,
                    record.digest,
                    record.created_ms,
                    record.label,
                    int(record.read_only),
                    int(record.admin),
                ),
            )

        await self._run(self._write, work)

    async def get_token(self, token_id: str) -> TokenRecord | None:
        tokens = await self._tokens("WHERE token_id = ?", (token_id,))
        return tokens[0] if tokens else None

    async def list_tokens(self, project: str | None = None) -> list[TokenRecord]:
        if project is None:
            return await self._tokens("", ())
        return await self._tokens("WHERE project = ?", (project,))

    async def _tokens(self, where: str, args: tuple[str, ...]) -> list[TokenRecord]:
        sql = (
            "SELECT token_id, project, digest, created_ms, label, read_only, admin FROM tokens"
            f" {where} ORDER BY created_ms, token_id"
        )
        rows = await self._run(lambda: self._connection().execute(sql, args).fetchall())
        return [
            TokenRecord(token_id, project, digest, created, label, bool(read_only), bool(admin))
            for token_id, project, digest, created, label, read_only, admin in rows
        ]

    async def revoke_token(self, token_id: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            cursor = db.execute("DELETE FROM tokens WHERE token_id = ?", (token_id,))
            return cursor.rowcount > 0

        return await self._run(self._write, work)

    # -- the notices outbox ---------------------------------------------------------------------

    async def outbox_lease(
        self, project: str, partitions: Sequence[int], holder: str, lease_ms: int
    ) -> list[Lease]:
        def work(db: sqlite3.Connection) -> list[Lease]:
            now = _wall_ms()
            taken = db.execute(  # (one partition: the project's)
                "INSERT INTO outbox_state (project, name, value, until) VALUES (?, 'lease', ?, ?)"
                " ON CONFLICT (project, name) DO UPDATE SET value = excluded.value,"
                " until = excluded.until WHERE value = excluded.value OR until < ?",
                (project, holder, now + lease_ms, now),
            ).rowcount
            lease = Lease.OTHERS
            if taken:
                waiting = db.execute(
                    "SELECT 1 FROM outbox WHERE project = ? LIMIT 1", (project,)
                ).fetchone()
                lease = Lease.WAITING if waiting else Lease.IDLE
            return [lease for _ in partitions]

        return await self._run(self._write, work)

    async def outbox_read(
        self, project: str, partition: int, channels: Sequence[str], limit: int
    ) -> tuple[list[OutboxEntry], dict[str, str]]:
        def work() -> tuple[list[OutboxEntry], dict[str, str]]:
            db = self._connection()
            cursors = self._cursors(db, project, channels)
            after = min((int(c or 0) for c in cursors.values()), default=0)
            rows = db.execute(
                "SELECT id, anomaly_key, kind, level, at, counts, written, notice_id, only"
                " FROM outbox"
                " WHERE project = ? AND id > ? ORDER BY id LIMIT ?",
                (project, after, limit),
            ).fetchall()
            return [_entry(row) for row in rows], cursors

        return await self._run(work)

    @staticmethod
    def _cursors(db: sqlite3.Connection, project: str, channels: Sequence[str]) -> dict[str, str]:
        cursors = dict.fromkeys(channels, "")
        for name, value in db.execute(
            "SELECT name, value FROM outbox_state WHERE project = ? AND name LIKE 'c:%'",
            (project,),
        ):
            if name[2:] in cursors:
                cursors[name[2:]] = value
        return cursors

    async def outbox_settle(self, project: str, partition: int, settlement: Settlement) -> bool:
        holder, channel, entry, channels, dead = settlement

        def work(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT value, until FROM outbox_state WHERE project = ? AND name = 'lease'",
                (project,),
            ).fetchone()
            now = _wall_ms()
            if row is None or row[0] != holder or row[1] < now:
                return False
            db.execute(  # (renewed by each notice settled)
                "UPDATE outbox_state SET until = ? WHERE project = ? AND name = 'lease'",
                (now + int(self._settings.notify_lease * 1000), project),
            )
            db.execute(
                "INSERT INTO outbox_state (project, name, value) VALUES (?, ?, ?)"
                " ON CONFLICT (project, name) DO UPDATE SET value = excluded.value"
                " WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                (project, f"c:{channel}", entry.entry_id),
            )
            if dead is not None:
                self._bury(db, project, dead)
            cursors = self._cursors(db, project, channels)
            passed = min((int(c or 0) for c in cursors.values()), default=0)
            self._held(db, project)  # (counted before any goes)
            gone = db.execute(
                "DELETE FROM outbox WHERE project = ? AND id <= ?", (project, passed)
            ).rowcount
            if gone:
                self._bump_state(db, project, "held", -gone)
            return True

        return await self._run(self._write, work)

    def _bury(self, db: sqlite3.Connection, project: str, dead: DeadLetter) -> None:
        (held,) = db.execute(
            "SELECT count(*) FROM dead_letters WHERE project = ?", (project,)
        ).fetchone()
        if held >= self._settings.outbox_max:
            self._bump_state(db, project, "dead_overflow")
            return
        db.execute(
            "INSERT OR REPLACE INTO dead_letters (project, notice_id, channel, dead_ms, letter)"
            " VALUES (?, ?, ?, ?, ?)",
            (project, dead.notice_id, dead.channel, dead.dead_ms, json.dumps(dead.fields())),
        )

    async def outbox_release(self, project: str, partition: int, holder: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "DELETE FROM outbox_state WHERE project = ? AND name = 'lease' AND value = ?",
                (project, holder),
            )

        await self._run(self._write, work)

    async def outbox_stats(self, project: str) -> OutboxStats:
        def work() -> OutboxStats:
            db = self._connection()
            depth, oldest = db.execute(
                "SELECT count(*), min(written) FROM outbox WHERE project = ?", (project,)
            ).fetchone()
            (dead,) = db.execute(
                "SELECT count(*) FROM dead_letters WHERE project = ?", (project,)
            ).fetchone()
            overflowed = self._state(db, project, "overflow")
            dead_overflowed = self._state(db, project, "dead_overflow")
            return OutboxStats(depth, oldest, overflowed, dead, dead_overflowed)

        return await self._run(work)

    async def dead_letters(self, project: str) -> list[DeadLetter]:
        rows = await self._run(
            lambda: (
                self._connection()
                .execute(
                    "SELECT letter FROM dead_letters WHERE project = ? ORDER BY dead_ms, notice_id",
                    (project,),
                )
                .fetchall()
            )
        )
        return [DeadLetter.from_fields(json.loads(letter)) for (letter,) in rows]

    async def retry_dead_letters(self, project: str, letters: Sequence[DeadLetter]) -> int:
        def work(db: sqlite3.Connection) -> int:
            self._held(db, project)  # (counted before any comes back)
            retried = 0
            for letter in letters:
                gone = db.execute(
                    "DELETE FROM dead_letters WHERE project = ? AND notice_id = ? AND channel = ?",
                    (project, letter.notice_id, letter.channel),
                ).rowcount
                if not gone:
                    continue  # (sent again already)
                e = letter.entry
                db.execute(
                    "INSERT INTO outbox (project, anomaly_key, kind, level, at, counts, written,"
                    " notice_id, only) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (project, e.anomaly_key, KIND_CODES[e.kind], e.level, e.at_ms,
                     ",".join(map(str, e.counts)), _wall_ms(), letter.notice_id, letter.channel),
                )  # fmt: skip
                self._bump_state(db, project, "held")
                retried += 1
            return retried

        return await self._run(self._write, work)

    # -- life cycle ---------------------------------------------------------------------------

    def _housekeeping(self, db: sqlite3.Connection, now_ms: int, horizon_ms: int) -> None:
        """Forget anomalies nobody wrote to for 35 days, and the write marks of writers and
        spools not heard from over the horizon (at most hourly, in bounded steps)."""
        if now_ms - self._last_housekeeping < _HOUSEKEEPING_EVERY_MS:
            return
        self._last_housekeeping = now_ms
        db.execute(
            "DELETE FROM write_marks WHERE (project, anomaly_key, field) IN (SELECT project,"
            " anomaly_key, field FROM write_marks WHERE touched < ? LIMIT ?)",
            (now_ms - horizon_ms, _HOUSEKEEPING_STEP),
        )
        stale = db.execute(
            "SELECT project, anomaly_key FROM anomalies WHERE touched < ? LIMIT ?",
            (now_ms - ANOMALY_TTL_SECONDS * 1000, _HOUSEKEEPING_STEP),
        ).fetchall()
        if len(stale) == _HOUSEKEEPING_STEP:  # more to forget: another step at the next write
            self._last_housekeeping = 0
        orphans = {
            (project, term)
            for project, key in stale
            for (term,) in db.execute(
                "SELECT term FROM search_terms WHERE project = ? AND anomaly_key = ?",
                (project, key),
            ).fetchall()
        }
        tables = ("anomalies", "occurrence_ids", "write_marks", "day_counts", "repair_history",
                  "timeline", "search_terms", "open_episodes")  # fmt: skip
        for table in tables:
            db.executemany(f"DELETE FROM {table} WHERE project = ? AND anomaly_key = ?", stale)
        for project, term in orphans:
            self._forget_orphan(db, project, term)
        # (counted again from what is left when next needed)
        db.executemany("DELETE FROM project_anomalies WHERE project = ?", {(p,) for p, _ in stale})

    async def ping(self) -> None:
        await self._run(lambda: self._connection().execute("SELECT 1").fetchone())

    async def aclose(self) -> None:
        def close() -> None:
            for i, db in enumerate(self._dbs):
                if db is not None:
                    db.close()
                    self._dbs[i] = None

        def close_after_calls() -> None:
            with self._locks[0], self._locks[1]:  # (a call still running finishes first)
                close()

        await asyncio.to_thread(close_after_calls)

    # -- export and import --------------------------------------------------------------------

    def export_anomalies(self, project: str) -> AsyncIterator[AnomalyImage]:
        return self._export(project)

    async def _export(self, project: str) -> AsyncIterator[AnomalyImage]:
        after = ""
        while True:
            images = await self._run(self._export_page, project, after)
            for image in images:
                yield image
            if len(images) < _PAGE:
                return
            after = images[-1].anomaly_key

    def _export_page(self, project: str, after: str) -> list[AnomalyImage]:
        """The images of the next page of anomalies after ``after``, in one read transaction
        (each whole as of one moment)."""
        db = self._connection()
        db.execute("BEGIN")
        try:
            keys = db.execute(
                "SELECT anomaly_key FROM anomalies WHERE project = ? AND anomaly_key > ?"
                " ORDER BY anomaly_key LIMIT ?",
                (project, after, _PAGE),
            ).fetchall()
            return [self._image(db, project, key) for (key,) in keys]
        finally:
            db.execute("COMMIT")

    def _image(self, db: sqlite3.Connection, project: str, key: str) -> AnomalyImage:
        where = (project, key)
        row = db.execute(
            "SELECT signature, first_seen, last_seen, level, state, fix_at, fix_description,"
            " fix_by, regressed_at, resolved_at, verify_until, incident, flap, flap_leave,"
            " has_days, score_1h, score_24h, score_7d, score_30d, score_dispositions"
            " FROM anomalies WHERE project = ? AND anomaly_key = ?",
            where,
        ).fetchone()
        signature, first_seen, last_seen, level, blob, fix_at, fix_text, fix_by = row[:8]
        regressed, resolved, verify_until, incident, flap, leave, has_days = row[8:15]
        image = AnomalyImage(
            key, signature, first_seen, last_seen, int(level),
            WindowState.from_bytes(blob, 1 << 30) if blob is not None else None,
            fix_at, fix_text, fix_by, regressed, resolved, verify_until, incident, flap, leave,
        )  # fmt: skip
        image.has_days = bool(has_days)
        image.scores = {name: int(score) for name, score in zip(SCORE_NAMES, row[15:], strict=True)}
        image.open_episodes = {
            fp: (start, seen)
            for fp, start, seen in db.execute(
                "SELECT fingerprint, start_ms, seen_ms FROM open_episodes"
                " WHERE project = ? AND anomaly_key = ?",
                where,
            )
        }
        image.days = db.execute(
            "SELECT day, name, n FROM day_counts WHERE project = ? AND anomaly_key = ?", where
        ).fetchall()
        image.repairs = [
            {"action": a, "success": bool(s), "at_ms": t, "until_ms": u, "back_ms": b}
            for a, s, t, u, b in db.execute(
                "SELECT action, success, at, until_ms, back_ms FROM repair_history"
                " WHERE project = ? AND anomaly_key = ? ORDER BY seq DESC",
                where,
            )
        ]
        image.timeline = [
            entry
            for (entry,) in db.execute(
                "SELECT entry FROM timeline WHERE project = ? AND anomaly_key = ?"
                " ORDER BY part DESC, seq DESC",
                where,
            )
        ]
        image.ids = dict(
            db.execute(
                "SELECT digest, seen_at FROM occurrence_ids WHERE project = ? AND anomaly_key = ?",
                where,
            ).fetchall()
        )
        image.marks = {
            name: (held, touched)
            for name, held, touched in db.execute(
                "SELECT field, held, touched FROM write_marks"
                " WHERE project = ? AND anomaly_key = ?",
                where,
            )
        }
        return image

    async def import_anomalies(
        self, project: str, images: Sequence[AnomalyImage], policy: WritePolicy, now_ms: int
    ) -> int:
        def work(db: sqlite3.Connection) -> int:  # (one transaction: one sync to disk)
            return sum(self._import(db, project, image, policy, now_ms) for image in images)

        return await self._run(self._write, work)

    async def held_anomalies(self, project: str, anomaly_keys: Sequence[str]) -> list[str]:
        def read() -> list[str]:
            db = self._connection()
            held: list[str] = []
            for start in range(0, len(anomaly_keys), 500):  # (SQLite's bound on parameters)
                part = anomaly_keys[start : start + 500]
                held += [
                    key
                    for (key,) in db.execute(
                        "SELECT anomaly_key FROM anomalies WHERE project = ? AND anomaly_key IN"
                        f" ({', '.join('?' * len(part))})",
                        (project, *part),
                    )
                ]
            return sorted(held)

        return await self._run(read)

    def _import(
        self,
        db: sqlite3.Connection,
        project: str,
        image: AnomalyImage,
        policy: WritePolicy,
        now_ms: int,
    ) -> bool:
        """Write one image in the caller's transaction; False (nothing written) for a new
        anomaly past max_anomalies."""
        key = image.anomaly_key
        where = (project, key)
        held = db.execute(
            "SELECT 1 FROM anomalies WHERE project = ? AND anomaly_key = ?", where
        ).fetchone()
        if held is None and not self._room_for(db, project, policy.max_anomalies):
            return False
        # (its search entries stay: they are its signature's, and set again below)
        for table in ("anomalies", "open_episodes", "occurrence_ids", "write_marks",
                      "day_counts", "repair_history", "timeline"):  # fmt: skip
            db.execute(f"DELETE FROM {table} WHERE project = ? AND anomaly_key = ?", where)
        scores = [image.scores.get(name, 0) for name in SCORE_NAMES]
        values: dict[str, Any] = {
            "project": project, "anomaly_key": key, "signature": image.signature_json,
            "first_seen": image.first_seen_ms, "last_seen": image.last_seen_ms,
            "level": image.level,
            "state": image.state.to_bytes() if image.state is not None else None,
            "fix_at": image.fix_at_ms, "fix_description": image.fix_description,
            "fix_by": image.fix_by, "regressed_at": image.regressed_ms,
            "ids_count": len(image.ids), "has_days": int(image.has_days or bool(image.days)),
            "indexed": int(image.signature_json is not None),
            "touched": now_ms - now_ms % _HOUR_MS, "resolved_at": image.resolved_ms,
            "verify_until": image.verify_until_ms, "incident": image.incident,
            "flap": image.flap, "flap_leave": image.flap_leave_ms,
            **{_COLUMNS[name]: score for name, score in zip(SCORE_NAMES, scores, strict=True)},
        }  # fmt: skip
        db.execute(_insert_sql(tuple(values)), tuple(values.values()))
        db.executemany(
            "INSERT INTO open_episodes VALUES (?, ?, ?, ?, ?)",
            [(*where, fp, start, seen) for fp, (start, seen) in image.open_episodes.items()],
        )
        db.executemany(
            "INSERT INTO occurrence_ids VALUES (?, ?, ?, ?)",
            [(*where, digest, seen) for digest, seen in image.ids.items()],
        )
        db.executemany(
            "INSERT INTO write_marks VALUES (?, ?, ?, ?, ?)",
            [(*where, name, held, touched) for name, (held, touched) in image.marks.items()],
        )
        db.executemany(
            "INSERT INTO day_counts VALUES (?, ?, ?, ?, ?)",
            [(*where, day, name, n) for day, name, n in image.days],
        )
        count = len(image.repairs)
        db.executemany(
            "INSERT INTO repair_history (project, anomaly_key, seq, action, success, at,"
            " until_ms, back_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (*where, count - i, a["action"], int(a["success"]), a["at_ms"], a["until_ms"],
                 a["back_ms"])
                for i, a in enumerate(image.repairs)
            ],
        )  # fmt: skip
        parts: dict[bool, list[str]] = {True: [], False: []}
        for entry in image.timeline:  # (each part newest first)
            parts[timeline.is_milestone(entry)].append(entry)
        for milestone, entries in parts.items():
            db.executemany(
                "INSERT INTO timeline VALUES (?, ?, ?, ?, ?)",
                [(*where, int(milestone), len(entries) - i, e) for i, e in enumerate(entries)],
            )
        if image.signature_json is not None:
            self._index(db, project, key, joined_terms(image.signature_json))
        return True

    async def import_summary(
        self, project: str, days: dict[int, dict[str, int]], now_ms: int
    ) -> None:
        rows = [(project, day, name, n) for day, names in days.items() for name, n in names.items()]

        def work(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR REPLACE INTO day_counts VALUES (?, '', ?, ?, ?)", rows)

        if rows:
            await self._run(self._write, work)

    # -- deleting (see docs/delete.md) ----------------------------------------------------------

    async def delete_anomaly(self, project: str, anomaly_key: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            return self._delete_anomaly(db, project, anomaly_key)

        return await self._run(self._write, work)

    def _delete_anomaly(self, db: sqlite3.Connection, project: str, key: str) -> bool:
        """Every row of one anomaly, and what the project's own rows hold of it, in the
        caller's transaction; False when there was none."""
        where = (project, key)
        counters = db.execute(
            "SELECT day, name, n FROM day_counts WHERE project = ? AND anomaly_key = ?", where
        ).fetchall()
        milestones = db.execute(
            "SELECT entry FROM timeline WHERE project = ? AND anomaly_key = ? AND part = 1", where
        ).fetchall()
        share = summary_share(counters, (entry for (entry,) in milestones), DAY_MS)
        db.executemany(
            "UPDATE day_counts SET n = n - ? WHERE project = ? AND anomaly_key = '' AND day = ?"
            " AND name = ?",
            [(n, project, day, name) for (day, name), n in share.items()],
        )
        if share:  # (never below zero: a row emptied goes; a day pruned since has no row)
            db.execute(
                "DELETE FROM day_counts WHERE project = ? AND anomaly_key = '' AND n <= 0",
                (project,),
            )
        terms = db.execute(
            "SELECT term FROM search_terms WHERE project = ? AND anomaly_key = ?", where
        ).fetchall()
        found = False
        for table in _ANOMALY_TABLES:
            gone = db.execute(
                f"DELETE FROM {table} WHERE project = ? AND anomaly_key = ?", where
            ).rowcount
            found = found or gone > 0
            if table == "anomalies" and gone:  # (counted again from what is left when needed)
                db.execute("DELETE FROM project_anomalies WHERE project = ?", (project,))
        for (term,) in terms:
            self._forget_orphan(db, project, term)
        noticed = db.execute(
            "DELETE FROM outbox WHERE project = ? AND anomaly_key = ?", where
        ).rowcount
        if noticed:  # (a project without the count counts its outbox again when it needs it)
            db.execute(
                "UPDATE outbox_state SET value = CAST(value AS INTEGER) - ? WHERE project = ?"
                " AND name = 'held'",
                (noticed, project),
            )
        letters = db.execute(
            "SELECT notice_id, channel, letter FROM dead_letters WHERE project = ?", (project,)
        ).fetchall()
        dead = [
            (project, notice_id, channel)
            for notice_id, channel, letter in letters
            if DeadLetter.from_fields(json.loads(letter)).entry.anomaly_key == key
        ]
        db.executemany(
            "DELETE FROM dead_letters WHERE project = ? AND notice_id = ? AND channel = ?", dead
        )
        return found or noticed > 0 or bool(dead)

    async def delete_project(self, project: str) -> int:
        def tokens(db: sqlite3.Connection) -> None:  # first: the API refuses its writers
            db.execute("DELETE FROM tokens WHERE project = ?", (project,))

        def anomalies(db: sqlite3.Connection) -> int:  # a step: others' writes wait at most it
            keys = db.execute(
                "SELECT anomaly_key FROM anomalies WHERE project = ? LIMIT ?",
                (project, _DELETE_STEP),
            ).fetchall()
            for table in _ANOMALY_TABLES:
                db.executemany(
                    f"DELETE FROM {table} WHERE project = ? AND anomaly_key = ?",
                    [(project, key) for (key,) in keys],
                )
            return len(keys)

        def rest(db: sqlite3.Connection) -> None:  # the project's own rows, and any left over
            for table in _PROJECT_TABLES:
                db.execute(f"DELETE FROM {table} WHERE project = ?", (project,))

        await self._run(self._write, tokens)
        deleted = 0
        while True:
            step: int = await self._run(self._write, anomalies)
            deleted += step
            if step < _DELETE_STEP:
                break
        await self._run(self._write, rest)
        return deleted


_ANOMALY_TABLES = ("anomalies", "open_episodes", "occurrence_ids", "write_marks", "day_counts",
                   "repair_history", "timeline", "search_terms")  # fmt: skip
"""The tables that hold an anomaly's own rows (by project and anomaly key; the day summary's
rows are the project's, under the key '')."""
_PROJECT_TABLES = (*_ANOMALY_TABLES, "search_grams", "outbox", "outbox_state", "dead_letters",
                   "project_anomalies", "tokens")  # fmt: skip
"""Every table that holds rows of a project."""
_DELETE_STEP = 200  # anomalies a project's deletion removes in one transaction


def sqlite_path(url: str) -> str:
    """The file a ``sqlite:`` URL names: sqlite:///x.db is the relative path x.db,
    sqlite:////tmp/x.db the absolute /tmp/x.db (ConfigurationError for neither)."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.netloc not in ("", "localhost") or not path or path == "/":
        raise ConfigurationError(
            f"setting store_url: {url!r} is not sqlite:///relative/path or sqlite:////absolute/path"
        )
    if "\x00" in path:
        raise ConfigurationError(
            f"setting store_url: {url!r} names a file with a NUL character (%00), which"
            " no file name can hold"
        )
    return path[1:] if path.startswith("/") else path


def _path_problem(path: Path) -> str | None:
    """Why a database file cannot be at ``path`` (or be written there), if the file system
    says so: a directory, under a file, or in a directory this process cannot write to (WAL
    keeps two files beside the database)."""
    if path.is_dir():
        return "is a directory, not a database file"
    existing = next((p for p in path.parents if p.exists() or p.is_symlink()), None)
    if existing is None:  # (not even the working directory: it was removed)
        return None
    if not existing.is_dir():
        return f"is under {existing}, which is not a directory"
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            return "cannot be read and written by this process"
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return (
                f"is in {path.parent}, which is not writable by this process (SQLite keeps"
                f" {path.name}-wal and {path.name}-shm beside it)"
            )
    elif not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be created: {existing} is not writable by this process"
    return None


def _busy(exc: sqlite3.OperationalError) -> bool:
    """The database was locked (by another connection): the call would have had to wait."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _after_prefix(prefix: str) -> str:
    """The least text after every text that starts with ``prefix`` (its last character one
    higher), for a range read of an index."""
    last = ord(prefix[-1]) if prefix else 0
    if last >= 0x10FFFF:
        return prefix + "\U0010ffff"
    following = last + 1 if not 0xD800 <= last + 1 <= 0xDFFF else 0xE000  # no surrogates
    return prefix[:-1] + chr(following)


@functools.lru_cache(maxsize=64)
def _thresholds(values: tuple[int, int, int]) -> Thresholds:
    return Thresholds(*values)


@functools.lru_cache(maxsize=256)
def _insert_sql(columns: tuple[str, ...]) -> str:
    return f"INSERT INTO anomalies ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


@functools.lru_cache(maxsize=256)
def _update_sql(columns: tuple[str, ...]) -> str:
    assignments = ", ".join(f"{column} = ?" for column in columns)
    return f"UPDATE anomalies SET {assignments} WHERE project = ? AND anomaly_key = ?"


def _make_snapshot(
    key: str,
    counts: tuple[int, int, int, int],
    first_seen: int | None,
    last_seen: int | None,
    fix_at: int | None,
    days: dict[str, int],
    now_ms: int,
) -> Snapshot:
    return Snapshot(
        anomaly_key=key,
        counts=counts,
        first_seen_ms=first_seen,
        last_seen_ms=last_seen,
        repair_total=sum(n for name, n in days.items() if name.startswith("t:")),
        fix_at_ms=fix_at if fix_at is not None and now_ms - fix_at < FIX_VALIDITY_MS else None,
        dispositions=dispositions_from(days),
    )


def _wall_ms() -> int:
    """The store's clock (the leases of deliverers on this machine)."""
    return int(time.time() * 1000)


def _entry(row: Sequence[Any]) -> OutboxEntry:
    entry_id, key, kind, level, at, counts, written, notice_id, only = row
    c = [int(x) for x in counts.split(",")]
    return OutboxEntry(
        0, str(entry_id), key, KINDS[kind], level, at, (c[0], c[1], c[2], c[3]), written,
        notice_id, only,
    )  # fmt: skip
