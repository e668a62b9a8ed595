"""The command line: a thin layer over AnomalyCounter.

Global options (before the command): ``--store URL``, ``--project ID``, ``--config FILE``,
``--json``. Readable tables by default; ``--json`` for scripts. Bad input: one line on stderr
and exit status 2; a store that cannot be reached: exit status 3.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import getpass
import json
import logging
import os
import socket
import sys
import textwrap
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import structlog

from . import __version__
from .cli_delete import delete_command
from .cli_output import PROG
from .cli_output import emit as _emit
from .cli_output import fail as _fail
from .counter import AnomalyCounter
from .errors import (
    AmbiguousAnomalyError,
    AnomalyCounterError,
    AnomalyNotFoundError,
    ConfigurationError,
    SourceUnavailableError,
    SpoolFullError,
    StoreError,
    StoreUnavailableError,
)
from .importers import prometheus_cli, reference_cli
from .model import DISPOSITION_TYPES, LEVEL_MEANINGS, WINDOWS, AnomalyFrequency
from .redact import redacted
from .settings import Settings, load_settings
from .signature import fingerprint_fields
from .stores.base import Store, store_from_url
from .stores.sqlite import SQLiteStore
from .timeline import describe, reporter
from .tokens import TokenRecord, new_token, parse_token
from .transfer_cli import (
    add_export_options,
    add_import_options,
    export_command,
    import_jsonl_command,
)
from .windows import HISTORY

T = TypeVar("T")
logger = structlog.get_logger("anomaly_counter.cli")
DEFAULT_SERVICE_SPOOL = "anomaly-counter-spool"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


class _Commands:
    """A command list whose every command also takes the global options."""

    def __init__(self, subparsers: Any, shared: argparse.ArgumentParser) -> None:
        self._subparsers, self._shared = subparsers, shared

    def add_parser(self, name: str, **options: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._subparsers.add_parser(
            name, parents=[self._shared], **options
        )
        return parser


def _token_id(text: str) -> str:
    """A token's id, from the id or from the whole token (act_<id>_<secret>)."""
    parsed = parse_token(text.strip())
    return parsed[0] if parsed else text.strip()


def _time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"time {text!r} has no time zone (add Z or +00:00)")
    return moment


def _label(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"label {text!r} is not NAME=VALUE")
    return name, value


