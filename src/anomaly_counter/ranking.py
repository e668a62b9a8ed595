"""Top-k over an index whose scores may have gone stale (pure, storage-agnostic).

A project index stores, per anomaly, a score written at the anomaly's last write: its window
count at its newest occurrence, or its disposition total. With no write since, the current
value can only be lower (old occurrences leave the window), so the stored score is an upper
bound. Walking candidates in descending stored score and stopping once the k-th best *current*
value reaches the next stored score gives the exact top k (Fagin's threshold algorithm), at a
cost that grows with k and with the anomalies that cooled down, never with the keyspace.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


INDEX_SLACK, INDEX_SPREAD = 2, 2
"""index_bound(c) = c + INDEX_SLACK + c // INDEX_SPREAD (the Redis scripts get them from here)."""


def index_bound(value: int) -> int:
    """The score an index keeps for a value: a little above it, so that a busy anomaly
    rewrites its index entries only now and then. Any upper bound keeps the top k exact; a
    looser one only makes a query look at a few more candidates."""
    return value + INDEX_SLACK + value // INDEX_SPREAD


Evaluate = Callable[[Sequence[str]], Awaitable[Sequence[tuple[int, T] | None]]]


@dataclass(slots=True)
class TopResult(Generic[T]):
    """The top entries, highest first, and the stale index entries met on the way
    as (key, stored score, current value), for the store to lower."""

    top: list[tuple[str, int, T]]
    stale: list[tuple[str, int, int]]


async def select_top(
    candidates: AsyncIterator[tuple[str, int]],
    evaluate: Evaluate[T],
    limit: int,
    batch: int | None = None,
) -> TopResult[T]:
    """The ``limit`` candidates of highest current value, highest first (ties: by key).

    ``evaluate`` gets a batch of keys and answers, for each, its current value and payload,
    or None for one that no longer counts (gone, or zero).
    """
    size = batch or max(limit, 16)
    best: list[tuple[int, str, T]] = []  # a min-heap of the best `limit` so far
    pending: list[tuple[str, int]] = []
    stale: list[tuple[str, int, int]] = []

    async def flush() -> None:
        results = await evaluate([key for key, _ in pending])
        for (key, bound), result in zip(pending, results, strict=True):
            value = 0 if result is None else result[0]
            if value < bound:
                stale.append((key, bound, value))
            if result is None:
                continue
            payload = result[1]
            entry = (value, _Reverse(key), payload)
            if len(best) < limit:
                heapq.heappush(best, entry)
            elif (value, _Reverse(key)) > (best[0][0], best[0][1]):
                heapq.heapreplace(best, entry)
        pending.clear()

    async for key, bound in candidates:
        if len(best) >= limit and best[0][0] >= bound:
            break
        pending.append((key, bound))
        if len(pending) >= size:
            await flush()
    if pending:
        await flush()
    ordered = sorted(best, key=lambda e: (-e[0], str(e[1])))
    return TopResult([(str(key), value, payload) for value, key, payload in ordered], stale)


class _Reverse(str):
    """A key that sorts backwards, so that among equal values the smaller key wins."""

    __slots__ = ()

    def __lt__(self, other: object) -> bool:
        return str.__gt__(self, str(other))

    def __gt__(self, other: object) -> bool:
        return str.__lt__(self, str(other))
