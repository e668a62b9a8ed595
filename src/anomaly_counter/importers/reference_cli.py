"""``anomaly-counter import reference``: the command over ``importers.reference``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..counter import AnomalyCounter
from ..redact import redacted
from ..stores.sqlite import SQLiteStore, sqlite_path
from .reference import WHAT, ImportReport, import_reference

_TITLES = {"anomalies": "anomalies", "occurrences": "occurrences",
           "repairs": "repair attempts", "dispositions": "dispositions",
           "fixes": "permanent fixes"}  # fmt: skip


class _Commands(Protocol):
    def add_parser(self, name: str, **options: Any) -> argparse.ArgumentParser: ...


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown time zone {name!r}") from None


def add_parser(commands: _Commands) -> None:
    """The ``reference`` command of ``import``."""
    parser = commands.add_parser(
        "reference",
        help="import the reference design's Redis history (docs/import-reference.md)",
    )
    parser.add_argument(
        "--from", dest="source", required=True, metavar="URL",
        help="the reference's Redis: redis://host:port/db (rediss://, unix:// too)",
    )  # fmt: skip
    parser.add_argument(
        "--source-project", default="awoooi", metavar="ID",
        help="the reference's project id, its keys' prefix (default: awoooi, its default)",
    )  # fmt: skip
    parser.add_argument(
        "--source-timezone", type=_zone, metavar="ZONE",
        help="time zone of the reference's host, for the naive times it wrote (repairs, fixes;"
        " default: this machine's)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the report, write nothing")


def _no_store_file(counter: AnomalyCounter) -> bool:
    """An SQLite store whose file is not there, that the command must not make (a dry run's:
    the CLI's reads do not make one): it holds nothing, and is not opened."""
    store = counter.store
    return (
        isinstance(store, SQLiteStore)
        and not store.create
        and not Path(sqlite_path(counter.settings.store_url)).exists()
    )


async def command(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    report = await import_reference(
        counter,
        args.source,
        source_project=args.source_project,
        dry_run=args.dry_run,
        zone=args.source_timezone,
        target_empty=_no_store_file(counter),
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(text(report, redacted(counter.settings.store_url)))


def text(report: ImportReport, store: str) -> str:
    """The report as the command prints it."""
    verb = "Would import" if report.dry_run else "Imported"
    lines = [
        f"{verb} from the reference design at {report.source} (project"
        f" {report.source_project!r}) into project {report.project!r} of {store}:",
        f"anomalies the reference holds: {report.found}",
        "",
        f"{'':<18}{'imported' if not report.dry_run else 'to import':>10}{'already there':>15}",
    ]
    for what in WHAT:
        lines.append(f"{_TITLES[what]:<18}{report.imported[what]:>10}{report.present[what]:>15}")
    if report.skipped:
        lines += ["", "Not imported:"]
        for (what, why), n in sorted(report.skipped.items()):
            lines.append(f"  {n:>6} {_TITLES[what]}: {why}")
    if report.notes:
        lines += ["", "Notes:"]
        lines += [f"  {n:>6} {what}" for what, n in sorted(report.notes.items())]
    if report.dry_run:
        lines += ["", "Dry run: nothing was written."]
    return "\n".join(lines)
