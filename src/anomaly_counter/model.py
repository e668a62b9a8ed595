"""The domain's value types: levels, disposition types, occurrences and frequencies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import IntEnum
from typing import Annotated, Any, ClassVar, Literal, get_type_hints

from .signature import fingerprint_fields
from .verification import REPORTED, VERIFIED, Verified

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
    # an Alertmanager episode: its alert's fingerprint (counted by incident, see episodes.py),
    # and when it resolved if it arrives resolved
    episode: str | None = None
    ends: datetime | None = None


@dataclass(frozen=True, slots=True)
class PermanentFix:
    """The root-cause fix in force: what was done, when, and who said so (a token id, ``cli``
    or what the library's caller passed as ``by``; None when nobody was named)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {
        "json_schema_serialization_defaults_required": True
    }

    description: str
    at: datetime
    by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "at": self.at.isoformat(), "by": self.by}


TimelineKind = Literal[
    "flapping",
    "first_seen",
    "escalated",
    "regressed",
    "repair",
    "disposition",
    "fix",
    "fix_undone",
    "resolved",
    "notice",
]
"""What a timeline entry can tell, in the order a story usually runs."""


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One event in an anomaly's story. Only the fields of its kind are set:

    - ``first_seen``: its first occurrence;
    - ``escalated``: an occurrence took it into ``level`` (``count_24h`` in 24 h);
    - ``regressed``: the first occurrence after its permanent fix;
    - ``repair``: an attempt of ``action``, ``success`` or not;
    - ``disposition``: how one alert of it was ``disposition``-ed;
    - ``fix`` / ``fix_undone``: a permanent fix (``description``) marked, or taken back;
    - ``resolved``: Alertmanager said an episode of it resolved;
    - ``flapping``: it ``started`` (or stopped) flapping, at ``percent`` of changes;
    - ``notice``: a ``notice`` (``escalation`` or ``regression``) went to ``channel``, with
      its ``outcome`` (``sent`` or ``failed``).

    ``by`` names who reported it where known: a token id (API), ``cli``, or the library
    caller's ``by``.
    """

    kind: TimelineKind
    at: datetime
    level: str | None = None
    count_24h: int | None = None
    action: str | None = None
    success: bool | None = None
    disposition: str | None = None
    description: str | None = None
    channel: str | None = None
    notice: str | None = None
    outcome: str | None = None
    by: str | None = None
    started: bool | None = None
    percent: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {name: value for name, value in _fields_of(self).items() if value is not None}
        out["at"] = self.at.isoformat()
        return out


@dataclass(frozen=True, slots=True)
class Doc:
    """A field's description, kept in its annotation: the HTTP API's schema takes it from
    there. (Not from attribute docstrings: pydantic finds those by parsing the module's
    source at run time, which fails where only compiled files are installed, and on Python
    3.11.7 raised SystemError when two threads parsed at once.)"""

    text: str


def _describe_fields(schema: dict[str, Any], cls: type) -> None:
    """Puts each ``Doc`` of ``cls``'s fields into its JSON schema as the description."""
    properties = schema.get("properties", {})
    for name, hint in get_type_hints(cls, include_extras=True).items():
        docs = [m.text for m in getattr(hint, "__metadata__", ()) if isinstance(m, Doc)]
        if docs and name in properties:
            properties[name]["description"] = docs[0]


# The value types below are also the HTTP API's answers (a plain dict: pydantic reads it, this
# module does not need pydantic).
_DESCRIBED: dict[str, Any] = {
    "json_schema_extra": _describe_fields,
    "json_schema_serialization_defaults_required": True,  # an answer always has every field
}


@dataclass(slots=True)
class AnomalyFrequency:
    """How often one anomaly occurred, as of one point in time.

    Keeps every field of the reference design; the fields after ``total_resolution_count``
    are ours.
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = _DESCRIBED

    anomaly_key: Annotated[
        str, Doc("The anomaly's fingerprint: 16 hex digits of its four fingerprint labels.")
    ]
    count_1h: int
    count_24h: int
    count_7d: int
    count_30d: int
    first_seen: datetime
    last_seen: datetime
    auto_repair_count: Annotated[int, Doc("Repair attempts of the last 30 days.")]
    permanent_fix_applied: bool
    escalation_level: Annotated[
        str | None, Doc("REPEAT, ESCALATE or PERMANENT_FIX by the 24 h count; null below REPEAT.")
    ]
    human_approved_count: int = 0
    manual_resolved_count: int = 0
    cold_start_trust_count: int = 0
    total_resolution_count: int = 0
    auto_repair_disposition_count: int = 0
    timeout_ignored_count: int = 0
    escalated_to: Annotated[str | None, Doc("The level this occurrence newly crossed into.")] = None
    regressed: Annotated[bool, Doc("It came back after its permanent fix.")] = False
    newly_regressed: Annotated[bool, Doc("This occurrence is the first after the fix.")] = False
    duplicate: Annotated[bool, Doc("An occurrence id seen before: not counted again.")] = False
    degraded: Annotated[
        bool, Doc("The store could not be reached: the counts are zeros, not the truth.")
    ] = False
    signature: Annotated[
        dict[str, Any], Doc("The labels of this occurrence (reads: of the first one).")
    ] = field(default_factory=dict)
    last_resolved: Annotated[
        datetime | None, Doc("The latest resolution of one of its episodes (reads only).")
    ] = None
    spooled: Annotated[bool, Doc("Kept in the durable spool: counted when the store is back.")] = (
        False
    )
    permanent_fix: Annotated[
        PermanentFix | None, Doc("The permanent fix in force (90 days): what, when, who.")
    ] = None
    regressed_at: Annotated[
        datetime | None, Doc("The first occurrence after the fix in force (regressed stays true).")
    ] = None
    joined: Annotated[
        bool,
        Doc("This episode joined the incident in progress (another instance firing): not counted."),
    ] = False
    firing: Annotated[int, Doc("Its episodes open now (Alertmanager alerts firing).")] = 0
    instances: Annotated[int, Doc("Alert instances of its current (or last) incident.")] = 0
    flapping: Annotated[
        bool, Doc("It fires and resolves again and again (see flap_percent and docs/incidents.md).")
    ] = False
    flap_percent: Annotated[
        float, Doc("Weighted percent of the last 21 slots (5 min each) with a state change.")
    ] = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (ISO times): the reference's keys and ours."""
        out = _fields_of(self)
        out["signature"] = dict(self.signature)
        out["first_seen"] = self.first_seen.isoformat()
        out["last_seen"] = self.last_seen.isoformat()
        out["last_resolved"] = self.last_resolved.isoformat() if self.last_resolved else None
        out["permanent_fix"] = self.permanent_fix.to_dict() if self.permanent_fix else None
        out["regressed_at"] = self.regressed_at.isoformat() if self.regressed_at else None
        return out

    def count_in(self, window: str) -> int:
        """The count of one window by its name (``1h``, ``24h``, ``7d``, ``30d``)."""
        return int(getattr(self, f"count_{window}"))

    def row(self, window: str) -> dict[str, Any]:
        """A row of a ranking by ``window``: its fingerprint fields, ``to_dict()``, and the
        window and its count."""
        return {**fingerprint_fields(self.signature), **self.to_dict(), "window": window,
                "count": self.count_in(window)}  # fmt: skip


