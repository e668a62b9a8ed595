"""What an import checks of each line of an export (anomaly_counter.transfer) beyond its
types: the same rules the library applies to its own writes, so that an anomaly written from
a file is one every read, write and delete can handle afterwards.

Each check raises ValueError saying what is wrong; the caller names the line.
"""

from __future__ import annotations

import json
import re
from typing import Any

from . import timeline, validation
from .episodes import FLAP_MASK, IncidentState
from .errors import InvalidInputError
from .model import EscalationLevel
from .signature import hash_signature
from .stores.base import REPAIR_HISTORY_LENGTH, WritePolicy
from .stores.image import AnomalyImage
from .windows import RING_SLOTS

MAX_MS = 2**53
"""Counts stay below 2**53: exact as doubles (Redis's Lua) and within SQLite's 64-bit
integers."""
MAX_TIME_MS = 221_845_392_000_000
"""Times (ms since the epoch) stay before the year 9000: every read turns them into datetimes
(which end with the year 9999), some after adding days or years to them."""
MAX_DAY = MAX_TIME_MS // 86_400_000
MAX_NAME_CHARS = 200
"""A day counter's name (``d:<disposition>``, ``s:<action>``, ``e:<level>``), a write mark's
field and value: an action name (128 characters) and its prefix fit."""
MAX_LEVEL = max(EscalationLevel)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_HEX = re.compile(r"[0-9a-f]{1,64}")
_TOKEN_ID = re.compile(r"[0-9a-f]{16}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def time_ms(value: int, what: str) -> int:
    if not 0 <= value < MAX_TIME_MS:
        raise ValueError(f"{what} {value} is not a time (ms since 1970, before the year 9000)")
    return value


def count(value: int, what: str) -> int:
    if not 0 <= value < MAX_MS:
        raise ValueError(f"{what} {value} is not a count (0 <= n < 2**53)")
    return value


def day(value: int) -> int:
    if not 0 <= value <= MAX_DAY:
        raise ValueError(f"day {value} is not a day number (0 to {MAX_DAY})")
    return value


def text(value: str, what: str, max_chars: int = MAX_NAME_CHARS) -> str:
    """Text as the library's writes take it: 1 to ``max_chars`` characters, no control
    characters (nor half of a UTF-16 pair)."""
    if not 0 < len(value) <= max_chars or _CONTROL.search(value):
        raise ValueError(
            f"{what} {value[:80]!r} is empty, longer than {max_chars} characters"
            " or holds control characters"
        )
    return value


def check_image(image: AnomalyImage) -> None:
    """ValueError for an image the library could not have written."""
    try:
        validation.anomaly_key(image.anomaly_key)
    except InvalidInputError as exc:
        raise ValueError(str(exc)) from None
    if image.signature_json is not None:
        _signature(image.signature_json, image.anomaly_key)
    if (
        image.first_seen_ms is not None
        and image.last_seen_ms is not None
        and image.first_seen_ms > image.last_seen_ms
    ):
        raise ValueError("first_seen is later than last_seen")
    for what, items, most in (
        ("timeline entries", image.timeline, timeline.MAX_ENTRIES),
        ("repairs", image.repairs, REPAIR_HISTORY_LENGTH),
    ):
        if len(items) > most:
            raise ValueError(f"{len(items)} {what}: the library keeps at most {most}")
    for what, value in (
        ("first_seen", image.first_seen_ms),
        ("last_seen", image.last_seen_ms),
        ("fix.at", image.fix_at_ms),
        ("regressed_at", image.regressed_ms),
        ("resolved_at", image.resolved_ms),
        ("verify_until", image.verify_until_ms),
        ("flap_leave", image.flap_leave_ms),
    ):
        if value is not None:
            time_ms(value, what)
    if not 0 <= image.level <= MAX_LEVEL:
        raise ValueError(f"level {image.level} is not an escalation level (0 to {MAX_LEVEL})")
    for fix_text, what in ((image.fix_description, "fix description"), (image.fix_by, "fix by")):
        if fix_text:
            text(fix_text, what, validation.MAX_DESCRIPTION_CHARS)
    if image.state is not None:
        _state(image)
    if image.incident is not None:
        _incident(image.incident)
    if image.flap is not None:
        _flap(image.flap)
    for fingerprint, (start, seen) in image.open_episodes.items():
        try:
            validation.episode(fingerprint)
        except InvalidInputError as exc:
            raise ValueError(str(exc)) from None
        time_ms(start, "an open episode's start")
        time_ms(seen, "an open episode's last sight")
    for number, label, n in image.days:
        day(number)
        text(label, "a day counter's name")
        count(n, "a day counter")
    for attempt in image.repairs:
        try:
            validation.action(attempt["action"])
        except InvalidInputError as exc:
            raise ValueError(str(exc)) from None
        time_ms(attempt["at_ms"], "a repair's at_ms")
        for field in ("until_ms", "back_ms"):
            if attempt[field] is not None:
                time_ms(attempt[field], f"a repair's {field}")
    for entry in image.timeline:
        _timeline_entry(entry)
    for digest, seen in image.ids.items():
        if not _HEX.fullmatch(digest):
            raise ValueError(f"occurrence id digest {digest!r} is not hex digits")
        time_ms(seen, "an occurrence id's time")
    for field, (held, touched) in image.marks.items():
        text(field, "a write mark's field")
        if held:  # (a mark may hold nothing yet)
            text(held, "a write mark")
        time_ms(touched, "a write mark's time")
    for score_name, score in image.scores.items():
        count(score, f"score {score_name}")


def _signature(text: str, anomaly_key: str) -> None:
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("the signature is not JSON") from None
    try:
        validation.signature(data)
    except InvalidInputError as exc:
        raise ValueError(str(exc)) from None
    # (an anomaly imported by its key alone, labels unknown, has none: {})
    if data and hash_signature(data) != anomaly_key:
        raise ValueError(
            f"anomaly key {anomaly_key} is not its signature's ({hash_signature(data)}): the"
            " next occurrence of that alert would make another anomaly"
        )


def within_policy(image: AnomalyImage, policy: WritePolicy) -> None:
    """ValueError for an image holding more than the target project keeps (its settings)."""
    state = image.state
    for what, n, most, setting in (
        ("occurrence times", len(state.tail) if state else 0, policy.tail_capacity,
         "twice its highest threshold, at least 128"),
        ("open episodes", len(image.open_episodes), policy.episodes.max_open,
         "episodes.max_open"),
        ("remembered ids", len(image.ids), 2 * policy.dedup_max_ids,
         "dedup_max_ids, for occurrences and for writes"),
    ):  # fmt: skip
        if n > most:
            raise ValueError(
                f"anomaly {image.anomaly_key} holds {n} {what}; this project keeps at most"
                f" {most} ({setting})"
            )


def _state(image: AnomalyImage) -> None:
    state = image.state
    assert state is not None
    for t in state.tail:
        time_ms(t, "a time of state.tail")
    # (a state is written with its first occurrence, and its tail keeps the newest times)
    if not state.tail or state.newest < state.tail[-1]:
        raise ValueError("a state's tail is empty, or later than its newest time")
    for what, value in (("state.evicted_max", state.evicted_max), ("state.newest", state.newest)):
        if value != -(2**53):  # (NEVER: none)
            time_ms(value, what)
    for ring in state.rings:
        if len(ring) > RING_SLOTS:
            raise ValueError(f"a ring of {len(ring)} slots: the library keeps {RING_SLOTS}")
        for slot, n in ring.items():
            count(slot, "a ring slot")
            count(n, "a ring count")


def _ints(text: str, parts: int, what: str) -> list[int]:
    pieces = text.split(",")
    if len(pieces) != parts or not all(re.fullmatch(r"-?[0-9]{1,16}", p) for p in pieces):
        raise ValueError(f"{what} {text[:80]!r} is not {parts} integers")
    return [int(p) for p in pieces]


def _incident(text: str) -> None:
    start, end, instances, unlisted = _ints(text, 4, "incident")
    for what, value in (("incident start", start), ("incident end", end)):
        if value != -1:
            time_ms(value, what)
    count(instances, "incident instances")
    count(unlisted, "incident unlisted")
    IncidentState.decode(text, {})  # (the reader's own decoder takes it)


def _flap(text: str) -> None:
    slot_ms, newest, mask, flapping = _ints(text, 4, "flap")
    count(slot_ms, "flap slot width")
    if newest != -1:
        count(newest, "flap newest slot")
    if not 0 <= mask <= FLAP_MASK or flapping not in (0, 1):
        raise ValueError(f"flap {text!r}: its mask or flag is out of range")


def _timeline_entry(entry: str) -> None:
    if len(entry.encode("utf-8", "surrogatepass")) > timeline.MAX_BYTES:
        raise ValueError("a timeline entry is longer than a timeline holds")
    code, _, rest = entry.partition(timeline.SEP)
    at = rest.partition(timeline.SEP)[0]
    if code not in timeline.FIELDS or not re.fullmatch(r"[0-9]{1,16}", at):
        raise ValueError(f"timeline entry {entry[:80]!r} is not one this version writes")
    time_ms(int(at), "a timeline entry's time")
    if re.search("[\x00-\x1e\x7f]", entry) or timeline.decode(entry) is None:
        raise ValueError(f"timeline entry {entry[:80]!r} is not one this version writes")


def check_token(token: dict[str, Any]) -> None:
    """ValueError for a token line the store could not have written."""
    if not _TOKEN_ID.fullmatch(token["token_id"]):
        raise ValueError(f"token id {token['token_id']!r} is not 16 hex digits")
    if not _DIGEST.fullmatch(token["digest"]):
        raise ValueError("a token's digest is not 64 hex digits (SHA-256)")
    time_ms(token["created_ms"], "a token's created_ms")
    if token["label"]:
        text(token["label"], "a token's label")
    if token["read_only"] and token["admin"]:
        raise ValueError("a token is read-only or admin, not both")
