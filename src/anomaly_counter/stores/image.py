"""What a store keeps of one anomaly, whole: the unit that export writes and import reads back.

Both stores keep the same things (in their own layouts), so an image read from one and written
to the other leaves every read answering as before: the counting state, the first and last
occurrence, the level, the fix and its regression, resolutions, verification, incident and
flapping state, open episodes, day counters, repair history, timeline, the remembered
occurrence-id digests and write marks (so that what was counted before the move is not
counted again after it), and the scores of its index entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..windows import NEVER, WINDOW_MS, WindowState

SCORE_NAMES = ("1h", "24h", "7d", "30d", "dispositions")
"""The project indexes an anomaly has an entry in (base.INDEXES): their scores, in order."""


@dataclass(slots=True)
class AnomalyImage:
    """One anomaly as a store keeps it. Times are integer ms (UTC); None where there is none."""

    anomaly_key: str
    signature_json: str | None = None  # None: known only by a repair, disposition or fix
    first_seen_ms: int | None = None
    last_seen_ms: int | None = None
    level: int = 0  # at its latest occurrence (its place in the chronic index)
    state: WindowState | None = None  # None: no occurrence counted
    fix_at_ms: int | None = None  # as stored: a fix past its validity is kept, and not shown
    fix_description: str | None = None
    fix_by: str | None = None
    regressed_ms: int | None = None
    resolved_ms: int | None = None
    verify_until_ms: int | None = None
    incident: str | None = None  # episodes.IncidentState.encode_head
    flap: str | None = None  # episodes.FlapState.encode
    flap_leave_ms: int | None = None  # its flapping index entry: when it stops if left alone
    open_episodes: dict[str, tuple[int, int]] = field(default_factory=dict)  # fp: (start, seen)
    has_days: bool = False
    days: list[tuple[int, str, int]] = field(default_factory=list)  # (day, name, n)
    repairs: list[dict[str, Any]] = field(default_factory=list)  # newest first, as repair_history
    timeline: list[str] = field(default_factory=list)  # as stored: milestones, then the rest
    ids: dict[str, int] = field(default_factory=dict)  # occurrence and write id digests: seen ms
    marks: dict[str, tuple[str, int]] = field(default_factory=dict)  # field: (held, touched ms)
    scores: dict[str, int] = field(default_factory=dict)  # SCORE_NAMES: its index scores

    def fields(self) -> dict[str, Any]:
        """The image as plain JSON values (one export line, without its ``type``)."""
        state = self.state
        return {
            "key": self.anomaly_key,
            "signature": self.signature_json,
            "first_seen": self.first_seen_ms,
            "last_seen": self.last_seen_ms,
            "level": self.level,
            "state": None
            if state is None
            else {
                "tail": state.tail,
                "evicted_max": None if state.evicted_max == NEVER else state.evicted_max,
                "newest": None if state.newest == NEVER else state.newest,
                "rings": [sorted(ring.items()) for ring in state.rings],
            },
            "fix": None
            if self.fix_at_ms is None
            else {"at": self.fix_at_ms, "description": self.fix_description, "by": self.fix_by},
            "regressed_at": self.regressed_ms,
            "resolved_at": self.resolved_ms,
            "verify_until": self.verify_until_ms,
            "incident": self.incident,
            "flap": self.flap,
            "flap_leave": self.flap_leave_ms,
            "open_episodes": {fp: list(e) for fp, e in sorted(self.open_episodes.items())},
            "has_days": self.has_days,
            "days": [list(d) for d in sorted(self.days)],
            "repairs": self.repairs,
            "timeline": self.timeline,
            "ids": dict(sorted(self.ids.items())),
            "marks": {name: list(mark) for name, mark in sorted(self.marks.items())},
            "scores": {name: self.scores.get(name, 0) for name in SCORE_NAMES},
        }

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> AnomalyImage:
        """The image of one export line; ValueError (or KeyError, TypeError) for a broken
        one."""
        state_data = data["state"]
        state = None
        if state_data is not None:
            rings = [{_int(s): _int(n) for s, n in ring} for ring in state_data["rings"]]
            if len(rings) != len(WINDOW_MS):
                raise ValueError(f"a state has {len(WINDOW_MS)} rings, not {len(rings)}")
            evicted, newest = state_data["evicted_max"], state_data["newest"]
            state = WindowState(
                capacity=1 << 30,
                tail=sorted(_int(t) for t in state_data["tail"]),
                evicted_max=NEVER if evicted is None else _int(evicted),
                newest=NEVER if newest is None else _int(newest),
                rings=rings,
            )
        fix = data["fix"]
        return cls(
            anomaly_key=_text(data["key"]),
            signature_json=_maybe_text(data["signature"]),
            first_seen_ms=_maybe_int(data["first_seen"]),
            last_seen_ms=_maybe_int(data["last_seen"]),
            level=_int(data["level"]),
            state=state,
            fix_at_ms=None if fix is None else _int(fix["at"]),
            fix_description=None if fix is None else _maybe_text(fix["description"]),
            fix_by=None if fix is None else _maybe_text(fix["by"]),
            regressed_ms=_maybe_int(data["regressed_at"]),
            resolved_ms=_maybe_int(data["resolved_at"]),
            verify_until_ms=_maybe_int(data["verify_until"]),
            incident=_maybe_text(data["incident"]),
            flap=_maybe_text(data["flap"]),
            flap_leave_ms=_maybe_int(data["flap_leave"]),
            open_episodes={
                _text(fp): (_int(e[0]), _int(e[1])) for fp, e in data["open_episodes"].items()
            },
            has_days=bool(data["has_days"]),
            days=[(_int(d), _text(name), _int(n)) for d, name, n in data["days"]],
            repairs=[_attempt(a) for a in data["repairs"]],
            timeline=[_text(entry) for entry in data["timeline"]],
            ids={_text(d): _int(t) for d, t in data["ids"].items()},
            marks={_text(f): (_text(m[0]), _int(m[1])) for f, m in data["marks"].items()},
            scores={name: _int(data["scores"].get(name, 0)) for name in SCORE_NAMES},
        )


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    return value


def _maybe_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def _maybe_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _attempt(entry: dict[str, Any]) -> dict[str, Any]:
    """A repair history entry (as ``Store.repair_history`` gives it), checked."""
    if not isinstance(entry["success"], bool):
        raise ValueError(f"{entry['success']!r} is not true or false")
    return {
        "action": _text(entry["action"]),
        "success": entry["success"],
        "at_ms": _int(entry["at_ms"]),
        "until_ms": _maybe_int(entry["until_ms"]),
        "back_ms": _maybe_int(entry["back_ms"]),
    }
