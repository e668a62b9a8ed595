"""How a store tells an occurrence it counted before from a new one, in memory that does not
grow with an anomaly's rate.

An occurrence can reach a store twice only when its writer sends it again: a spool replaying
it after an attempt whose answer was lost (the write landed, the reply did not), or replaying a
batch again after a crash before its checkpoint moved; or a caller retrying with the same id.
Each has its own mark, and the store keeps for it only what can still come again:

- **Numbered writes.** A spool numbers every occurrence it is handed without an id
  (``seq:<writer>:<n>``; the writer is random per process start) before its first attempt.
  With each write goes the writer's *floor* for that anomaly: the lowest of its numbers for it
  that is not settled yet. A number is settled once its answer came back, or, when the answer
  was lost and it was spooled, once its replay is committed; a settled number is never sent
  again. The store keeps per anomaly and writer the numbers at or above the floor, as runs
  (``lo-hi``): at most as many as the writer had unanswered for that anomaly at once, and one
  run for a batch's, not one per occurrence.
- **Replays.** A replayed record carries its spool's id and its position in the spool, which
  grows in replay order; the store keeps per anomaly and spool the highest position replayed.
  A replayed numbered record is also looked up among its writer's numbers (it may have landed
  before it was spooled), and noted apart, among the writer's replayed numbers, which are kept
  over the horizon rather than dropped by floors: its first attempt may yet land after it.
- **Ids a caller gives** (``occurrence_id``; the Alertmanager receiver's
  ``am:<fingerprint>:<startsAt>``): remembered per anomaly for ``dedup_horizon_days`` from their
  last sight, at most ``dedup_max_ids`` of them. An episode re-sent however often stays one.

Marks of a writer or spool not heard from over the horizon are forgotten (hourly, per anomaly).
The scripts implement the same rules (``seen_before`` in ``lua/common.lua``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from .base import RecordRequest, id_digest

MAX_HELD = 1_000
"""Runs of numbers held per anomaly and writer at most (past it, the lowest are dropped):
reached only by a writer with that many gaps among its unanswered numbers for one anomaly."""

LOOK_UP_ONLY = -1
"""The floor of a replayed numbered record (and of a look-up): no floor of its writer's."""

KEEP_ALL = 0
"""The floor that drops none: replayed numbers are kept over the horizon, not by floors."""


def spool_position(segment: int, offset: int) -> str:
    """A record's place in a spool, fixed-width so that text order is replay order."""
    return f"{segment:012d}{offset:012d}"


def numbered_step(held: str, number: int, floor: int) -> tuple[bool, str | None]:
    """Whether ``number`` is among a writer's ``held`` numbers (runs ``lo-hi``, comma-separated,
    in order), and what to hold after it (None: unchanged): those at or above ``floor``, and
    ``number``, as runs (a batch's numbers for one anomaly are mostly one run)."""
    runs: list[list[int]] = []
    for part in filter(None, held.split(",")):
        low, high = (int(n) for n in part.split("-"))
        if low <= number <= high:
            return True, None
        if high >= floor:
            runs.append([max(low, floor), high])
    if floor == LOOK_UP_ONLY:
        return False, None
    merged: list[list[int]] = []
    for low, high in sorted([*runs, [number, number]]):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return False, ",".join(f"{low}-{high}" for low, high in merged[-MAX_HELD:])


def numbered_marks(
    held: str, late: str, number: int, floor: int
) -> tuple[bool, str | None, str | None]:
    """Whether a writer's ``number`` came before, among its unsettled numbers (``held``) or
    those replayed (``late``), and what each holds after it (None: unchanged). A replay
    (``floor`` LOOK_UP_ONLY) is noted among the replayed ones, kept over the horizon: its first
    attempt, whose answer was lost, may still land after it (a frozen server resuming)."""
    if numbered_step(late, number, LOOK_UP_ONLY)[0]:
        return True, None, None
    seen, after = numbered_step(held, number, floor)
    if seen:
        return True, None, None
    if floor == LOOK_UP_ONLY:
        return False, None, numbered_step(late, number, KEEP_ALL)[1]
    return False, after, None


def sequence_in(record: Mapping[str, Any]) -> tuple[str, int] | None:
    """The (writer, number) a spooled record was sent with before it was spooled, if any."""
    sequence = record.get("sequence")
    return (str(sequence[0]), int(sequence[1])) if sequence else None


def mark_of(request: RecordRequest) -> str:
    """The script's mark of an occurrence (see ``seen_before`` in lua/common.lua)."""
    mark = ""
    if request.sequence is not None:
        writer, number = request.sequence
        mark = f"w{writer}:{number}:{request.floor}"
    elif request.occurrence_id:
        mark = "i" + id_digest(request.occurrence_id)
    if request.replayed:
        return f"r{request.replayed}|{mark}"
    return mark


class Sequencer:
    """Numbers one process's spooled-store writes and knows which are not settled."""

    def __init__(self) -> None:
        self.writer = secrets.token_hex(8)
        self._next = 1
        self._open: dict[str, set[int]] = {}  # unsettled numbers by anomaly
        self._anomaly_of: dict[int, str] = {}

    def number(self, requests: Sequence[RecordRequest]) -> Sequence[RecordRequest]:
        """Each occurrence without an id numbered (open until settled), with its floor."""
        if all(r.occurrence_id for r in requests):
            return requests
        numbers: list[int | None] = []
        for request in requests:
            if request.occurrence_id:
                numbers.append(None)
                continue
            number, self._next = self._next, self._next + 1
            self._open.setdefault(request.anomaly_key, set()).add(number)
            self._anomaly_of[number] = request.anomaly_key
            numbers.append(number)
        floors = {key: min(self._open[key]) for key in {r.anomaly_key for r in requests}}
        return [
            request
            if number is None
            else replace(
                request,
                occurrence_id=f"seq:{self.writer}:{number}",
                sequence=(self.writer, number),
                floor=floors[request.anomaly_key],
            )
            for request, number in zip(requests, numbers, strict=True)
        ]

    def settle(self, requests: Iterable[RecordRequest]) -> None:
        """These were answered: their numbers will not be sent again."""
        self.settle_numbers(r.sequence[1] for r in requests if r.sequence is not None)

    def settle_numbers(self, numbers: Iterable[int]) -> None:
        for number in numbers:
            anomaly = self._anomaly_of.pop(number, None)
            if anomaly is None:
                continue
            open_numbers = self._open[anomaly]
            open_numbers.discard(number)
            if not open_numbers:
                del self._open[anomaly]

    def settle_replayed(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Spooled records whose replay is committed: this process's numbers among them."""
        sequences = (sequence_in(record) for record in records)
        self.settle_numbers(s[1] for s in sequences if s is not None and s[0] == self.writer)

    @property
    def unsettled(self) -> int:
        return len(self._anomaly_of)
