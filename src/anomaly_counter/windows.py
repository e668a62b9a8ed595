"""Bounded-memory sliding-window counting (pure; mirrored by ``stores/lua/common.lua``).

Each anomaly keeps two structures whatever its event rate:

* the *tail*: the latest ``tail_capacity`` occurrence times, exactly. ``evicted_max`` remembers
  the latest time ever pushed out of it, so every occurrence later than ``evicted_max`` is known
  to be in the tail;
* one *ring* per window, for the occurrences pushed out of the tail only: their counts per
  slice of 1/60 of the window (1 min, 24 min, 168 min, 12 h), for the last ``RING_SLOTS``
  slices of that window's grain before the newest occurrence. An anomaly that never had more
  than ``tail_capacity`` occurrences never touches its rings.

A window [at - W, at] counts its tail occurrences exactly and adds the pushed-out ones from the
finest ring that still covers its start. None of those when the window starts after
``evicted_max``: then the count is exact, which holds whenever at most ``tail_capacity``
occurrences are at or after the window's start (for a window ending at the newest occurrence:
whenever it holds at most ``tail_capacity``). Otherwise the slice containing the start is
interpolated (error at most the occurrences of that one slice, 1/60 of the window), and so is
the slice containing the end when pushed-out occurrences lie after the end (more than
``tail_capacity`` occurrences came after it).

All times are integer milliseconds since the epoch, UTC.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, field

from .model import WINDOWS

SLICES_PER_WINDOW = 60
RING_SLOTS = 124
"""Two windows' worth of slices and a margin, below Redis's default listpack limit of 128."""

WINDOW_MS: tuple[int, ...] = tuple(seconds * 1000 for seconds in WINDOWS.values())
GRAIN_MS: tuple[int, ...] = tuple(ms // SLICES_PER_WINDOW for ms in WINDOW_MS)
NEVER = -(1 << 53)
"""Stands for 'no time yet'; exactly representable in Lua's doubles too."""


HISTORY: dict[str, tuple[int, int]] = {
    "1h": (60_000, 60),  # per minute over the last hour
    "24h": (3_600_000, 24),  # hourly over the last day
    "7d": (3_600_000, 168),  # hourly over the last 7 days
    "30d": (86_400_000, 30),  # daily over the last 30 days
}
"""The history of each window: (bucket size in ms, buckets)."""


def tail_capacity(highest_threshold: int) -> int:
    """Occurrence times kept exactly: at least 128, and twice the highest threshold."""
    return max(128, 2 * max(64, highest_threshold))


