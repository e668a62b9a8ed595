"""The one rule of pauses between tries that every retry loop uses."""

from __future__ import annotations

from itertools import islice

from anomaly_counter.backoff import pauses


def test_full_jitter_draws_from_zero_to_a_doubling_bound() -> None:
    for _ in range(200):
        drawn = list(islice(pauses(0.05), 6))
        bounds = [0.05 * 2**i for i in range(6)]
        assert all(0 <= p <= b for p, b in zip(drawn, bounds, strict=True))


def test_half_jitter_never_spins_and_the_bound_is_capped() -> None:
    for _ in range(200):
        drawn = list(islice(pauses(0.2, 1.0, jitter="half"), 8))
        bounds = [0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0]
        assert all(b / 2 <= p <= b for p, b in zip(drawn, bounds, strict=True))


def test_the_pauses_are_spread() -> None:
    first = {round(next(pauses(1.0)), 3) for _ in range(50)}
    assert len(first) > 40  # clients stopped by one outage do not come back together
