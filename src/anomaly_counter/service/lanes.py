"""One lane per project: its own rate and its own turns, so that no project starves another.

A project's writes are taken at most ``requests_per_second`` (with a ``burst``), and at most
``concurrent_requests`` at once in this process; later ones wait their turn in order (before
their bodies are read, so waiting holds no memory), at most ``waiting_requests`` of them and
for at most the body timeout. Past any bound the answer is 429 with Retry-After, naming the
limit. Another project's requests never wait behind these: they have lanes of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from ..limits import Limits
from .middleware import Refused

Limited = Callable[[str, str], None]
"""Told (project, limit) of each request a limit refused."""


class Lane:
    def __init__(self, project: str, limits: Limits, wait_seconds: float, limited: Limited):
        self.project, self.limits, self._wait, self._limited = (
            project,
            limits,
            wait_seconds,
            limited,
        )
        self.running = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._tokens = float(limits.burst)
        self._refilled = time.monotonic()

    def _refuse(self, limit: str, detail: str, retry_after: float) -> Refused:
        self._limited(self.project, limit)
        headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
        return Refused(429, f"project {self.project} {detail}; retry later", headers)

    def _take_token(self) -> None:
        rate = self.limits.requests_per_second
        if not rate:
            return
        now = time.monotonic()
        self._tokens = min(self.limits.burst, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1:
            raise self._refuse(
                "requests_per_second",
                f"is over its rate of {rate:g} requests per second",
                (1 - self._tokens) / rate,
            )
        self._tokens -= 1

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold one of the project's turns for the body of the ``async with``."""
        self._take_token()
        if self.running < self.limits.concurrent_requests and not self._queue:
            self.running += 1
        else:
            await self._wait_turn()
        try:
            yield
        finally:
            self._hand_on()

    async def _wait_turn(self) -> None:
        if len(self._queue) >= self.limits.waiting_requests:
            raise self._refuse(
                "waiting_requests",
                f"has {len(self._queue)} requests waiting for one of its"
                f" {self.limits.concurrent_requests} turns",
                1,
            )
        turn = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        try:
            async with asyncio.timeout(self._wait):
                await turn  # (its running count is handed on with it)
        except TimeoutError:
            self._give_up(turn)
            raise self._refuse(
                "concurrent_requests",
                f"waited {self._wait:g} seconds for one of its"
                f" {self.limits.concurrent_requests} turns",
                1,
            ) from None
        except BaseException:  # (the client went away, the server stops)
            self._give_up(turn)
            raise

    def _give_up(self, turn: asyncio.Future[None]) -> None:
        if turn.done() and not turn.cancelled():
            self._hand_on()  # given a turn just as it gave up: pass it on
        else:
            turn.cancel()
            with contextlib.suppress(ValueError):  # (unless _hand_on passed it by already)
                self._queue.remove(turn)

    def _hand_on(self) -> None:
        """The next waiting request takes this turn, else it is free."""
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.running -= 1


class Lanes:
    """The lanes of this process's projects (one per project that passed authentication)."""

    def __init__(
        self, limits_for: Callable[[str], Limits], wait_seconds: float, limited: Limited
    ) -> None:
        self._limits_for, self._wait, self._limited = limits_for, wait_seconds, limited
        self._lanes: dict[str, Lane] = {}

    def of(self, project: str) -> Lane:
        lane = self._lanes.get(project)
        if lane is None:
            lane = Lane(project, self._limits_for(project), self._wait, self._limited)
            self._lanes[project] = lane
        return lane
