"""Occurrences and resolutions the store cannot take go to the durable spool, to be replayed
in order when it is back (replay.py): the caller's answer says ``spooled``.

While the spool holds a backlog, new ones join it rather than pass it, so that their order is
kept. Every occurrence without an id is numbered before its first attempt (write_marks.py): one
whose answer was lost although it landed is then spooled with its number, and its replay counts
it once. A spool that is full refuses with SpoolFullError: nothing is kept, and the caller is
told.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import structlog

from ..errors import StoreUnavailableError
from ..spool import Spool
from .base import Chunks, Recording, RecordRequest, Resolution, Snapshot, Store, blank_snapshot
from .wrapper import ChunkFeed, StoreWrapper

logger = structlog.get_logger("anomaly_counter.counter")


class SpoolingStore(StoreWrapper):
    def __init__(
        self, inner: Store, spool: Spool, on_spooled: Callable[[], None] | None = None
    ) -> None:
        super().__init__(inner)
        self.spool = spool
        self._sequencer = spool.sequencer
        self._number = self._sequencer.number
        self._on_spooled = on_spooled  # (a counter that owns the spool starts its replayer)

    async def record(
        self, recording: Recording, requests: Sequence[RecordRequest]
    ) -> list[Snapshot]:
        requests = self._number(requests)
        if self.spool.depth:  # a backlog: join it, so that the order is kept
            return await self._keep(recording, requests)
        try:
            answer = await self.inner.record(recording, requests)
        except StoreUnavailableError as exc:
            logger.warning("anomaly_counter_spooling", project=recording.project, error=str(exc))
            return await self._keep(recording, requests)  # (unsettled until replayed)
        except BaseException:
            self._sequencer.settle(requests)  # answered: not sent again
            raise
        self._sequencer.settle(requests)
        return answer

    async def record_chunks(
        self, recording: Recording, chunks: Chunks, *, whole: Sequence[str] | None = None
    ) -> AsyncIterator[list[Snapshot]]:
        feed = ChunkFeed(chunks, self._number)
        if not self.spool.depth:
            try:
                async for snapshots in self.inner.record_chunks(recording, feed, whole=whole):
                    self._sequencer.settle(feed.handed[feed.answered])
                    feed.answered += 1
                    yield snapshots
                return
            except StoreUnavailableError as exc:
                logger.warning(
                    "anomaly_counter_spooling", project=recording.project, error=str(exc)
                )
            except BaseException:
                for chunk in feed.handed[feed.answered :]:
                    self._sequencer.settle(chunk)
                raise
        # the very requests sent (same ids), then those not sent yet: kept in one append
        rest = feed.rest()
        kept = await self._keep(recording, [r for chunk in rest for r in chunk])
        for chunk in rest:
            yield kept[: len(chunk)]
            kept = kept[len(chunk) :]

    async def resolve(self, recording: Recording, resolution: Resolution) -> None:
        """A resolution keeps its place among the occurrences: after those in the spool."""
        project = recording.project
        if not self.spool.depth:
            try:
                await self.inner.resolve(recording, resolution)
                return
            except StoreUnavailableError as exc:
                logger.warning("anomaly_counter_spooling", project=project, error=str(exc))
        accepted_ms = int(time.time() * 1000)  # (the spool's age is told by the wall clock)
        record = {"kind": "resolve", "project": project, "anomaly_key": resolution.anomaly_key,
                  "at_ms": resolution.at_ms, "accepted_ms": accepted_ms, "by": resolution.by,
                  "episode": resolution.episode, "started_ms": resolution.started_ms}  # fmt: skip
        await self._append([record])

    async def _keep(
        self, recording: Recording, requests: Sequence[RecordRequest]
    ) -> list[Snapshot]:
        """Keep occurrences in the spool (fsynced before this returns)."""
        try:
            await self._keep_records(recording, requests)
        except BaseException:  # (not kept: never replayed, so their numbers are settled)
            self._sequencer.settle(requests)
            raise
        return [
            blank_snapshot(r.anomaly_key, spooled=True, signature=r.signature) for r in requests
        ]

    async def _keep_records(self, recording: Recording, requests: Sequence[RecordRequest]) -> None:
        await self._append(
            [
                {
                    "project": recording.project,
                    "signature": r.signature,
                    "at_ms": r.at_ms,
                    "occurrence_id": r.occurrence_id,
                    "accepted_ms": recording.now_ms,
                    **({"sequence": list(r.sequence)} if r.sequence else {}),
                    **({"episode": r.episode, "ends_ms": r.ends_ms} if r.episode else {}),
                }
                for r in requests
            ]
        )

    async def _append(self, payloads: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self.spool.append, payloads)
        if self._on_spooled is not None:
            self._on_spooled()
