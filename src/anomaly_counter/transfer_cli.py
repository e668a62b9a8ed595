"""The ``export`` and ``import jsonl`` commands: files and messages around anomaly_counter.transfer
(the command line's parsers and dispatch are in cli.py)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import IO

from .counter import AnomalyCounter
from .errors import InvalidInputError
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


async def export_command(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    if args.output == "-":
        await export_project(counter, sys.stdout, tokens=args.tokens)
        return
    # written beside the file and renamed when whole: a failed export leaves no file that
    # looks like one
    target = Path(args.output)
    partial = target.with_name(target.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as out:
            moved = await export_project(counter, out, tokens=args.tokens)
        os.replace(partial, target)
    except OSError as exc:
        raise InvalidInputError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    _say(args, moved, f"exported {_what(moved)} of project {moved.project} to {args.output}")


async def import_jsonl_command(counter: AnomalyCounter, args: argparse.Namespace) -> None:
    explicit = args.project is not None
    if args.file == "-":
        # read twice (checked whole, then written): stdin is kept aside first
        with tempfile.TemporaryFile("w+", encoding="utf-8") as kept:
            shutil.copyfileobj(sys.stdin, kept)
            kept.seek(0)
            moved = await _import(counter, kept, "-", explicit)
    else:
        with _opened(args.file) as source:
            moved = await _import(counter, source, args.file, explicit)
    _say(args, moved, f"imported {_what(moved)} into project {moved.project}")


def _opened(path: str) -> IO[str]:
    """The file to import, open (a blocking open: the command does nothing else meanwhile)."""
    try:
        return Path(path).open(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}") from None


async def _import(counter: AnomalyCounter, source: IO[str], name: str, explicit: bool) -> Moved:
    try:
        return await import_project(counter, source, name=name, explicit=explicit)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{name}: not UTF-8 text ({exc.reason})") from None


def _what(moved: Moved) -> str:
    tokens = f" and {moved.tokens} tokens" if moved.tokens else ""
    return f"{moved.anomalies} anomalies{tokens}"


def _say(args: argparse.Namespace, moved: Moved, text: str) -> None:
    print(json.dumps(asdict(moved)) if args.json else text)
