"""Moving a project between stores (SQLite, Redis, Redis Cluster) as JSON lines.

An export is one JSON object per line:

1. a header: ``{"format": "anomaly-counter-export", "version": 1, "project": ...,
   "exported_at": ..., "tokens": ...}``;
2. one ``{"type": "anomaly", ...}`` line per anomaly, with everything the store keeps of it
   (``stores.image.AnomalyImage``);
3. one ``{"type": "summary", "days": {...}}`` line: the project's own day counters
   (dispositions and escalation crossings by day);
4. with tokens, one ``{"type": "token", ...}`` line per API token, as its digest (never the
   token itself);
5. an end: ``{"type": "end", "anomalies": n, "tokens": n}``, so that a cut file is told from a
   whole one.

The notices waiting in the outbox, and the dead letters, are not exported: a notice belongs to
the store that delivers it.

An import checks the whole file before it writes anything, then writes each anomaly in one
atomic store call that REPLACES what the target held of it: importing a file twice leaves the
same state. Every read answers the same on the target as it did on the source.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from .counter import AnomalyCounter
from .errors import AnomalyCounterError, InvalidInputError
from .stores.image import AnomalyImage
from .tokens import TokenRecord
from .validation import project_id

FORMAT = "anomaly-counter-export"
VERSION = 1
_BATCH = 100
"""Anomalies written per store call (one round trip, or one transaction, for them all)."""
_TOKEN_FIELDS = ("token_id", "digest", "created_ms", "label", "read_only", "admin")
_TOKEN_FIELDS_SINCE = {"admin": False}  # fields later than version 1's first files: defaults


@dataclass(frozen=True, slots=True)
class Moved:
    """What an export wrote, or an import read and wrote."""

    project: str
    anomalies: int
    tokens: int
    summary_days: int


def _line(data: dict[str, Any]) -> str:
    # (ASCII: the file reads the same whatever the locale of the shell that pipes it)
    return json.dumps(data, separators=(",", ":")) + "\n"


async def export_project(
    counter: AnomalyCounter, out: IO[str], *, tokens: bool = False, now: datetime | None = None
) -> Moved:
    """Write the counter's project to ``out`` as JSON lines (with its API tokens' digests
    when ``tokens``)."""
    store, project = counter.store, counter.project_id
    moment = now or datetime.now(UTC)
    out.write(
        _line(
            {
                "format": FORMAT,
                "version": VERSION,
                "project": project,
                "exported_at": moment.isoformat(),
                "tokens": tokens,
            }
        )
    )
    anomalies = 0
    async for image in store.export_anomalies(project):
        out.write(_line({"type": "anomaly", **image.fields()}))
        anomalies += 1
    # every day the store keeps (0: from the epoch on), expired ones too: the target prunes
    # them as the source would have
    days = await store.summary_days(project, 0)
    out.write(
        _line({"type": "summary", "days": {str(d): names for d, names in sorted(days.items())}})
    )
    records = await store.list_tokens(project) if tokens else []
    for record in records:
        out.write(_line({"type": "token", **{f: getattr(record, f) for f in _TOKEN_FIELDS}}))
    out.write(_line({"type": "end", "anomalies": anomalies, "tokens": len(records)}))
    return Moved(project, anomalies, len(records), len(days))


@dataclass(slots=True)
class _Parsed:
    """One line of an export, read and checked."""

    kind: str
    image: AnomalyImage | None = None
    days: dict[int, dict[str, int]] | None = None
    token: dict[str, Any] | None = None
    counted: tuple[int, int] = (0, 0)  # the end line's: anomalies, tokens


def _parse(number: int, text: str, name: str) -> _Parsed:
    """The line's content, or InvalidInputError naming the file and the line."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        kind = data.get("type")
        if kind == "anomaly":
            return _Parsed(kind, image=AnomalyImage.from_fields(data))
        if kind == "summary":
            days = {
                int(day): {str(k): _count(n) for k, n in names.items()}
                for day, names in data["days"].items()
            }
            return _Parsed(kind, days=days)
        if kind == "token":
            token = {f: data.get(f, _TOKEN_FIELDS_SINCE[f]) if f in _TOKEN_FIELDS_SINCE else data[f]
                     for f in _TOKEN_FIELDS}  # fmt: skip
            if not all(isinstance(token[f], str) for f in ("token_id", "digest", "label")):
                raise ValueError("a token's id, digest and label are strings")
            if not isinstance(token["created_ms"], int) or not all(
                isinstance(token[f], bool) for f in ("read_only", "admin")
            ):
                raise ValueError(
                    "a token's created_ms is an integer, read_only and admin true or false"
                )
            return _Parsed(kind, token=token)
        if kind == "end":
            return _Parsed(kind, counted=(_count(data["anomalies"]), _count(data["tokens"])))
        raise ValueError(f"unknown line type {kind!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise InvalidInputError(f"{name}: line {number}: not an export line ({detail})") from None


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


def _header(text: str, name: str) -> str:
    """The project a header line names, or InvalidInputError."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InvalidInputError(f"{name}: line 1: not an anomaly-counter export")
    if data.get("version") != VERSION:
        raise InvalidInputError(
            f"{name}: line 1: export version {data.get('version')!r}; this version reads"
            f" version {VERSION}"
        )
    try:
        return project_id(data.get("project"))
    except InvalidInputError as exc:
        raise InvalidInputError(f"{name}: line 1: {exc}") from None


def _lines(source: IO[str], name: str) -> Iterator[tuple[int, _Parsed]]:
    """The checked lines after the header, to the end line (which must be there, and last)."""
    ended = False
    for number, text in enumerate(source, start=2):
        if not text.strip():
            continue
        if ended:
            raise InvalidInputError(f"{name}: line {number}: a line after the end line")
        parsed = _parse(number, text, name)
        ended = parsed.kind == "end"
        yield number, parsed
    if not ended:
        raise InvalidInputError(f"{name}: the file is cut short (no end line)")


def check_export(source: IO[str], name: str) -> str:
    """Read a whole export without writing anything: the project it holds, or
    InvalidInputError for the first thing wrong (naming its line)."""
    project = _header(source.readline(), name)
    anomalies = tokens = 0
    for number, parsed in _lines(source, name):
        if parsed.kind == "anomaly":
            anomalies += 1
        elif parsed.kind == "token":
            tokens += 1
        elif parsed.kind == "end" and parsed.counted != (anomalies, tokens):
            raise InvalidInputError(
                f"{name}: line {number}: the end line counts {parsed.counted[0]} anomalies"
                f" and {parsed.counted[1]} tokens; the file holds {anomalies} and {tokens}"
            )
    return project


async def import_project(
    counter: AnomalyCounter,
    source: IO[str],
    *,
    name: str = "-",
    explicit: bool = False,
    now: datetime | None = None,
) -> Moved:
    """Import an export (a seekable text file) into the counter's project: checked whole
    first (InvalidInputError, nothing written), then written (the anomalies in batches, each
    atomically). ``explicit``: the counter's project was named by the caller, so an export of
    another project may go there; otherwise the projects must match."""
    exported = check_export(source, name)
    project = counter.project_id
    if exported != project and not explicit:
        raise InvalidInputError(
            f"{name} is an export of project {exported!r}, not of {project!r}: name the"
            " target project (--project) to import it there"
        )
    store, policy = counter.store, counter.write_policy
    now_ms = int((now or datetime.now(UTC)).timestamp() * 1000)
    source.seek(0)
    source.readline()
    anomalies = tokens = days = 0
    batch: list[AnomalyImage] = []
    try:
        for _, parsed in _lines(source, name):
            if parsed.image is not None:
                batch.append(parsed.image)
                if len(batch) < _BATCH:
                    continue
            if batch:  # (a whole batch, or the last: the other lines follow the anomalies)
                await store.import_anomalies(project, batch, policy, now_ms)
                anomalies, batch = anomalies + len(batch), []
            if parsed.kind == "summary" and parsed.days is not None:
                await store.import_summary(project, parsed.days, now_ms)
                days = len(parsed.days)
            elif parsed.token is not None:
                record = TokenRecord(project=project, **parsed.token)
                if await store.get_token(record.token_id) is not None:  # (imported before)
                    await store.revoke_token(record.token_id)
                await store.save_token(record)
                tokens += 1
    except AnomalyCounterError as exc:
        # (said in the one line the caller shows: what is in, and that doing it again is safe)
        exc.args = (
            f"{exc} (after {anomalies} anomalies were imported; importing the file again is safe)",
        )
        raise
    return Moved(project, anomalies, tokens, days)
