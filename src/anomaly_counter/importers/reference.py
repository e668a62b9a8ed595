"""Import the reference design's history (its Redis layout) into a store of ours.

After an import, each of our reads answers what the reference answers for the same data
(docs/import-reference.md says where it cannot, and why). It writes through the ``Store``
interface, as the counter's own writes do (its ``Recording`` and request helper), not through
the counter's public write methods: an imported anomaly may hold repairs and no event.

Running it again changes nothing: every write carries an id made from the source data, and,
since the stores forget ids after ``dedup_horizon_days``, every anomaly is first compared
with what the store holds of it (its kept occurrence times, its last 100 repairs, its
disposition counts, its fix): only what the store lacks is written. So a later import writes
exactly what the reference gained since, whenever it runs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from typing import Any

from .. import validation
from ..counter import AnomalyCounter, _record_request
from ..errors import InvalidInputError, LimitExceededError, OccurrenceTimeError
from ..model import DISPOSITION_TYPES
from ..redact import redacted
from ..signature import hash_signature
from ..stores.base import (
    DAY_MS,
    FIX_VALIDITY_MS,
    REPAIR_HISTORY_LENGTH,
    AnomalyWrite,
    Recording,
    RecordRequest,
    Snapshot,
    Store,
)
from ..windows import WindowState
from .reference_layout import ReferenceAnomaly, Repair, read_layout

WRITER = "reference-import"
"""Who the timeline says wrote what the import writes."""
NO_DESCRIPTION = "(marked in the reference design; its description was not kept)"
_BATCH = 200  # anomalies planned and written together
_CHUNK = 2_000  # occurrences per store call
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
MAX_DISPOSITIONS = 43_200
"""Dispositions of one type imported per anomaly at most: one a minute for 30 days (our
retention), more than any real history holds (each is a resolution of an alert). A count
past it is junk, or a test's: its writes (one each) would take hours."""
WHAT = ("anomalies", "occurrences", "repairs", "dispositions", "fixes")

# Why something was not imported (what, why): the report's lines.
OLD = "older than 30 days: past our retention"
FUTURE = "more than 5 minutes in the future"
METADATA_ONLY = "metadata only: the reference answers nothing from it"
BAD_KEY = "not a valid anomaly key"
REFUSED = "refused: the project holds max_anomalies anomalies already"
UNREADABLE = "keys of another type than the reference's: not read"
LOST_REPAIRS = "counted by the reference but no longer in its history (it keeps the last 100)"
BAD_REPAIRS = "history entries that are not JSON with an action and a time"
MAX_ACTIONS = "actions past max_actions of their anomaly"
UNKNOWN_TYPES = "not one of the five disposition types"
BAD_COUNTS = "disposition fields whose count is not a whole number >= 0 (one each)"
PAST_BOUND = f"past {MAX_DISPOSITIONS:,} of one type (one a minute for 30 days): not a real history"
BAD_EVENTS = "events whose score is not a time (infinite, or past the year 9999)"
LATER_FIX = "the store holds a later fix"
EXPIRED_FIX = "older than 90 days: no longer in force"
# What the report notes (done, but said)
UNLABELED = "anomalies without labels (metadata expired): stored under their key, no signature"
NOT_STORABLE = "anomalies whose signature cannot be stored as it is: stored without it"
LEGACY = "anomalies read (in part) from legacy, unprefixed keys"
SHADOWED = "legacy keys not read: the prefixed key of the same kind is there (as the reference)"
NO_TTL = "anomalies whose dispositions have no lifetime: recorded at the import time"
FIX_UNTIMED = "fixes without their time: recorded at the import time"


