"""What every command prints: an answer on stdout (a table or JSON), an error as one line on
stderr with its exit status. Shared by cli.py and the command modules beside it."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

PROG = "anomaly-counter"

_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
"""Control characters but the newline: labels come from alerts, and an escape sequence in
one would drive the reader's terminal (shown as \\x1b instead)."""


def emit(as_json: bool, data: Any, text: Callable[[], str]) -> None:
    if as_json:
        print(json.dumps(data, default=str, ensure_ascii=False, indent=2))
    else:
        print(_CONTROL.sub(_escaped, text()))


def _escaped(found: re.Match[str]) -> str:
    return f"\\x{ord(found.group()):02x}"


def fail(message: str, status: int) -> NoReturn:
    one_line = " ".join(message.splitlines())  # (a library's message may span several)
    sys.stderr.write(f"{PROG}: error: {one_line}\n")
    raise SystemExit(status)
