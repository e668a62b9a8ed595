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

An import checks the whole file before it writes anything (each line as the library checks
its own writes: transfer_checks), refuses to take what is not the file's (another project's
tokens; the target's anomalies, unless asked to replace them), then writes each anomaly in
one atomic store call that REPLACES what the target held of it: importing a file twice (with
``replace``) leaves the same state. Every read answers the same on the target as it did on
the source.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from . import transfer_checks as checks
from .counter import AnomalyCounter
from .errors import AnomalyCounterError, InvalidInputError, LimitExceededError
from .stores.base import WritePolicy
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
            image = AnomalyImage.from_fields(data)
            checks.check_image(image)
            return _Parsed(kind, image=image)
        if kind == "summary":
            days = {
                checks.day(_day_number(day)): {
                    checks.text(_string(k), "a day counter's name"): checks.count(
                        _count(n), "a day counter"
                    )
                    for k, n in names.items()
                }
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
            checks.check_token(token)
            return _Parsed(kind, token=token)
        if kind == "end":
            return _Parsed(kind, counted=(_count(data["anomalies"]), _count(data["tokens"])))
        raise ValueError(f"unknown line type {kind!r}")
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise InvalidInputError(f"{name}: line {number}: not an export line ({detail})") from None


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def _day_number(value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise ValueError(f"{value[:40]!r} is not a day number")
    return int(value)


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


@dataclass(slots=True)
class Checked:
    """What a whole export holds, read and checked (nothing written)."""

    project: str
    anomaly_keys: list[str]
    token_ids: list[str]


def check_export(source: IO[str], name: str) -> Checked:
    """Read a whole export without writing anything: what it holds, or InvalidInputError for
    the first thing wrong (naming its line)."""
    project = _header(source.readline(), name)
    keys: list[str] = []
    token_ids: list[str] = []
    seen: set[str] = set()
    for number, parsed in _lines(source, name):
        if parsed.image is not None:
            key = parsed.image.anomaly_key
            if key in seen:
                raise InvalidInputError(f"{name}: line {number}: anomaly {key!r} a second time")
            seen.add(key)
            keys.append(key)
        elif parsed.token is not None:
            token_id = parsed.token["token_id"]
            if token_id in token_ids:
                raise InvalidInputError(f"{name}: line {number}: token {token_id} a second time")
            token_ids.append(token_id)
        elif parsed.kind == "end" and parsed.counted != (len(keys), len(token_ids)):
            raise InvalidInputError(
                f"{name}: line {number}: the end line counts {parsed.counted[0]} anomalies"
                f" and {parsed.counted[1]} tokens; the file holds {len(keys)} and"
                f" {len(token_ids)}"
            )
    return Checked(project, keys, token_ids)


def _within_policy(source: IO[str], name: str, policy: WritePolicy) -> None:
    """InvalidInputError (naming the line) for an anomaly holding more than the target
    project keeps: read before anything is written."""
    source.seek(0)
    source.readline()
    for number, parsed in _lines(source, name):
        if parsed.image is not None:
            try:
                checks.within_policy(parsed.image, policy)
            except ValueError as exc:
                raise InvalidInputError(f"{name}: line {number}: {exc}") from None


async def import_project(
    counter: AnomalyCounter,
    source: IO[str],
    *,
    name: str = "-",
    explicit: bool = False,
    replace: bool = False,
    now: datetime | None = None,
) -> Moved:
    """Import an export into the counter's project: checked whole first (InvalidInputError,
    nothing written), then written (the anomalies in batches, each atomically). The source is
    read once, into a temporary file of our own: the checks and the writes see the same lines
    whatever happens to the file meanwhile (and a pipe is read too).

    ``explicit``: the counter's project was named by the caller, so an export of another
    project may go there (without its API tokens: those stay with their project); otherwise
    the projects must match. ``replace``: anomalies of the file the project holds already
    are replaced by the file's (an import again after one that stopped half-way); otherwise
    the import is refused when it holds any."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as kept:
        shutil.copyfileobj(source, kept)
        kept.seek(0)
        return await _import_kept(counter, kept, name, explicit, replace, now)


async def _import_kept(
    counter: AnomalyCounter,
    source: IO[str],
    name: str,
    explicit: bool,
    replace: bool,
    now: datetime | None,
) -> Moved:
    checked = check_export(source, name)
    await _refusals(counter, checked, name, explicit=explicit, replace=replace)
    project = counter.project_id
    store, policy = counter.store, counter.write_policy
    _within_policy(source, name, policy)
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
                written = await store.import_anomalies(project, batch, policy, now_ms)
                anomalies += written
                if written < len(batch):
                    raise _no_room(project, policy.max_anomalies, anomalies, len(batch) - written)
                batch = []
            if parsed.kind == "summary" and parsed.days is not None:
                await store.import_summary(project, parsed.days, now_ms)
                days = len(parsed.days)
            elif parsed.token is not None:
                # (checked above: the id is this project's, or unknown to the store)
                record = TokenRecord(project=project, **parsed.token)
                if await store.get_token(record.token_id) is not None:  # (imported before)
                    await store.revoke_token(record.token_id)
                await store.save_token(record)
                tokens += 1
    except LimitExceededError:
        raise
    except AnomalyCounterError as exc:
        # (said in the one line the caller shows: what is in, and how to finish)
        exc.args = (
            f"{exc} (after {anomalies} anomalies were imported: import the file again with"
            " --replace to finish)",
        )
        raise
    return Moved(project, anomalies, tokens, days)


async def _refusals(
    counter: AnomalyCounter, checked: Checked, name: str, *, explicit: bool, replace: bool
) -> None:
    """InvalidInputError, before anything is written, for an import that would take what is
    not the file's: another project's place, tokens or anomalies."""
    project, store = counter.project_id, counter.store
    if checked.project != project and not explicit:
        raise InvalidInputError(
            f"{name} is an export of project {checked.project!r}, not of {project!r}: name the"
            " target project (--project) to import it there"
        )
    if checked.token_ids and checked.project != project:
        raise InvalidInputError(
            f"{name} holds {len(checked.token_ids)} API tokens of project {checked.project!r}:"
            f" a token stays with its project, so none is imported into {project!r}; to copy"
            " a project, export it without --tokens (and make new tokens for the copy)"
        )
    for token_id in checked.token_ids:
        held = await store.get_token(token_id)
        if held is not None and held.project != project:
            raise InvalidInputError(
                f"{name}: token {token_id} belongs to another project of this store: nothing"
                " was imported"
            )
    if replace or not checked.anomaly_keys:
        return
    held_keys = await store.held_anomalies(project, checked.anomaly_keys)
    if held_keys:
        raise InvalidInputError(
            f"project {project} holds {len(held_keys)} of the anomalies of {name} already"
            f" (such as {held_keys[0]}): an import does not merge histories. Nothing was"
            " written; --replace replaces them with the file's (as when importing again a"
            " file whose import stopped half-way)"
        )


def _no_room(project: str, limit: int, written: int, refused: int) -> LimitExceededError:
    return LimitExceededError(
        f"project {project} may hold {limit} distinct anomalies (limit max_anomalies):"
        f" {refused} anomalies of the file found no room, and the import stopped with"
        f" {written} anomalies of the file written; raise the limit, then import the file"
        " again with --replace",
        "max_anomalies",
    )
