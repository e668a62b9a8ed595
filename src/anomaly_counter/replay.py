"""Drains the spool into the store, in order, as soon as the store answers again.

One batch at a time: read from the checkpoint, store it (each project's records through its
counter, in order), then move the checkpoint. A crash between storing and moving the checkpoint
replays the batch again, which counts nothing twice (each record goes with the spool's id and
its position: stores/write_marks.py). While the store is down the replayer waits, with
exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import structlog

from .backoff import pauses
from .errors import StoreUnavailableError
from .model import AnomalyFrequency
from .spool import Spool

logger = structlog.get_logger("anomaly_counter.replay")
Replayed = Callable[[str, list[AnomalyFrequency]], None]


class Replays(Protocol):
    """What stores one project's spooled records (the counter of that project)."""

    async def replay(self, records: Sequence[Mapping[str, Any]]) -> list[AnomalyFrequency]: ...


class Replayer:
    def __init__(
        self,
        spool: Spool,
        counter_for: Callable[[str], Replays],
        on_replayed: Replayed | None = None,
        *,
        batch: int = 2_000,
        idle_seconds: float = 0.2,
        max_backoff: float = 1.0,
    ) -> None:
        self.spool = spool
        self._counter_for = counter_for
        self._on_replayed = on_replayed
        self._batch = batch
        self._idle = idle_seconds
        self._max_backoff = max_backoff
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run in the background (on the running loop) until ``stop``."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        waits = self._pauses()
        while True:
            if not self.spool.depth:
                if not self.spool.checkpoint_saved:  # (an I/O error kept it from the disk)
                    await asyncio.to_thread(self.spool.save_checkpoint)
                await asyncio.sleep(self._idle)
                continue
            try:
                await self.drain_once()
                waits = self._pauses()
            except StoreUnavailableError as exc:
                wait = next(waits)
                logger.info("spool_replay_waiting", error=str(exc), retry_in=round(wait, 2))
                await asyncio.sleep(wait)
            except Exception:  # a bug must not stop the replay for good
                logger.exception("spool_replay_failed")
                await asyncio.sleep(self._max_backoff)

    def _pauses(self) -> Iterator[float]:
        return pauses(0.2, self._max_backoff, jitter="half")

    async def drain_once(self) -> int:
        """Store one batch of the oldest records and move past them; the number stored."""
        records, position = await asyncio.to_thread(self.spool.peek, self._batch)
        if not records:
            return 0
        stored = [
            (project, await self._counter_for(project).replay(group))
            for project, group in _runs(records)
        ]
        await asyncio.to_thread(self.spool.commit, position, len(records))
        # what this process numbered and spooled is settled: its marks can go (write_marks.py)
        self.spool.sequencer.settle_replayed(records)
        if self._on_replayed is not None:  # after the commit: figures match the spool's
            for project, frequencies in stored:
                self._on_replayed(project, frequencies)
        return len(records)


def _runs(records: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Consecutive records of one project, in order."""
    runs: list[tuple[str, list[dict[str, Any]]]] = []
    for record in records:
        if runs and runs[-1][0] == record["project"]:
            runs[-1][1].append(record)
        else:
            runs.append((record["project"], [record]))
    return runs
