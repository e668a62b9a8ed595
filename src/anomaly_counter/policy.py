"""Pure decisions: escalation levels and crossings, repair verdicts and rankings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .errors import ConfigurationError
from .model import EscalationLevel


@dataclass(frozen=True, slots=True)
class Thresholds:
    """24-hour counts at which an anomaly reaches each level; positive, strictly increasing."""

    repeat: int = 3
    escalate: int = 5
    permanent_fix: int = 10

    def __post_init__(self) -> None:
        values = (
            ("threshold_repeat", self.repeat),
            ("threshold_escalate", self.escalate),
            ("threshold_permanent_fix", self.permanent_fix),
        )
        for name, value in values:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        if not self.repeat < self.escalate < self.permanent_fix:
            raise ConfigurationError(
                "thresholds must strictly increase: threshold_repeat < threshold_escalate"
                f" < threshold_permanent_fix, got {self.repeat}, {self.escalate},"
                f" {self.permanent_fix}"
            )

    @property
    def highest(self) -> int:
        return self.permanent_fix

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.repeat, self.escalate, self.permanent_fix)


def level_for(count_24h: int, thresholds: Thresholds) -> EscalationLevel:
    """The level a 24-hour count reaches."""
    if count_24h >= thresholds.permanent_fix:
        return EscalationLevel.PERMANENT_FIX
    if count_24h >= thresholds.escalate:
        return EscalationLevel.ESCALATE
    if count_24h >= thresholds.repeat:
        return EscalationLevel.REPEAT
    return EscalationLevel.NONE


def crossing(previous: EscalationLevel, current: EscalationLevel) -> EscalationLevel | None:
    """The level newly crossed into, if the anomaly went up; None otherwise.

    The stored level follows the count down as well, so an anomaly that cools off and heats up
    again is announced again: one notice per crossing, not one per anomaly.
    """
    return current if current > previous else None


MIN_ATTEMPTS_TO_JUDGE = 2
"""The reference's rule: an action is judged only after two attempts."""


def should_skip(total: int, success: int, min_success_rate: float) -> bool:
    """Skip an action tried at least twice that succeeds less often than ``min_success_rate``."""
    if total < MIN_ATTEMPTS_TO_JUDGE:
        return False
    return success / total < min_success_rate


def success_rate(total: int, success: int) -> float:
    return success / total if total else 0.0


_Z95 = 1.959963984540054


def wilson_lower_bound(success: int, total: int, z: float = _Z95) -> float:
    """Lower bound of the 95 % Wilson interval of a success rate, with one success and one
    failure added as a prior, so that an untried action ranks above one proven to fail and
    below one proven to work."""
    s, n = success + 1, total + 2
    p = s / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z * z / n))


@dataclass(frozen=True, slots=True)
class ActionRecommendation:
    """One candidate repair action, its evidence and where it ranks."""

    action: str
    rank: int
    score: float
    total: int
    success: int
    success_rate: float
    skip: bool
    reason: str
    basis: str = "reported"  # what total and success are: "verified" outcomes, or "reported"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recommend(
    candidates: Sequence[str],
    stats: Mapping[str, Mapping[str, Any]],
    min_success_rate: float = 0.2,
) -> list[ActionRecommendation]:
    """Rank candidate actions by the lower confidence bound of their success rate.

    Ties keep the caller's order. Each recommendation says why it ranks where it does.
    """
    scored: list[tuple[float, int, str, int, int, str]] = []
    for order, action in enumerate(dict.fromkeys(candidates)):
        entry = stats.get(action, {})
        total, success = int(entry.get("total", 0)), int(entry.get("success", 0))
        basis = str(entry.get("basis", "reported"))
        scored.append((wilson_lower_bound(success, total), order, action, total, success, basis))
    scored.sort(key=lambda item: (-item[0], item[1]))
    ranked = []
    for rank, (score, _, action, total, success, basis) in enumerate(scored, start=1):
        skip = should_skip(total, success, min_success_rate)
        ranked.append(
            ActionRecommendation(
                action=action,
                rank=rank,
                score=round(score, 4),
                total=total,
                success=success,
                success_rate=success_rate(total, success),
                skip=skip,
                reason=_reason(total, success, skip, min_success_rate, basis),
                basis=basis,
            )
        )
    return ranked


def _reason(
    total: int, success: int, skip: bool, min_success_rate: float, basis: str = "reported"
) -> str:
    if total == 0:
        return "never tried on this anomaly: worth a try before actions that are known to fail"
    if basis == "verified":
        rate = f"the anomaly stayed away after {success} of {total} settled attempts"
    else:
        rate = f"{success}/{total} succeeded in the last 30 days"
    if skip:
        return f"{rate}, below the {min_success_rate:.0%} floor: skip it"
    if total < MIN_ATTEMPTS_TO_JUDGE:
        return f"{rate}: too few attempts to judge"
    return rate
