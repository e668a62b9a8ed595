"""Alertmanager webhooks (payload version 4) turned into episodes.

Alertmanager re-sends every firing alert each repeat interval, and in HA mode each replica sends
it: counting deliveries would overcount. An alert's ``fingerprint`` hashes its label set, and its
``startsAt`` stays put while it fires and changes when it fires again after resolving, so the
pair names one firing episode: it is the occurrence id, and a re-notification counts once. The
fingerprint also names the alert instance, so that instances of one anomaly firing together
count as one incident (see anomaly_counter.episodes).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from ..model import RETENTION_SECONDS
from ..settings import AlertLabels
from ..validation import MAX_FUTURE, MAX_LABEL_NAME_CHARS, MAX_LABELS, MAX_SIGNATURE_BYTES
from .schemas import IsoTime

MAX_ALERTS = 10_000
_MAX_FIELD_CHARS = 256  # of the four fingerprint fields, so that they always fit


class AlertmanagerAlert(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: IsoTime
    endsAt: IsoTime | None = None
    generatorURL: str = ""
    fingerprint: str = ""


class AlertmanagerPayload(BaseModel):
    """The webhook body; fields Alertmanager adds in later releases are ignored."""

    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    alerts: list[AlertmanagerAlert] = Field(max_length=MAX_ALERTS)
    groupKey: str = ""
    truncatedAlerts: StrictInt = 0  # strict: JSON false is not 0
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""


@dataclass(frozen=True, slots=True)
class Episode:
    signature: dict[str, Any]
    at: datetime
    occurrence_id: str
    resolved_at: datetime | None
    fingerprint: str = ""


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # past either end of the calendar in UTC: too old, or clamped to now
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


def _fingerprint(alert: AlertmanagerAlert) -> str:
    if alert.fingerprint:
        return alert.fingerprint[:64]
    canonical = json.dumps(sorted(alert.labels.items()))  # an older sender without one
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def signature_of(labels: dict[str, str], mapping: AlertLabels) -> dict[str, Any]:
    """The four fingerprint fields from the mapped labels, then the other labels as far as the
    signature's bounds allow (an alert is never refused for having many labels)."""
    signature: dict[str, Any] = {}
    for name, sources in mapping.fields().items():
        value = next((labels[s] for s in sources if s in labels), "")
        signature[name] = value[:_MAX_FIELD_CHARS]
    size = len(json.dumps(signature))  # ASCII-escaped: a bound of the UTF-8 size
    for name in sorted(labels):
        if len(signature) >= MAX_LABELS:
            break
        value = labels[name]
        if name in signature or len(name) > MAX_LABEL_NAME_CHARS or not name.isprintable():
            continue
        grown = len(json.dumps(name)) + len(json.dumps(value)) + 2
        if size + grown <= MAX_SIGNATURE_BYTES:
            signature[name] = value
            size += grown
    return signature


def episodes(
    payload: AlertmanagerPayload, mapping: AlertLabels, now: datetime
) -> tuple[list[Episode], int]:
    """The occurrences a payload carries, and how many alerts were too old to count."""
    found: list[Episode] = []
    too_old = 0
    oldest = now - timedelta(seconds=RETENTION_SECONDS)
    for alert in payload.alerts:
        at = _utc(alert.startsAt)
        if at < oldest:
            too_old += 1
            continue
        at = min(at, now + MAX_FUTURE)  # a sender's clock ahead of ours
        resolved = None
        if alert.status == "resolved" and alert.endsAt is not None:
            resolved = max(at, min(_utc(alert.endsAt), now))
        fingerprint = _fingerprint(alert)
        occurrence_id = f"am:{fingerprint}:{int(_utc(alert.startsAt).timestamp() * 1000)}"
        signature = signature_of(alert.labels, mapping)
        found.append(Episode(signature, at, occurrence_id, resolved, fingerprint))
    return found, too_old
