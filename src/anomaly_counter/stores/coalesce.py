"""Joins the writes of concurrent callers into shared round trips (automatic pipelining).

A caller that finds a free lane sends its items at once. While every lane is busy, later
callers queue, and the next free lane sends everything queued as one batch. With a hundred
tasks recording at once this turns a hundred round trips into a few, and two lanes let the
client prepare one batch while the server runs the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    def __init__(
        self,
        send: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        lanes: int = 2,
        max_batch: int = 50,
    ) -> None:
        self._send = send
        self._lanes = lanes
        self._max_batch = max_batch
        self._busy = 0
        self._queue: list[tuple[Sequence[Item], asyncio.Future[Sequence[Result]]]] = []
        self._drainers: set[asyncio.Task[None]] = set()

    async def submit(self, items: Sequence[Item]) -> Sequence[Result]:
        """Send these items, alone or with others', and answer with their results in order."""
        if not self._busy and not self._queue:
            self._busy += 1
            try:
                return await self._send(items)
            finally:
                self._busy -= 1
                self._kick()
        future: asyncio.Future[Sequence[Result]] = asyncio.get_running_loop().create_future()
        self._queue.append((items, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        if self._queue and self._busy < self._lanes:
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self._drainers.add(task)
            task.add_done_callback(self._drainers.discard)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = [self._queue.pop(0)]
                size = len(batch[0][0])
                while self._queue and size + len(self._queue[0][0]) <= self._max_batch:
                    batch.append(self._queue.pop(0))
                    size += len(batch[-1][0])
                flat = [item for items, _ in batch for item in items]
                try:
                    results = await self._send(flat)
                except Exception as exc:  # every caller of the batch learns why
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                offset = 0
                for items, future in batch:
                    if not future.done():
                        future.set_result(results[offset : offset + len(items)])
                    offset += len(items)
        finally:
            self._busy -= 1
            self._kick()
