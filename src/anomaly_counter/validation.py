"""Input checks shared by the library, the CLI and (later) the HTTP API.

Every check raises a named error that says what is wrong; nothing is stored before all of a
call's input has passed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import InvalidInputError, OccurrenceTimeError, UnknownDispositionError
from .model import DISPOSITION_TYPES, RETENTION_SECONDS, WINDOWS
from .signature import FINGERPRINT_FIELDS

PROJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_KEY_CHARS = 128
MAX_LABELS = 32
MAX_LABEL_NAME_CHARS = 128
MAX_LABEL_VALUE_CHARS = 1024
MAX_SIGNATURE_BYTES = 4096
MAX_FUTURE = timedelta(minutes=5)
MAX_DESCRIPTION_CHARS = 2000
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair: no UTF-8 for it
MAX_LABEL_INT = 2**64  # a label's integer: within 64 bits, as every consumer of JSON reads it


def project_id(value: object) -> str:
    """A project id: 1-64 of letters, digits, ``_ . -``, starting with a letter or digit."""
    if not isinstance(value, str) or not PROJECT_ID.fullmatch(value):
        raise InvalidInputError(
            f"invalid project id {value!r}: use 1-64 letters, digits, '_', '.' or '-',"
            " starting with a letter or digit"
        )
    return value


def _text(value: object, what: str, max_chars: int) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > max_chars:
        raise InvalidInputError(f"{what} is longer than {max_chars} characters")
    if _CONTROL.search(value):
        raise InvalidInputError(f"{what} contains control characters")
    return value


def anomaly_key(value: object) -> str:
    """An anomaly key: any text of 1-128 characters without control characters."""
    return _text(value, "anomaly key", MAX_KEY_CHARS)


def action(value: object) -> str:
    """A repair action name such as ``restart_pod``."""
    return _text(value, "repair action", MAX_KEY_CHARS)


def occurrence_id(value: object) -> str | None:
    """An occurrence id (None: the occurrence is not deduplicated)."""
    if value is None:
        return None
    return _text(value, "occurrence id", 512)


MAX_EPISODE_CHARS = 64


def episode(value: object) -> str:
    """An episode's fingerprint (Alertmanager's, 16 hex digits; "" for none)."""
    if value is None or value == "":
        return ""
    return _text(value, "episode fingerprint", MAX_EPISODE_CHARS)


def description(value: object) -> str:
    return _text(value, "fix description", MAX_DESCRIPTION_CHARS)


MAX_REPORTER_CHARS = 64


def reporter(value: object) -> str:
    """Who reported a write (``by``): a short name, or None (``""``: nobody named)."""
    if value is None:
        return ""
    return _text(value, "by", MAX_REPORTER_CHARS)


MAX_QUERY_CHARS = 512


def query(value: object) -> str:
    """A search query: words to find in label values (control characters count as spaces)."""
    if not isinstance(value, str):
        raise InvalidInputError(f"search query must be a string, got {type(value).__name__}")
    if len(value) > MAX_QUERY_CHARS:
        raise InvalidInputError(f"search query is longer than {MAX_QUERY_CHARS} characters")
    cleaned = _CONTROL.sub(" ", value).strip()
    if not cleaned:
        raise InvalidInputError("search query is empty")
    return cleaned


def disposition(value: object) -> str:
    if value not in DISPOSITION_TYPES:
        raise UnknownDispositionError(
            f"unknown disposition type {value!r}: expected one of {', '.join(DISPOSITION_TYPES)}"
        )
    return str(value)


_ENCODER = json.JSONEncoder(ensure_ascii=False)  # built once: json.dumps with options is not


def signature(value: object) -> dict[str, Any]:
    """A signature: a mapping of label names to JSON scalars, bounded in count and size."""
    if not isinstance(value, Mapping):
        kind = type(value).__name__
        raise InvalidInputError(f"signature must be a mapping of labels, got {kind}")
    if len(value) > MAX_LABELS:
        raise InvalidInputError(f"signature has {len(value)} labels, at most {MAX_LABELS} allowed")
    clean = dict(value)
    bound = 2  # an upper bound of the JSON size: one pass, no encoding on the hot path
    for name, label in clean.items():
        if type(name) is not str or not 0 < len(name) <= MAX_LABEL_NAME_CHARS:
            _text(name, "label name", MAX_LABEL_NAME_CHARS)  # raises with the precise reason
        label_type = type(label)
        if label_type is str:
            if len(label) > MAX_LABEL_VALUE_CHARS:
                raise InvalidInputError(
                    f"label {name!r} is longer than {MAX_LABEL_VALUE_CHARS} characters"
                )
            if not label.isascii() and _SURROGATE.search(label):
                raise InvalidInputError(f"label {name!r} holds a lone surrogate (not UTF-8)")
            bound += 6 * (len(name) + len(label)) + 8  # \u escapes, quotes, separators
        elif label_type is bool or label is None:
            bound += 6 * len(name) + 8
        elif isinstance(label, int):
            if not -MAX_LABEL_INT < label < MAX_LABEL_INT:
                raise InvalidInputError(f"label {name!r} is an integer beyond 64 bits")
            bound += 6 * len(name) + 28
        elif isinstance(label, float):
            if not math.isfinite(label):
                raise InvalidInputError(f"label {name!r} is {label!r}: not a JSON number")
            bound += 6 * len(name) + 32
        else:
            raise InvalidInputError(f"label {name!r} must be a string or a number")
    if _CONTROL.search("".join(clean)):
        bad = next(name for name in clean if _CONTROL.search(name))
        raise InvalidInputError(f"label name {bad!r} contains control characters")
    if bound > MAX_SIGNATURE_BYTES and len(signature_json(clean).encode()) > MAX_SIGNATURE_BYTES:
        raise InvalidInputError(f"signature is larger than {MAX_SIGNATURE_BYTES} bytes as JSON")
    if all(clean.get(name) in (None, "") for name in _NAMING_LABELS):
        raise InvalidInputError(
            "signature names no anomaly: it has none of the labels an anomaly is named by"
            " (alertname or alert_name, service or job, namespace, reason or error_type)"
        )
    return clean


_NAMING_LABELS = tuple(
    name for field, alias in FINGERPRINT_FIELDS.items() for name in (field, alias) if name
)
"""The labels the four fingerprint fields come from, with their aliases: a signature with none
of them would name one blank anomaly for everything."""


def signature_json(clean: Mapping[str, Any]) -> str:
    """The JSON text a signature is stored as."""
    return _ENCODER.encode(clean)


def occurrence_time(at: datetime | None, now: datetime, what: str = "occurrence") -> datetime:
    """An occurrence's time (or another event's: ``what``) in UTC: aware, within the
    retention, not far in the future."""
    if at is None:
        return now
    moment = aware(at)
    if moment < now - timedelta(seconds=RETENTION_SECONDS):
        raise OccurrenceTimeError(f"{what} time {moment.isoformat()} is older than 30 days")
    if moment > now + MAX_FUTURE:
        raise OccurrenceTimeError(
            f"{what} time {moment.isoformat()} is more than 5 minutes in the future"
        )
    return moment


def aware(at: object) -> datetime:
    """A timezone-aware datetime converted to UTC; a naive one is refused."""
    if not isinstance(at, datetime):
        raise OccurrenceTimeError(f"time must be a datetime, got {type(at).__name__}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise OccurrenceTimeError(
            f"time {at.isoformat()} is naive: pass a timezone-aware datetime (UTC inside)"
        )
    try:
        return at.astimezone(UTC)
    except OverflowError:  # year 1 east of UTC, or year 9999 west of it
        raise OccurrenceTimeError(f"time {at.isoformat()} is out of range in UTC") from None


def window(value: object) -> str:
    if value not in WINDOWS:
        raise InvalidInputError(f"unknown window {value!r}: expected one of {', '.join(WINDOWS)}")
    return str(value)


def limit(value: object, maximum: int = 10_000) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInputError(f"limit must be an integer from 1 to {maximum}, got {value!r}")
    return value


def rate(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidInputError(f"min_success_rate must be between 0 and 1, got {value!r}")
    return float(value)