@dataclass(slots=True)
class WindowState:
    """The counting state of one anomaly."""

    capacity: int
    tail: list[int] = field(default_factory=list)
    evicted_max: int = NEVER
    newest: int = NEVER
    rings: list[dict[int, int]] = field(default_factory=lambda: [{} for _ in WINDOW_MS])

    def add(self, t: int) -> None:
        """Count one occurrence at time ``t`` (any order)."""
        if len(self.tail) >= self.capacity and t <= self.tail[0]:
            self._evict(t)  # older than the whole tail: only the rings keep it
        else:
            insort(self.tail, t)
            while len(self.tail) > self.capacity:
                self._evict(self.tail.pop(0))
        self.newest = max(self.newest, t)

    def _evict(self, t: int) -> None:
        self.evicted_max = max(self.evicted_max, t)
        newest = max(self.newest, t)
        for grain, ring in zip(GRAIN_MS, self.rings, strict=True):
            slot, oldest_kept = t // grain, newest // grain - RING_SLOTS
            if slot <= oldest_kept:
                continue  # older than anything a window answered from this ring can start at
            ring[slot] = ring.get(slot, 0) + 1
            if len(ring) > RING_SLOTS:
                for old in [s for s in ring if s <= oldest_kept]:
                    del ring[old]

    def count(self, window_index: int, at: int) -> int:
        """Occurrences in [at - W, at] for the window of that index (0: 1 h ... 3: 30 d)."""
        lo, hi = at - WINDOW_MS[window_index], at
        exact = bisect_right(self.tail, hi) - bisect_left(self.tail, lo)
        if lo > self.evicted_max:
            return exact
        index = ring_index(window_index, lo, self.newest)
        grain, ring = GRAIN_MS[index], self.rings[index]
        first, last = lo // grain, min(hi, self.evicted_max) // grain
        whole = sum(ring.get(s, 0) for s in range(first + 1, last))
        if first == last:
            end = (first + 1) * grain - 1 if hi >= self.evicted_max else hi
            numerator = ring.get(first, 0) * (end - lo + 1)
        else:
            numerator = ring.get(first, 0) * ((first + 1) * grain - lo)
            if hi >= self.evicted_max:
                whole += ring.get(last, 0)  # every pushed-out occurrence is at or before hi
            else:
                numerator += ring.get(last, 0) * (hi - last * grain + 1)
        return exact + whole + (numerator + grain // 2) // grain

    def histogram(self, end: int, bucket_ms: int, buckets: int) -> list[tuple[int, int]]:
        """Occurrences per bucket as ``(bucket start, count)``, oldest first: ``buckets``
        buckets of ``bucket_ms`` aligned to multiples of it (UTC), the last one holding
        ``end`` (occurrences after ``end`` left out).

        Occurrences in the tail are placed exactly. Pushed-out ones are counted from each
        bucket edge on (``_pushed_out_from``: the finest ring covering the edge, the slice
        holding it shared in proportion), and a bucket gets the difference between its two
        edges. So the buckets add up to the occurrences of their span, whatever rings their
        edges are read from (a coarse slice straddling a finer ring's start is never counted
        twice), within the sharing of the slice at the span's start; and a bucket is exact
        while the tail reaches back to it. Where rings disagree at an edge (occurrences bunched
        within a coarse slice), the earlier edge's count caps the later ones, so no bucket is
        negative.
        """
        last = end - end % bucket_ms
        first = last - (buckets - 1) * bucket_ms
        counts = [0] * buckets
        for t in self.tail[bisect_left(self.tail, first) : bisect_right(self.tail, end)]:
            counts[(t - first) // bucket_ms] += 1
        edges = [first + b * bucket_ms for b in range(buckets)] + [end + 1]
        suffixes = [_Suffix(ring) for ring in self.rings]
        after: list[int] = []
        running = float("inf")
        for edge in edges:
            running = min(running, self._pushed_out_from(edge, suffixes))
            after.append(int(running + 0.5))  # rounding keeps the order: no bucket below 0
        return [
            (first + b * bucket_ms, counts[b] + after[b] - after[b + 1]) for b in range(buckets)
        ]

    def _pushed_out_from(self, t: int, suffixes: list[_Suffix]) -> float:
        """Pushed-out occurrences at or after ``t``, from the finest ring covering ``t``: its
        later slices whole, and the slice holding ``t`` in proportion (its occurrences lie
        between the slice's start and ``evicted_max``)."""
        if t > self.evicted_max:
            return 0.0
        index = ring_index(0, t, self.newest)
        grain, ring = GRAIN_MS[index], self.rings[index]
        slot = t // grain
        later = float(suffixes[index].after(slot))
        n = ring.get(slot, 0)
        if n:
            low = slot * grain
            high = min(low + grain - 1, self.evicted_max)
            later += n * (high - t + 1) / (high - low + 1)
        return later

    def counts(self, at: int) -> tuple[int, int, int, int]:
        """All four window counts ending at ``at``."""
        c1, c2, c3, c4 = (self.count(i, at) for i in range(len(WINDOW_MS)))
        return c1, c2, c3, c4

    # -- a compact binary form, for stores that keep the state as one value -----------------

    def to_bytes(self) -> bytes:
        parts = [struct.pack("<qqI", self.evicted_max, self.newest, len(self.tail))]
        parts.append(array("q", self.tail).tobytes())
        for ring in self.rings:
            flat = array("q", [v for item in sorted(ring.items()) for v in item])
            parts.append(struct.pack("<I", len(ring)) + flat.tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, capacity: int) -> WindowState:
        evicted_max, newest, n = struct.unpack_from("<qqI", data, 0)
        offset = 20 + 8 * n
        tail = array("q", data[20:offset]).tolist()
        rings = []
        for _ in WINDOW_MS:
            (m,) = struct.unpack_from("<I", data, offset)
            flat = array("q", data[offset + 4 : offset + 4 + 16 * m]).tolist()
            offset += 4 + 16 * m
            rings.append(dict(zip(flat[::2], flat[1::2], strict=True)))
        state = cls(capacity, tail, evicted_max, newest, rings)
        while len(state.tail) > capacity:  # the capacity setting was lowered since
            state._evict(state.tail.pop(0))
        return state


class _Suffix:
    """A ring's occurrences after a slot, for many slots at once."""

    def __init__(self, ring: dict[int, int]) -> None:
        self.slots = sorted(ring)
        self.totals = [0] * (len(self.slots) + 1)  # totals[i]: slots[i:] together
        for i in range(len(self.slots) - 1, -1, -1):
            self.totals[i] = self.totals[i + 1] + ring[self.slots[i]]

    def after(self, slot: int) -> int:
        return self.totals[bisect_right(self.slots, slot)]


def ring_index(window_index: int, lo: int, newest: int) -> int:
    """The finest ring, from the window's own on, that still covers a window starting at lo."""
    for index in range(window_index, len(GRAIN_MS)):
        grain = GRAIN_MS[index]
        if lo // grain > newest // grain - RING_SLOTS:
            return index
    return len(GRAIN_MS) - 1
