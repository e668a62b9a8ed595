"""Fingerprints: which labels make two alerts the same anomaly.

The key is byte-for-byte the one the reference design gives, so that data and dashboards keyed
by it carry over: four fields, each with an alias, serialised by ``json.dumps(sort_keys=True)``
with its default separators and ASCII escaping, SHA-256, first 16 hex digits.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

# Field -> alias, in the reference's order of precedence (the field wins over its alias).
FINGERPRINT_FIELDS: dict[str, str | None] = {
    "alert_name": "alertname",
    "service": "job",
    "namespace": None,
    "error_type": "reason",
}


def fingerprint_fields(signature: Mapping[str, Any]) -> dict[str, Any]:
    """The four fields the key is made of, with aliases resolved and missing ones as ``""``."""
    fields: dict[str, Any] = {}
    for name, alias in FINGERPRINT_FIELDS.items():
        fallback = signature.get(alias, "") if alias else ""
        fields[name] = signature.get(name, fallback)
    return fields


def hash_signature(signature: Mapping[str, Any]) -> str:
    """The anomaly key of a signature: 16 hex digits, volatile labels ignored."""
    get = signature.get
    alert = get("alert_name", get("alertname", ""))
    service = get("service", get("job", ""))
    namespace = get("namespace", "")
    error = get("error_type", get("reason", ""))
    if (
        type(alert) is str
        and type(service) is str
        and type(namespace) is str
        and (type(error) is str)
    ):
        return _key_of_strings(alert, service, namespace, error)  # the usual case, cached
    return _digest(fingerprint_fields(signature))


@functools.lru_cache(maxsize=65_536)
def _key_of_strings(alert: str, service: str, namespace: str, error: str) -> str:
    return _digest(
        {"alert_name": alert, "service": service, "namespace": namespace, "error_type": error}
    )


_CANONICAL = json.JSONEncoder(sort_keys=True)  # the reference's json.dumps(sort_keys=True)


def _digest(fields: Mapping[str, Any]) -> str:
    canonical = _CANONICAL.encode(fields)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class SignalLike(Protocol):
    alert_name: str
    labels: Mapping[str, Any] | None


class IncidentLike(Protocol):
    signals: Sequence[SignalLike]
    affected_services: Sequence[str] | None


def derive_key_from_incident(incident: IncidentLike) -> str | None:
    """The anomaly key of an incident's first signal, or None when it has no signals."""
    if not incident.signals:
        return None
    signal = incident.signals[0]
    labels = signal.labels or {}
    services = incident.affected_services or []
    return hash_signature(
        {
            "alert_name": signal.alert_name,
            "service": services[0] if services else "",
            "namespace": labels.get("namespace", ""),
            "error_type": labels.get("reason", labels.get("error_type", "")),
        }
    )
