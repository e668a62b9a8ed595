"""AnomalyCounter: the public facade. Validates input, applies the project's settings, turns
store snapshots into public types, and degrades instead of raising when the store is down."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar, NamedTuple, TypeVar

import structlog

from . import validation
from .errors import InvalidInputError, StoreUnavailableError
from .model import (
    DISPOSITION_TYPES,
    WINDOWS,
    AnomalyFrequency,
    EscalationLevel,
    Occurrence,
    empty_disposition_counts,
)
from .policy import ActionRecommendation, level_for, recommend, should_skip, success_rate
from .ranking import Evaluate, select_top
from .replay import Replayer
from .settings import Settings, load_settings
from .signature import derive_key_from_incident, fingerprint_fields, hash_signature
from .spool import Spool
from .stores.base import RecordRequest, Snapshot, Store, WritePolicy, store_from_url
from .windows import tail_capacity

logger = structlog.get_logger("anomaly_counter")
T = TypeVar("T")
Clock = Callable[[], datetime]
_WINDOW_INDEX = {name: i for i, name in enumerate(WINDOWS)}
_LABELS = tuple(level.label for level in EscalationLevel)  # by level number
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
        self.store = store
        self._clock = clock
        self.spool = spool
        """Where occurrences go while the store cannot take them (None: they are answered
        ``degraded``, or refused with ``strict``)."""
        # A counter that owns its spool replays it; the service runs one replayer for all.
        self._replayer: Replayer | None = None
        if spool is not None and replay:
            self._replayer = Replayer(spool, self._counter_for)
        thresholds = self.settings.thresholds_for(self.project_id)
        self.thresholds = thresholds
        self._policy = WritePolicy(
            thresholds=thresholds.as_tuple(),
            tail_capacity=tail_capacity(thresholds.highest),
            dedup_horizon_ms=self.settings.dedup_horizon_days * 86_400_000,
            dedup_max_ids=self.settings.dedup_max_ids,
        )

    @property
    def THRESHOLDS(self) -> dict[str, int]:
        return {
            "REPEAT": self.thresholds.repeat,
            "ESCALATE": self.thresholds.escalate,
            "PERMANENT_FIX": self.thresholds.permanent_fix,
        }

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
        spool = Spool(chosen.spool_dir, chosen.spool_max_bytes) if chosen.spool_dir else None
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
        await self.store.aclose()

    # -- degradation --------------------------------------------------------------------------

    async def _retried(self, op: str, write: Callable[[], Awaitable[None]], **context: Any) -> None:
        """A write, tried ``write_attempts`` times with exponential backoff and full jitter
        while the store cannot be reached. Safe: each write carries an id (or is idempotent),
        so one that landed although its answer was lost is not applied again."""
        delay = _RETRY_BASE_SECONDS
        for attempt in range(1, self.settings.write_attempts + 1):
            try:
                await write()
                return
            except StoreUnavailableError as exc:
                if attempt == self.settings.write_attempts:
                    self._unavailable(op, exc, **context)
                    return
                await asyncio.sleep(random.uniform(0, delay))
                delay *= 2

    async def _guard(self, op: str, call: Awaitable[T], fallback: T, **context: Any) -> T:
        try:
            return await call
        except StoreUnavailableError as exc:
            self._unavailable(op, exc, **context)
            return fallback

    def _unavailable(self, op: str, exc: StoreUnavailableError, **context: Any) -> None:
        """Raise when strict; else log the outage, and the caller answers ``degraded``."""
        if self.settings.strict:
            raise exc
        logger.warning(
            "anomaly_counter_store_unavailable",
            operation=op,
            project=self.project_id,
            error=str(exc),
            **context,
        )

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
        )

    # -- occurrences --------------------------------------------------------------------------

    def _check(self, occurrence: Occurrence | Mapping[str, Any], now: datetime) -> _Checked:
        """Everything about an occurrence that can be wrong, checked; cheap, no encoding."""
        if isinstance(occurrence, Mapping):
            unknown = set(occurrence) - {"signature", "at", "occurrence_id"}
            if unknown:
                raise InvalidInputError(f"unknown occurrence fields: {', '.join(sorted(unknown))}")
            occurrence = Occurrence(
                signature=occurrence.get("signature"),  # type: ignore[arg-type]
                at=occurrence.get("at"),
                occurrence_id=occurrence.get("occurrence_id"),
            )
        signature = validation.signature(occurrence.signature)
        occurrence_id = validation.occurrence_id(occurrence.occurrence_id)
        if occurrence_id is None and self.spool is not None:
            # With a spool, a write whose answer was lost is retried through it: an id made
            # now, before the first attempt, makes the retry count once if the first landed.
            occurrence_id = f"auto:{uuid.uuid4().hex}"
        return _Checked(
            hash_signature(signature),
            signature,
            _ms(validation.occurrence_time(occurrence.at, now)),
            occurrence_id,
        )

    @staticmethod
    def _prepare(checked: _Checked) -> RecordRequest:
        """A checked occurrence, ready to store (this part cannot fail)."""
        key, signature, at_ms, occurrence_id = checked
        return RecordRequest(
            anomaly_key=key,
            signature=signature,
            signature_json=validation.signature_json(signature),
            at_ms=at_ms,
            occurrence_id=occurrence_id,
        )

    def _request(self, occurrence: Occurrence | Mapping[str, Any], now: datetime) -> RecordRequest:
        return self._prepare(self._check(occurrence, now))

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
        request = self._request(Occurrence(signature, at, occurrence_id), now)
        if self.spool is not None:
            if self.spool.depth:  # a backlog: join it, so that the order is kept
                return (await self._to_spool([request], now))[0]
            try:
                stored = await self.store.record(self.project_id, [request], self._policy, _ms(now))
            except StoreUnavailableError as exc:
                logger.warning("anomaly_counter_spooling", project=self.project_id, error=str(exc))
                return (await self._to_spool([request], now))[0]
            return self._results([request], stored)[0]
        write = self.store.record(self.project_id, [request], self._policy, _ms(now))
        snapshots = await self._guard("record", write, None)
        if snapshots is None:
            return self._degraded(request.anomaly_key, _time(request.at_ms))
        return self._results([request], snapshots)[0]

    async def _to_spool(
        self, requests: Sequence[RecordRequest], now: datetime
    ) -> list[AnomalyFrequency]:
        """Keep occurrences in the durable spool (fsynced before this returns); each gets an
        occurrence id if it has none, so that its replay counts once. Raises SpoolFullError."""
        assert self.spool is not None
        accepted = _ms(now)
        payloads = [
            {
                "project": self.project_id,
                "signature": r.signature,
                "at_ms": r.at_ms,
                "occurrence_id": r.occurrence_id or f"spool:{uuid.uuid4().hex}",
                "accepted_ms": accepted,
            }
            for r in requests
        ]
        await self._spool_append(payloads)
        frequencies = []
        for r in requests:
            frequency = self._degraded(r.anomaly_key, _time(r.at_ms))
            frequency.spooled = True
            frequency.signature = r.signature
            frequencies.append(frequency)
        return frequencies

    async def _spool_append(self, payloads: list[dict[str, Any]]) -> None:
        """Append (fsync off the event loop) and make sure this counter's replayer runs."""
        assert self.spool is not None
        await asyncio.to_thread(self.spool.append, payloads)
        if self._replayer is not None:
            self._replayer.start()

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
                await self.store.resolve(self.project_id, record["anomaly_key"], record["at_ms"])
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
                RecordRequest(
                    anomaly_key=hash_signature(signature),
                    signature=signature,
                    signature_json=validation.signature_json(signature),
                    at_ms=int(record["at_ms"]),
                    occurrence_id=str(record["occurrence_id"]),
                )
            )
        size = self.store.pipeline_chunk or len(requests)
        chunks = [requests[i : i + size] for i in range(0, len(requests), size)]
        frequencies: list[AnomalyFrequency] = []
        answers = self.store.record_chunks(self.project_id, chunks, self._policy, _ms(now))
        done = 0
        async for snapshots in answers:
            frequencies += self._results(chunks[done], snapshots)
            done += 1
        return frequencies

    async def record_many(
        self, occurrences: Iterable[Occurrence | Mapping[str, Any]]
    ) -> list[AnomalyFrequency]:
        """Count a batch in order, pipelined; all input is validated before any of it is
        stored. Items are ``Occurrence`` or mappings with ``signature``, ``at``,
        ``occurrence_id``."""
        now = self._clock()
        checked = []
        for index, occurrence in enumerate(occurrences):
            try:
                checked.append(self._check(occurrence, now))
            except InvalidInputError as exc:
                raise type(exc)(f"occurrence {index}: {exc}") from exc
        if not checked:
            return []
        if self.spool is not None and self.spool.depth:  # a backlog: join it, keep the order
            return await self._to_spool([self._prepare(c) for c in checked], now)
        # All is checked: now each chunk is prepared just before it is sent, and each chunk's
        # answers are turned into results while the store works on the next ones.
        size = self.store.pipeline_chunk or len(checked)
        chunks = _chunks([c.anomaly_key for c in checked], size)
        requests: list[list[RecordRequest]] = []

        def prepared() -> Iterator[list[RecordRequest]]:
            for chunk in chunks:
                requests.append([self._prepare(checked[i]) for i in chunk])
                yield requests[-1]

        frequencies: list[AnomalyFrequency | None] = [None] * len(checked)
        answers = self.store.record_chunks(self.project_id, prepared(), self._policy, _ms(now))
        done = 0
        try:
            async for snapshots in answers:
                for i, frequency in zip(
                    chunks[done], self._results(requests[done], snapshots), strict=True
                ):
                    frequencies[i] = frequency
                done += 1
        except StoreUnavailableError as exc:
            left = [i for chunk in chunks[done:] for i in chunk]
            if self.spool is not None:
                logger.warning("anomaly_counter_spooling", project=self.project_id, error=str(exc))
                # the very requests sent (same ids), then those not prepared yet
                waiting = [r for sent in requests[done:] for r in sent]
                waiting += [self._prepare(checked[i]) for i in left[len(waiting) :]]
                spooled = await self._to_spool(waiting, now)
                for i, frequency in zip(left, spooled, strict=True):
                    frequencies[i] = frequency
                return [f for f in frequencies if f is not None]
            self._unavailable("record", exc)
            for i in left:
                frequencies[i] = self._degraded(checked[i].anomaly_key, _time(checked[i].at_ms))
        return [f for f in frequencies if f is not None]

    def _results(
        self, requests: Sequence[RecordRequest], snapshots: Sequence[Snapshot]
    ) -> list[AnomalyFrequency]:
        frequencies = []
        for request, snapshot in zip(requests, snapshots, strict=True):
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
        snapshots = await self._guard(
            "get_frequency",
            self.store.read(self.project_id, [key], _ms(moment), _ms(now)),
            None,
            anomaly_key=key,
        )
        if snapshots is None:
            return self._degraded(key, moment)
        snapshot = snapshots[0]
        if snapshot is None or snapshot.first_seen_ms is None:
            return None
        return self._frequency(snapshot, moment)

    async def top_anomalies(self, limit: int = 20, window: str = "24h") -> list[dict[str, Any]]:
        """The anomalies with the most occurrences in a window, most first, each with its
        figures; from an index kept on write (no scan), exact."""
        limit = validation.limit(limit)
        window = validation.window(window)
        index = _WINDOW_INDEX[window]
        now_ms = _ms(self._clock())

        async def evaluate(keys: Sequence[str]) -> list[tuple[int, Snapshot] | None]:
            snapshots = await self.store.read(self.project_id, keys, now_ms, now_ms)
            return [
                (s.counts[index], s) if s is not None and s.counts[index] > 0 else None
                for s in snapshots
            ]

        selected = await self._guard("top_anomalies", self._top(window, evaluate, limit), [])
        rows = []
        for _, value, snapshot in selected:
            row = fingerprint_fields(snapshot.signature)
            row.update(self._frequency(snapshot, _time(now_ms)).to_dict())
            row.update(window=window, count=value)
            rows.append(row)
        return rows

    async def _top(
        self, index: str, evaluate: Evaluate[Snapshot], limit: int
    ) -> list[tuple[str, int, Snapshot]]:
        result = await select_top(self.store.candidates(self.project_id, index), evaluate, limit)
        # Lower what cooled down, so the next query walks past fewer stale entries.
        await self.store.refresh_index(self.project_id, index, result.stale)
        return result.top

    # -- repairs ------------------------------------------------------------------------------

    async def record_repair_attempt(
        self, anomaly_key: str, action: str, success: bool, *, at: datetime | None = None
    ) -> None:
        """Count one repair attempt and whether it worked."""
        key = validation.anomaly_key(anomaly_key)
        name = validation.action(action)
        if not isinstance(success, bool):
            raise InvalidInputError(f"success must be true or false, got {success!r}")
        now = self._clock()
        moment = validation.occurrence_time(at, now)
        write_id = uuid.uuid4().hex
        await self._retried(
            "record_repair_attempt",
            lambda: self.store.record_repair(
                self.project_id, key, name, success, _ms(moment), _ms(now), write_id
            ),
            anomaly_key=key,
        )

    async def get_all_repair_stats(self, anomaly_key: str) -> dict[str, dict[str, Any]]:
        """Per action: total, success and success_rate over every attempt of the last 30 days."""
        key = validation.anomaly_key(anomaly_key)
        stats = await self._guard(
            "get_all_repair_stats",
            self.store.repair_stats(self.project_id, key, _ms(self._clock())),
            {},
            anomaly_key=key,
        )
        return {
            action: {"total": total, "success": ok, "success_rate": success_rate(total, ok)}
            for action, (total, ok) in stats.items()
        }

    async def get_repair_success_rate(self, anomaly_key: str, action: str) -> dict[str, Any]:
        """One action's total, success and success_rate over the last 30 days."""
        name = validation.action(action)
        entry = (await self.get_all_repair_stats(anomaly_key)).get(name)
        if entry is None:
            entry = {"total": 0, "success": 0, "success_rate": 0.0}
        return {"action": name, **entry}

    async def get_repair_history(self, anomaly_key: str) -> list[dict[str, Any]]:
        """The last 100 attempts, newest first: action, success and time, for audit."""
        key = validation.anomaly_key(anomaly_key)
        history = await self._guard(
            "get_repair_history", self.store.repair_history(self.project_id, key), []
        )
        return [
            {"action": h["action"], "success": h["success"], "timestamp": _time(h["at_ms"])}
            for h in history
        ]

    async def should_skip_action(
        self, anomaly_key: str, action: str, min_success_rate: float = 0.2
    ) -> bool:
        """True for an action tried at least twice that succeeds less than the floor."""
        floor = validation.rate(min_success_rate)
        stats = await self.get_repair_success_rate(anomaly_key, action)
        return should_skip(stats["total"], stats["success"], floor)

    async def recommend_actions(
        self, anomaly_key: str, candidates: Sequence[str], min_success_rate: float = 0.2
    ) -> list[ActionRecommendation]:
        """Candidate actions ranked by the lower confidence bound of their success rate,
        untried ones included, each with its evidence and the reason for its rank."""
        if isinstance(candidates, str) or not candidates:
            raise InvalidInputError("candidates must be a non-empty list of actions")
        names = [validation.action(c) for c in candidates]
        floor = validation.rate(min_success_rate)
        return recommend(names, await self.get_all_repair_stats(anomaly_key), floor)

    # -- dispositions -------------------------------------------------------------------------

    async def record_disposition(
        self, anomaly_key: str, disposition_type: str, *, at: datetime | None = None
    ) -> None:
        """Count how one alert of this anomaly was disposed of (one of the five types)."""
        key = validation.anomaly_key(anomaly_key)
        kind = validation.disposition(disposition_type)
        now = self._clock()
        moment = validation.occurrence_time(at, now)
        write_id = uuid.uuid4().hex
        await self._retried(
            "record_disposition",
            lambda: self.store.record_disposition(
                self.project_id, key, kind, _ms(moment), _ms(now), write_id
            ),
            anomaly_key=key,
        )

    async def get_disposition_stats(self, anomaly_key: str) -> dict[str, int]:
        """All five disposition counts of the last 30 days and their total."""
        key = validation.anomaly_key(anomaly_key)
        return await self._guard(
            "get_disposition_stats",
            self.store.disposition_stats(self.project_id, key, _ms(self._clock())),
            empty_disposition_counts(),
            anomaly_key=key,
        )

    async def get_all_disposition_stats(
        self, limit: int = 20
    ) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """The project's dispositions of the last 30 days, and its ``limit`` anomalies with the
        most, each with its alert name."""
        limit = validation.limit(limit)
        now_ms = _ms(self._clock())

        async def evaluate(keys: Sequence[str]) -> list[tuple[int, Snapshot] | None]:
            snapshots = await self.store.read(self.project_id, keys, now_ms, now_ms)
            return [
                (s.dispositions["total"], s)
                if s is not None and s.dispositions["total"] > 0
                else None
                for s in snapshots
            ]

        async def both() -> tuple[dict[str, int], list[dict[str, Any]]]:
            summary = await self.store.disposition_summary(self.project_id, now_ms)
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

        return await self._guard(
            "get_all_disposition_stats", both(), (empty_disposition_counts(), [])
        )

    # -- permanent fixes ----------------------------------------------------------------------

    async def mark_permanent_fix_applied(
        self, anomaly_key: str, fix_description: str, *, at: datetime | None = None
    ) -> None:
        """Record that the root cause got a permanent fix; an occurrence after it is flagged
        ``regressed`` (the first one also ``newly_regressed``) for the next 90 days."""
        key = validation.anomaly_key(anomaly_key)
        text = validation.description(fix_description)
        now = self._clock()
        moment = validation.occurrence_time(at, now)
        await self._retried(  # setting the same fix again changes nothing: safe to retry
            "mark_permanent_fix_applied",
            lambda: self.store.mark_fix(self.project_id, key, text, _ms(moment)),
            anomaly_key=key,
        )

    async def record_resolution(self, anomaly_key: str, *, at: datetime | None = None) -> None:
        """Note that an episode of a known anomaly was resolved at ``at``: its latest
        resolution is kept (``last_resolved`` of reads). Counts nothing. While the store is
        down it goes to the spool, after the occurrences already there."""
        key = validation.anomaly_key(anomaly_key)
        now = self._clock()
        moment = validation.occurrence_time(at, now)
        if self.spool is not None:
            if not self.spool.depth:
                try:
                    await self.store.resolve(self.project_id, key, _ms(moment))
                    return
                except StoreUnavailableError as exc:
                    logger.warning(
                        "anomaly_counter_spooling", project=self.project_id, error=str(exc)
                    )
            record = {"kind": "resolve", "project": self.project_id, "anomaly_key": key,
                      "at_ms": _ms(moment), "accepted_ms": _ms(now)}  # fmt: skip
            await self._spool_append([record])
            return
        await self._guard(
            "record_resolution",
            self.store.resolve(self.project_id, key, _ms(moment)),
            None,
            anomaly_key=key,
        )

    async def ping(self) -> None:
        """Raise StoreUnavailableError when the store cannot be reached."""
        await self.store.ping()


class _Checked(NamedTuple):
    anomaly_key: str
    signature: dict[str, Any]
    at_ms: int
    occurrence_id: str | None


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
