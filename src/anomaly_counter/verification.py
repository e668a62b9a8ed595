"""Repairs judged by what happened next, not by what their caller said.

A repair attempt opens a verification window (``Settings.verify_window_minutes_for``: the
project's, the action's, or ``verify_window_minutes``). If its anomaly occurs again inside the
window (after the repair's time, up to the window's end), the attempt is *failed*; if the window
closes without a recurrence, it *succeeded*; until then it is *pending*. The store notes the
first recurrence of each attempt atomically with the occurrence (or, for an occurrence that
arrived before the repair was written, with the repair), so the verdict is the same whatever
order the two arrive in; the verdict itself is read off those facts and the clock, so a window
closes without a sweep.

Stats per action come from the attempts the anomaly's history keeps (its last 100). An action
is judged by its verified rate once it has ``verify_min_settled`` settled attempts, and by the
rate its callers reported before that; the answer says which (``basis``).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
RETENTION_MS = 30 * 86_400_000  # attempts judged: those of the last 30 days
VERIFIED, REPORTED = "verified", "reported"


def verdict(at_ms: int, until_ms: int | None, back_ms: int | None, now_ms: int) -> str | None:
    """An attempt's verdict: None for one recorded without a window (verification off)."""
    if until_ms is None:
        return None
    if back_ms is not None and at_ms < back_ms <= until_ms:
        return FAILED
    return SUCCEEDED if now_ms > until_ms else PENDING


@dataclass(frozen=True, slots=True)
class Verified:
    """One action's attempts as judged by their outcome (from the kept history)."""

    succeeded: int
    failed: int
    pending: int
    success_rate: float  # succeeded of the settled (0.0 when none settled)
    median_recurrence_seconds: float | None  # after the failed ones: how soon it came back

    @property
    def settled(self) -> int:
        return self.succeeded + self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "verified_succeeded": self.succeeded,
            "verified_failed": self.failed,
            "verified_pending": self.pending,
            "verified_success_rate": self.success_rate,
            "median_recurrence_seconds": self.median_recurrence_seconds,
        }


def judge(history: Sequence[Mapping[str, Any]], now_ms: int) -> dict[str, Verified]:
    """Per action, the verdicts of the attempts of the last 30 days in ``history`` (the stores'
    entries: action, at_ms, until_ms, back_ms) that had a window."""
    tallies: dict[str, list[int]] = {}
    recurrences: dict[str, list[float]] = {}
    since = now_ms - RETENTION_MS  # (the last 30 days, as the reported figures)
    for entry in history:
        at, back = entry["at_ms"], entry.get("back_ms")
        if at < since:
            continue
        found = verdict(at, entry.get("until_ms"), back, now_ms)
        if found is None:
            continue
        tally = tallies.setdefault(entry["action"], [0, 0, 0])
        tally[(SUCCEEDED, FAILED, PENDING).index(found)] += 1
        if found == FAILED:
            recurrences.setdefault(entry["action"], []).append((back - at) / 1000)
    return {
        action: Verified(
            succeeded=s,
            failed=f,
            pending=p,
            success_rate=s / (s + f) if s + f else 0.0,
            median_recurrence_seconds=(
                statistics.median(recurrences[action]) if action in recurrences else None
            ),
        )
        for action, (s, f, p) in tallies.items()
    }


def basis(verified: Verified | None, min_settled: int) -> str:
    """What an action is judged by: its verified outcomes once it has ``min_settled`` settled
    attempts, else what its callers reported."""
    return VERIFIED if verified is not None and verified.settled >= min_settled else REPORTED