def _global_options(parser: argparse.ArgumentParser, default: Any = None) -> None:
    """The options every command takes, before or after its name: given after it, they win
    (its parser's defaults are SUPPRESS, so that it leaves those given before alone)."""
    parser.add_argument(
        "--store",
        default=default,
        help="store URL (default: settings, else sqlite:///anomaly-counter.db)",
    )
    parser.add_argument(
        "--project", default=default, help="project id (default: settings, else 'default')"
    )
    parser.add_argument("--config", default=default, help="TOML settings file")
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if default is None else default,
        help="print JSON instead of tables",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Count recurring alerts and the repairs that work.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _global_options(parser)
    shared = argparse.ArgumentParser(add_help=False)
    _global_options(shared, argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands = _Commands(subparsers, shared)

    record = commands.add_parser("record", help="count one occurrence of an alert")
    record.add_argument("--alert-name", required=True)
    record.add_argument("--service", default="")
    record.add_argument("--namespace", default="")
    record.add_argument("--error-type", default="")
    record.add_argument("--label", action="append", type=_label, default=[], metavar="NAME=VALUE")
    record.add_argument("--at", type=_time, help="occurrence time, ISO 8601 with zone")
    record.add_argument("--id", dest="occurrence_id", help="occurrence id, counted once")

    show = commands.add_parser(
        "show", help="one anomaly, by key or name: figures, fix, its recent story"
    )
    show.add_argument("key", nargs="+", metavar="KEY_OR_NAME", help="a key, or words of its labels")
    show.add_argument("--at", type=_time)

    top = commands.add_parser("top", help="the anomalies that recur most")
    top.add_argument("--window", choices=list(WINDOWS), default="24h")
    top.add_argument("--limit", type=int, default=20)
    top.add_argument(
        "--level",
        choices=("REPEAT", "ESCALATE", "PERMANENT_FIX"),
        help="only the chronic ones: at this level or above",
    )

    flapping = commands.add_parser(
        "flapping", help="the anomalies flapping now (firing and resolving again and again)"
    )
    flapping.add_argument("--limit", type=int, default=20)

    find = commands.add_parser("search", help="anomalies whose labels hold every word")
    find.add_argument("query", nargs="+", help="words, anywhere in a label value, any case")
    find.add_argument("--limit", type=int, default=20)

    history = commands.add_parser("history", help="occurrences of one anomaly over time")
    history.add_argument("key", nargs="+", metavar="KEY_OR_NAME")
    history.add_argument(
        "--window", choices=list(HISTORY), default="7d",
        help="1h per minute, 24h and 7d hourly, 30d daily (default 7d)",
    )  # fmt: skip

    story = commands.add_parser("timeline", help="the story of one anomaly, newest first")
    story.add_argument("key", nargs="+", metavar="KEY_OR_NAME")
    story.add_argument("--limit", type=int, default=50)

    repairs = commands.add_parser("repairs", help="repair success per action, and a ranking")
    repairs.add_argument("key", nargs="+", metavar="KEY_OR_NAME")
    repairs.add_argument("--candidates", nargs="+", metavar="ACTION", help="actions to rank")

    repair = commands.add_parser("repair", help="record one repair attempt")
    repair.add_argument("key")
    repair.add_argument("action")
    outcome = repair.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--success", dest="success", action="store_true")
    outcome.add_argument("--failure", dest="success", action="store_false")

    dispositions = commands.add_parser("dispositions", help="how alerts were disposed of")
    dispositions.add_argument(
        "key", nargs="*", metavar="KEY_OR_NAME", help="one anomaly (default: the project)"
    )
    dispositions.add_argument("--limit", type=int, default=20)

    dispose = commands.add_parser("dispose", help="record how one alert was disposed of")
    dispose.add_argument("key")
    dispose.add_argument("type", choices=DISPOSITION_TYPES)

    fix = commands.add_parser("fix", help="mark a permanent fix of an anomaly's root cause")
    fix.add_argument("key")
    fix.add_argument("description")

    unfix = commands.add_parser("unfix", help="take back a permanent fix marked by mistake")
    unfix.add_argument("key", nargs="+", metavar="KEY_OR_NAME")

    replay = commands.add_parser("replay", help="replay a JSONL stream of alert events")
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", type=Path)
    source.add_argument("--bundled", action="store_true", help="the bundled demo stream")

    fill = commands.add_parser("backfill", help="count the alert history a source already holds")
    sources = _Commands(
        fill.add_subparsers(dest="source", required=True, parser_class=_Parser), shared
    )
    prometheus_cli.add_arguments(
        sources.add_parser("prometheus", help="from Prometheus's ALERTS (docs/backfill.md)")
    )

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="listen address (default: settings, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: settings, else 8080)")
    serve.add_argument(
        "--demo-token", action="store_true", help="create and print a token for --project"
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--no-spool",
        action="store_true",
        help=f"answer 503 while the store is down instead of spooling (default spool:"
        f" settings' spool_dir, else ./{DEFAULT_SERVICE_SPOOL})",
    )
    serve.add_argument(
        "--start-on-spool",
        action="store_true",
        default=None,
        help="start although the store cannot be reached, taking writes into the spool until"
        " it answers (default: settings' start_on_spool, else refuse to start: exit 3)",
    )

    token = commands.add_parser("token", help="API tokens of projects")
    token_commands = _Commands(
        token.add_subparsers(dest="token_command", required=True, parser_class=_Parser), shared
    )
    create = token_commands.add_parser("create", help="a new token, printed once")
    create.add_argument("--label", default="", help="what the token is for")
    create.add_argument(
        "--read-only",
        action="store_true",
        help="a viewer's token: reads only (the dashboard); every write route refuses it",
    )
    create.add_argument(
        "--admin",
        action="store_true",
        help="an admin's token: may also delete anomalies and the project (docs/delete.md)",
    )
    listing = token_commands.add_parser("list", help="tokens (never their secrets)")
    listing.add_argument("--all", action="store_true", help="of every project")
    revoke = token_commands.add_parser("revoke", help="forget a token")
    revoke.add_argument(
        "token_id", type=_token_id, metavar="TOKEN_ID", help="its id, or the whole token"
    )

    delete = commands.add_parser("delete", help="delete an anomaly or the project: for good")
    delete_commands = _Commands(
        delete.add_subparsers(dest="delete_command", required=True, parser_class=_Parser), shared
    )
    one = delete_commands.add_parser("anomaly", help="one anomaly and everything of it")
    one.add_argument("key", nargs="+", metavar="KEY_OR_NAME", help="a key, or words of its labels")
    whole = delete_commands.add_parser(
        "project", help="the project (--project) and everything of it, its tokens too"
    )
    for parser_ in (one, whole):
        parser_.add_argument("--yes", action="store_true", help="do not ask (needed without a TTY)")

    notices = commands.add_parser("notices", help="the notices outbox and its dead letters")
    notice_commands = _Commands(
        notices.add_subparsers(dest="notices_command", required=True, parser_class=_Parser),
        shared,
    )
    notice_commands.add_parser("dead", help="notices given up on, and the outbox at a glance")
    retry = notice_commands.add_parser(
        "retry", help="send dead letters again (a running service delivers them)"
    )
    retry.add_argument("notice_ids", nargs="*", metavar="NOTICE_ID", help="as `notices dead` shows")
    retry.add_argument("--all", action="store_true", help="every dead letter of the project")

    add_export_options(commands.add_parser("export", help="write the project as JSON lines"))
    imports = commands.add_parser("import", help="bring data into the project")
    import_commands = _Commands(
        imports.add_subparsers(dest="import_command", required=True, parser_class=_Parser), shared
    )
    add_import_options(
        import_commands.add_parser("jsonl", help="an export (anomaly-counter export), whole")
    )
    reference_cli.add_parser(import_commands)
    return parser


