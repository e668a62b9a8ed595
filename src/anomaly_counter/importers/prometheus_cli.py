"""``anomaly-counter backfill prometheus``: its options, and the command over
``importers.prometheus`` (read, then record, or print with --dry-run)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from ..counter import AnomalyCounter
from ..errors import ConfigurationError, InvalidInputError
from ..redact import redacted
from ..settings import AlertLabels, Settings
from .prometheus import (
    DEFAULT_BATCH,
    MAX_SINCE,
    MS,
    Progress,
    Summary,
    ahead_of,
    as_received,
    describe,
    read_history,
    record,
    utc_from_ms,
)
from .prometheus_api import Prometheus
from .prometheus_episodes import FiringEpisode
from .prometheus_syntax import LABEL_NAME, parse_duration, parse_matchers

DEFAULT_STEP = timedelta(minutes=1)  # Prometheus's default evaluation_interval
_NEEDS = "backfill needs the service extra: pip install 'anomaly-counter[service]'"


def since_argument(text: str) -> timedelta:
    try:
        since = parse_duration(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not timedelta(0) < since <= MAX_SINCE:
        raise argparse.ArgumentTypeError(
            f"{text!r}: at most 30d (the store refuses occurrences older than 30 days), above 0"
        )
    return since


def step_argument(text: str) -> timedelta:
    try:
        step = parse_duration(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not timedelta(seconds=1) <= step <= timedelta(days=1):
        raise argparse.ArgumentTypeError(f"{text!r}: the step must be 1s to 1d")
    return step


def _utf8(text: str) -> str:
    """The text, when it is UTF-8 (argv bytes that are not arrive as lone surrogates, which
    neither a query nor a fingerprint can encode)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        shown = text.encode(errors="backslashreplace").decode()
        raise argparse.ArgumentTypeError(f"{shown!r} is not UTF-8 text") from None
    return text


def match_argument(text: str) -> tuple[str, ...]:
    try:
        return parse_matchers(_utf8(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def external_label_argument(text: str) -> tuple[str, str]:
    name, sep, value = _utf8(text).partition("=")
    if not sep or not LABEL_NAME.fullmatch(name) or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE (a label name, a value)")
    return name, value


def url_argument(text: str) -> str:
    parts = urlsplit(_utf8(text))
    if parts.scheme not in ("http", "https") or not parts.hostname or not text.isprintable():
        raise argparse.ArgumentTypeError(f"{redacted(text)!r} is not an http(s) URL")
    try:
        port = parts.port
    except ValueError:  # (not a number, or past 65535)
        port = 0
    if port == 0:
        raise argparse.ArgumentTypeError(f"{redacted(text)!r}: the port must be 1 to 65535")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        # (the API's paths are added to the base URL: a query or fragment would not survive)
        raise argparse.ArgumentTypeError(
            f"{redacted(text)!r}: give Prometheus's base URL, without a query (?) or fragment (#)"
        )
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``backfill prometheus``."""
    parser.add_argument(
        "--url", required=True, type=url_argument, help="Prometheus's base URL (http://host:9090)"
    )
    parser.add_argument(
        "--since", type=since_argument, default=MAX_SINCE, metavar="DURATION",
        help="how far back: 30d (the default and the most), 12h, 90m",
    )  # fmt: skip
    parser.add_argument(
        "--match", type=match_argument, default=(), metavar="MATCHERS",
        help="""only the alerts these label matchers select, e.g. '{severity="page"}'""",
    )  # fmt: skip
    parser.add_argument(
        "--step", type=step_argument, default=DEFAULT_STEP, metavar="DURATION",
        help="the rules' evaluation interval (default 60s): the size of the queries, and an"
        " episode's end where the samples cannot tell it",
    )  # fmt: skip
    parser.add_argument(
        "--external-label", type=external_label_argument, action="append", default=[],
        metavar="NAME=VALUE",
        help="a label of Prometheus's external_labels (it adds them to the alerts it sends,"
        " not to ALERTS): needed for Alertmanager's fingerprints; repeat for each",
    )  # fmt: skip
    parser.add_argument(
        "--dry-run", action="store_true", help="print the episodes it would record; store nothing"
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH, metavar="N",
        help=f"episodes per write (default {DEFAULT_BATCH})",
    )  # fmt: skip


# -- the command ----------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _require_extra() -> None:
    try:
        import httpx  # noqa: F401
        import pydantic  # noqa: F401
    except ImportError:
        raise ConfigurationError(_NEEDS) from None


async def command(settings: Settings, args: argparse.Namespace) -> None:
    """``anomaly-counter backfill prometheus``: read, then record (or print, with --dry-run)."""
    _require_extra()
    if not 1 <= args.batch_size <= 10_000:
        raise InvalidInputError(f"--batch-size must be 1 to 10000, got {args.batch_size}")
    progress = Progress(sys.stderr)
    end_ms = (datetime.now(UTC) - utc_from_ms(0)) // MS
    step_ms = args.step // MS
    prometheus = Prometheus(args.url)
    try:
        history = await read_history(
            prometheus, args.match, end_ms - args.since // MS, end_ms, step_ms, progress
        )  # fmt: skip
    finally:
        await prometheus.aclose()
        progress.clear()
    found = history.episodes(end_ms, dict(args.external_label))
    skipped = (prometheus.skipped_series, prometheus.skipped_samples)
    note = ahead_of(found, datetime.now(UTC))
    if note:
        print(note, file=sys.stderr)
    if args.dry_run:
        _print_dry_run(found, settings.alert_labels, args.json, skipped)
        return
    summary = Summary()
    if found:  # (nothing found: no store to open, let alone to make)
        # History tells no one: notices of crossings long past would only be noise.
        quiet = replace(settings, project_channels={}, spool_dir="", strict=True)
        counter = AnomalyCounter.from_url(args.store, args.project, settings=quiet)
        try:
            summary = await record(
                counter, found, settings.alert_labels, args.batch_size, progress, sys.stderr
            )
        finally:
            progress.clear()
            await counter.aclose()
    summary.skipped_series, summary.skipped_samples = skipped
    print(json.dumps(asdict(summary)) if args.json else summary.text())


def _print_dry_run(
    found: Sequence[FiringEpisode], mapping: AlertLabels, as_json: bool, skipped: tuple[int, int]
) -> None:
    summary = Summary(series=len({e.fingerprint for e in found}), episodes=len(found), dry_run=True)
    summary.skipped_series, summary.skipped_samples = skipped
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for episode in found:
        received = as_received(episode, mapping, now)
        if received is None:
            summary.too_old += 1
            continue
        summary.recorded += 1
        row = {
            "at": _iso(received.at), "alertname": episode.alert_name, "labels": episode.labels,
            "resolved_at": _iso(received.resolved_at), "occurrence_id": received.occurrence_id,
        }  # fmt: skip
        rows.append(row)
        if not as_json:
            state = f"resolved {row['resolved_at']}" if received.resolved_at else "firing"
            print(f"{row['at']}  {describe(episode)}  {state}")
    if as_json:
        print(json.dumps({"summary": asdict(summary), "episodes": rows}, ensure_ascii=False))
    else:
        print(summary.text())
