"""Occurrences and resolutions the store cannot take go to the durable spool, to be replayed
in order when it is back (replay.py): the caller's answer says ``spooled``.

While the spool holds a backlog, new ones join it rather than pass it, so that their order is
kept. Every occurrence gets an id before its first attempt (``auto:...``): one whose answer was
lost although it landed is then spooled too, and its replay counts it once. A spool that is full
refuses with SpoolFullError: nothing is kept, and the caller is told.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

import structlog

from ..errors import StoreUnavailableError
from ..spool import Spool
from .base import Chunks, Recording, RecordRequest, Snapshot, Store, blank_snapshot
from .wrapper import ChunkFeed, StoreWrapper

logger = structlog.get_logger("anomaly_counter.counter")


class SpoolingStore(StoreWrapper):
    def __init__(
        self, inner: Store, spool: Spool, on_spooled: Callable[[], None] | None = None
    ) -> None:
        super().__init__(inner)
        self.spool = spool
        self._on_spooled = on_spooled  # (a counter that owns the spool starts its replayer)

    async def record(
        self, recording: Recording, requests: Sequence[RecordRequest]
    ) -> list[Snapshot]:
        requests = _with_ids(requests)
        if self.spool.depth:  # a backlog: join it, so that the order is kept
            return await self._keep(recording, requests)
        try:
            return await self.inner.record(recording, requests)
        except StoreUnavailableError as exc:
            logger.warning("anomaly_counter_spooling", project=recording.project, error=str(exc))
            return await self._keep(recording, requests)

    async def record_chunks(
        self, recording: Recording, chunks: Chunks, *, whole: Sequence[str] | None = None
    ) -> AsyncIterator[list[Snapshot]]:
        feed = ChunkFeed(chunks, _with_ids)
        if not self.spool.depth:
            try:
                async for snapshots in self.inner.record_chunks(recording, feed, whole=whole):
                    feed.answered += 1
                    yield snapshots
                return
            except StoreUnavailableError as exc:
                logger.warning(
                    "anomaly_counter_spooling", project=recording.project, error=str(exc)
                )
        # the very requests sent (same ids), then those not sent yet: kept in one append
        rest = feed.rest()
        kept = await self._keep(recording, [r for chunk in rest for r in chunk])
        for chunk in rest:
            yield kept[: len(chunk)]
            kept = kept[len(chunk) :]

    async def resolve(self, project: str, anomaly_key: str, at_ms: int, by: str = "") -> None:
        """A resolution keeps its place among the occurrences: after those in the spool."""
        if not self.spool.depth:
            try:
                await self.inner.resolve(project, anomaly_key, at_ms, by)
                return
            except StoreUnavailableError as exc:
                logger.warning("anomaly_counter_spooling", project=project, error=str(exc))
        accepted_ms = int(time.time() * 1000)  # (the spool's age is told by the wall clock)
        record = {"kind": "resolve", "project": project, "anomaly_key": anomaly_key,
                  "at_ms": at_ms, "accepted_ms": accepted_ms, "by": by}  # fmt: skip
        await self._append([record])

    async def _keep(
        self, recording: Recording, requests: Sequence[RecordRequest]
    ) -> list[Snapshot]:
        """Keep occurrences in the spool (fsynced before this returns)."""
        await self._append(
            [
                {
                    "project": recording.project,
                    "signature": r.signature,
                    "at_ms": r.at_ms,
                    "occurrence_id": r.occurrence_id,
                    "accepted_ms": recording.now_ms,
                }
                for r in requests
            ]
        )
        return [
            blank_snapshot(r.anomaly_key, spooled=True, signature=r.signature) for r in requests
        ]

    async def _append(self, payloads: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self.spool.append, payloads)
        if self._on_spooled is not None:
            self._on_spooled()


def _with_ids(requests: Sequence[RecordRequest]) -> Sequence[RecordRequest]:
    """Each occurrence with an id (one made now, before its first attempt, when it has none)."""
    if all(r.occurrence_id for r in requests):
        return requests
    return [
        r if r.occurrence_id else replace(r, occurrence_id=f"auto:{uuid.uuid4().hex}")
        for r in requests
    ]
