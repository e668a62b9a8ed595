"""Window counts against a brute-force model, on random streams in and out of order.

The stated bound (docs/counting.md, "How counting works, and how exact it is"): a count is
exact while at most ``tail_capacity`` occurrences are at or after the window's start (so always
for a window that ends at the newest occurrence and holds at most that many); otherwise it is
off by at most the occurrences of the slice (1/60 of the window) holding the window's start,
plus those of the slice holding its end when more than ``tail_capacity`` occurrences came after
the end.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomaly_counter import AnomalyCounter
from anomaly_counter.windows import GRAIN_MS, HISTORY, WINDOW_MS, WindowState, ring_index

from .conftest import Clock

NOW = 1_774_785_600_000  # 2026-03-29T12:00Z in ms
MONTH = WINDOW_MS[3]
CAPACITY = 128
HOUR = 3_600_000
_examples = itertools.count()


def brute(times: list[int], lo: int, hi: int) -> int:
    return bisect_right(times, hi) - bisect_left(times, lo)


def bound(times: list[int], window: int, at: int, newest: int) -> int:
    """The documented error bound of one count."""
    lo = at - WINDOW_MS[window]
    if brute(times, lo, 1 << 62) <= CAPACITY:
        return 0
    grain = GRAIN_MS[ring_index(window, lo, newest)]
    first, last = lo // grain, at // grain
    allowed = brute(times, first * grain, (first + 1) * grain - 1)
    if brute(times, at + 1, 1 << 62) > CAPACITY:
        allowed += brute(times, last * grain, (last + 1) * grain - 1)
    return allowed


def check(state: WindowState, inserted: list[int], at: int) -> None:
    times = sorted(inserted)
    for window in range(4):
        expected = brute(times, at - WINDOW_MS[window], at)
        got = state.count(window, at)
        allowed = bound(times, window, at, state.newest)
        assert abs(got - expected) <= allowed, (window, at, got, expected, allowed)


# Streams: clustered bursts (storms) and sparse stragglers, over a month, in random order.
offsets = st.one_of(
    st.integers(0, MONTH),
    st.integers(MONTH - 3 * 3_600_000, MONTH),  # a recent storm
    st.integers(MONTH - 90_000, MONTH),  # a storm in the last minute and a half
)
# Small streams (exact counts) and storms well past the tail's 128 (the bucketed counts).
streams = st.one_of(
    st.lists(offsets, min_size=1, max_size=60),
    st.lists(offsets, min_size=200, max_size=700),
)


@settings(max_examples=150, deadline=None)
@given(streams, st.booleans())
def test_model_counts_within_bound(stream: list[int], in_order: bool) -> None:
    times = [NOW - MONTH + o for o in (sorted(stream) if in_order else stream)]
    state = WindowState(CAPACITY)
    inserted: list[int] = []
    for i, t in enumerate(times):
        state.add(t)
        inserted.append(t)
        if i % 37 == 0 or i == len(times) - 1:
            check(state, inserted, t)  # the answer of record_anomaly(at=t)
    newest = max(inserted)
    for at in (newest, newest + 1, newest - 1_800_000, newest - 86_400_000, newest - 5):
        check(state, inserted, at)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, MONTH), min_size=1, max_size=128))
def test_exact_below_capacity_in_any_order(stream: list[int]) -> None:
    state = WindowState(CAPACITY)
    for o in stream:
        state.add(NOW - MONTH + o)
    times = sorted(NOW - MONTH + o for o in stream)
    for at in [*times, NOW]:
        for window in range(4):
            assert state.count(window, at) == brute(times, at - WINDOW_MS[window], at)


def test_storm_of_one_per_second_stays_within_a_slice() -> None:
    state = WindowState(CAPACITY)
    times = [NOW - 2 * 86_400_000 + i * 1000 for i in range(2 * 86_400)]
    for t in times:
        state.add(t)
    at = times[-1]
    for window in range(4):
        exact = brute(times, at - WINDOW_MS[window], at)
        error = abs(state.count(window, at) - exact)
        assert error <= GRAIN_MS[window] // 1000  # one slice at one occurrence per second


def test_serialised_state_round_trips() -> None:
    state = WindowState(CAPACITY)
    for i in range(500):
        state.add(NOW - i * 7_919_000)
    again = WindowState.from_bytes(state.to_bytes(), CAPACITY)
    assert again == state


# The same streams through both stores, so the Lua mirror is held to the same model.
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(streams, st.booleans())
async def test_stores_count_within_bound(
    make_counter: object, stream: list[int], in_order: bool
) -> None:
    clock = Clock(datetime.fromtimestamp(NOW / 1000, UTC))
    counter = make_counter(f"prop-{next(_examples)}")  # type: ignore[operator]  # one per example
    counter._clock = clock
    times = [NOW - MONTH + o for o in (sorted(stream) if in_order else stream)]
    signature = {"alertname": "Storm"}
    key = AnomalyCounter.hash_signature(signature)
    occurrences = [{"signature": signature, "at": _dt(t)} for t in times]
    results = []
    for start in range(0, len(occurrences), 100):
        results += await counter.record_many(occurrences[start : start + 100])
    inserted: list[int] = []
    model = WindowState(CAPACITY)
    for t, result in zip(times, results, strict=True):
        inserted.append(t)
        model.add(t)
        got = (result.count_1h, result.count_24h, result.count_7d, result.count_30d)
        assert got == model.counts(t)  # the store agrees with the model exactly
    ordered = sorted(inserted)
    for at in (max(inserted), max(inserted) - 3_600_000):
        frequency = await counter.get_frequency(key, at=_dt(at))
        assert frequency is not None
        for window, name in enumerate(("1h", "24h", "7d", "30d")):
            expected = brute(ordered, at - WINDOW_MS[window], at)
            assert abs(frequency.count_in(name) - expected) <= bound(
                ordered, window, at, max(inserted)
            )


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC) + timedelta(0)


@settings(max_examples=150, deadline=None)
@given(streams, st.booleans(), st.sampled_from(sorted(HISTORY)))
def test_history_against_brute_force(stream: list[int], in_order: bool, window: str) -> None:
    """Each bucket of a history is exact when it starts after every pushed-out occurrence (the
    tail holds all of it: always for up to 128 occurrences); otherwise within
    the occurrences of the ring slices it shares an edge with (and one more for the rounding
    of shares); and the buckets add up to the occurrences in their span, within one."""
    times = [NOW - MONTH + o for o in (sorted(stream) if in_order else stream)]
    state = WindowState(CAPACITY)
    for t in times:
        state.add(t)
    ordered = sorted(times)
    bucket_ms, buckets = HISTORY[window]
    series = state.histogram(NOW, bucket_ms, buckets)
    assert len(series) == buckets and series[-1][0] <= NOW < series[-1][0] + bucket_ms
    for start, count in series:
        expected = brute(ordered, start, min(start + bucket_ms - 1, NOW))
        if start > state.evicted_max:  # every occurrence from here on is in the tail
            assert count == expected, (start, count, expected)
            continue
        grain = GRAIN_MS[ring_index(0, start, state.newest)]
        edges = brute(ordered, start // grain * grain, start // grain * grain + grain - 1)
        end = start + bucket_ms - 1
        edges += brute(ordered, end // grain * grain, end // grain * grain + grain - 1)
        assert abs(count - expected) <= edges + 1, (start, count, expected, edges)
    # the buckets add up to their span's occurrences, within the slice at the span's start
    first = series[0][0]
    span = brute(ordered, first, NOW)
    shared = 0
    if first <= state.evicted_max:
        grain = GRAIN_MS[ring_index(0, first, state.newest)]
        shared = brute(ordered, first // grain * grain, first // grain * grain + grain - 1)
    assert abs(sum(n for _, n in series) - span) <= shared + 1, (span, shared)
    assert all(n >= 0 for _, n in series)


def test_a_coarse_slice_at_a_finer_rings_start_is_not_counted_twice() -> None:
    """Found by a review: a bucket read from a coarse ring shared the slice straddling its end
    in proportion, and the next bucket, read from the finer ring, counted the same occurrences
    exactly: 500 occurrences at 11:00-11:11 showed as 750 in the day's history."""
    day = NOW - NOW % 86_400_000
    state = WindowState(CAPACITY)
    burst = [day + 11 * HOUR + i * 1_320 for i in range(500)]  # 11:00 to 11:11
    later = [day + 12 * HOUR + 30 * 60_000 + i for i in range(CAPACITY)]  # pushes them out
    for t in burst + later:
        state.add(t)
    end = later[-1]
    series = dict(state.histogram(end, HOUR, 24))
    assert series[day + 10 * HOUR] == 0 and series[day + 11 * HOUR] == 500
    assert sum(series.values()) == 500 + CAPACITY
