"""AnomalyCounter: the public facade. Validates input, applies the project's settings, turns
store snapshots into public types, and degrades instead of raising when the store is down."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime
from types import TracebackType
from typing import Any, ClassVar, NamedTuple, TypeVar

import structlog

from . import search, timeline, validation
from .deletion import DeletedAnomaly, DeletedProject
from .episodes import FlapState
from .errors import (
    AmbiguousAnomalyError,
    AnomalyNotFoundError,
    InvalidInputError,
    LimitExceededError,
    StoreUnavailableError,
)
from .limits import anomaly_limit_error
from .model import (
    DISPOSITION_TYPES,
    WINDOWS,
    ActionStats,
    AnomalyFrequency,
    AnomalyList,
    EscalationLevel,
    Lookup,
    Occurrence,
    PermanentFix,
    RepairAttempt,
    TimelineEntry,
    empty_disposition_counts,
)
from .outbox import DeadLetter, OutboxStats
from .policy import ActionRecommendation, level_for, recommend, should_skip, success_rate
from .ranking import Evaluate, select_top
from .replay import Replayer
from .settings import Settings, load_settings
from .signature import derive_key_from_incident, fingerprint_fields, hash_signature
from .spool import Spool, spool_of
from .stores.base import (
    DAY_MS,
    AnomalyWrite,
    Recording,
    RecordRequest,
    Resolution,
    Snapshot,
    Store,
    WritePolicy,
    store_from_url,
)
from .stores.resilient import ResilientStore
from .stores.spooling import SpoolingStore
from .stores.write_marks import sequence_in
from .verification import FAILED, Verified, basis, judge, verdict
from .windows import HISTORY, NEVER, tail_capacity

logger = structlog.get_logger("anomaly_counter")
T = TypeVar("T")
Clock = Callable[[], datetime]
_WINDOW_INDEX = {name: i for i, name in enumerate(WINDOWS)}
_LABELS = tuple(level.label for level in EscalationLevel)  # by level number
_LEVELS = tuple(level for level in EscalationLevel if level.label)
MAX_CHRONIC = 5_000
"""Chronic anomalies a listing looks at, the highest levels first (more: it says it was cut)."""
_RETRY_BASE_SECONDS = 0.05


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class AnomalyCounter:
    """Counts how often each anomaly recurs, escalates the chronic ones, and keeps the evidence
    of which repairs work. One instance serves one project; stores are shared safely."""

    VALID_DISPOSITION_TYPES: ClassVar[frozenset[str]] = frozenset(DISPOSITION_TYPES)
    hash_signature = staticmethod(hash_signature)
    derive_key_from_incident = staticmethod(derive_key_from_incident)

    def __init__(
        self,
        store: Store,
        project_id: str = "default",
        *,
        settings: Settings | None = None,
        clock: Clock = _utcnow,
        spool: Spool | None = None,
        replay: bool = True,
    ) -> None:
        self.project_id = validation.project_id(project_id)
        self.settings = settings or Settings()
        self._clock = clock
        self.spool = spool
        """Where occurrences go while the store cannot take them (None: they are answered
        ``degraded``, or refused with ``strict``)."""
        # A counter that owns its spool replays it; the service runs one replayer for all.
        self._replayer: Replayer | None = None
        if spool is not None and replay:
            self._replayer = Replayer(spool, self._counter_for)
        # What a call does while the store is away is the store's: the spool keeps what it
        # cannot take (stores/spooling.py), and the rest degrades or raises (resilient.py).
        # Replays write to the store itself: there, an outage must stop the replay.
        self.store = store
        """The store itself (what the counter writes through is composed around it)."""
        kept = SpoolingStore(store, spool, self._start_replayer) if spool is not None else store
        self._store = ResilientStore(
            kept, strict=self.settings.strict, write_attempts=self.settings.write_attempts
        )
        # Reads made of many store calls (top, search, chronic) go to the store without the
        # fallback of each call, under one for the whole: a partial answer, or a ranking index
        # lowered by reads that failed, would look like the truth.
        self._raw = self._store.inner
        thresholds = self.settings.thresholds_for(self.project_id)
        self.thresholds = thresholds
        self._policy = WritePolicy(
            thresholds=thresholds.as_tuple(),
            tail_capacity=tail_capacity(thresholds.highest),
            dedup_horizon_ms=self.settings.dedup_horizon_days * 86_400_000,
            dedup_max_ids=self.settings.dedup_max_ids,
            max_anomalies=self.settings.limits_for(self.project_id).max_anomalies,
            # a project's notices are kept for delivery only when it has somewhere to send them
            outbox_max=(
                self.settings.outbox_max
                if self.settings.project_channels.get(self.project_id)
                else 0
            ),
            episodes=self.settings.episodes_for(self.project_id),
        )
        self.on_replay_refused: Callable[[str], None] | None = None
        """Told the limit's name for each spooled occurrence refused when replayed (the
        service counts them; the API's refusals are counted where they are answered)."""

    @property
    def THRESHOLDS(self) -> dict[str, int]:
        return {
            "REPEAT": self.thresholds.repeat,
            "ESCALATE": self.thresholds.escalate,
            "PERMANENT_FIX": self.thresholds.permanent_fix,
        }

    @property
    def write_policy(self) -> WritePolicy:
        """The rules this counter's writes apply (what an import applies too)."""
        return self._policy

    @classmethod
    def from_url(
        cls,
        url: str | None = None,
        project_id: str | None = None,
        *,
        settings: Settings | None = None,
        clock: Clock = _utcnow,
        **options: Any,
    ) -> AnomalyCounter:
        """A counter on the store a URL names (settings' ``store_url`` when None). Options
        are settings (``strict=True``, ``store_timeout=0.5``, ``thresholds=...``)."""
        base = settings or load_settings()
        chosen = replace(base, **options) if options else base
        if url is not None:
            chosen = replace(chosen, store_url=url)
        spool = spool_of(chosen)
        return cls(
            store_from_url(chosen.store_url, chosen),
            chosen.project if project_id is None else project_id,
            settings=chosen,
            clock=clock,
            spool=spool,
        )

    def _counter_for(self, project: str) -> AnomalyCounter:
        """The counter of a project on the same store (the spool's records name theirs)."""
        if project == self.project_id:
            return self
        return AnomalyCounter(self.store, project, settings=self.settings, clock=self._clock)

    def _start_replayer(self) -> None:
        if self._replayer is not None:
            self._replayer.start()

    async def __aenter__(self) -> AnomalyCounter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def flush_spool(self) -> int:
        """Replay the spool now, while the store answers (a short-lived process, such as the
        CLI, has no time for the background replayer). The number of records stored."""
        if self.spool is None:
            return 0
        replayer = self._replayer or Replayer(self.spool, self._counter_for)
        stored = 0
        try:
            while self.spool.depth:
                stored += await replayer.drain_once()
        except StoreUnavailableError:
            pass  # still down: they stay in the spool for the next process
        return stored

    async def aclose(self) -> None:
        """Stop replaying, close the spool and the store's connections."""
        if self._replayer is not None:
            await self._replayer.stop()
        if self.spool is not None:
            self.spool.close()
        await self._store.aclose()

    # -- mapping ------------------------------------------------------------------------------

    def _degraded(self, key: str, at: datetime) -> AnomalyFrequency:
        return AnomalyFrequency(
            anomaly_key=key, count_1h=0, count_24h=0, count_7d=0, count_30d=0,
            first_seen=at, last_seen=at, auto_repair_count=0, permanent_fix_applied=False,
            escalation_level=None, degraded=True,
        )  # fmt: skip

    def _frequency(self, snapshot: Snapshot, at: datetime) -> AnomalyFrequency:
        c1h, c24h, c7d, c30d = snapshot.counts
        d = snapshot.dispositions
        first = snapshot.first_seen_ms
        last = snapshot.last_seen_ms
        return AnomalyFrequency(
            anomaly_key=snapshot.anomaly_key,
            count_1h=c1h,
            count_24h=c24h,
            count_7d=c7d,
            count_30d=c30d,
            first_seen=_time(first) if first is not None else at,
            last_seen=_time(last) if last is not None else at,
            auto_repair_count=snapshot.repair_total,
            permanent_fix_applied=snapshot.fix_at_ms is not None,
            escalation_level=_LABELS[level_for(c24h, self.thresholds)],
            human_approved_count=d["human_approved"],
            manual_resolved_count=d["manual_resolved"],
            cold_start_trust_count=d["cold_start_trust"],
            total_resolution_count=d["total"],
            auto_repair_disposition_count=d["auto_repair"],
            timeout_ignored_count=d["timeout_ignored"],
            escalated_to=_LABELS[snapshot.escalated_to],
            regressed=snapshot.regressed,
            newly_regressed=snapshot.newly_regressed,
            duplicate=snapshot.duplicate,
            signature=snapshot.signature,
            last_resolved=_time(snapshot.resolved_ms) if snapshot.resolved_ms is not None else None,
            permanent_fix=(
                PermanentFix(snapshot.fix_description, _time(snapshot.fix_at_ms), snapshot.fix_by)
                if snapshot.fix_at_ms is not None and snapshot.fix_description is not None
                else None
            ),
            regressed_at=_time(snapshot.regressed_ms)
            if snapshot.regressed_ms is not None
            else None,
            joined=snapshot.joined,
            firing=snapshot.firing,
            instances=snapshot.instances,
            **(self._flapping(snapshot.flap, _ms(at)) if snapshot.flap else _NOT_FLAPPING),
        )

    def _flapping(self, stored: str, now_ms: int) -> dict[str, Any]:
        """``flapping`` and ``flap_percent`` as of now, from the stored state."""
        flap = FlapState.decode(stored)
        stop = self._policy.episodes.flap_stop
        return {"flapping": flap.flapping_at(now_ms, stop), "flap_percent": flap.percent(now_ms)}

    # -- occurrences --------------------------------------------------------------------------

    def _check(self, occurrence: Occurrence | Mapping[str, Any], now: datetime) -> _Checked:
        """Everything about an occurrence that can be wrong, checked; cheap, no encoding."""
        if isinstance(occurrence, Mapping):
            unknown = set(occurrence) - {"signature", "at", "occurrence_id", "episode", "ends"}
            if unknown:
                raise InvalidInputError(f"unknown occurrence fields: {', '.join(sorted(unknown))}")
            occurrence = Occurrence(
                signature=occurrence.get("signature"),  # type: ignore[arg-type]
                at=occurrence.get("at"),
                occurrence_id=occurrence.get("occurrence_id"),
                episode=occurrence.get("episode"),
                ends=occurrence.get("ends"),
            )
        signature = validation.signature(occurrence.signature)
        occurrence_id = validation.occurrence_id(occurrence.occurrence_id)
        at_ms = _ms(validation.occurrence_time(occurrence.at, now))
        episode, ends_ms = "", -1
        if occurrence.episode is not None:  # (most have none)
            episode = validation.episode(occurrence.episode)
            if episode and occurrence.ends is not None:
                ends_ms = max(at_ms, _ms(validation.aware(occurrence.ends)))
        return _Checked(
            hash_signature(signature), signature, at_ms, occurrence_id, episode, ends_ms
        )

    @staticmethod
    def _prepare(checked: _Checked) -> RecordRequest:
        """A checked occurrence, ready to store (this part cannot fail)."""
        return _record_request(*checked)

    async def record_anomaly(
        self,
        signature: Mapping[str, Any],
        *,
        at: datetime | None = None,
        occurrence_id: str | None = None,
    ) -> AnomalyFrequency:
        """Count one occurrence of the anomaly a signature fingerprints to.

        The windows of the answer end at ``at`` (default: now). ``escalated_to`` names the
        level this occurrence newly crossed into; exactly one occurrence reports each crossing.
        A repeated ``occurrence_id`` is not counted again (``duplicate``).
        """
        now = self._clock()
        request = self._prepare(self._check(Occurrence(signature, at, occurrence_id), now))
        snapshots = await self._store.record(self._recording(now), [request])
        return self._results([request], self._admitted(snapshots))[0]

    def _recording(self, now: datetime) -> Recording:
        return Recording(self.project_id, self._policy, _ms(now))

    def _admitted(self, snapshots: list[Snapshot]) -> list[Snapshot]:
        """The snapshots of stored occurrences, else LimitExceededError."""
        if any(s.refused for s in snapshots):
            raise anomaly_limit_error(self.project_id, self._policy.max_anomalies)
        return snapshots

    async def replay(self, records: Sequence[Mapping[str, Any]]) -> list[AnomalyFrequency]:
        """Store spooled records of this project, in order, as they were accepted (checked
        then: they are not checked again, so an old one is still counted at its time).
        Raises StoreUnavailableError; a record stored twice counts once (its id)."""
        now = self._clock()
        frequencies: list[AnomalyFrequency] = []
        occurrences: list[Mapping[str, Any]] = []
        for record in records:  # resolutions keep their place among the occurrences
            if record.get("kind") == "resolve":
                frequencies += await self._replay_occurrences(occurrences, now)
                occurrences = []
                resolution = Resolution(
                    record["anomaly_key"],
                    int(record["at_ms"]),
                    str(record.get("by", "")),
                    str(record.get("episode", "")),
                    int(record.get("started_ms", -1)),
                )
                await self.store.resolve(self._recording(now), resolution)
            else:
                occurrences.append(record)
        return frequencies + await self._replay_occurrences(occurrences, now)

    async def _replay_occurrences(
        self, records: Sequence[Mapping[str, Any]], now: datetime
    ) -> list[AnomalyFrequency]:
        if not records:
            return []
        requests = []
        for record in records:
            signature = dict(record["signature"])
            requests.append(
                _record_request(
                    hash_signature(signature),
                    signature,
                    int(record["at_ms"]),
                    str(record["occurrence_id"]),
                    str(record.get("episode", "")),
                    int(record.get("ends_ms", -1)),
                    sequence=sequence_in(record),  # (numbered before it was spooled: looked up)
                    replayed=str(record.get("replayed", "")),
                )
            )
        size = self._store.pipeline_chunk or len(requests)
        chunks = [requests[i : i + size] for i in range(0, len(requests), size)]
        frequencies: list[AnomalyFrequency] = []
        answers = self.store.record_chunks(self._recording(now), chunks)
        done = 0
        async for snapshots in answers:
            # Acknowledged long ago, and refused now: the spool must move on, so it is dropped,
            # and said (a log line and, in the service, the limit's metric).
            stored = []
            for request, snapshot in zip(chunks[done], snapshots, strict=True):
                if snapshot.refused:
                    logger.warning(
                        "spool_replay_refused",
                        project=self.project_id,
                        anomaly_key=request.anomaly_key,
                        limit="max_anomalies",
                    )
                    if self.on_replay_refused is not None:
                        self.on_replay_refused("max_anomalies")
                else:
                    stored.append((request, snapshot))
            frequencies += self._results([r for r, _ in stored], [s for _, s in stored])
            done += 1
        return frequencies

    def validate(self, occurrences: Iterable[Occurrence | Mapping[str, Any]]) -> list[str]:
        """Check occurrences as ``record_many`` does, storing nothing: their anomaly keys, or
        InvalidInputError (naming the first wrong one) when any is wrong."""
        return [checked.anomaly_key for checked in self._check_all(occurrences, self._clock())]

    def _check_all(
        self, occurrences: Iterable[Occurrence | Mapping[str, Any]], now: datetime
    ) -> list[_Checked]:
        checked = []
        for index, occurrence in enumerate(occurrences):
            try:
                checked.append(self._check(occurrence, now))
            except InvalidInputError as exc:
                raise type(exc)(f"occurrence {index}: {exc}") from exc
        return checked

    async def record_many(
        self, occurrences: Iterable[Occurrence | Mapping[str, Any]]
    ) -> list[AnomalyFrequency]:
        """Count a batch in order, pipelined; all input is validated before any of it is
        stored. Items are ``Occurrence`` or mappings with ``signature``, ``at``,
        ``occurrence_id``."""
        now = self._clock()
        checked = self._check_all(occurrences, now)
        if not checked:
            return []
        # All is checked: now each chunk is prepared just before it is sent, and each chunk's
        # answers are turned into results while the store works on the next ones.
        size = self._store.pipeline_chunk or len(checked)
        chunks = _chunks([c.anomaly_key for c in checked], size)
        requests: list[list[RecordRequest]] = []

        def prepared() -> Iterator[list[RecordRequest]]:
            for chunk in chunks:
                requests.append([self._prepare(checked[i]) for i in chunk])
                yield requests[-1]

        frequencies: list[AnomalyFrequency | None] = [None] * len(checked)
        # one batch: refused whole (room for its new anomalies is made first), or stored whole
        whole = list(dict.fromkeys(c.anomaly_key for c in checked))
        done = 0
        answers = self._store.record_chunks(self._recording(now), prepared(), whole=whole)
        async for snapshots in answers:
            for i, frequency in zip(
                chunks[done], self._results(requests[done], snapshots), strict=True
            ):
                frequencies[i] = frequency
            done += 1
        return [f for f in frequencies if f is not None]

    def _results(
        self, requests: Sequence[RecordRequest], snapshots: Sequence[Snapshot]
    ) -> list[AnomalyFrequency]:
        frequencies = []
        for request, snapshot in zip(requests, snapshots, strict=True):
            if snapshot.degraded or snapshot.spooled:  # (not counted yet: nothing to say)
                frequency = self._degraded(request.anomaly_key, _time(request.at_ms))
                frequency.spooled = snapshot.spooled
            else:
                frequency = self._frequency(snapshot, _time(request.at_ms))
            frequency.signature = request.signature  # the labels of this very occurrence
            frequencies.append(frequency)
            if frequency.escalated_to or frequency.newly_regressed:
                logger.info(
                    "anomaly_escalated" if frequency.escalated_to else "anomaly_regressed",
                    project=self.project_id,
                    anomaly_key=frequency.anomaly_key,
                    level=frequency.escalated_to,
                    count_24h=frequency.count_24h,
                )
        return frequencies

    async def get_frequency(
        self, anomaly_key: str, *, at: datetime | None = None
    ) -> AnomalyFrequency | None:
        """The figures of one anomaly as of ``at`` (default now), without counting anything;
        None for an anomaly never seen."""
        key = validation.anomaly_key(anomaly_key)
        now = self._clock()
        moment = validation.aware(at) if at is not None else now
        (snapshot,) = await self._store.read(self.project_id, [key], _ms(moment), _ms(now))
        if snapshot is not None and snapshot.degraded:
            return self._degraded(key, moment)
        if snapshot is None or snapshot.first_seen_ms is None:
            return None
        return self._frequency(snapshot, moment)

    async def top_anomalies(self, limit: int = 20, window: str = "24h") -> list[dict[str, Any]]:
        """The anomalies with the most occurrences in a window, most first, each with its
        figures as a dict (its fingerprint fields, ``window`` and ``count`` added); from an
        index kept on write (no scan), exact. ``top`` gives the same as typed answers."""
        window = validation.window(window)
        found = await self.top(limit, window)
        return [f.row(window) for f in found.anomalies]

    async def top(self, limit: int = 20, window: str = "24h") -> AnomalyList:
        """The anomalies with the most occurrences in a window, most first."""
        limit = validation.limit(limit)
        window = validation.window(window)
        index = _WINDOW_INDEX[window]
        now_ms = _ms(self._clock())

        async def evaluate(keys: Sequence[str]) -> list[tuple[int, Snapshot] | None]:
            snapshots = await self._raw.read(self.project_id, keys, now_ms, now_ms)
            return [
                (s.counts[index], s) if s is not None and s.counts[index] > 0 else None
                for s in snapshots
            ]

        selected = await self._guarded("top_anomalies", self._top(window, evaluate, limit), list)
        found = [self._frequency(snapshot, _time(now_ms)) for _, _, snapshot in selected]
        return AnomalyList(found, len(found))

    async def _top(
        self, index: str, evaluate: Evaluate[Snapshot], limit: int
    ) -> list[tuple[str, int, Snapshot]]:
        result = await select_top(self._raw.candidates(self.project_id, index), evaluate, limit)
        # Lower what cooled down, so the next query walks past fewer stale entries.
        await self._raw.refresh_index(self.project_id, index, result.stale)
        return result.top

    async def _guarded(self, op: str, call: Awaitable[T], fallback: Callable[[], T]) -> T:
        """A read of many store calls, degraded (or raised, when strict) as one."""
        return await self._store.guard(op, call, fallback, project=self.project_id)

    # -- the story: history, timeline, search, the project's view -----------------------------

    async def history(
        self, anomaly_key: str, window: str = "7d", *, at: datetime | None = None
    ) -> list[tuple[datetime, int]] | None:
        """Occurrences over time as ``(bucket start, count)``, oldest first: per minute over
        the last hour (``1h``), hourly over a day (``24h``) or 7 days (``7d``), daily over 30
        days (``30d``), buckets aligned in UTC, the last one holding ``at`` (default now).
        None for an anomaly never seen. Exact for its latest 128 occurrences; older ones of a
        busy anomaly are placed within one slice of their window (see docs/counting.md)."""
        key = validation.anomaly_key(anomaly_key)
        return (await self.histories([key], window, at=at))[0]

    async def histories(
        self, anomaly_keys: Sequence[str], window: str = "7d", *, at: datetime | None = None
    ) -> list[list[tuple[datetime, int]] | None]:
        """``history`` of several anomalies, in one round trip."""
        keys = [validation.anomaly_key(key) for key in anomaly_keys]
        bucket_ms, buckets = HISTORY[validation.window(window)]
        end = _ms(validation.aware(at)) if at is not None else _ms(self._clock())
        states = await self._store.states(self.project_id, keys)
        starts: dict[int, datetime] = {}  # every series has the same buckets: made once
        series: list[list[tuple[datetime, int]] | None] = []
        for state in states:
            if state is None or state.newest == NEVER:
                series.append(None)
                continue
            counts = state.histogram(end, bucket_ms, buckets)
            series.append([(starts.get(t) or starts.setdefault(t, _time(t)), n) for t, n in counts])
        return series

    async def timeline(self, anomaly_key: str, *, limit: int | None = None) -> list[TimelineEntry]:
        """The anomaly's story, newest first: first seen, escalations, repairs, dispositions,
        fixes and their undoing, regressions, resolutions and notices (the latest 200 entries
        at most; see ``anomaly_counter.timeline``)."""
        key = validation.anomaly_key(anomaly_key)
        lines = await self._store.timeline(self.project_id, key)
        entries = timeline.decode_all(lines)
        return entries[: validation.limit(limit)] if limit is not None else entries

    async def note_notice(self, anomaly_key: str, channel: str, notice: str, outcome: str) -> None:
        """Tell in the anomaly's timeline that a notice (``escalation``, ``regression``) went
        to a channel, and how (``sent``, ``failed``)."""
        key = validation.anomaly_key(anomaly_key)
        now = _ms(self._clock())
        entry = timeline.encode("notice", now, channel, notice, outcome)
        await self._store.note(self.project_id, key, entry)

    async def search(
        self, query: str, limit: int = 20, *, min_level: str | None = None
    ) -> AnomalyList:
        """The anomalies of this project whose labels match every word of ``query``
        (case-insensitive: anywhere in the alert name, service, namespace or reason, from the
        start of any other label's value), best first: those with a value equal to each word,
        then starting with it, then holding it; then the busiest in 24 hours. With
        ``min_level``, only those at that level or above. From indexes kept on write: the cost
        follows what is found, never the project's size."""
        limit = validation.limit(limit)
        floor = self._level_floor(min_level) if min_level is not None else 0
        found, truncated = await self._guarded(
            "search", self._search(validation.query(query)), _no_matches
        )
        chosen = [f for _, f in found if f.count_24h >= floor]
        return AnomalyList(chosen[:limit], len(chosen), truncated)

    async def find(self, ref: str) -> Lookup:
        """The anomaly a key or a name refers to: its key; or a query that matches one anomaly,
        or exactly one by whole values (``PodCrashLoopBackOff api``). Otherwise the matches
        to choose from (none when nothing matches)."""
        text = validation.query(ref)
        try:
            key = validation.anomaly_key(text)
        except InvalidInputError:
            key = None
        if key is not None:
            frequency = await self.get_frequency(key)
            if frequency is not None:
                return Lookup(frequency, [frequency])
        found, truncated = await self._guarded("find", self._search(text), _no_matches)
        exact = [f for quality, f in found if quality == 0]
        if not truncated and (len(found) == 1 or len(exact) == 1):
            # (a name names one anomaly only when every match was seen)
            best = exact[0] if len(exact) == 1 else found[0][1]
            return Lookup(best, [best])
        return Lookup(None, [f for _, f in found[:100]], truncated)

    async def anomaly(self, ref: str) -> AnomalyFrequency:
        """The figures of the anomaly a key or a name refers to (see ``find``). Raises
        ``AnomalyNotFoundError`` when none matches and ``AmbiguousAnomalyError`` (with the
        matches) when several do."""
        found = await self.find(ref)
        if found.anomaly is not None:
            return found.anomaly
        if found.matches:
            raise self._ambiguous(
                ref, found, "name one by its key, or add words (its service, namespace, reason)"
            )
        raise AnomalyNotFoundError(f"no anomaly {ref!r} in project {self.project_id!r}")

    def _ambiguous(self, ref: str, found: Lookup, advice: str) -> AmbiguousAnomalyError:
        many = f"more than {len(found.matches)}" if found.truncated else len(found.matches)
        return AmbiguousAnomalyError(
            f"{many} anomalies of project {self.project_id!r} match {ref!r}: {advice}",
            found.matches,
        )

    async def resolve(self, ref: str, *, known: bool = True) -> str:
        """The key of the anomaly a key or a name refers to (see ``anomaly``). With
        ``known=False`` a key in the form ``hash_signature`` makes is taken as it is, seen or
        not: a repair or a fix may be written before the anomaly's first occurrence."""
        if not known and looks_like_key(ref):
            return ref
        return (await self.anomaly(ref)).anomaly_key

    async def _search(self, query: str) -> tuple[list[tuple[int, AnomalyFrequency]], bool]:
        """Matches of every word, best first, and whether the index was cut short. The most
        selective word gives the candidates (the index answers for each word); each candidate
        is then checked against every word, so a broad word ("prod") narrows nothing wrongly."""
        words = search.words(query)
        if not words:
            raise InvalidInputError("search query has no words")
        answers = await asyncio.gather(  # (the words' look-ups are independent)
            *(self._raw.search(self.project_id, word, search.MAX_CANDIDATES) for word in words)
        )
        pairs, truncated = min(answers, key=lambda answer: (answer[1], len(answer[0])))
        keys = sorted({key for _, key in pairs})
        now = self._clock()
        snapshots = await self._raw.read(self.project_id, keys, _ms(now), _ms(now))
        gone = {key for key, snapshot in zip(keys, snapshots, strict=True) if snapshot is None}
        if gone:  # expired since they were indexed: their entries go as they are met
            await self._raw.forget_terms(self.project_id, [p for p in pairs if p[1] in gone])
        results: list[tuple[int, AnomalyFrequency]] = []
        for snapshot in snapshots:
            if snapshot is None or snapshot.first_seen_ms is None:
                continue
            quality = search.match_quality(snapshot.signature, words)
            if quality is not None:
                results.append((quality, self._frequency(snapshot, now)))
        results.sort(key=lambda r: (r[0], -r[1].count_24h, -r[1].count_30d, r[1].anomaly_key))
        return results, truncated

    async def chronic_anomalies(
        self, min_level: str = "REPEAT", window: str = "24h", limit: int = 100
    ) -> AnomalyList:
        """The anomalies at ``min_level`` or above (``REPEAT``, ``ESCALATE``,
        ``PERMANENT_FIX``) now, the most frequent in ``window`` first. From an index of the
        anomalies whose latest occurrence left them chronic, kept on write: the cost follows
        the chronic anomalies (and those that cooled off since), never the project."""
        floor = self._level_floor(min_level)
        window = validation.window(window)
        limit = validation.limit(limit)
        now_ms = _ms(self._clock())

        async def walk() -> AnomalyList:
            entries = await self._raw.chronic(self.project_id)
            entries.sort(key=lambda entry: -entry[1])  # a cut keeps the most chronic
            looked_at = entries[:MAX_CHRONIC]
            keys = [key for key, _ in looked_at]
            snapshots = await self._raw.read(self.project_id, keys, now_ms, now_ms)
            gone = [(k, level, 0) for (k, level), s in zip(looked_at, snapshots, strict=True)
                    if s is None]  # fmt: skip
            if gone:
                await self._raw.refresh_index(self.project_id, "chronic", gone)
            at = _time(now_ms)
            found = [
                self._frequency(s, at) for s in snapshots if s is not None and s.counts[1] >= floor
            ]
            found.sort(key=lambda f: (-f.count_in(window), -f.count_24h, f.anomaly_key))
            return AnomalyList(found[:limit], len(found), len(entries) > len(looked_at))

        return await self._guarded("chronic_anomalies", walk(), lambda: AnomalyList([], 0))

    def _level_floor(self, level: str) -> int:
        floors = {
            lv.name: floor for lv, floor in zip(_LEVELS, self.thresholds.as_tuple(), strict=True)
        }
        if level not in floors:
            raise InvalidInputError(f"unknown level {level!r}: expected one of {', '.join(floors)}")
        return floors[level]

    async def escalations_by_day(self, days: int = 30) -> list[tuple[date, dict[str, int]]]:
        """Crossings into each level, per UTC day, for the last ``days`` days (at most 30),
        oldest first: how often this project's anomalies became chronic."""
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 30:
            raise InvalidInputError(f"days must be an integer from 1 to 30, got {days!r}")
        now_ms = _ms(self._clock())
        raw = await self._store.summary_days(self.project_id, now_ms)
        today = now_ms // DAY_MS
        out = []
        for day in range(today - days + 1, today + 1):
            names = raw.get(day, {})
            counts = {level.name: names.get(f"e:{int(level)}", 0) for level in _LEVELS}
            out.append((_time(day * DAY_MS).date(), counts))
        return out

    async def recommendations(
        self,
        anomaly_keys: Sequence[str],
        candidates: Sequence[str] | None = None,
        min_success_rate: float = 0.2,
    ) -> list[list[ActionRecommendation]]:
        """``recommend_actions`` for several anomalies in one round trip; without candidates,
        each anomaly's tried actions and the configured ``repair_actions``."""
        keys = [validation.anomaly_key(key) for key in anomaly_keys]
        names = [validation.action(c) for c in candidates] if candidates is not None else None
        floor = validation.rate(min_success_rate)
        now_ms = _ms(self._clock())
        stats = await self._store.repair_stats_many(self.project_id, keys, now_ms)
        histories: list[dict[str, Verified]] = [{} for _ in keys]
        if self.settings.verify_repairs:
            tried_keys = [i for i, tried in enumerate(stats) if tried]
            found = await self._store.repair_histories(
                self.project_id, [keys[i] for i in tried_keys]
            )
            for i, history in zip(tried_keys, found, strict=True):
                histories[i] = judge(history, now_ms)
        ranked = []
        limit = self.settings.limits_for(self.project_id).max_actions
        for tried, verified in zip(stats, histories, strict=True):
            if len(tried) > limit:  # (kept before the limit, or raised since): the most tried
                most = sorted(tried.items(), key=lambda item: -item[1][0])[:limit]
                tried = dict(most)
            chosen = names if names is not None else [*tried, *self.settings.repair_actions]
            judged = self._judged(
                {a: self._action_stats(t, ok, verified.get(a)) for a, (t, ok) in tried.items()}
            )
            ranked.append(recommend(chosen, judged, floor) if chosen else [])
        return ranked

    # -- repairs ------------------------------------------------------------------------------

    async def record_repair_attempt(
        self,
        anomaly_key: str,
        action: str,
        success: bool,
        *,
        at: datetime | None = None,
        by: str | None = None,
    ) -> None:
        """Count one repair attempt and whether it worked; ``by`` names who reported it (kept
        in the timeline)."""
        key = validation.anomaly_key(anomaly_key)
        name = validation.action(action)
        if not isinstance(success, bool):
            raise InvalidInputError(f"success must be true or false, got {success!r}")
        event = self._event(key, at, by)
        store = self._store.inner  # (retried here, check and write together)
        settings = self.settings
        until = 0
        if settings.verify_repairs:  # judged by whether the anomaly comes back before then
            minutes = settings.verify_window_minutes_for(self.project_id, name)
            until = event.at_ms + int(minutes * 60_000)

        async def write() -> None:
            await self._must_exist(key, event.now_ms)
            await self._within_action_limit(store, key, name, event.now_ms)
            await store.record_repair(self.project_id, event, name, success, until)

        await self._store.retried(
            "record_repair_attempt", write, None, project=self.project_id, anomaly_key=key
        )

    async def _must_exist(self, key: str, now_ms: int) -> None:
        """Refuse a write of an event to an anomaly the project never saw: a mistyped key
        would make a ghost that then counts in the project's summaries. An anomaly whose first
        occurrence waits in the spool exists. While the store cannot tell, the write goes on as
        any write does (retried, then degraded or raised)."""
        try:
            known = (await self._raw.read(self.project_id, [key], now_ms, now_ms))[0]
        except StoreUnavailableError:
            return
        if known is not None or await self._waits_in_spool(key):
            return
        raise AnomalyNotFoundError(
            f"no anomaly {key!r} in project {self.project_id!r}: repairs, dispositions and fixes"
            " are written for an anomaly that has occurred (record an occurrence first)"
        )

    async def _waits_in_spool(self, key: str) -> bool:
        spool, project = self.spool, self.project_id
        if spool is None or not spool.depth:
            return False

        def first_occurrence(record: dict[str, Any]) -> bool:
            return (
                record.get("project") == project
                and "signature" in record
                and hash_signature(record["signature"]) == key
            )

        return await asyncio.to_thread(spool.any_waiting, first_occurrence)

    def _event(self, key: str, at: datetime | None, by: str | None) -> AnomalyWrite:
        """A write of an event to an anomaly: checked, timed, with a write id of its own (its
        retries are applied once)."""
        reporter = validation.reporter(by)
        now = self._clock()
        moment = validation.occurrence_time(at, now, "event")  # (a repair's, a fix's, ...)
        return AnomalyWrite(key, _ms(moment), _ms(now), uuid.uuid4().hex, reporter)

    async def _within_action_limit(self, store: Store, key: str, action: str, now_ms: int) -> None:
        """Refuse a new action name past ``max_actions`` of the anomaly (a look-up first: two
        writers racing with two new names may pass it by one each, never by more)."""
        limit = self.settings.limits_for(self.project_id).max_actions
        tried = await store.repair_stats(self.project_id, key, now_ms)
        if action not in tried and len(tried) >= limit:
            raise LimitExceededError(
                f"anomaly {key} has {len(tried)} repair actions, at most {limit}"
                " (limit max_actions): record an action it has, or raise the limit",
                "max_actions",
            )

    async def repair_stats(self, anomaly_key: str) -> dict[str, ActionStats]:
        """Per action, every attempt of the last 30 days: total, success, success_rate as
        reported; with ``verify_repairs``, also the verdicts of the kept attempts (the last
        100) and the basis the policy judges the action by."""
        key = validation.anomaly_key(anomaly_key)
        now_ms = _ms(self._clock())
        stats = await self._store.repair_stats(self.project_id, key, now_ms)
        verified: dict[str, Verified] = {}
        if self.settings.verify_repairs:
            verified = judge(await self._store.repair_history(self.project_id, key), now_ms)
        return {
            action: self._action_stats(total, ok, verified.get(action))
            for action, (total, ok) in stats.items()
        }

    def _action_stats(self, total: int, ok: int, verified: Verified | None) -> ActionStats:
        if not self.settings.verify_repairs:
            return ActionStats(total, ok, success_rate(total, ok))
        judged_by = basis(verified, self.settings.verify_min_settled)
        return ActionStats(total, ok, success_rate(total, ok), verified, judged_by)

    def _judged(self, stats: Mapping[str, ActionStats]) -> dict[str, dict[str, Any]]:
        """What the policy judges each action by: its verified outcomes once enough settled,
        else what was reported (``total``, ``success``, ``basis``)."""
        judged = {}
        for action, s in stats.items():
            total, success = s.judged()
            judged[action] = {"total": total, "success": success, "basis": s.basis}
        return judged

    async def get_all_repair_stats(self, anomaly_key: str) -> dict[str, dict[str, Any]]:
        """Per action: total, success and success_rate over every attempt of the last 30 days
        (``repair_stats`` as the reference's dicts)."""
        return {a: stats.to_dict() for a, stats in (await self.repair_stats(anomaly_key)).items()}

    async def get_repair_success_rate(self, anomaly_key: str, action: str) -> dict[str, Any]:
        """One action's total, success and success_rate over the last 30 days."""
        name = validation.action(action)
        entry = (await self.get_all_repair_stats(anomaly_key)).get(name)
        if entry is None:
            entry = {"total": 0, "success": 0, "success_rate": 0.0}
        return {"action": name, **entry}

    async def repair_history(self, anomaly_key: str) -> list[RepairAttempt]:
        """The last 100 attempts, newest first: action, success as reported and time, for
        audit; and each verified one's verdict (pending, succeeded, failed), window and
        recurrence."""
        key = validation.anomaly_key(anomaly_key)
        history = await self._store.repair_history(self.project_id, key)
        now_ms = _ms(self._clock())
        verifying = self.settings.verify_repairs  # (off: the reference's entries, whatever
        # was noted while it was on)
        attempts = []
        for h in history:
            until = h.get("until_ms") if verifying else None
            back = h.get("back_ms")
            found = verdict(h["at_ms"], until, back, now_ms)
            attempts.append(
                RepairAttempt(
                    action=h["action"],
                    success=h["success"],
                    timestamp=_time(h["at_ms"]),
                    verdict=found,
                    verify_until=_time(until) if until is not None else None,
                    recurred_at=_time(back) if found == FAILED and back is not None else None,
                )
            )
        return attempts

    async def get_repair_history(self, anomaly_key: str) -> list[dict[str, Any]]:
        """The last 100 attempts, newest first (``repair_history`` as the reference's dicts)."""
        return [attempt.to_dict() for attempt in await self.repair_history(anomaly_key)]

    async def should_skip_action(
        self, anomaly_key: str, action: str, min_success_rate: float = 0.2
    ) -> bool:
        """True for an action tried at least twice that succeeds less than the floor: by its
        verified outcomes once ``verify_min_settled`` of its attempts settled, else by what
        its callers reported."""
        floor = validation.rate(min_success_rate)
        name = validation.action(action)
        stats = await self.repair_stats(anomaly_key)
        judged = self._judged(stats).get(name, {"total": 0, "success": 0})
        return should_skip(judged["total"], judged["success"], floor)

    async def recommend_actions(
        self, anomaly_key: str, candidates: Sequence[str], min_success_rate: float = 0.2
    ) -> list[ActionRecommendation]:
        """Candidate actions ranked by the lower confidence bound of their success rate,
        untried ones included, each with its evidence and the reason for its rank."""
        if isinstance(candidates, str) or not candidates:
            raise InvalidInputError("candidates must be a non-empty list of actions")
        names = [validation.action(c) for c in candidates]
        floor = validation.rate(min_success_rate)
        return recommend(names, self._judged(await self.repair_stats(anomaly_key)), floor)

    # -- dispositions -------------------------------------------------------------------------

    async def record_disposition(
        self,
        anomaly_key: str,
        disposition_type: str,
        *,
        at: datetime | None = None,
        by: str | None = None,
    ) -> None:
        """Count how one alert of this anomaly was disposed of (one of the five types);
        ``by`` names who reported it (kept in the timeline)."""
        key = validation.anomaly_key(anomaly_key)
        kind = validation.disposition(disposition_type)
        event = self._event(key, at, by)
        await self._must_exist(key, event.now_ms)
        await self._store.record_disposition(self.project_id, event, kind)

    async def get_disposition_stats(self, anomaly_key: str) -> dict[str, int]:
        """All five disposition counts of the last 30 days and their total."""
        key = validation.anomaly_key(anomaly_key)
        return await self._store.disposition_stats(self.project_id, key, _ms(self._clock()))

    async def disposition_summary(self) -> dict[str, int]:
        """The project's dispositions of the last 30 days by type, and their total."""
        return await self._store.disposition_summary(self.project_id, _ms(self._clock()))

    async def get_all_disposition_stats(
        self, limit: int = 20
    ) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """The project's dispositions of the last 30 days, and its ``limit`` anomalies with the
        most, each with its alert name."""
        limit = validation.limit(limit)
        now_ms = _ms(self._clock())

        async def evaluate(keys: Sequence[str]) -> list[tuple[int, Snapshot] | None]:
            snapshots = await self._raw.read(self.project_id, keys, now_ms, now_ms)
            return [
                (s.dispositions["total"], s)
                if s is not None and s.dispositions["total"] > 0
                else None
                for s in snapshots
            ]

        async def both() -> tuple[dict[str, int], list[dict[str, Any]]]:
            summary = await self._raw.disposition_summary(self.project_id, now_ms)
            top = await self._top("dispositions", evaluate, limit)
            rows = [
                {
                    "anomaly_key": key,
                    "alert_name": fingerprint_fields(snapshot.signature)["alert_name"],
                    **snapshot.dispositions,
                }
                for key, _, snapshot in top
            ]
            return summary, rows

        return await self._guarded(
            "get_all_disposition_stats", both(), lambda: (empty_disposition_counts(), [])
        )

    # -- permanent fixes ----------------------------------------------------------------------

    async def mark_permanent_fix_applied(
        self,
        anomaly_key: str,
        fix_description: str,
        *,
        at: datetime | None = None,
        by: str | None = None,
    ) -> None:
        """Record that the root cause got a permanent fix; an occurrence after it is flagged
        ``regressed`` (the first one also ``newly_regressed``) for the next 90 days. The fix
        (text, time, ``by``) is in the anomaly's ``permanent_fix`` and its timeline."""
        key = validation.anomaly_key(anomaly_key)
        text = validation.description(fix_description)
        event = self._event(key, at, by)
        await self._must_exist(key, event.now_ms)
        await self._store.mark_fix(self.project_id, event, text)

    async def undo_permanent_fix(
        self, anomaly_key: str, *, at: datetime | None = None, by: str | None = None
    ) -> bool:
        """Take back the permanent fix in force (marked by mistake, or on the wrong anomaly):
        the anomaly is no longer fixed nor regressed, and its timeline says who undid it.
        False when it had no fix in force."""
        key = validation.anomaly_key(anomaly_key)
        return await self._store.undo_fix(self.project_id, self._event(key, at, by))

    async def record_resolution(
        self,
        anomaly_key: str,
        *,
        at: datetime | None = None,
        by: str | None = None,
        episode: str | None = None,
        started: datetime | None = None,
    ) -> None:
        """Note that a known anomaly resolved at ``at``: its latest resolution is kept
        (``last_resolved`` of reads, and the timeline), and it counts as a change for flapping.
        ``episode`` (an Alertmanager fingerprint) and ``started`` (its ``startsAt``) name the
        episode that resolved; without them, every open episode of the anomaly is closed.
        Counts nothing. While the store is down it goes to the spool, after the occurrences
        already there."""
        key = validation.anomaly_key(anomaly_key)
        event = self._event(key, at, by)
        fingerprint = validation.episode(episode)
        started_ms = _ms(validation.aware(started)) if fingerprint and started else -1
        resolution = Resolution(key, event.at_ms, event.by, fingerprint, started_ms)
        await self._store.resolve(
            Recording(self.project_id, self._policy, event.now_ms), resolution
        )

    async def flapping_anomalies(self, limit: int = 100) -> AnomalyList:
        """The anomalies flapping now, the highest percent first (from an index kept on
        write: the cost follows the flapping anomalies, not the project)."""
        now = self._clock()
        indexed = await self._guarded("flapping", self._raw.flapping(self.project_id), list)
        keys = [key for key, _ in indexed]
        snapshots = await self._raw.read(self.project_id, keys, _ms(now), _ms(now)) if keys else []
        found = [self._frequency(s, now) for s in snapshots if s is not None]
        found = [f for f in found if f.flapping]
        found.sort(key=lambda f: (-f.flap_percent, -f.count_24h, f.anomaly_key))
        return AnomalyList(found[:limit], len(found))

    async def sweep_flapping(self, limit: int = 1_000) -> int:
        """Stop the flapping of anomalies that went quiet (at most ``limit``): each told in
        its timeline and notices. The service runs it every ``sweep_seconds``; how many."""
        return await self._store.sweep(self._recording(self._clock()), limit)

    # -- the notices outbox (the service's deliverers send it; see anomaly_counter.outbox) ----

    async def outbox_stats(self) -> OutboxStats:
        """The project's outbox: notices waiting, the oldest's time, overflowed, dead."""
        return await self._store.outbox_stats(self.project_id)

    async def dead_letters(self) -> list[DeadLetter]:
        """The notices given up on, oldest first."""
        return await self._store.dead_letters(self.project_id)

    async def retry_dead_letters(self, notice_ids: Sequence[str] | None = None) -> int:
        """Put dead letters (those of ``notice_ids``, or all) back in the outbox: a running
        service delivers them, each to the channel that did not take it, with its notice id.
        How many."""
        wanted = None if notice_ids is None else set(notice_ids)
        letters = [d for d in await self.dead_letters() if wanted is None or d.notice_id in wanted]
        return await self.retry_letters(letters)

    async def retry_letters(self, letters: Sequence[DeadLetter]) -> int:
        """``retry_dead_letters`` of dead letters already read (those still in the list)."""
        return await self._store.retry_dead_letters(self.project_id, letters) if letters else 0

    async def ping(self) -> None:
        """Raise StoreUnavailableError when the store cannot be reached."""
        await self._store.ping()

    # -- deleting (see docs/delete.md) ----------------------------------------------------------

    async def delete_anomaly(self, ref: str) -> DeletedAnomaly:
        """Delete one anomaly, by its key or by a name that matches one anomaly (see ``find``),
        and everything of it: counts, repairs, dispositions, fix, timeline, episodes, search
        entries, notices; what the project's summaries counted of it; its place under
        max_anomalies. ``AnomalyNotFoundError`` when there is none, ``AmbiguousAnomalyError``
        when a name matches several. Never degraded: a store that cannot take it raises
        StoreUnavailableError. An occurrence that comes later (or waits in a spool) makes it
        anew."""
        found = await self.find(ref)
        if found.anomaly is None and found.matches:
            raise self._ambiguous(ref, found, "name the one to delete by its key")
        if found.anomaly is not None:
            key, signature = found.anomaly.anomaly_key, found.anomaly.signature
        else:  # a key the reads do not show (one known only by a repair, a disposition, a fix)
            key, signature = validation.anomaly_key(ref), {}
        if not await self._store.delete_anomaly(self.project_id, key):
            raise AnomalyNotFoundError(f"no anomaly {ref!r} in project {self.project_id!r}")
        logger.info("anomaly_deleted", project=self.project_id, anomaly_key=key)
        return DeletedAnomaly(self.project_id, key, signature)

    async def delete_project(self) -> DeletedProject:
        """Delete this project and everything of it: its anomalies, summaries, notices, dead
        letters and tokens. Running it again, or after an interruption, finishes what is left
        (and says 0 when nothing was). Never degraded: a store that cannot take it raises
        StoreUnavailableError."""
        anomalies = await self._store.delete_project(self.project_id)
        logger.info("project_deleted", project=self.project_id, anomalies=anomalies)
        return DeletedProject(self.project_id, anomalies)


