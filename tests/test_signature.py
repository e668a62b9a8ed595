"""Fingerprints: the very keys the reference design gives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from anomaly_counter import AnomalyCounter, derive_key_from_incident, hash_signature

# Keys computed with the reference design's formula for these inputs.
GOLDEN = [
    (
        {"alert_name": "PodCrashLoopBackOff", "service": "awoooi-api",
         "namespace": "awoooi-prod", "error_type": "OOMKilled"},
        "b119b2edaa9fb08c",
    ),
    (
        {"alertname": "PodCrashLoopBackOff", "job": "awoooi-api", "namespace": "awoooi-prod",
         "reason": "OOMKilled", "pod": "awoooi-api-7d9f-x2x", "startsAt": "2026-03-29T01:02:03Z"},
        "b119b2edaa9fb08c",
    ),
    ({}, "c0a178b83e27c095"),
    ({"alertname": "Disk 滿了", "service": "db"}, "0c9f2f4a92755279"),
]  # fmt: skip


@pytest.mark.parametrize(("signature", "key"), GOLDEN)
def test_keys_match_the_reference(signature: dict[str, Any], key: str) -> None:
    assert hash_signature(signature) == key
    assert AnomalyCounter.hash_signature(signature) == key


def test_field_wins_over_its_alias() -> None:
    assert hash_signature({"alert_name": "A", "alertname": "B"}) == hash_signature(
        {"alert_name": "A"}
    )
    assert hash_signature({"service": "s", "job": "j"}) != hash_signature({"job": "j"})


@dataclass
class Signal:
    alert_name: str
    labels: dict[str, Any] | None = None


@dataclass
class Incident:
    signals: list[Signal] = field(default_factory=list)
    affected_services: list[str] | None = None


def test_incident_key_uses_first_signal_and_service() -> None:
    incident = Incident(
        [Signal("PodCrashLoopBackOff", {"namespace": "awoooi-prod", "reason": "OOMKilled"}),
         Signal("Other")],
        ["awoooi-api", "db"],
    )  # fmt: skip
    assert derive_key_from_incident(incident) == "b119b2edaa9fb08c"
    assert AnomalyCounter.derive_key_from_incident(incident) == "b119b2edaa9fb08c"
    fallback = Incident([Signal("PodCrashLoopBackOff", {"error_type": "OOMKilled",
                                                        "namespace": "awoooi-prod"})],
                        ["awoooi-api"])  # fmt: skip
    assert derive_key_from_incident(fallback) == "b119b2edaa9fb08c"
    assert derive_key_from_incident(Incident()) is None
    bare = Incident([Signal("X", None)], None)
    assert derive_key_from_incident(bare) == hash_signature({"alert_name": "X"})
