"""The domain's value types: levels, disposition types, occurrences and frequencies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any

WINDOWS: dict[str, int] = {"1h": 3_600, "24h": 86_400, "7d": 604_800, "30d": 2_592_000}
"""Sliding windows by name, in seconds; every window ends at the occurrence (or query) time."""

RETENTION_SECONDS = WINDOWS["30d"]
"""Occurrences older than this are refused and repairs and dispositions older are forgotten."""

DISPOSITION_TYPES: tuple[str, ...] = (
    "auto_repair",
    "human_approved",
    "manual_resolved",
    "cold_start_trust",
    "timeout_ignored",
)


class EscalationLevel(IntEnum):
    """Escalation levels, ordered so that a crossing is simply ``new > old``."""

    NONE = 0
    REPEAT = 1  # flag as repeating and tell the user
    ESCALATE = 2  # a human steps in; the owner is told
    PERMANENT_FIX = 3  # a root-cause fix is mandatory

    @property
    def label(self) -> str | None:
        """The reference's string for this level (None for no level)."""
        return None if self is EscalationLevel.NONE else self.name


LEVEL_MEANINGS: dict[str, str] = {
    "REPEAT": "recurring: flag it and tell the user",
    "ESCALATE": "chronic: a human steps in and the owner is told",
    "PERMANENT_FIX": "a root-cause fix is mandatory; restarts only hide it",
}


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One occurrence to record: its signature, its time (None: now) and an optional id."""

    signature: Mapping[str, Any]
    at: datetime | None = None
    occurrence_id: str | None = None


@dataclass(slots=True)
class AnomalyFrequency:
    """How often one anomaly occurred, as of one point in time.

    Keeps every field of the reference design; the fields after ``total_resolution_count``
    are ours.
    """

    anomaly_key: str
    count_1h: int
    count_24h: int
    count_7d: int
    count_30d: int
    first_seen: datetime
    last_seen: datetime
    auto_repair_count: int
    permanent_fix_applied: bool
    escalation_level: str | None
    human_approved_count: int = 0
    manual_resolved_count: int = 0
    cold_start_trust_count: int = 0
    total_resolution_count: int = 0
    auto_repair_disposition_count: int = 0
    timeout_ignored_count: int = 0
    escalated_to: str | None = None
    regressed: bool = False
    newly_regressed: bool = False
    duplicate: bool = False
    degraded: bool = False
    signature: dict[str, Any] = field(default_factory=dict)
    last_resolved: datetime | None = None  # the latest resolution of an episode (reads only)
    spooled: bool = False  # kept in the durable spool, to be counted when the store is back

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (ISO times): the reference's keys and ours."""
        out = asdict(self)
        out["first_seen"] = self.first_seen.isoformat()
        out["last_seen"] = self.last_seen.isoformat()
        out["last_resolved"] = self.last_resolved.isoformat() if self.last_resolved else None
        return out

    def count(self, window: str) -> int:
        """The count of one window by its name (``1h``, ``24h``, ``7d``, ``30d``)."""
        return int(getattr(self, f"count_{window}"))


def empty_disposition_counts() -> dict[str, int]:
    """All five disposition types and the total, at zero."""
    counts = dict.fromkeys(DISPOSITION_TYPES, 0)
    counts["total"] = 0
    return counts
