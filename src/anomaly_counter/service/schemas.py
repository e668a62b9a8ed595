"""Request and response bodies of the HTTP API (its OpenAPI schema comes from these)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from ..model import ActionStats, AnomalyFrequency, AnomalyRow, RepairAttempt, TimelineEntry
from ..policy import ActionRecommendation

Label = str | int | float | bool | None


def _text_time(value: object) -> object:
    if isinstance(value, str | datetime):
        return value
    raise ValueError("a time is an ISO 8601 string with a time zone, such as 2026-11-28T07:00:00Z")


IsoTime = Annotated[datetime, BeforeValidator(_text_time)]
"""A time from JSON: an ISO 8601 string (pydantic alone would also take a number as a Unix
time, which the schema does not promise)."""
Disposition = Literal[
    "auto_repair", "human_approved", "manual_resolved", "cold_start_trust", "timeout_ignored"
]
MAX_BATCH = 1_000  # with max_body_bytes: a longer batch is a 422, not a 413


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    detail: str = Field(description="What is wrong, in one sentence.")


class OccurrenceIn(_In):
    signature: dict[str, Label] = Field(
        description="The alert's labels; alertname (or alert_name), service (or job), namespace"
        " and reason (or error_type) make its fingerprint.",
        examples=[{"alertname": "OOMKilled", "service": "api", "namespace": "prod"}],
    )
    at: IsoTime | None = Field(None, description="When it happened (with a time zone); now")
    occurrence_id: str | None = Field(
        None, description="The same id for the same anomaly is counted once (7 days at least)"
    )


class BatchIn(_In):
    occurrences: list[OccurrenceIn] = Field(min_length=1, max_length=MAX_BATCH)


class BatchOut(BaseModel):
    results: list[AnomalyFrequency]


class AlertmanagerOut(BaseModel):
    received: int = Field(description="Alerts in the payload")
    counted: int = Field(description="New occurrences (firing episodes not seen before)")
    spooled: int = Field(
        0, description="Kept in the durable spool while the store is down (counted later)"
    )
    duplicates: int = Field(description="Re-notifications of episodes already counted")
    joined: int = Field(
        0,
        description="Episodes that joined an incident in progress (another instance of the"
        " anomaly firing): not counted as recurrences (setting episodes.count)",
    )
    resolved: int = Field(description="Episodes whose resolution was noted")
    too_old: int = Field(description="Alerts that started more than 30 days ago (not counted)")


class TopOut(BaseModel):
    window: str
    anomalies: list[AnomalyRow]
    total: int | None = Field(
        default=None, description="With q or level: how many matched (at most the cap)"
    )
    truncated: bool = Field(default=False, description="More matched than could be looked at")


class MatchesOut(BaseModel):
    detail: str
    matches: list[AnomalyRow] = Field(description="The anomalies the name matches, best first")

    @classmethod
    def of(cls, detail: str, matches: list[AnomalyFrequency]) -> MatchesOut:
        return cls(detail=detail, matches=[AnomalyRow.of(f, "24h") for f in matches])


class HistoryBucket(BaseModel):
    start: datetime
    count: int


class HistoryOut(BaseModel):
    anomaly_key: str
    window: str
    bucket_seconds: int
    buckets: list[HistoryBucket] = Field(description="Oldest first; the last holds now")


class TimelineOut(BaseModel):
    anomaly_key: str
    entries: list[TimelineEntry] = Field(
        description="Newest first (at most 200); each has the fields of its kind, the others"
        " are null (see anomaly_counter.model.TimelineEntry)"
    )


class EscalationDay(BaseModel):
    day: str = Field(description="UTC day, YYYY-MM-DD")
    REPEAT: int
    ESCALATE: int
    PERMANENT_FIX: int


class EscalationsOut(BaseModel):
    days: list[EscalationDay] = Field(description="Oldest first; the last is today (UTC)")


class RepairIn(_In):
    action: str = Field(examples=["restart_pod"])
    success: StrictBool  # "yes" or 1 is not a boolean
    at: IsoTime | None = None


class RepairsOut(BaseModel):
    actions: dict[str, ActionStats] = Field(description="Every attempt of the last 30 days")
    history: list[RepairAttempt] = Field(description="The last 100 attempts, newest first")


@dataclass(frozen=True, slots=True, kw_only=True)
class SkipOut(ActionStats):
    """An action's attempts of the last 30 days, and whether automation should stop trying
    it (``skip``: tried at least twice and succeeds less than ``min_success_rate``)."""

    action: str
    skip: bool
    min_success_rate: float


class RecommendIn(_In):
    candidates: list[str] | None = Field(
        None, max_length=100, description="Actions to rank (default: tried and configured)"
    )
    min_success_rate: Annotated[float, Field(strict=True, ge=0, le=1)] = 0.2


class RecommendationsOut(BaseModel):
    recommendations: list[ActionRecommendation]


class DispositionIn(_In):
    type: Disposition
    at: IsoTime | None = None


class DispositionCounts(BaseModel):
    auto_repair: int
    human_approved: int
    manual_resolved: int
    cold_start_trust: int
    timeout_ignored: int
    total: int


class DispositionRow(DispositionCounts):
    anomaly_key: str
    alert_name: str | int | float | bool | None


class DispositionSummaryOut(BaseModel):
    summary: DispositionCounts
    by_anomaly: list[DispositionRow]


class FixIn(_In):
    description: str = Field(examples=["memory limit raised and leak fixed in v2.3.1"])
    at: IsoTime | None = None


class Done(BaseModel):
    ok: Literal[True] = True
    anomaly_key: str | None = Field(
        default=None, description="The anomaly written (a name in the path resolves to it)"
    )


class UndoneOut(Done):
    undone: Literal[True] = True


class OutboxOut(BaseModel):
    """The project's notices outbox: what waits to be delivered, and what was lost or died."""

    depth: int = Field(description="Notices waiting for at least one channel")
    oldest: datetime | None = Field(description="When the oldest waiting notice was written")
    overflowed: int = Field(description="Notices never written because the outbox was full")
    dead: int = Field(description="Notices in the dead-letter list")
    dead_overflowed: int = Field(description="Dead letters not kept because the list was full")


class DeadLetterOut(BaseModel):
    notice_id: str = Field(description="The notice's id (its Idempotency-Key)")
    channel: str = Field(description="The channel that did not take it (kind:digest)")
    anomaly_key: str
    kind: str = Field(description="escalation or regression")
    level: str | None = Field(description="The level crossed into (escalations)")
    at: datetime = Field(description="The occurrence that caused it")
    error: str = Field(description="The last failure")
    attempts: int
    first_failed: datetime
    dead: datetime = Field(description="When it was given up on")


class DeadLettersOut(BaseModel):
    outbox: OutboxOut
    letters: list[DeadLetterOut]


class RetryIn(_In):
    notice_ids: list[Annotated[str, Field(max_length=200)]] | None = Field(
        None, max_length=1_000, description="The dead letters to send again (default: all)"
    )  # (bounded to fit the body limit: a longer list is a 422, never a 413)


class RetriedOut(BaseModel):
    retried: int = Field(description="Dead letters put back in the outbox")
    left: list[str] = Field(
        description="Notices left in the list: their channel is not configured any more"
    )