class _Checked(NamedTuple):
    anomaly_key: str
    signature: dict[str, Any]
    at_ms: int
    occurrence_id: str | None
    episode: str = ""
    ends_ms: int = -1


def _record_request(
    anomaly_key: str,
    signature: dict[str, Any],
    at_ms: int,
    occurrence_id: str | None,
    episode: str = "",
    ends_ms: int = -1,
    *,
    sequence: tuple[str, int] | None = None,
    replayed: str = "",
) -> RecordRequest:
    signature_json = validation.signature_json(signature)
    return RecordRequest(
        anomaly_key=anomaly_key,
        signature=signature,
        signature_json=signature_json,
        at_ms=at_ms,
        occurrence_id=occurrence_id,
        search_terms=search.joined_terms(signature_json),
        sequence=sequence,
        replayed=replayed,
        episode=episode,
        ends_ms=ends_ms,
    )


def looks_like_key(text: str) -> bool:
    """An anomaly key as hash_signature makes them: 16 hex digits."""
    return len(text) == 16 and all(c in "0123456789abcdef" for c in text)


def _chunks(anomaly_keys: Sequence[str], size: int) -> list[list[int]]:
    """Positions in chunks of about ``size``, all occurrences of one anomaly in the same
    chunk: chunks may run in any order, but one anomaly's occurrences never do."""
    if len(anomaly_keys) <= size:
        return [list(range(len(anomaly_keys)))]
    by_anomaly: dict[str, list[int]] = {}
    for position, key in enumerate(anomaly_keys):
        by_anomaly.setdefault(key, []).append(position)
    chunks: list[list[int]] = [[]]
    for positions in by_anomaly.values():
        if chunks[-1] and len(chunks[-1]) + len(positions) > size:
            chunks.append([])
        chunks[-1].extend(positions)
    return chunks


_NOT_FLAPPING: dict[str, Any] = {}  # (the answers of anomalies without a flapping state)
_counter: AnomalyCounter | None = None


def get_anomaly_counter() -> AnomalyCounter:
    """The process-wide counter, configured from settings (environment and TOML file)."""
    global _counter
    if _counter is None:
        _counter = AnomalyCounter.from_url()
    return _counter


def reset_anomaly_counter() -> None:
    """Forget the process-wide counter (tests; after changing settings)."""
    global _counter
    _counter = None


def _no_matches() -> tuple[list[tuple[int, AnomalyFrequency]], bool]:
    return [], False
