"""The reference design itself, loaded from its page, so that tests can compare our answers with
its own on the same data (tests/test_import_reference.py).

The page (``anomaly_counter.seed.txt``, see /work/shared/reference/seed-notes.md) is the source
file as a web page showed it: a page header above the code, and every line's indentation lost.
Python needs it back, so this module restores it: a line ending with ``:`` opens a block, a
``return``/``raise``/``continue``/``break``/``pass`` closes the innermost one, ``elif``/``else``/
``except``/``finally`` line up with their statement, methods (``self``, or under
``@staticmethod``) sit in their class, other ``def``s and ``class``es at the top. What no rule
can know (a block that ends without such a statement) is given per line in ``_DEPTHS``, for
this version of the page only (its SHA-256 is checked). The restored text is compiled and run
unchanged: no line of it is rewritten, and nothing of the reference is copied into this tree.

Its one import from its platform (``src.core.redis_client``) sits inside
``get_anomaly_counter``, which the tests never call, so nothing is stubbed; ``redis.asyncio`` is
imported only for type checking, ``structlog`` is installed here. Its clock is
``datetime.now()`` with no parameter: ``set_now`` replaces the module's ``datetime`` name with a
subclass whose ``now()`` answers a chosen (naive, local) time, as the reference's own host would.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import types
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

# beside the clone, as CI has it (../shared), unless told otherwise
_BESIDE = Path(__file__).resolve().parents[2] / "shared/reference/anomaly_counter.seed.txt"
PAGE = Path(os.environ.get("ANOMALY_COUNTER_REFERENCE", str(_BESIDE)))
PAGE_SHA256 = "227b4719499bc97eaa4532fc936b5f3cc00d172333854ddbd5af1d3f93a03e67"

# Statements whose depth no rule can tell (the block before them ended without a return),
# by their line number in the page: depth 0 is the module, 1 a class body, 2 a method body.
_DEPTHS = {
    83: 0,  # after `if TYPE_CHECKING:` and its import
    165: 2,  # _redis_get_with_fallback: its return, after `if val is None:`
    317: 2,  # _record_anomaly_impl: after `if not exists(metadata)...:`
    398: 1,  # VALID_DISPOSITION_TYPES, after record_repair_attempt's except
    444: 3,  # get_disposition_stats: its return, after `if not raw:`
    484: 3,  # get_all_disposition_stats: `if keys:`, after the first scan loop
    490: 4,  # ... `strip_prefix = legacy_strip`, after the second scan loop (in else)
    492: 3,  # ... `if not keys:`, after the else
    498: 3,  # ... `results = ...`, after its loop
    504: 3,  # ... `meta_pipe = ...`, after its loop
    507: 3,  # ... `meta_results = ...`, after its loop
    519: 4,  # ... `alert_name = ""`, after `for k in total_summary:`
    533: 3,  # ... `by_anomaly.sort(...)`, after the loop over the results
    536: 2,  # ... its final return, after the except
    592: 3,  # get_repair_success_rate: `total = 0`, after `if not history:`
    600: 3,  # ... its return, after the loop
    629: 3,  # get_all_repair_stats: `stats = {}`, after `if not history:`
    635: 4,  # ... `stats[action]["total"] += 1`, after `if action not in stats:`
    639: 3,  # ... the success-rate loop, after the counting loop
    644: 3,  # ... its return, after that loop
    664: 3,  # get_frequency: `now = datetime.now()`, after the key fallback
    755: 0,  # module level: `_anomaly_counter = None`
    765: 1,  # get_anomaly_counter: its return, after `if _anomaly_counter is None:`
}
_CLOSERS = re.compile(r"(return|raise|continue|break|pass)\b")
_CLAUSES = {"elif": ("if", "elif"), "else": ("if", "elif", "for", "while", "try", "except"),
            "except": ("try", "except"), "finally": ("try", "except", "else")}  # fmt: skip
_METHOD_DECORATORS = ("@staticmethod", "@classmethod", "@property")


def _scan(line: str, state: dict[str, Any]) -> str:
    """Follow brackets and strings through one line; the line without its comment."""
    code = []
    i = 0
    while i < len(line):
        quote = state["quote"]
        if quote:
            if line.startswith(quote, i) and (i == 0 or line[i - 1] != "\\"):
                state["quote"] = ""
                i += len(quote)
                code.append(quote)
                continue
            code.append(line[i])
            i += 1
            continue
        ch = line[i]
        if ch == "#":
            break
        if ch in "\"'":
            triple = line[i : i + 3]
            state["quote"] = triple if triple in ('"""', "'''") else ch
            code.append(state["quote"])
            i += len(state["quote"])
            continue
        if ch in "([{":
            state["depth"] += 1
        elif ch in ")]}":
            state["depth"] -= 1
        code.append(ch)
        i += 1
    if state["quote"] in ('"', "'"):  # (a one-line string cannot run on)
        state["quote"] = ""
    return "".join(code).rstrip()