@dataclass(slots=True)
class ImportReport:
    """What an import wrote (``dry_run``: would write), found already there, and skipped."""

    source: str
    source_project: str
    project: str
    dry_run: bool
    found: int = 0  # anomalies the reference holds
    imported: Counter[str] = field(default_factory=Counter)  # by WHAT
    present: Counter[str] = field(default_factory=Counter)  # already in the store, by WHAT
    skipped: Counter[tuple[str, str]] = field(default_factory=Counter)  # (what, why)
    notes: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "source_project": self.source_project,
            "project": self.project,
            "dry_run": self.dry_run,
            "anomalies_found": self.found,
            "imported": {what: self.imported[what] for what in WHAT},
            "already_present": {what: self.present[what] for what in WHAT},
            "skipped": [
                {"what": what, "why": why, "count": n}
                for (what, why), n in sorted(self.skipped.items())
            ],
            "notes": [{"what": what, "count": n} for what, n in sorted(self.notes.items())],
        }


@dataclass(slots=True)
class _Plan:
    """What one anomaly needs written."""

    anomaly: ReferenceAnomaly
    fix: tuple[int, str] | None = None  # (at, description)
    occurrences: list[RecordRequest] = field(default_factory=list)
    repairs: list[tuple[Repair, str]] = field(default_factory=list)  # with their write ids
    # (type, first, last): the dispositions numbered first..last of that type on its day
    dispositions: list[tuple[str, int, int]] = field(default_factory=list)
    dispositions_ms: int = 0
    there: int = 0  # what it found in the store already

    @property
    def empty(self) -> bool:
        return not (self.fix or self.occurrences or self.repairs or self.dispositions)

    @property
    def disposition_count(self) -> int:
        return sum(last - first + 1 for _, first, last in self.dispositions)


async def import_reference(
    counter: AnomalyCounter,
    source_url: str,
    *,
    source_project: str = "awoooi",
    dry_run: bool = False,
    zone: tzinfo | None = None,
    now: datetime | None = None,
    target_empty: bool = False,
) -> ImportReport:
    """Import the reference's ``source_project`` at ``source_url`` (a Redis URL) into the
    counter's project and store, as of ``now`` (default: the present). Its naive local times
    are read in ``zone`` (None: this machine's). ``dry_run``: write nothing, report what would
    be written. ``target_empty``: the store is known to hold nothing (it is not read)."""
    if not source_project:
        raise InvalidInputError("the reference's project id must not be empty")
    moment = validation.aware(now) if now is not None else datetime.now(UTC)
    layout = await read_layout(source_url, source_project, zone)
    made = counter._recording(moment)
    # Imported crossings are history: the timeline tells them, no notice goes out for them.
    recording = made._replace(policy=replace(made.policy, outbox_max=0))
    report = ImportReport(
        redacted(source_url), source_project, counter.project_id, dry_run, len(layout.anomalies)
    )
    if layout.bad_names:
        report.skipped[("anomalies", BAD_KEY)] += layout.bad_names
    importer = _Importer(counter, recording, report, moment)
    for start in range(0, len(layout.anomalies), _BATCH):
        batch = layout.anomalies[start : start + _BATCH]
        plans = await importer.plan(batch, target_empty)
        if not dry_run:
            await importer.write(plans)
        else:
            for plan in plans:
                importer.count(plan)
    return report