@dataclass(slots=True)
class AnomalyRow(AnomalyFrequency):
    """An anomaly in a ranking: its figures, its four fingerprint fields, and the window it
    is ranked by with its count there."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _DESCRIBED

    alert_name: str | int | float | bool | None = None
    service: str | int | float | bool | None = None
    namespace: str | int | float | bool | None = None
    error_type: str | int | float | bool | None = None
    window: Annotated[str, Doc("The window it is ranked by.")] = "24h"
    count: Annotated[int, Doc("Its count in that window.")] = 0

    @classmethod
    def of(cls, frequency: AnomalyFrequency, window: str) -> AnomalyRow:
        return cls(
            **_fields_of(frequency),
            **fingerprint_fields(frequency.signature),
            window=window,
            count=frequency.count_in(window),
        )


@dataclass(frozen=True, slots=True)
class ActionStats:
    """One repair action's attempts over the last 30 days, as their callers reported them;
    with verification on, also as judged by what happened next (``verified``, from the
    anomaly's kept history) and which of the two the policy goes by (``basis``)."""

    total: int
    success: int
    success_rate: float
    verified: Verified | None = None
    basis: str = REPORTED  # "verified" once enough attempts settled, else "reported"

    def judged(self) -> tuple[int, int]:
        """(attempts, successes) as the policy judges the action: by ``basis``."""
        if self.basis == VERIFIED and self.verified is not None:
            return self.verified.settled, self.verified.succeeded
        return self.total, self.success

    def to_dict(self) -> dict[str, Any]:
        """The reference's three figures, and the verified ones when there are any."""
        data: dict[str, Any] = {
            "total": self.total,
            "success": self.success,
            "success_rate": self.success_rate,
        }
        if self.verified is not None:
            data.update(self.verified.to_dict(), basis=self.basis)
        return data


@dataclass(frozen=True, slots=True)
class RepairAttempt:
    """One repair attempt, as the audit history keeps it."""

    action: str
    success: bool  # as its caller reported it
    timestamp: datetime
    verdict: str | None = None  # by what happened next: pending, succeeded, failed (None:
    # recorded without verification)
    verify_until: datetime | None = None  # the end of its verification window
    recurred_at: datetime | None = None  # the anomaly's first occurrence after it, if within

    def to_dict(self) -> dict[str, Any]:
        """The reference's entry (the time as a datetime), and the verdict when there is one."""
        data: dict[str, Any] = {
            "action": self.action,
            "success": self.success,
            "timestamp": self.timestamp,
        }
        if self.verdict is not None:
            data.update(
                verdict=self.verdict, verify_until=self.verify_until, recurred_at=self.recurred_at
            )
        return data


@dataclass(slots=True)
class AnomalyList:
    """Anomalies a query found, best first: ``total`` found (at most the query's cap), of
    which the first ``limit`` are here; ``truncated`` when more were there than the cap."""

    anomalies: list[AnomalyFrequency]
    total: int
    truncated: bool = False


@dataclass(slots=True)
class Lookup:
    """What a key or a name refers to: ``anomaly`` when it names one, else the ``matches``
    (none, or several to choose from), best first."""

    anomaly: AnomalyFrequency | None
    matches: list[AnomalyFrequency]
    truncated: bool = False


def empty_disposition_counts() -> dict[str, int]:
    """All five disposition types and the total, at zero."""
    counts = dict.fromkeys(DISPOSITION_TYPES, 0)
    counts["total"] = 0
    return counts


def _fields_of(instance: Any) -> dict[str, Any]:
    """A dataclass's fields by name, not copied (``asdict`` deep-copies every value: most of
    the time of a batch's answer went there)."""
    return {f.name: getattr(instance, f.name) for f in fields(instance)}
