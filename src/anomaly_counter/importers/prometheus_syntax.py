"""Prometheus's text, pure: its durations (``30d``, ``1d12h``), label matcher sets
(``{severity="page"}``) and the selectors the backfill queries with."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta

_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_STRING = r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'|`[^`]*`"
_MATCHER = re.compile(rf"\s*({LABEL_NAME.pattern})\s*(=~|!~|!=|=)\s*({_STRING})\s*")


def parse_duration(text: str) -> timedelta:
    """A duration as Prometheus writes one: ``30d``, ``12h``, ``90m``, ``1d12h``, ``45s``."""
    parts = _DURATION_PART.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration: {text!r} (such as 30d, 12h, 90m)")
    try:
        return timedelta(milliseconds=sum(int(n) * _UNIT_MS[unit] for n, unit in parts))
    except OverflowError:  # (past timedelta's 999,999,999 days)
        raise ValueError(f"{text!r} is too long a duration") from None


def parse_matchers(text: str) -> tuple[str, ...]:
    """The matchers of a label matcher set (``{severity="page",team=~"a|b"}``, braces
    optional), each as PromQL text; ``__name__`` and ``alertstate`` are the backfill's own."""
    body = text.strip()
    if body.startswith("{") or body.endswith("}"):
        if not (body.startswith("{") and body.endswith("}")):
            raise ValueError(f"unbalanced braces in {text!r}")
        body = body[1:-1]
    found: list[str] = []
    position = 0
    while body[position:].strip():
        match = _MATCHER.match(body, position)
        if match is None:
            raise ValueError(f'not a label matcher (name="value") at {body[position:]!r}')
        name, operator, value = match.groups()
        if name in ("__name__", "alertstate"):
            raise ValueError(f"{name} cannot be matched: the backfill reads ALERTS, firing")
        found.append(f"{name}{operator}{value}")
        position = match.end()
        if position < len(body):
            if body[position] != ",":
                raise ValueError(f"expected ',' between matchers at {body[position:]!r}")
            position += 1
    return tuple(found)


def selector(metric: str, matchers: Sequence[str], *own: str) -> str:
    return f"{metric}{{{','.join((*own, *matchers))}}}"