# -- output ---------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _short(moment: str | datetime) -> str:
    value = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _frequency_text(f: AnomalyFrequency) -> str:
    rows = [
        ("anomaly", f.anomaly_key),
        ("alert", f.signature.get("alertname") or f.signature.get("alert_name", "")),
        (
            "counts 1h / 24h / 7d / 30d",
            f"{f.count_1h} / {f.count_24h} / {f.count_7d} / {f.count_30d}",
        ),
        ("level", f.escalation_level or "-"),
        ("first / last seen (UTC)", f"{_short(f.first_seen)} / {_short(f.last_seen)}"),
        ("repair attempts (30 d)", f.auto_repair_count),
        ("permanent fix applied", _fixed_text(f)),
        ("dispositions (30 d)", f.total_resolution_count),
    ]
    labels = fingerprint_fields(f.signature)
    shown = (("service", "service"), ("namespace", "namespace"), ("error_type", "reason"))
    rows[2:2] = [(title, labels[name] or "-") for name, title in shown]
    if f.permanent_fix is not None:
        by = f" by {f.permanent_fix.by}" if f.permanent_fix.by else ""
        text = textwrap.wrap(f.permanent_fix.description, 72) or [""]
        rows.append(("permanent fix", text[0]))
        rows += [("", line) for line in text[1:]]
        rows.append(("  marked (UTC)", f"{_short(f.permanent_fix.at)}{by}"))
    if f.last_resolved is not None:
        rows.append(("last resolved", _short(f.last_resolved)))
    if f.instances:
        rows.append(("firing now", f"{f.firing} (last incident: {f.instances} instances)"))
    if f.flapping or f.flap_percent:
        state = "flapping" if f.flapping else "not flapping"
        rows.append(("flapping", f"{state} ({f.flap_percent:.1f} % of changes)"))
    if f.joined:
        rows.append(("joined", "another instance was firing: one incident, not counted"))
    if f.escalated_to:
        rows.append(("newly escalated to", f.escalated_to))
    if f.spooled:
        rows.append(("spooled", "the store is down: kept in the spool, counted when it is back"))
    if f.duplicate:
        rows.append(("duplicate", "already counted; not counted again"))
    if f.regressed:
        when = f" on {_short(f.regressed_at)} UTC" if f.regressed_at else ""
        rows.append(("regressed", f"came back after the permanent fix{when}"))
    return "\n".join(f"{name:<28}{value}" for name, value in rows)


def _fixed_text(f: AnomalyFrequency) -> str:
    if not f.permanent_fix_applied:
        return "no"
    return "yes, and it came back" if f.regressed else "yes"


_BARS = " ▁▂▃▄▅▆▇█"


def _spark(counts: Sequence[int]) -> str:
    """A line of bars, one per bucket, as tall as its count against the highest."""
    peak = max(counts, default=0)
    if not peak:
        return _BARS[0] * len(counts)
    return "".join(_BARS[0 if n == 0 else max(1, round(n / peak * 8))] for n in counts)


# -- commands -------------------------------------------------------------------------------


