"""How an anomaly's timeline is kept: short text entries, bounded in number and in bytes.

Every store keeps the same entries, written in the same atomic step as the event they tell
(the occurrence that crossed a level, the repair, the fix), so a story never has an event
without its entry or an entry without its event. An entry is one line of text::

    <code> SEP <at_ms> [SEP <field> ...]

with ``SEP`` the ASCII unit separator, which no field can hold (actions, descriptions and
``by`` are refused with control characters; the rest are ours). The Redis scripts build the
entries of an occurrence themselves (first seen, escalated, regressed) from the codes handed to
them here; every other entry is built by :func:`encode` and passed in whole.

Entries are kept in two bounded parts, so that routine ones (a repair every few minutes, a
resolution per episode) never push out the turning points of the story: *milestones* (first
seen, escalations, regressions, fixes and their undoing) and the rest. Each part keeps its
newest entries, at most its number of entries and of bytes of entry text (at least the newest
one): together at most ``MAX_ENTRIES`` entries and ``MAX_BYTES`` bytes, whatever is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from .model import EscalationLevel, TimelineEntry

SEP = "\x1f"
MAX_ENTRIES = 200
MAX_BYTES = 7_168
"""Entry text kept per anomaly: 150-200 typical entries (20-50 bytes each); long texts make room
for themselves by dropping the oldest entries of their part. With the counting state of the
busiest anomaly, all of one anomaly's keys stay under 16 KB in Redis (bench/RESULTS.md)."""
MILESTONE_ENTRIES, MILESTONE_BYTES = 50, 2_560
ROUTINE_ENTRIES, ROUTINE_BYTES = MAX_ENTRIES - MILESTONE_ENTRIES, MAX_BYTES - MILESTONE_BYTES

FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    # code: (kind, the fields after the time, in order)
    "f": ("first_seen", ()),
    "e": ("escalated", ("level", "count_24h")),
    "g": ("regressed", ()),
    "r": ("repair", ("action", "success", "by")),
    "d": ("disposition", ("disposition", "by")),
    "x": ("fix", ("description", "by")),
    "u": ("fix_undone", ("by",)),
    "v": ("resolved", ("by",)),
    "n": ("notice", ("channel", "notice", "outcome")),
    "p": ("flapping", ("started", "percent")),
}
CODES: dict[str, str] = {kind: code for code, (kind, _) in FIELDS.items()}
"""The code of each kind; the Redis scripts get these as constants (see ``lua_constants``)."""
MILESTONES = frozenset(("first_seen", "escalated", "regressed", "fix", "fix_undone"))


def is_milestone(entry: str) -> bool:
    """Whether an encoded entry is a milestone (kept in its own part)."""
    return FIELDS.get(entry.partition(SEP)[0], ("", ()))[0] in MILESTONES


MAX_TEXT_CHARS = 240
"""A fix's text as the timeline keeps it (the fix in force keeps all of it, in the anomaly's
figures): long texts would crowd the milestones out."""


def encode(kind: str, at_ms: int, *fields: str | int | bool | None) -> str:
    """One entry of ``kind`` at ``at_ms``, its fields in the order ``FIELDS`` gives."""
    code = CODES[kind]
    names = FIELDS[code][1]
    if len(fields) != len(names):
        raise ValueError(f"a {kind} entry has the fields {names}, got {fields!r}")
    parts = [code, str(int(at_ms))]
    for value in fields:
        if isinstance(value, bool):
            parts.append("1" if value else "0")
        elif isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            parts.append(value[: MAX_TEXT_CHARS - 1] + "…")
        else:
            parts.append("" if value is None else str(value))
    return SEP.join(parts)


def decode(text: str | bytes) -> TimelineEntry | None:
    """The entry a line tells; None for one this version does not know (written by a newer
    version, or damaged), so that a reader shows the rest."""
    line = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    code, _, rest = line.partition(SEP)
    if code not in FIELDS:
        return None
    kind, names = FIELDS[code]
    parts = rest.split(SEP)
    try:
        at = datetime.fromtimestamp(int(parts[0]) / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return None
    values: dict[str, object] = {}
    for name, raw in zip(names, parts[1:], strict=False):
        if raw == "":
            continue
        if name == "level":
            values[name] = _level(raw)
        elif name == "count_24h":
            values[name] = int(raw) if raw.isdigit() else None
        elif name in ("success", "started"):
            values[name] = raw == "1"
        elif name == "percent":
            try:
                values[name] = float(raw)
            except ValueError:
                continue
        else:
            values[name] = raw
    return TimelineEntry(kind, at, **values)  # type: ignore[arg-type]


def _level(raw: str) -> str | None:
    try:
        return EscalationLevel(int(raw)).label
    except ValueError:
        return raw  # a name already


def decode_all(lines: Sequence[str | bytes]) -> list[TimelineEntry]:
    """The entries of a timeline as stored (newest first), newest first by time; entries of
    the same time keep the order they were written in."""
    entries = [entry for entry in (decode(line) for line in lines) if entry is not None]
    # stored newest first: a stable sort on time keeps the later-written first among equals
    return sorted(entries, key=lambda entry: entry.at, reverse=True)


def kept(sizes_newest_first: Sequence[int], milestones: bool) -> int:
    """How many of the newest entries of a part (their sizes in bytes, newest first) a timeline
    keeps: at most the part's entries and bytes, but always the newest one."""
    entries, budget = (
        (MILESTONE_ENTRIES, MILESTONE_BYTES) if milestones else (ROUTINE_ENTRIES, ROUTINE_BYTES)
    )
    total = 0
    for count, size in enumerate(sizes_newest_first[:entries]):
        total += size
        if total > budget and count > 0:
            return count
    return min(len(sizes_newest_first), entries)


def describe(entry: TimelineEntry) -> str:
    """One line that tells an entry to a person (who reported it is said apart: ``by``)."""
    if entry.kind == "first_seen":
        return "first seen"
    if entry.kind == "escalated":
        return f"became {entry.level} ({entry.count_24h} in 24 h)"
    if entry.kind == "regressed":
        return "came back after its permanent fix: regressed"
    if entry.kind == "repair":
        return f"repair {entry.action} {'worked' if entry.success else 'failed'}"
    if entry.kind == "disposition":
        return f"disposed of: {(entry.disposition or '').replace('_', ' ')}"
    if entry.kind == "fix":
        return f"permanent fix: {entry.description}"
    if entry.kind == "fix_undone":
        return "permanent fix undone"
    if entry.kind == "resolved":
        return "an episode resolved"
    if entry.kind == "flapping":
        percent = f" ({entry.percent:g} % of changes)" if entry.percent is not None else ""
        return f"{'started' if entry.started else 'stopped'} flapping{percent}"
    if entry.kind == "notice":
        verb = "sent to" if entry.outcome == "sent" else "could not be sent to"
        return f"{entry.notice} notice {verb} {entry.channel}"
    return entry.kind


def reporter(by: str | None, token_labels: Mapping[str, str]) -> str:
    """Who reported an entry, as a person reads it: a token by its label (and id), else as
    written (``cli:<user>``, what a library caller passed); "" for nobody named."""
    if not by:
        return ""
    if by in token_labels:
        label = token_labels[by]
        return f"token {label} ({by})" if label else f"token {by}"
    return by