def restore(page: str) -> str:
    """The page's code with its indentation back (see the module's docstring)."""
    lines = page.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == '"""')
    out: list[str] = []
    blocks: list[str] = []  # the keyword of each open block, innermost last
    closing = False  # the last statement closed its block
    state: dict[str, Any] = {"quote": "", "depth": 0}
    statement: list[str] = []  # the code of the logical line being read
    previous = ""  # the first line of the previous statement
    for number, line in enumerate(lines[start:], start=start + 1):
        text = line.strip()
        continuing = bool(statement) or bool(state["quote"])
        if continuing or not text or text.startswith("#"):
            out.append("    " * (len(blocks) + (1 if continuing else 0)) + text)
        else:
            word = re.match(r"\w+", text)
            keyword = word.group(0) if word else ""
            clause = keyword in _CLAUSES
            if closing and blocks and not clause:  # (a clause finds its statement itself)
                blocks.pop()
            closing = False
            if number in _DEPTHS:
                del blocks[_DEPTHS[number] :]
            elif clause:
                while blocks and blocks[-1] not in _CLAUSES[keyword]:
                    blocks.pop()
                if blocks:
                    blocks.pop()
            elif text.startswith("class "):
                blocks.clear()
            elif text.startswith("@"):
                del blocks[1 if text.startswith(_METHOD_DECORATORS) else 0 :]
            elif re.match(r"(async )?def ", text) and not previous.startswith("@"):
                method = re.match(r"(async )?def \w+\(\s*(self|cls)\b", text) or (
                    text.endswith("(") and lines[number].strip().startswith("self")
                )
                del blocks[1 if method else 0 :]
            out.append("    " * len(blocks) + text)
            previous = text
        code = _scan(text, state)
        if state["quote"]:
            statement.append(code)
            continue
        statement.append(code)
        if state["depth"] > 0:
            continue
        logical = " ".join(statement)
        statement = []
        head = logical.lstrip()
        if head.endswith(":") and not head.startswith("@"):
            first = re.match(r"(async )?([a-z]+)", head)
            blocks.append(first.group(2) if first else "")
        elif _CLOSERS.match(head):
            closing = True
    return "\n".join(out) + "\n"


def load() -> types.ModuleType:
    """The reference module, loaded from its page (skipped when the page is not here)."""
    if not PAGE.exists():
        if os.environ.get("CI") == "true":  # (CI has it beside the clone: a missing page fails)
            pytest.fail(f"the reference design's page is not at {PAGE}")
        pytest.skip(f"the reference design's page is not at {PAGE} (ANOMALY_COUNTER_REFERENCE)")
    raw = PAGE.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    assert digest == PAGE_SHA256, f"{PAGE} changed ({digest}): check _DEPTHS against it"
    source = restore(raw.decode("utf-8"))
    name = "reference_anomaly_counter"
    module = types.ModuleType(name)
    module.__file__ = str(PAGE)
    sys.modules[name] = module  # (its dataclass looks its module up there)
    exec(compile(source, f"{PAGE} (indentation restored)", "exec"), module.__dict__)
    # Its log lines (one per call, to structlog's default printer) would bury a failure's
    # report: its logger keeps its calls and prints nothing.
    module.logger = structlog.wrap_logger(structlog.ReturnLogger())
    return module


def set_now(module: types.ModuleType, moment: datetime) -> None:
    """Make the reference's ``datetime.now()`` answer ``moment`` (aware), as the naive local
    time its host would read; ``datetime.fromtimestamp`` stays the real one."""

    class _Frozen(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:  # (the reference calls it without a zone)
            return cls.fromtimestamp(moment.timestamp(), tz)

    module.datetime = _Frozen  # type: ignore[attr-defined]
