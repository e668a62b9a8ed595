"""Deleting an anomaly or a whole project (docs/delete.md): what the answers say, and what of a
deleted anomaly is taken back out of its project's day summary.

The summary (``summary_days``) counts the project's dispositions (``d:<type>``) and escalation
crossings (``e:<level>``) by day, apart from the anomalies, so that a summary never has to read
them all. What one anomaly put there is known from the anomaly itself: its own day counters
hold its dispositions exactly, and its timeline tells each crossing (a milestone, kept while
it is among the anomaly's newest ``timeline.MILESTONE_ENTRIES``). The stores take those back
out when they delete it, never below zero; the Redis scripts do the same in Lua (delete.lua).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import timeline


@dataclass(frozen=True, slots=True)
class DeletedAnomaly:
    """An anomaly that was deleted, with everything of it: its key and the labels of its first
    occurrence (empty for one known only by a repair, a disposition or a fix)."""

    project: str
    anomaly_key: str
    signature: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeletedProject:
    """A project that was deleted, with everything of it (its tokens too): how many anomalies
    it held (0 when there was nothing left to delete)."""

    project: str
    anomalies: int


def summary_share(
    day_counters: Iterable[tuple[int, str, int]], entries: Iterable[str], day_ms: int
) -> dict[tuple[int, str], int]:
    """What an anomaly put in its project's day summary, as ``(day, name) -> n``: from its own
    day counters ``(day, name, n)``, its dispositions; from its timeline entries (as stored),
    its escalation crossings, on the day (of ``day_ms``) of each."""
    share: dict[tuple[int, str], int] = {}
    for day, name, n in day_counters:
        if name.startswith("d:") and n > 0:
            share[day, name] = share.get((day, name), 0) + n
    escalated = timeline.CODES["escalated"]
    for entry in entries:
        code, at, level, *_ = (*entry.split(timeline.SEP), "", "", "")
        if code == escalated and at.isdigit() and level.isdigit():
            name = f"e:{level}"
            day = int(at) // day_ms
            share[day, name] = share.get((day, name), 0) + 1
    return share