async def _record(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    signature: dict[str, Any] = dict(args.label)
    signature.update(alertname=args.alert_name, service=args.service, namespace=args.namespace)
    if args.error_type:
        signature["reason"] = args.error_type
    f = await counter.record_anomaly(signature, at=args.at, occurrence_id=args.occurrence_id)
    _emit(args.json, f.to_dict(), lambda: _frequency_text(f))


def _ref(args: argparse.Namespace) -> str:
    """The key or the name a command was given (a name may come as several words)."""
    return " ".join(args.key) if isinstance(args.key, list) else str(args.key)


async def _resolve(counter: AnomalyCounter, args: argparse.Namespace) -> AnomalyFrequency:
    """The one anomaly a key or a name refers to; else the matches are listed (exit 1)."""
    return await _named(args, counter.anomaly(_ref(args)))


async def _key(counter: AnomalyCounter, args: argparse.Namespace) -> str:
    """The key a write names: a key, or a name that matches one anomaly (the write itself
    refuses a key the project never saw, unless its first occurrence waits in the spool)."""
    return await _named(args, counter.resolve(_ref(args), known=False))


async def _named(args: argparse.Namespace, lookup: Coroutine[Any, Any, T]) -> T:
    try:
        return await lookup
    except AmbiguousAnomalyError as exc:
        rows = [f.row("24h") for f in exc.matches]
        _emit(args.json, {"matches": rows}, lambda: _top_text(rows, "24h"))
        _fail(str(exc), 1)
    except AnomalyNotFoundError as exc:
        _fail(str(exc), 1)


async def _show(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    f = await _resolve(counter, args)
    if args.at is not None:
        f = await counter.get_frequency(f.anomaly_key, at=args.at) or f
    week = await counter.history(f.anomaly_key, "7d", at=args.at) or []
    story = await counter.timeline(f.anomaly_key, limit=10)
    who = await _token_labels(counter)
    data = {**f.to_dict(), "history_7d": [(t.isoformat(), n) for t, n in week],
            "timeline": [e.to_dict() for e in story]}  # fmt: skip

    def text() -> str:
        out = _frequency_text(f)
        if week:  # four bars a day
            quarters = [sum(n for _, n in week[i : i + 6]) for i in range(0, len(week), 6)]
            out += f"\n{'7 days, per 6 hours':<28}{_spark(quarters)}"
        if story:
            out += "\n\nLatest events (UTC):\n" + _story_text(story, who)
        return out

    _emit(args.json, data, text)


def _story_text(entries: Sequence[Any], who: dict[str, str]) -> str:
    return _table(
        ["when", "what", "by"],
        [(_short(e.at), _cut(describe(e), 72), reporter(e.by, who)) for e in entries],
    )


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


async def _token_labels(counter: AnomalyCounter) -> dict[str, str]:
    """The labels of the project's tokens by id, to name who wrote an entry."""
    return {t.token_id: t.label for t in await counter.store.list_tokens(counter.project_id)}


async def _search(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    query = " ".join(args.query)
    found = await counter.search(query, limit=args.limit)
    rows = [f.row("24h") for f in found.anomalies]

    def text() -> str:
        if not rows:
            return f"no anomaly of project {counter.project_id!r} matches {query!r}"
        more = (
            f" (of {found.total}{'+' if found.truncated else ''})"
            if found.total > len(rows)
            else ""
        )
        noun = "match" if len(rows) == 1 else "matches"
        return _top_text(rows, "24h") + f"\n{len(rows)} {noun}{more}"

    _emit(args.json, {"matches": rows, "total": found.total, "truncated": found.truncated}, text)


async def _history(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    f = await _resolve(counter, args)
    series = await counter.history(f.anomaly_key, args.window) or []
    data = {"anomaly_key": f.anomaly_key, "window": args.window,
            "buckets": [{"start": t.isoformat(), "count": n} for t, n in series]}  # fmt: skip

    def text() -> str:
        counts = [n for _, n in series]
        grain = {"1h": "per minute", "24h": "hourly", "7d": "hourly", "30d": "daily"}[args.window]
        busy = [(t, n) for t, n in series if n]
        # a line of at most 60 bars: neighbouring buckets summed (7 days: per 3 hours)
        step = -(-len(counts) // 60)
        bars = [sum(counts[i : i + step]) for i in range(0, len(counts), step)]
        each = f", a bar per {step} buckets" if step > 1 else ""
        lines = [
            f"{f.anomaly_key} {_who(f.signature)}, {args.window} {grain} (UTC{each}):"
            f" {sum(counts)}",
            _spark(bars),
        ]
        if not busy:
            return f"{f.anomaly_key} {_who(f.signature)}: no occurrence in the last {args.window}"
        lines.append("\n" + _table(["from", "count"], [(_short(t), n) for t, n in busy]))
        return "\n".join(lines)

    _emit(args.json, data, text)


async def _timeline(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    f = await _resolve(counter, args)
    story = await counter.timeline(f.anomaly_key, limit=args.limit)
    who = await _token_labels(counter)
    _emit(
        args.json,
        {"anomaly_key": f.anomaly_key, "entries": [e.to_dict() for e in story]},
        lambda: (
            f"{f.anomaly_key} {_who(f.signature)}, newest first (UTC):\n" + _story_text(story, who)
        ),
    )


async def _top(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    if args.level:
        chronic = await counter.chronic_anomalies(args.level, args.window, args.limit)
        rows = [f.row(args.window) for f in chronic.anomalies]
    else:
        rows = await counter.top_anomalies(limit=args.limit, window=args.window)
    empty = "" if rows else await _nothing_in(counter, args, f"in the last {args.window}")
    _emit(args.json, rows, lambda: _top_text(rows, args.window) if rows else empty)


async def _nothing_in(counter: AnomalyCounter, args: argparse.Namespace, what: str) -> str:
    """What an empty answer says: where it looked, and whether the project holds anything
    at all (a forgotten --project, or another store, reads as an empty one otherwise)."""
    if (await counter.top(1, "30d")).anomalies:
        return f"no anomaly occurred {what} ({args.where})"
    return (
        f"no anomaly {what}: {args.where} holds no anomaly at all;"
        " check --project and --store (or the project and store_url settings)"
    )


async def _flapping(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    found = await counter.flapping_anomalies(args.limit)
    rows = [f.row("24h") for f in found.anomalies]
    empty = "" if rows else f"no anomaly is flapping now ({args.where})"

    def text() -> str:
        if not rows:
            return empty
        return _table(
            ["anomaly", "alert", "service", "namespace", "flapping %", "firing", "24h",
             "last seen (UTC)"],
            [
                (r["anomaly_key"], r["alert_name"], r["service"], r["namespace"],
                 f"{r['flap_percent']:.1f}", r["firing"], r["count_24h"], _short(r["last_seen"]))
                for r in rows
            ],
        )  # fmt: skip

    _emit(args.json, rows, text)


def _top_text(rows: list[dict[str, Any]], window: str) -> str:
    """Anomalies as a table, with the labels that tell them apart."""
    if not rows:
        return f"no anomaly occurred in the last {window}"
    return _table(
        ["anomaly", "alert", "service", "namespace", "reason", "1h", "24h", "7d", "30d",
         "level", "last seen (UTC)"],
        [
            (r["anomaly_key"], r["alert_name"], r["service"], r["namespace"],
             r["error_type"] or "-", r["count_1h"], r["count_24h"], r["count_7d"],
             r["count_30d"], _level_text(r), _short(r["last_seen"]))
            for r in rows
        ],
    )  # fmt: skip


def _level_text(row: dict[str, Any]) -> str:
    level = row["escalation_level"] or "-"
    return f"{level} (regressed)" if row.get("regressed") else level


async def _repairs(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    key = await _key(counter, args)
    stats = await counter.get_all_repair_stats(key)
    # as the dashboard and the API rank them: the tried actions and the configured ones
    (ranked,) = await counter.recommendations([key], args.candidates)
    data = {"anomaly_key": key, "stats": stats, "recommendations": [r.to_dict() for r in ranked]}

    def text() -> str:
        if not ranked:
            return f"no repair attempt on {key} in the last 30 days, and none configured"
        return _table(
            ["rank", "action", "tried", "worked", "rate", "judged by", "skip", "why"],
            [(r.rank, r.action, r.total, r.success, f"{r.success_rate:.0%}",
              "outcome" if r.basis == "verified" else "report", "yes" if r.skip else "",
              r.reason) for r in ranked],
        )  # fmt: skip

    _emit(args.json, data, text)


def _by() -> str:
    """Who writes from the command line, as the timeline tells it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        return "cli"
    return f"cli:{user}"[:64]


async def _repair(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    key = await _key(counter, args)
    await counter.record_repair_attempt(key, args.action, args.success, by=_by())
    stats = await counter.get_repair_success_rate(key, args.action)
    worked = f"{stats['success']}/{stats['total']}"
    _emit(args.json, {"anomaly_key": key, **stats},
          lambda: f"{args.action} on {key}: {worked} worked")  # fmt: skip


async def _dispositions(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    if args.key:
        stats = await counter.get_disposition_stats(await _key(counter, args))
        _emit(args.json, stats, lambda: _table(["type", "count"], list(stats.items())))
        return
    summary, by_anomaly = await counter.get_all_disposition_stats(limit=args.limit)

    def text() -> str:
        out = _table(["type", "count"], list(summary.items()))
        if by_anomaly:
            out += "\n\n" + _table(
                ["anomaly", "alert", *DISPOSITION_TYPES, "total"],
                [(r["anomaly_key"], r["alert_name"], *(r[t] for t in DISPOSITION_TYPES),
                  r["total"]) for r in by_anomaly],
            )  # fmt: skip
        return out

    _emit(args.json, {"summary": summary, "by_anomaly": by_anomaly}, text)


async def _dispose(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    key = await _key(counter, args)
    await counter.record_disposition(key, args.type, by=_by())
    stats = await counter.get_disposition_stats(key)
    _emit(args.json, {"anomaly_key": key, **stats},
          lambda: f"{args.type} on {key}: {stats[args.type]} of {stats['total']}")  # fmt: skip


async def _fix(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    key = await _key(counter, args)
    await counter.mark_permanent_fix_applied(key, args.description, by=_by())
    _emit(args.json, {"anomaly_key": key, "permanent_fix_applied": True},
          lambda: f"permanent fix recorded for {key} ({args.description})")  # fmt: skip


async def _unfix(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    key = await _key(counter, args)  # (a fix may come before the first occurrence)
    f = await counter.get_frequency(key)
    fix = f.permanent_fix if f is not None else None
    if not await counter.undo_permanent_fix(key, by=_by()):
        _fail(f"anomaly {key} has no permanent fix in force", 1)
    what = f": {fix.description!r}, marked {_short(fix.at)} UTC" if fix else ""
    _emit(args.json, {"anomaly_key": key, "permanent_fix_applied": False,
                      "undone": fix.to_dict() if fix else None},
          lambda: f"permanent fix of {key} undone{what}")  # fmt: skip


async def _replay(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    if args.bundled:
        text = (resources.files("anomaly_counter") / "data" / "k8s-alerts.jsonl").read_text()
    else:
        try:
            text = args.file.read_text(encoding="utf-8")
        except OSError as exc:
            _fail(f"cannot read {args.file}: {exc.strerror}", 2)
    events: list[tuple[int, dict[str, Any]]] = []  # (line number, event)
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                event = json.loads(line)
            except json.JSONDecodeError as exc:
                _fail(f"line {number}: not JSON ({exc.msg})", 2)
            if not isinstance(event, dict):
                _fail(f"line {number}: not a JSON object", 2)
            events.append((number, event))
    if not events:
        _fail("the stream is empty", 2)
    try:  # (offsets are seconds before the last event, which happens now)
        end = max(float(e.get("offset_s", 0)) for _, e in events)
    except (TypeError, ValueError):
        _fail("an offset_s is not a number of seconds", 2)
    now = datetime.now(UTC)
    counted = duplicates = 0
    say = (lambda *_: None) if args.json else print
    say(f"replaying {len(events)} events ending now, into project {counter.project_id!r}\n")
    for number, event in events:
        try:
            # an event's own time ("at", ISO 8601 with a zone), else its offset
            at = (
                _time(str(event["at"]))
                if "at" in event
                else now - timedelta(seconds=end - float(event.get("offset_s", 0)))
            )
            kind, signature = event["type"], event["signature"]
            key = counter.hash_signature(signature)
            by = event.get("by") or "replay"
            if kind == "alert":
                f = await counter.record_anomaly(signature, at=at, occurrence_id=event.get("id"))
                counted += not f.duplicate
                duplicates += f.duplicate
                if f.escalated_to:
                    say(f"{_short(at)}  {f.escalated_to:<13} {_who(signature)}: "
                        f"{f.count_24h} in 24h ({LEVEL_MEANINGS[f.escalated_to]})")  # fmt: skip
                if f.newly_regressed:
                    say(f"{_short(at)}  REGRESSED     {_who(signature)}: back after its"
                        " permanent fix")  # fmt: skip
            elif kind == "repair":
                await counter.record_repair_attempt(
                    key, event["action"], event["success"], at=at, by=by
                )
            elif kind == "disposition":
                await counter.record_disposition(key, event["disposition"], at=at, by=by)
            elif kind == "fix":
                await counter.mark_permanent_fix_applied(key, event["description"], at=at, by=by)
                say(f"{_short(at)}  FIXED         {_who(signature)}: {event['description']}")
            else:
                raise KeyError(kind)
        except (KeyError, TypeError) as exc:
            _fail(f"line {number}: missing or unknown field {exc}", 2)
        except (ValueError, argparse.ArgumentTypeError) as exc:  # (InvalidInputError too)
            _fail(f"line {number}: {exc}", 2)
    rows = await counter.top_anomalies(limit=10, window="24h")
    week = await counter.top_anomalies(limit=10, window="7d")
    if args.json:
        print(json.dumps({"counted": counted, "duplicates": duplicates, "top_24h": rows,
                          "top_7d": week}, default=str, indent=2))  # fmt: skip
        return
    print(f"\n{counted} occurrences counted, {duplicates} re-notifications recognised")
    print("\nTop anomalies, last 24 hours:\n" + _top_text(rows, "24h"))
    print("\nTop anomalies, last 7 days:\n" + _top_text(week, "7d"))
    if week:
        worst = week[0]["anomaly_key"]
        ranked = await counter.recommend_actions(
            worst, list(await counter.get_all_repair_stats(worst)) or ["restart_pod"]
        )
        print(f"\nRepairs for {worst} ({week[0]['alert_name']}):")
        for r in ranked:
            print(f"  {r.rank}. {r.action}: {r.reason}")


def _who(signature: dict[str, Any]) -> str:
    return "{}/{}/{}".format(
        signature.get("alertname", "?"),
        signature.get("namespace", "?"),
        signature.get("service", "?"),
    )


async def _token(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    store, project = counter.store, counter.project_id
    if args.token_command == "create":
        text, record = new_token(
            project, int(time.time() * 1000), args.label, read_only=args.read_only,
            admin=args.admin,
        )  # fmt: skip
        await store.save_token(record)
        data = {"token": text, "token_id": record.token_id, "project": project,
                "read_only": record.read_only, "admin": record.admin}  # fmt: skip
        access = {"read": "read-only token", "admin": "admin token"}.get(_access(record), "token")
        _emit(args.json, data, lambda: f"{text}\n({access} {record.token_id} of project"
              f" {project}; it is shown only now)")  # fmt: skip
    elif args.token_command == "list":
        records = await store.list_tokens(None if args.all else project)
        rows: list[dict[str, Any]] = [
            {"token_id": r.token_id, "project": r.project, "label": r.label,
             "created": datetime.fromtimestamp(r.created_ms / 1000, UTC).isoformat(),
             "read_only": r.read_only, "admin": r.admin, "access": _access(r)}
            for r in records
        ]  # fmt: skip
        _emit(args.json, rows, lambda: _table(
            ["token", "project", "label", "access", "created"],
            [(r["token_id"], r["project"], r["label"], r["access"],
              _short(r["created"])) for r in rows],
        ) if rows else "no tokens")  # fmt: skip
    elif not await store.revoke_token(args.token_id):
        _fail(f"no token {args.token_id!r}", 1)
    else:
        _emit(args.json, {"revoked": args.token_id}, lambda: f"revoked {args.token_id}")


def _access(record: TokenRecord) -> str:
    return "read" if record.read_only else "admin" if record.admin else "write"


async def _notices(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    if args.notices_command == "retry":
        if bool(args.notice_ids) == args.all:
            _fail("name the notices to retry, or say --all", 2)
        with _service_extra("notices retry"):
            from .notify.deliverer import send_again
        retried, left = await send_again(
            counter, counter.settings, None if args.all else args.notice_ids
        )
        if left:  # (said whatever else happened: nothing will send these)
            ids = ", ".join(sorted({d.notice_id for d in left}))
            sys.stderr.write(f"{PROG}: left in the list, their channel is not configured any"
                             f" more: {ids}\n")  # fmt: skip
        if not retried:
            _fail("no such dead letter" if not left else "nothing to send again", 1)
        _emit(args.json, {"retried": retried}, lambda: f"{retried} dead letter(s) back in the"
              " outbox: a running service delivers them")  # fmt: skip
        return
    stats = await counter.outbox_stats()
    letters = await counter.dead_letters()
    data = {
        "outbox": {"depth": stats.depth, "oldest": _iso(stats.oldest_ms),
                   "overflowed": stats.overflowed, "dead": stats.dead,
                   "dead_overflowed": stats.dead_overflowed},
        "letters": [{**d.fields(), "first_failed": _iso(d.first_failed_ms),
                     "dead": _iso(d.dead_ms)} for d in letters],
    }  # fmt: skip

    def text() -> str:
        oldest = _iso(stats.oldest_ms)
        head = (
            f"outbox: {stats.depth} waiting (oldest {_short(oldest) if oldest else '-'}),"
            f" {stats.overflowed} overflowed, {stats.dead} dead"
            + (f" ({stats.dead_overflowed} more not kept)" if stats.dead_overflowed else "")
        )
        if not letters:
            return head
        rows = [(d.notice_id, d.channel, d.entry.kind, d.entry.anomaly_key, d.attempts,
                 _short(_iso(d.dead_ms) or ""), d.error) for d in letters]  # fmt: skip
        table = _table(["notice", "channel", "kind", "anomaly", "tries", "dead", "error"], rows)
        return f"{head}\n{table}"

    _emit(args.json, data, text)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


@contextlib.contextmanager
def _service_extra(command: str) -> Iterator[None]:
    """Imports of what the ``service`` extra installs: missing, a line that says how to get
    them (the library and the other commands run without them)."""
    try:
        yield
    except ImportError as exc:
        raise ConfigurationError(
            f"{command} needs {exc.name or 'a module'} (not installed here):"
            " pip install 'anomaly-counter[service]'"
        ) from None


async def _serve(settings: Settings, args: argparse.Namespace) -> None:
    with _service_extra("serve"):
        import uvicorn

        from .service.app import create_app
        from .service.server import uvicorn_config

    chosen = replace(
        settings,
        **{k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None},
    )
    if args.store:
        chosen = replace(chosen, store_url=args.store)
    if args.start_on_spool:
        chosen = replace(chosen, start_on_spool=True)
    if args.no_spool:
        if chosen.start_on_spool:
            raise ConfigurationError(
                "--start-on-spool (start_on_spool) needs the spool that --no-spool turns off"
            )
        chosen = replace(chosen, spool_dir="")
    elif not chosen.spool_dir:  # the service never drops what it acknowledged
        chosen = replace(chosen, spool_dir=DEFAULT_SERVICE_SPOOL)
    listening = _listen(chosen.host, chosen.port)  # before anything is said of serving
    store = store_from_url(chosen.store_url, chosen)
    try:
        await _check_store(store, chosen)
        app = create_app(chosen, store)
    except BaseException:
        listening.close()
        await store.aclose()
        raise
    if args.demo_token:
        project = args.project or chosen.project
        text, record = new_token(project, int(time.time() * 1000), "demo")
        await app.state.service.store.save_token(record)
    url = f"http://{chosen.host}:{chosen.port}"
    print(
        f"anomaly-counter {__version__} on {redacted(chosen.store_url)}: {url}"
        f"  (API docs: {url}/docs)"
    )
    if args.demo_token:
        hint = "open it, and sign in with the token below"
    else:
        hint = "sign in with a token of the project: token create --read-only"
    print(f"dashboard: {url}/  ({hint})")
    print(f"spool: {chosen.spool_dir or 'none (503 while the store is down)'}")
    if args.demo_token:
        print(f"a token of project {project!r}: {text}")
        print(f"  curl -H 'Authorization: Bearer {text}' {url}/v1/projects/{project}/anomalies")
        print(f"  Alertmanager receiver: {url}/v1/projects/{project}/alertmanager")
    sys.stdout.flush()
    config = uvicorn_config(app, chosen, access_log=args.access_log, log_level="info")
    await uvicorn.Server(config).serve(sockets=[listening])


def _listen(host: str, port: int) -> socket.socket:
    """The service's listening socket, or ConfigurationError (a port in use, an address this
    machine does not have) before the service says it serves."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listening = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc}") from exc
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(address)
        listening.listen(2048)
    except OSError as exc:
        listening.close()
        reason = exc.strerror or str(exc)
        which = "host" if exc.errno == errno.EADDRNOTAVAIL else "port"  # (not this machine's)
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {reason} (setting {which}, or --{which})"
        ) from exc
    listening.set_inheritable(True)
    return listening


async def _check_store(store: Store, settings: Settings) -> None:
    """Refuse to serve a store that cannot be used (a file that is not a database:
    ConfigurationError) or reached (StoreUnavailableError, unless ``start_on_spool``): a typo
    in its address must not start a service that says it is ready and spools forever."""
    shown = redacted(settings.store_url)
    try:
        await store.ping()
    except StoreUnavailableError as exc:
        if not settings.start_on_spool:
            raise StoreUnavailableError(
                f"{shown}: {exc} (not serving; --start-on-spool serves anyway, spooling writes)"
            ) from exc
        logger.warning(
            "store_unreachable_at_start", store=shown, error=str(exc), spool=settings.spool_dir
        )


_COMMANDS: dict[str, Callable[[AnomalyCounter, argparse.Namespace], Coroutine[Any, Any, None]]] = {
    "record": _record,
    "show": _show,
    "top": _top,
    "flapping": _flapping,
    "repairs": _repairs,
    "repair": _repair,
    "dispositions": _dispositions,
    "dispose": _dispose,
    "fix": _fix,
    "unfix": _unfix,
    "search": _search,
    "history": _history,
    "timeline": _timeline,
    "replay": _replay,
    "token": _token,
    "notices": _notices,
    "export": export_command,
    "import": lambda counter, args: _IMPORTS[args.import_command](counter, args),
    "delete": delete_command,
}
_IMPORTS: dict[str, Callable[[AnomalyCounter, argparse.Namespace], Coroutine[Any, Any, None]]] = {
    "jsonl": import_jsonl_command,
    "reference": reference_cli.command,
}


async def _run(args: argparse.Namespace) -> None:
    settings = load_settings(args.config, strict=True)
    if args.command == "serve":
        await _serve(settings, args)
        return
    if args.command == "backfill":  # (its store is opened once the source has answered)
        await prometheus_cli.command(settings, args)
        return
    url = args.shown_store = redacted(args.store or settings.store_url)
    args.where = f"project {args.project or settings.project!r} in {url}"
    counter = AnomalyCounter.from_url(args.store, args.project, settings=settings)
    if _reads_only(args) and isinstance(counter.store, SQLiteStore):
        counter.store.create = False  # (a read never makes a store)
    try:
        await counter.flush_spool()  # what an earlier run spooled goes in first
        await _COMMANDS[args.command](counter, args)
    finally:
        await counter.aclose()


_READS = frozenset(
    ("show", "top", "flapping", "search", "history", "timeline", "repairs", "dispositions",
     "export")
)  # fmt: skip


def _reads_only(args: argparse.Namespace) -> bool:
    """Whether the command only reads (it must not make a store where there was none)."""
    if args.command == "token":
        return bool(args.token_command == "list")
    if args.command == "notices":
        return bool(args.notices_command == "dead")
    if args.command == "import":
        return bool(getattr(args, "dry_run", False))
    return args.command in _READS


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``anomaly-counter`` command."""
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.command == "serve" else logging.WARNING
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    try:
        asyncio.run(_run(args))
    except BrokenPipeError:  # the reader went away (`... | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    except KeyboardInterrupt:  # Ctrl-C: stopped as asked (serve has shut down cleanly)
        sys.stderr.write(f"{PROG}: stopped (Ctrl-C)\n")  # (not an error: said all the same)
        raise SystemExit(130) from None
    except (StoreUnavailableError, SpoolFullError) as exc:
        _fail(f"store unavailable: {_naming_the_store(args, exc)}", 3)
    except StoreError as exc:
        _fail(f"store error: {exc}", 3)
    except SourceUnavailableError as exc:
        _fail(str(exc), 3)
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    except AnomalyNotFoundError as exc:  # (a write on an anomaly never seen)
        _fail(str(exc), 1)
    except AnomalyCounterError as exc:
        _fail(str(exc), 2)


def _naming_the_store(args: argparse.Namespace, exc: Exception) -> str:
    """The error, after the store's URL (its password as ***) unless it names it already: a
    store's own words name a host and port, or a file, not which setting or flag chose it."""
    shown: str | None = getattr(args, "shown_store", None)
    return str(exc) if shown is None or shown in str(exc) else f"{shown}: {exc}"


if __name__ == "__main__":
    main()