class _Importer:
    def __init__(
        self,
        counter: AnomalyCounter,
        recording: Recording,
        report: ImportReport,
        now: datetime,
    ) -> None:
        self.store: Store = counter.store
        self.project = counter.project_id
        self.recording = recording
        self.report = report
        self.now = now
        self.now_ms = recording.now_ms
        self.max_actions = counter.settings.limits_for(self.project).max_actions

    # -- planning: the reference's data less what the store holds -------------------------

    async def plan(self, batch: Sequence[ReferenceAnomaly], target_empty: bool) -> list[_Plan]:
        report = self.report
        chosen: list[ReferenceAnomaly] = []
        for anomaly in batch:
            if anomaly.legacy:
                report.notes[LEGACY] += 1
            if anomaly.shadowed:
                report.notes[SHADOWED] += len(anomaly.shadowed)
            if anomaly.unreadable:
                report.skipped[("anomalies", UNREADABLE)] += 1
            if not anomaly.answered:
                if not anomaly.unreadable:
                    report.skipped[("anomalies", METADATA_ONLY)] += 1
                continue
            try:
                validation.anomaly_key(anomaly.key)
            except InvalidInputError:
                report.skipped[("anomalies", BAD_KEY)] += 1
                continue
            chosen.append(anomaly)
        keys = [a.key for a in chosen]
        n = len(keys)
        snapshots: list[Snapshot | None] = [None] * n
        states: list[WindowState | None] = [None] * n
        histories: list[list[dict[str, Any]]] = [[] for _ in keys]
        tried: list[dict[str, tuple[int, int]]] = [{} for _ in keys]
        held: list[dict[str, int]] = [{} for _ in keys]
        if keys and not target_empty:
            snapshots = await self.store.read(self.project, keys, self.now_ms, self.now_ms)
            states = await self.store.states(self.project, keys)
            with_repairs = [i for i, a in enumerate(chosen) if a.repairs]
            some = [keys[i] for i in with_repairs]
            for i, h, t in zip(
                with_repairs,
                await self.store.repair_histories(self.project, some) if some else [],
                await self.store.repair_stats_many(self.project, some, self.now_ms) if some else [],
                strict=True,
            ):
                histories[i], tried[i] = h, t
            for i, anomaly in enumerate(chosen):
                if anomaly.dispositions:
                    held[i] = await self.store.disposition_stats(self.project, keys[i], self.now_ms)
        return [
            self._plan(a, snapshots[i], states[i], histories[i], tried[i], held[i])
            for i, a in enumerate(chosen)
        ]

    def _plan(
        self,
        anomaly: ReferenceAnomaly,
        snapshot: Snapshot | None,
        state: WindowState | None,
        history: list[dict[str, Any]],
        tried: dict[str, tuple[int, int]],
        held: dict[str, int],
    ) -> _Plan:
        plan = _Plan(anomaly)
        before = self.report.present.total()
        if anomaly.fix:
            plan.fix = self._fix(anomaly, snapshot)
        if anomaly.bad_events:
            self.report.skipped[("occurrences", BAD_EVENTS)] += anomaly.bad_events
        if anomaly.events:
            plan.occurrences = self._occurrences(anomaly, state)
        if anomaly.repairs or anomaly.bad_repairs or anomaly.repair_count:
            plan.repairs = self._repairs(anomaly, history, tried)
        if anomaly.bad_counts:
            self.report.skipped[("dispositions", BAD_COUNTS)] += anomaly.bad_counts
        if anomaly.dispositions:
            self._dispositions(plan, held)
        plan.there = self.report.present.total() - before
        return plan

    def _time_skip(self, what: str, at_ms: int, n: int = 1) -> bool:
        """Whether a time is refused as the library refuses it (``n`` counted as skipped)."""
        try:
            validation.occurrence_time(datetime.fromtimestamp(at_ms / 1000, UTC), self.now)
        except (OccurrenceTimeError, OverflowError, ValueError, OSError):
            self.report.skipped[(what, OLD if at_ms < self.now_ms else FUTURE)] += n
            return True
        return False

    def _fix(self, anomaly: ReferenceAnomaly, snapshot: Snapshot | None) -> tuple[int, str] | None:
        at = anomaly.fix_ms
        if at is None:
            self.report.notes[FIX_UNTIMED] += 1
            at = self.now_ms
        at = min(at, self.now_ms)
        text = _CONTROL.sub(" ", anomaly.fix_description or "").strip()
        text = text[: validation.MAX_DESCRIPTION_CHARS] or NO_DESCRIPTION
        if self.now_ms - at >= FIX_VALIDITY_MS:
            self.report.skipped[("fixes", EXPIRED_FIX)] += 1
            return None
        if snapshot is not None and snapshot.fix_at_ms is not None:
            if snapshot.fix_at_ms == at and snapshot.fix_description == text:
                self.report.present["fixes"] += 1
                return None
            if snapshot.fix_at_ms > at:
                self.report.skipped[("fixes", LATER_FIX)] += 1
                return None
        return at, text

    def _signature(self, anomaly: ReferenceAnomaly) -> dict[str, Any]:
        """The labels to store its occurrences with: its first event's, as the reference
        kept them; none when they expired or cannot be stored under its key."""
        if anomaly.signature is None:
            self.report.notes[UNLABELED] += 1
            return {}
        try:
            labels = validation.signature(anomaly.signature)
        except InvalidInputError:
            labels = {}
        if not labels or hash_signature(labels) != anomaly.key:
            self.report.notes[NOT_STORABLE] += 1
            return {}
        return labels

    def _occurrences(
        self, anomaly: ReferenceAnomaly, state: WindowState | None
    ) -> list[RecordRequest]:
        # The store keeps its latest occurrence times exactly (the tail), and the latest one
        # it let go of: an event found in the tail, or not after that one, is there already.
        kept = Counter(state.tail) if state is not None else Counter[int]()
        evicted = state.evicted_max if state is not None else None
        wanted: list[tuple[str, int]] = []
        kept_any = False
        for member, at in anomaly.events:
            if self._time_skip("occurrences", at):
                continue
            kept_any = True
            if kept[at] > 0:
                kept[at] -= 1
            elif evicted is None or at > evicted:
                wanted.append((member, at))
                continue
            self.report.present["occurrences"] += 1
        if not kept_any:
            return []
        # (noted again when they are all there already: a later import says the same)
        labels = self._signature(anomaly)
        # (the member is the event's own text in the reference: unique within its set)
        return [_record_request(anomaly.key, labels, at, f"reference:{m}") for m, at in wanted]

    def _repairs(
        self,
        anomaly: ReferenceAnomaly,
        history: list[dict[str, Any]],
        tried: dict[str, tuple[int, int]],
    ) -> list[tuple[Repair, str]]:
        report = self.report
        lost = anomaly.repair_count - len(anomaly.repairs) - anomaly.bad_repairs
        if lost > 0:
            report.skipped[("repairs", LOST_REPAIRS)] += lost
        if anomaly.bad_repairs:
            report.skipped[("repairs", BAD_REPAIRS)] += anomaly.bad_repairs
        kept = Counter((h["at_ms"], h["action"], bool(h["success"])) for h in history)
        # a full history of ours shows nothing older than its oldest: taken as there
        shown_from = (
            min(h["at_ms"] for h in history) if len(history) >= REPAIR_HISTORY_LENGTH else None
        )
        ordinal: Counter[str] = Counter()
        wanted: list[tuple[Repair, str]] = []
        for repair in anomaly.repairs:
            ordinal[repair.raw] += 1  # (two identical entries: two attempts, two ids)
            write_id = f"reference:repair:{repair.raw}:{ordinal[repair.raw]}"
            if self._time_skip("repairs", repair.at_ms):
                continue
            try:
                validation.action(repair.action)
            except InvalidInputError:
                report.skipped[("repairs", BAD_REPAIRS)] += 1
                continue
            mark = (repair.at_ms, repair.action, repair.success)
            if kept[mark] > 0:
                kept[mark] -= 1
            elif shown_from is None or repair.at_ms > shown_from:
                wanted.append((repair, write_id))
                continue
            report.present["repairs"] += 1
        # The library's limit of action names per anomaly: the most tried ones first.
        allowed = set(tried)
        for action, _ in Counter(r.action for r, _ in wanted).most_common():
            if action not in allowed and len(allowed) < self.max_actions:
                allowed.add(action)
        chosen = [(r, w) for r, w in wanted if r.action in allowed]
        if len(chosen) < len(wanted):
            report.skipped[("repairs", MAX_ACTIONS)] += len(wanted) - len(chosen)
        return chosen

    def _dispositions(self, plan: _Plan, held: dict[str, int]) -> None:
        """Its counts have no times: they are recorded at the hash's last write, which its
        lifetime tells (the reference sets it to 35 days at each disposition)."""
        anomaly, report = plan.anomaly, self.report
        at = anomaly.dispositions_ms
        if at is None:
            report.notes[NO_TTL] += 1
            at = self.now_ms
        plan.dispositions_ms = at = min(at, self.now_ms)
        known = {k: n for k, n in anomaly.dispositions.items() if k in DISPOSITION_TYPES}
        unknown = sum(anomaly.dispositions.values()) - sum(known.values())
        if unknown:
            report.skipped[("dispositions", UNKNOWN_TYPES)] += unknown
        past = sum(max(0, n - MAX_DISPOSITIONS) for n in known.values())
        if past:
            report.skipped[("dispositions", PAST_BOUND)] += past
        known = {k: min(n, MAX_DISPOSITIONS) for k, n in known.items()}
        if self._time_skip("dispositions", at, sum(known.values())):
            return
        for kind, count in known.items():
            have = held.get(kind, 0)
            report.present["dispositions"] += min(have, count)
            if count > have:  # (numbered on, as a range: a count is not a list of writes)
                plan.dispositions.append((kind, have + 1, count))

    # -- writing ---------------------------------------------------------------------------

    def count(self, plan: _Plan, duplicates: int = 0) -> None:
        """Count a plan as imported (a dry run's, or one written); ``duplicates``: its
        occurrences another import wrote meanwhile (there already)."""
        imported = self.report.imported
        imported["fixes"] += 1 if plan.fix else 0
        imported["occurrences"] += len(plan.occurrences) - duplicates
        self.report.present["occurrences"] += duplicates
        imported["repairs"] += len(plan.repairs)
        imported["dispositions"] += plan.disposition_count
        if not plan.empty:
            imported["anomalies"] += 1
        elif plan.there:  # (nothing to write, and something found: up to date)
            self.report.present["anomalies"] += 1

    async def write(self, plans: Sequence[_Plan]) -> None:
        """Fixes first (an event after one is a regression), then the events in time order,
        then repairs and dispositions. An anomaly the project has no room for is refused."""
        refused: set[str] = set()
        for plan in plans:
            if plan.fix is not None and not await self._write_fix(plan, *plan.fix):
                refused.add(plan.anomaly.key)
        requests = [r for p in plans if p.anomaly.key not in refused for r in p.occurrences]
        duplicates: Counter[str] = Counter()
        for start in range(0, len(requests), _CHUNK):  # (in order: each anomaly's in time order)
            chunk = requests[start : start + _CHUNK]
            snapshots = await self.store.record(self.recording, chunk)
            for request, snapshot in zip(chunk, snapshots, strict=True):
                if snapshot.refused:
                    refused.add(request.anomaly_key)
                elif snapshot.duplicate:
                    duplicates[request.anomaly_key] += 1
        for plan in plans:
            key = plan.anomaly.key
            if key not in refused and not await self._write_events(plan):
                refused.add(key)
            if key in refused:
                self.report.skipped[("anomalies", REFUSED)] += 1
            else:
                self.count(plan, duplicates[key])

    async def _write_fix(self, plan: _Plan, at: int, text: str) -> bool:
        key = plan.anomaly.key
        write = AnomalyWrite(key, at, self.now_ms, f"reference:fix:{at}", WRITER)
        try:
            await self.store.mark_fix(self.project, write, text)
        except LimitExceededError:
            return False
        return True

    async def _write_events(self, plan: _Plan) -> bool:
        """Its repairs (oldest first) and dispositions; False when refused."""
        key = plan.anomaly.key
        try:
            for repair, write_id in plan.repairs:
                write = AnomalyWrite(key, repair.at_ms, self.now_ms, write_id, WRITER)
                await self.store.record_repair(self.project, write, repair.action, repair.success)
            day = plan.dispositions_ms // DAY_MS
            for kind, first, last in plan.dispositions:
                for n in range(first, last + 1):
                    write_id = f"reference:disposition:{day}:{kind}:{n}"
                    write = AnomalyWrite(key, plan.dispositions_ms, self.now_ms, write_id, WRITER)
                    await self.store.record_disposition(self.project, write, kind)
        except LimitExceededError:
            return False
        return True
