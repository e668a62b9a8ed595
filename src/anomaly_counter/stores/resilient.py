"""What a call does while the store cannot be reached: it degrades, as the reference design
did, rather than fail the caller's work; or, when ``strict``, raises StoreUnavailableError.

Reads answer "nothing known" (a degraded snapshot, no stats, no entries) and log a warning
(``anomaly_counter_store_unavailable``). Writes of events (repairs, dispositions, fixes) are
tried ``write_attempts`` times first, with backoff: safe, because each carries a write id and
one that landed although its answer was lost is not applied again. Occurrences are not retried
here: with a spool (stores/spooling.py, inside this one) they never reach here unstored; without
one they are answered ``degraded``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog

from ..backoff import pauses
from ..errors import StoreUnavailableError
from ..model import empty_disposition_counts
from ..windows import WindowState
from .base import (
    AnomalyWrite,
    Chunks,
    Recording,
    RecordRequest,
    Resolution,
    Snapshot,
    Store,
    blank_snapshot,
)
from .wrapper import ChunkFeed, StoreWrapper

logger = structlog.get_logger("anomaly_counter.counter")
T = TypeVar("T")
_FIRST_PAUSE = 0.05  # seconds before an event write is tried again; doubles, with jitter


class ResilientStore(StoreWrapper):
    def __init__(self, inner: Store, *, strict: bool, write_attempts: int) -> None:
        super().__init__(inner)
        self.strict = strict
        self.write_attempts = write_attempts

    # -- the two rules ------------------------------------------------------------------------

    def _unavailable(self, op: str, exc: StoreUnavailableError, **context: Any) -> None:
        """Raise when strict; else log the outage, and the caller answers with nothing known."""
        if self.strict:
            raise exc
        logger.warning("anomaly_counter_store_unavailable", operation=op, error=str(exc), **context)

    async def guard(
        self, op: str, call: Awaitable[T], fallback: Callable[[], T], **context: Any
    ) -> T:
        """The call's answer, else (unless strict) ``fallback()``: made only when needed, so
        that a call that succeeds costs no more than the call."""
        try:
            return await call
        except StoreUnavailableError as exc:
            self._unavailable(op, exc, **context)
            return fallback()

    async def retried(
        self, op: str, write: Callable[[], Awaitable[T]], fallback: T, **context: Any
    ) -> T:
        """``write`` tried ``write_attempts`` times with backoff while the store cannot be
        reached, then ``fallback`` (raised, when strict). Only for writes that carry a write id
        (a retry of one that landed is not applied again)."""
        waits = pauses(_FIRST_PAUSE)
        for attempt in range(1, self.write_attempts + 1):
            try:
                return await write()
            except StoreUnavailableError as exc:
                if attempt == self.write_attempts:
                    self._unavailable(op, exc, **context)
                    return fallback
                await asyncio.sleep(next(waits))
        return fallback

    # -- occurrences --------------------------------------------------------------------------

    async def record(
        self, recording: Recording, requests: Sequence[RecordRequest]
    ) -> list[Snapshot]:
        try:
            return await self.inner.record(recording, requests)
        except StoreUnavailableError as exc:
            self._unavailable("record", exc, project=recording.project)
            return [blank_snapshot(r.anomaly_key, degraded=True) for r in requests]

    async def record_chunks(
        self, recording: Recording, chunks: Chunks, *, whole: Sequence[str] | None = None
    ) -> AsyncIterator[list[Snapshot]]:
        feed = ChunkFeed(chunks)
        try:
            async for snapshots in self.inner.record_chunks(recording, feed, whole=whole):
                feed.answered += 1
                yield snapshots
        except StoreUnavailableError as exc:
            self._unavailable("record", exc, project=recording.project)
            for chunk in feed.rest():  # the rest: never stored, or not known
                yield [blank_snapshot(r.anomaly_key, degraded=True) for r in chunk]

    async def read(
        self, project: str, anomaly_keys: Sequence[str], at_ms: int, now_ms: int
    ) -> list[Snapshot | None]:
        try:
            return await self.inner.read(project, anomaly_keys, at_ms, now_ms)
        except StoreUnavailableError as exc:
            self._unavailable("read", exc, project=project)
            return [blank_snapshot(key, degraded=True) for key in anomaly_keys]

    async def resolve(self, recording: Recording, resolution: Resolution) -> None:
        call = self.inner.resolve(recording, resolution)
        await self.guard(
            "record_resolution",
            call,
            _none,
            project=recording.project,
            anomaly_key=resolution.anomaly_key,
        )

    # -- events: tried again, then degraded ---------------------------------------------------

    async def record_repair(
        self, project: str, write: AnomalyWrite, action: str, success: bool, until_ms: int = 0
    ) -> None:
        await self.retried(
            "record_repair_attempt",
            lambda: self.inner.record_repair(project, write, action, success, until_ms),
            None,
            project=project,
            anomaly_key=write.anomaly_key,
        )

    async def record_disposition(self, project: str, write: AnomalyWrite, disposition: str) -> None:
        await self.retried(
            "record_disposition",
            lambda: self.inner.record_disposition(project, write, disposition),
            None,
            project=project,
            anomaly_key=write.anomaly_key,
        )

    async def mark_fix(self, project: str, write: AnomalyWrite, description: str) -> None:
        await self.retried(
            "mark_permanent_fix_applied",
            lambda: self.inner.mark_fix(project, write, description),
            None,
            project=project,
            anomaly_key=write.anomaly_key,
        )

    async def undo_fix(self, project: str, write: AnomalyWrite) -> bool:
        return await self.retried(
            "undo_permanent_fix",
            lambda: self.inner.undo_fix(project, write),
            False,
            project=project,
            anomaly_key=write.anomaly_key,
        )

    # -- the rest of what is read and kept ----------------------------------------------------

    async def repair_stats(
        self, project: str, anomaly_key: str, now_ms: int
    ) -> dict[str, tuple[int, int]]:
        call = self.inner.repair_stats(project, anomaly_key, now_ms)
        return await self.guard(
            "repair_stats", call, dict, project=project, anomaly_key=anomaly_key
        )

    async def repair_history(self, project: str, anomaly_key: str) -> list[dict[str, Any]]:
        call = self.inner.repair_history(project, anomaly_key)
        return await self.guard(
            "repair_history", call, list, project=project, anomaly_key=anomaly_key
        )

    async def repair_histories(
        self, project: str, anomaly_keys: Sequence[str]
    ) -> list[list[dict[str, Any]]]:
        call = self.inner.repair_histories(project, anomaly_keys)

        def nothing() -> list[list[dict[str, Any]]]:
            return [[] for _ in anomaly_keys]

        return await self.guard("repair_history", call, nothing, project=project)

    async def disposition_stats(
        self, project: str, anomaly_key: str, now_ms: int
    ) -> dict[str, int]:
        call = self.inner.disposition_stats(project, anomaly_key, now_ms)
        return await self.guard(
            "disposition_stats", call, empty_disposition_counts, project=project
        )

    async def disposition_summary(self, project: str, now_ms: int) -> dict[str, int]:
        call = self.inner.disposition_summary(project, now_ms)
        return await self.guard(
            "disposition_summary", call, empty_disposition_counts, project=project
        )

    async def candidates(self, project: str, index: str) -> AsyncIterator[tuple[str, int]]:
        try:
            async for candidate in self.inner.candidates(project, index):
                yield candidate
        except StoreUnavailableError as exc:  # (what came before is all there is)
            self._unavailable("candidates", exc, project=project)

    async def chronic(self, project: str) -> list[tuple[str, int]]:
        return await self.guard("chronic", self.inner.chronic(project), list, project=project)

    async def refresh_index(
        self, project: str, index: str, entries: Sequence[tuple[str, int, int]]
    ) -> None:
        call = self.inner.refresh_index(project, index, entries)
        await self.guard("refresh_index", call, _none, project=project)

    async def states(self, project: str, anomaly_keys: Sequence[str]) -> list[WindowState | None]:
        call = self.inner.states(project, anomaly_keys)
        return await self.guard(
            "history", call, lambda: [None] * len(anomaly_keys), project=project
        )

    async def timeline(self, project: str, anomaly_key: str) -> list[str]:
        call = self.inner.timeline(project, anomaly_key)
        return await self.guard("timeline", call, list, project=project, anomaly_key=anomaly_key)

    async def note(self, project: str, anomaly_key: str, entry: str) -> None:
        call = self.inner.note(project, anomaly_key, entry)
        await self.guard("note_notice", call, _none, project=project, anomaly_key=anomaly_key)

    async def summary_days(self, project: str, now_ms: int) -> dict[int, dict[str, int]]:
        call = self.inner.summary_days(project, now_ms)
        return await self.guard("escalations_by_day", call, dict, project=project)

    async def repair_stats_many(
        self, project: str, anomaly_keys: Sequence[str], now_ms: int
    ) -> list[dict[str, tuple[int, int]]]:
        call = self.inner.repair_stats_many(project, anomaly_keys, now_ms)

        def nothing() -> list[dict[str, tuple[int, int]]]:
            return [{} for _ in anomaly_keys]

        return await self.guard("recommendations", call, nothing, project=project)

    async def search(
        self, project: str, word: str, limit: int
    ) -> tuple[list[tuple[str, str]], bool]:
        call = self.inner.search(project, word, limit)
        return await self.guard("search", call, _no_matches, project=project)

    async def forget_terms(self, project: str, entries: Sequence[tuple[str, str]]) -> None:
        await self.guard(
            "search", self.inner.forget_terms(project, entries), _none, project=project
        )

    # -- deleting: never degraded nor retried here ---------------------------------------------
    # (a deletion the store did not take must say so, not answer as if it had happened; and
    # the caller, a person at a prompt or an admin's request, is there to try again)

    async def delete_anomaly(self, project: str, anomaly_key: str) -> bool:
        return await self.inner.delete_anomaly(project, anomaly_key)

    async def delete_project(self, project: str) -> int:
        return await self.inner.delete_project(project)


def _none() -> None:
    return None


def _no_matches() -> tuple[list[tuple[str, str]], bool]:
    return [], False
