"""``anomaly-counter delete anomaly KEY_OR_NAME`` and ``anomaly-counter delete project``
(docs/delete.md): what cannot be undone is done only when it was confirmed.

Without ``--yes`` a person at a terminal is shown what will go and types its key (or the
project's id) to confirm; when stdin is not a terminal there is nobody to ask, so the command
refuses (one line, exit status 2) rather than guess. A deletion never makes a store where there
was none (a mistyped ``--store``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .cli_output import emit
from .cli_output import fail as _fail
from .counter import AnomalyCounter, looks_like_key
from .errors import AmbiguousAnomalyError
from .model import AnomalyFrequency
from .redact import redacted
from .signature import fingerprint_fields
from .stores.sqlite import SQLiteStore


async def delete_command(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    """The ``delete`` command: ``anomaly`` or ``project``."""
    if isinstance(counter.store, SQLiteStore):
        counter.store.create = False
    if args.delete_command == "anomaly":
        await _delete_anomaly(counter, args)
    else:
        await _delete_project(counter, args)


async def _delete_anomaly(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    ref = " ".join(args.key)
    project = counter.project_id
    if not args.yes:
        found = await counter.find(ref)  # (what there is to ask about, before asking)
        if found.anomaly is None and found.matches:
            _list(args, found.matches)
            _fail(f"{ref!r} matches {len(found.matches)} anomalies: name the one by its key", 1)
        if found.anomaly is None and not looks_like_key(ref):
            _fail(f"no anomaly {ref!r} in project {project!r}", 1)
        _need_a_terminal(f"anomaly {ref!r} of project {project!r}")
        key = found.anomaly.anomaly_key if found.anomaly is not None else ref
        what = f" ({_labels(found.anomaly.signature)})" if found.anomaly is not None else ""
        _confirm(
            f"Delete anomaly {key}{what} of project {project!r}, and everything of it (counts,"
            " repairs, dispositions, fix, timeline, notices)? This cannot be undone.",
            "its key",
            key,
        )
        ref = key  # (the one confirmed: a name could match another by now)
    try:
        deleted = await counter.delete_anomaly(ref)
    except AmbiguousAnomalyError as exc:
        _list(args, exc.matches)
        _fail(str(exc), 1)
    data = {"deleted": "anomaly", "project": project, "anomaly_key": deleted.anomaly_key,
            "signature": deleted.signature}  # fmt: skip
    labels = f" ({_labels(deleted.signature)})" if deleted.signature else ""
    _emit(args, data, f"deleted anomaly {deleted.anomaly_key}{labels} of project {project!r}")


async def _delete_project(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    project = counter.project_id
    if not args.project:  # (never the default project, or the settings', by omission)
        _fail(f"name the project to delete: delete project --project {project} (and --yes)", 2)
    if not args.yes:
        _need_a_terminal(f"project {project!r}")
        _confirm(
            f"Delete project {project!r} in {redacted(counter.settings.store_url)}, and everything"
            " of it: its anomalies, summaries, notices and tokens? This cannot be undone.",
            "the project's id",
            project,
        )
    deleted = await counter.delete_project()
    data = {"deleted": "project", "project": project, "anomalies": deleted.anomalies}
    n = deleted.anomalies
    text = (
        f"deleted project {project!r}: {n} {'anomaly' if n == 1 else 'anomalies'}, its tokens,"
        " summaries and notices"
        if n
        else f"project {project!r} holds nothing more (its tokens, summaries and notices are"
        " gone too)"
    )
    _emit(args, data, text)


def _need_a_terminal(what: str) -> None:
    if not sys.stdin.isatty():
        _fail(
            f"not deleting {what}: stdin is not a terminal, so nobody can confirm;"
            " add --yes to delete without asking",
            2,
        )


def _confirm(question: str, answer: str, expected: str) -> None:
    """Ask on the terminal (stderr: stdout stays the answer's, for --json); refuse unless the
    expected text is typed."""
    sys.stderr.write(f"{question}\nType {answer} ({expected}) to confirm: ")
    sys.stderr.flush()
    typed = sys.stdin.readline().strip()
    if typed != expected:
        _fail("not confirmed: nothing was deleted", 2)


def _labels(signature: dict[str, Any]) -> str:
    fields = fingerprint_fields(signature)
    return " ".join(str(v) for v in fields.values() if v) or "no labels"


def _list(args: argparse.Namespace, matches: list[AnomalyFrequency]) -> None:
    rows = [{"anomaly_key": f.anomaly_key, "labels": _labels(f.signature)} for f in matches]
    _emit(args, {"matches": rows}, "\n".join(f"{r['anomaly_key']}  {r['labels']}" for r in rows))


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    emit(args.json, data, lambda: text)
