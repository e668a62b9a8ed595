"""The ``export`` and ``import jsonl`` commands: files and messages around anomaly_counter.transfer
(the command line's parsers and dispatch are in cli.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import IO

from .counter import AnomalyCounter
from .errors import InvalidInputError
from .redact import redacted
from .settings import Settings
from .stores.sqlite import sqlite_path
from .transfer import Moved, export_project, import_project


def add_export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", "-o", default="-", metavar="FILE", help="where to write it (default: -, stdout)"
    )
    parser.add_argument(
        "--tokens", action="store_true", help="with the project's API tokens (as digests)"
    )


def add_import_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="an export (- for stdin)")
    parser.add_argument(
        "--replace",
        action="store_true",
        help="replace the anomalies of the file the project holds already (an import again"
        " after one that stopped half-way); without it, such an import is refused",
    )


async def export_command(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    try:
        if args.output == "-":
            await export_project(counter, sys.stdout, tokens=args.tokens)
            sys.stdout.flush()  # (a full disk is said here, not lost at exit)
            return
        target = Path(args.output)
        _not_the_store(counter, args, target)
        if _replaceable(target):
            moved = await _export_renamed(counter, target, args.tokens)
        else:
            # a device, a pipe, a symbolic link (/dev/stdout, /dev/fd/3): written through,
            # never renamed over
            with _written(target) as out:
                moved = await export_project(counter, out, tokens=args.tokens)
    except OSError as exc:
        raise InvalidInputError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    if not (moved.anomalies or moved.tokens or moved.summary_days):  # (a mistyped --project?)
        where = redacted(args.store or counter.settings.store_url)
        sys.stderr.write(
            f"note: project {moved.project!r} in {where} holds nothing: the export is empty"
            " (check --project and --store)\n"
        )
    _say(args, moved, f"exported {_what(moved)} of project {moved.project} to {args.output}")


async def _export_renamed(counter: AnomalyCounter, target: Path, tokens: bool) -> Moved:
    """Written beside the file and renamed when whole: a failed export leaves no file that
    looks like one. The file it is written in is a new one, made for it (O_EXCL: never a file
    or a link that was there, such as the store itself under that name)."""
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            moved = await export_project(counter, out, tokens=tokens)
        os.replace(name, target)
    finally:
        with contextlib.suppress(FileNotFoundError):  # (renamed, or not)
            os.unlink(name)
    return moved


def _written(path: Path) -> IO[str]:
    """The output, open (a blocking open: the command does nothing else meanwhile)."""
    return path.open("w", encoding="utf-8")


def _replaceable(target: Path) -> bool:
    """Whether the output is a regular file, or nothing yet (what a rename may replace)."""
    try:
        return stat.S_ISREG(target.lstat().st_mode)
    except FileNotFoundError:
        return True


def _not_the_store(counter: AnomalyCounter, args: argparse.Namespace, target: Path) -> None:
    """InvalidInputError when the output is the SQLite store's own file (or its journal)."""
    url = args.store or counter.settings.store_url
    if not url.startswith("sqlite:"):
        return
    database = Path(sqlite_path(url))
    for file in (database, *(database.with_name(database.name + s) for s in _SIDE_FILES)):
        if os.path.realpath(file) == os.path.realpath(target) or (
            file.exists() and target.exists() and os.path.samefile(file, target)
        ):
            raise InvalidInputError(
                f"--output {args.output} is the store's own file ({file}): name another file"
            )


_SIDE_FILES = ("-wal", "-shm", "-journal")


async def import_jsonl_command(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    explicit = args.project is not None or counter.settings.project != _DEFAULT_PROJECT
    if args.file == "-":
        moved = await _import(counter, sys.stdin, "-", explicit, args.replace)
    else:
        with _opened(args.file) as source:
            moved = await _import(counter, source, args.file, explicit, args.replace)
    _say(args, moved, f"imported {_what(moved)} into project {moved.project}")


_DEFAULT_PROJECT = Settings().project
"""The project of no setting: one named in the settings (ANOMALY_COUNTER_PROJECT, ``project``
in the file) counts as named, as --project does."""


def _opened(path: str) -> IO[str]:
    """The file to import, open (a blocking open: the command does nothing else meanwhile)."""
    try:
        return Path(path).open(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}") from None


async def _import(
    counter: AnomalyCounter, source: IO[str], name: str, explicit: bool, replace: bool
) -> Moved:
    try:
        return await import_project(counter, source, name=name, explicit=explicit, replace=replace)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{name}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read {name}: {exc.strerror or exc}") from None


def _what(moved: Moved) -> str:
    tokens = f" and {moved.tokens} tokens" if moved.tokens else ""
    return f"{moved.anomalies} anomalies{tokens}"


def _say(args: argparse.Namespace, moved: Moved, text: str) -> None:
    print(json.dumps(asdict(moved)) if args.json else text)
