"""The sweep of flapping anomalies that went quiet, in every service process.

An anomaly stops flapping when its percent of changes falls below the stop threshold; one that
simply goes quiet has no next transition to say so. Each project's flapping index is ordered by
the time each anomaly would stop if nothing more happened, so a sweep reads only the ones whose
time has come (at most ``SWEEP_LIMIT`` a round), and the store settles each atomically: several
processes sweeping at once tell each stop once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

import structlog

from ..counter import AnomalyCounter

logger = structlog.get_logger("anomaly_counter.service")
SWEEP_LIMIT = 1_000


class Sweeper:
    """Every ``interval`` seconds, the sweep of each project this process knows (those it has
    served since it started, and those the settings name)."""

    def __init__(
        self,
        interval: float,
        projects: Callable[[], Iterable[str]],
        counter_for: Callable[[str], AnomalyCounter],
        swept: Callable[[str, int], None],
    ) -> None:
        self._interval = interval
        self._projects = projects
        self._counter_for = counter_for
        self._swept = swept  # told how many stopped, per project (wakes its deliverer)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def sweep_once(self) -> int:
        stopped = 0
        for project in sorted(set(self._projects())):
            try:
                n = await self._counter_for(project).sweep_flapping(SWEEP_LIMIT)
            except Exception:  # a store away: the next round tries again
                logger.warning("flapping_sweep_failed", project=project, exc_info=True)
                continue
            if n:
                self._swept(project, n)
                stopped += n
        return stopped

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.sweep_once()
