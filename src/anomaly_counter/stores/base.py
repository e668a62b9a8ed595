"""The one small interface every store implements, and the URL registry that picks one.

Stores speak in integer milliseconds (UTC) and plain values; the counter facade turns them into
the public types. Everything a crossing or a deduplication decides happens inside one store
call, atomically, so that concurrent writers in many processes agree.
"""

from __future__ import annotations

import hashlib
import importlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, urlsplit

from ..episodes import EpisodeRules
from ..errors import ConfigurationError, StoreError
from ..limits import anomaly_limit_error
from ..model import DISPOSITION_TYPES, empty_disposition_counts
from ..outbox import DeadLetter, Lease, OutboxEntry, OutboxStats, Settlement
from ..redact import redacted
from ..tokens import TokenRecord
from ..windows import WindowState
from .image import AnomalyImage

if TYPE_CHECKING:
    from ..settings import Settings

DAY_MS = 86_400_000
RETENTION_DAYS = 30
ANOMALY_TTL_SECONDS = 35 * 86_400
"""An anomaly nobody wrote to for 35 days is forgotten, as in the reference design."""
FIX_VALIDITY_MS = 90 * DAY_MS
"""A permanent fix counts as applied for 90 days, as in the reference design."""
REPAIR_HISTORY_LENGTH = 100

INDEXES = ("1h", "24h", "7d", "30d", "dispositions")
"""Project-wide indexes kept on write: one per window (scored by that window's count at the
anomaly's newest occurrence) and one by disposition total."""


@dataclass(frozen=True, slots=True)
class RecordRequest:
    """One validated occurrence, ready to store."""

    anomaly_key: str
    signature: dict[str, Any]
    signature_json: str
    at_ms: int
    occurrence_id: str | None
    search_terms: str = ""  # the signature's search terms (search.joined_terms), indexed once
    # how it is told from one counted before (see write_marks): a spool's number for it
    # (writer, number) and the writer's floor for its anomaly; and, replayed from a spool,
    # "<spool id>:<position>"
    sequence: tuple[str, int] | None = None
    floor: int = -1
    replayed: str = ""
    # an Alertmanager episode (see episodes.py): the alert's fingerprint ("" for none: a plain
    # occurrence, always counted), and its end when it arrives resolved (-1 while it fires)
    episode: str = ""
    ends_ms: int = -1


class Resolution(NamedTuple):
    """An episode of a known anomaly resolved at ``at_ms``: the episode named by the alert's
    fingerprint and start, or ("" and -1) the anomaly as a whole (the resolve API)."""

    anomaly_key: str
    at_ms: int
    by: str = ""
    episode: str = ""
    started_ms: int = -1


class AnomalyWrite(NamedTuple):
    """What every write of an event to an anomaly (a repair, a disposition, a fix or its undo)
    carries: which anomaly, when it happened, when it is written, its write id (a retry with
    the same id is applied once; "" for none) and who reported it (a token id, ``cli``, the
    library caller's ``by``; "" for nobody)."""

    anomaly_key: str
    at_ms: int
    now_ms: int
    write_id: str = ""
    by: str = ""


@dataclass(frozen=True, slots=True)
class WritePolicy:
    """The per-project rules a write applies atomically."""

    thresholds: tuple[int, int, int]
    tail_capacity: int
    dedup_horizon_ms: int
    dedup_max_ids: int
    max_anomalies: int = 20_000  # distinct anomalies the project may hold (a new one past it:
    # not stored, ``refused``)
    outbox_max: int = 0  # notices the project's outbox may hold (0: no outbox; the notices
    # of a project without channels are not kept)
    episodes: EpisodeRules = field(default_factory=EpisodeRules)  # incidents and flapping


Chunks = Iterable[Sequence[RecordRequest]]
"""A batch in chunks, in order (each chunk a store call; all of one anomaly in one chunk)."""


class Recording(NamedTuple):
    """What a record call applies to its occurrences: their project, its rules, and the
    writer's time."""

    project: str
    policy: WritePolicy
    now_ms: int


@dataclass(slots=True)
class Snapshot:
    """What a store knows of one anomaly as of one time (windows end at that time)."""

    anomaly_key: str
    counts: tuple[int, int, int, int]
    first_seen_ms: int | None  # None: known only by a repair, disposition or fix so far
    last_seen_ms: int | None
    repair_total: int
    fix_at_ms: int | None
    dispositions: dict[str, int]
    signature: dict[str, Any] = field(default_factory=dict)
    escalated_to: int = 0
    newly_regressed: bool = False
    duplicate: bool = False
    refused: bool = False  # not stored: it would have been a new anomaly past max_anomalies
    degraded: bool = False  # the store could not be reached: zeros, not the truth
    spooled: bool = False  # kept in the durable spool, to be counted when the store is back
    resolved_ms: int | None = None  # the latest resolution of one of its episodes (reads only)
    fix_description: str | None = None  # the fix in force (with fix_at_ms), and who marked it
    fix_by: str | None = None
    regressed_ms: int | None = None  # the first occurrence after the fix in force
    joined: bool = False  # an episode that joined the incident in progress: not counted
    firing: int = 0  # open episodes (listed ones: at most max_open)
    instances: int = 0  # episodes of the current (or last) incident
    flap: str = ""  # its flapping state as stored (episodes.FlapState.encode)

    @property
    def regressed(self) -> bool:
        """It came back after the fix in force."""
        return self.regressed_ms is not None


def blank_snapshot(anomaly_key: str, **flags: Any) -> Snapshot:
    """The answer for an anomaly the store could not tell of: ``refused`` (a new anomaly past
    max_anomalies), ``degraded`` (the store was away), ``spooled`` (kept for later)."""
    return Snapshot(
        anomaly_key=anomaly_key,
        counts=(0, 0, 0, 0),
        first_seen_ms=None,
        last_seen_ms=None,
        repair_total=0,
        fix_at_ms=None,
        dispositions=empty_disposition_counts(),
        **flags,
    )


def all_stored(snapshots: list[Snapshot], recording: Recording) -> list[Snapshot]:
    """The snapshots of a batch, or LimitExceededError when any occurrence was refused."""
    if any(s.refused for s in snapshots):
        raise anomaly_limit_error(recording.project, recording.policy.max_anomalies)
    return snapshots


class Store(ABC):
    """Storage for anomaly-counter. Every method takes the project id it acts for."""

    pipeline_chunk: int | None = None
    """Occurrences per ``record`` call when a large batch is split so that the caller's work
    overlaps the store's (None: one call for the whole batch)."""

    @abstractmethod
    async def record(
        self, recording: Recording, requests: Sequence[RecordRequest]
    ) -> list[Snapshot]:
        """Count occurrences in order (pipelined where the store can), each atomically. One
        that would make a new anomaly past ``policy.max_anomalies`` is not stored (its snapshot
        says ``refused``); the others are."""

    async def record_chunks(
        self, recording: Recording, chunks: Chunks, *, whole: Sequence[str] | None = None
    ) -> AsyncIterator[list[Snapshot]]:
        """``record`` for each chunk, answers in order. Stores that can pipeline send the next
        chunks while the caller handles the answers of the first. ``whole``: the chunks are a
        batch of these anomalies, stored whole or not at all, for the anomaly limit too (room is
        made for its new anomalies first, ``admit``): LimitExceededError when any is refused."""
        if whole is not None:
            await self.admit(recording, whole)
        for chunk in chunks:
            snapshots = await self.record(recording, chunk)
            yield all_stored(snapshots, recording) if whole is not None else snapshots

    async def admit(self, recording: Recording, anomaly_keys: Sequence[str]) -> None:
        """Make room for the new anomalies among these before a batch of them is written, or
        raise LimitExceededError (nothing reserved, nothing stored). For stores whose batch
        cannot be refused whole once it has begun (Redis: it runs in many calls); a store that
        writes a batch in one transaction checks there, and has nothing to do here."""
        return None

    @abstractmethod
    async def read(
        self, project: str, anomaly_keys: Sequence[str], at_ms: int, now_ms: int
    ) -> list[Snapshot | None]:
        """Snapshots of anomalies as of ``at_ms``; None for an anomaly never seen."""

    @abstractmethod
    async def record_repair(
        self, project: str, write: AnomalyWrite, action: str, success: bool, until_ms: int = 0
    ) -> None:
        """Count one attempt, and tell it in the timeline; a write id already applied to this
        anomaly (a retry) is not counted again. With ``until_ms`` (verification.py), it is
        verified until then: the anomaly's first occurrence after it and up to then, whichever
        of the two arrives first, is noted with it (``back_ms`` in the history)."""

    @abstractmethod
    async def repair_stats(
        self, project: str, anomaly_key: str, now_ms: int
    ) -> dict[str, tuple[int, int]]:
        """Per action, (attempts, successes) within the 30-day retention."""

    @abstractmethod
    async def repair_history(self, project: str, anomaly_key: str) -> list[dict[str, Any]]:
        """The last 100 attempts, newest first, for audit."""

    async def repair_histories(
        self, project: str, anomaly_keys: Sequence[str]
    ) -> list[list[dict[str, Any]]]:
        """``repair_history`` of several anomalies (the stores make it one round trip)."""
        return [await self.repair_history(project, key) for key in anomaly_keys]

    @abstractmethod
    async def record_disposition(self, project: str, write: AnomalyWrite, disposition: str) -> None:
        """Count one disposition, and tell it in the timeline; a write id already applied (a
        retry) is not counted again."""

    @abstractmethod
    async def disposition_stats(
        self, project: str, anomaly_key: str, now_ms: int
    ) -> dict[str, int]: ...

    @abstractmethod
    async def disposition_summary(self, project: str, now_ms: int) -> dict[str, int]:
        """The project's dispositions of the last 30 days, by type, from its own index."""

    @abstractmethod
    def candidates(self, project: str, index: str) -> AsyncIterator[tuple[str, int]]:
        """Anomalies of one index in descending order of their stored score, an upper bound
        of their current value (see ``ranking.select_top``)."""

    @abstractmethod
    async def chronic(self, project: str) -> list[tuple[str, int]]:
        """The anomalies whose latest occurrence left them at REPEAT or above, with that level
        (an index kept on write: its size follows the chronic anomalies, not the project). An
        anomaly gone since is dropped with ``refresh_index(project, "chronic", ...)``."""

    @abstractmethod
    async def refresh_index(
        self, project: str, index: str, entries: Sequence[tuple[str, int, int]]
    ) -> None:
        """Lower stale index scores to the values just read, as (key, score read, value);
        a value of 0 drops the entry. An entry a write moved meanwhile is left alone."""

    @abstractmethod
    async def mark_fix(self, project: str, write: AnomalyWrite, description: str) -> None:
        """Mark a permanent fix (the next occurrence after it is a regression), and tell it in
        the timeline; a write id already applied (a retry) changes nothing."""

    @abstractmethod
    async def undo_fix(self, project: str, write: AnomalyWrite) -> bool:
        """Take back the fix in force (and its regression), and tell it in the timeline;
        False when no fix was in force. A retry of an undo that happened (its write id
        already applied) is True again and changes nothing."""

    @abstractmethod
    async def resolve(self, recording: Recording, resolution: Resolution) -> None:
        """An episode of a known anomaly resolved: its latest resolution is kept, and a newer
        one than any before told in the timeline; the episode is closed (its incident too when
        it was the last open), and the transition counts for flapping (episodes.py)."""

    @abstractmethod
    async def flapping(self, project: str) -> list[tuple[str, int]]:
        """The project's flapping anomalies (an index kept on write), each with the time it
        would stop flapping if nothing more happened."""

    @abstractmethod
    async def sweep(self, recording: Recording, limit: int) -> int:
        """Settle up to ``limit`` flapping anomalies whose stop time has come: each that
        went quiet stops flapping (timeline, notice, index), atomically per anomaly. How
        many stopped."""

    # -- the story: history, timeline, search ------------------------------------------------

    @abstractmethod
    async def states(self, project: str, anomaly_keys: Sequence[str]) -> list[WindowState | None]:
        """The counting state of each anomaly (None for one never seen), for its history."""

    @abstractmethod
    async def timeline(self, project: str, anomaly_key: str) -> list[str]:
        """The anomaly's timeline entries as stored (see ``anomaly_counter.timeline``), newest
        written first."""

    @abstractmethod
    async def note(self, project: str, anomaly_key: str, entry: str) -> None:
        """Add an entry to the timeline of a known anomaly (a notice sent, say)."""

    @abstractmethod
    async def summary_days(self, project: str, now_ms: int) -> dict[int, dict[str, int]]:
        """The project's own day counters of the last 30 days, by day: dispositions
        (``d:<type>``) and escalation crossings (``e:<level number>``)."""

    @abstractmethod
    async def repair_stats_many(
        self, project: str, anomaly_keys: Sequence[str], now_ms: int
    ) -> list[dict[str, tuple[int, int]]]:
        """``repair_stats`` of several anomalies, in one round trip where the store can."""

    @abstractmethod
    async def search(
        self, project: str, word: str, limit: int
    ) -> tuple[list[tuple[str, str]], bool]:
        """``(term, anomaly key)`` of the project's anomalies with a term that holds a query
        word (a fingerprint term) or starts with it (any term), at most ``limit``, and whether
        there were more (see ``anomaly_counter.search``)."""

    @abstractmethod
    async def forget_terms(self, project: str, entries: Sequence[tuple[str, str]]) -> None:
        """Drop search entries ``(term, anomaly key)`` of anomalies that are gone, and the
        grams of terms no anomaly holds any more."""

    # -- the notices outbox (see anomaly_counter.outbox) -------------------------------------

    outbox_partitions: int = 1
    """How many partitions each project's outbox has (an anomaly's notices are in one)."""

    @abstractmethod
    async def outbox_lease(
        self, project: str, partitions: Sequence[int], holder: str, lease_ms: int
    ) -> list[Lease]:
        """Take or renew partitions' leases for ``holder`` (for ``lease_ms``, on the store's
        clock), in one round trip: for each, whether another holds it, or whether notices
        wait in it."""

    @abstractmethod
    async def outbox_read(
        self, project: str, partition: int, channels: Sequence[str], limit: int
    ) -> tuple[list[OutboxEntry], dict[str, str]]:
        """Up to ``limit`` entries after the lowest cursor of ``channels``, in order, and
        each channel's cursor ("" before the first entry)."""

    @abstractmethod
    async def outbox_settle(self, project: str, partition: int, settlement: Settlement) -> bool:
        """Apply a settlement if its holder still holds the lease (renewing it); False (and
        nothing done) when it does not."""

    @abstractmethod
    async def outbox_release(self, project: str, partition: int, holder: str) -> None:
        """Give a lease back (when a deliverer stops), so that another takes it at once."""

    @abstractmethod
    async def outbox_stats(self, project: str) -> OutboxStats: ...

    @abstractmethod
    async def dead_letters(self, project: str) -> list[DeadLetter]:
        """The project's dead letters, oldest first."""

    @abstractmethod
    async def retry_dead_letters(self, project: str, letters: Sequence[DeadLetter]) -> int:
        """Put these dead letters back in the outbox, each for its channel and with its notice
        id; how many (one no longer in the list is not)."""

    # -- API tokens (kept as digests; see anomaly_counter.tokens) ---------------------------

    @abstractmethod
    async def save_token(self, record: TokenRecord) -> None: ...

    @abstractmethod
    async def get_token(self, token_id: str) -> TokenRecord | None: ...

    @abstractmethod
    async def list_tokens(self, project: str | None = None) -> list[TokenRecord]:
        """Every token (of one project, or of all), oldest first."""

    @abstractmethod
    async def revoke_token(self, token_id: str) -> bool:
        """Forget a token; False when there was none with this id."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise when the store cannot be reached."""

    @abstractmethod
    async def aclose(self) -> None: ...

    # -- export and import (anomaly_counter.transfer) ----------------------------------------

    def export_anomalies(self, project: str) -> AsyncIterator[AnomalyImage]:
        """Every anomaly of the project, whole (each read atomically; the project as a whole
        is not: writes during an export land in it or not)."""
        raise StoreError(f"{type(self).__name__} cannot export")

    async def import_anomalies(
        self, project: str, images: Sequence[AnomalyImage], policy: WritePolicy, now_ms: int
    ) -> int:
        """Write anomalies as their images have them, each atomically (in one round trip, or
        one transaction, where the store can): its state is REPLACED (an image written twice
        leaves the same state), then its index entries are set as a write would have left them
        (windows, dispositions, chronic, flapping, search, its place among
        ``policy.max_anomalies``: a new one with no place is not written). Their keys live as
        if written at ``now_ms``. How many were written (fewer than given: some found no
        place)."""
        raise StoreError(f"{type(self).__name__} cannot import")

    async def held_anomalies(self, project: str, anomaly_keys: Sequence[str]) -> list[str]:
        """Those of the keys the project holds an anomaly of (as an export would list it)."""
        raise StoreError(f"{type(self).__name__} cannot import")

    async def import_summary(
        self, project: str, days: dict[int, dict[str, int]], now_ms: int
    ) -> None:
        """Set the project's own day counters (``summary_days``) of these days and names to
        these values (so that a summary imported twice is counted once)."""
        raise StoreError(f"{type(self).__name__} cannot import")

    # -- deleting (see docs/delete.md) -------------------------------------------------------

    @abstractmethod
    async def delete_anomaly(self, project: str, anomaly_key: str) -> bool:
        """Delete one anomaly of a project, atomically: its counts, repairs, dispositions, fix,
        timeline, episodes and flapping state, write marks and ids, its entries in the
        project's indexes and search (and the grams of terms no other anomaly holds), its
        notices and dead letters, its place under max_anomalies; and what the project's day
        summary counted of it: its dispositions (its own day counters hold them) and the
        escalations its timeline tells. False when there was nothing of it."""

    @abstractmethod
    async def delete_project(self, project: str) -> int:
        """Delete everything of a project: its tokens first (so that the API refuses its
        writers), then its anomalies (as many at a time as the store can do quickly; each
        removed whole), then what is the project's own: day summary, indexes, search, notices
        outbox and dead letters, counts. Complete when it returns; after an interruption,
        calling it again finishes the work. How many anomalies were deleted."""


def encode_part(value: str) -> str:
    """Percent-encode a key part from input, so that ``* ? [ ] { } : \\`` and the like can never
    reach another tenant's keys, a SCAN pattern or another Cluster slot."""
    return quote(value, safe="-_.")


def shard_of(anomaly_key: str, shards: int) -> int:
    """The shard of a project that holds an anomaly: its keys and its index entries share it."""
    return int.from_bytes(hashlib.sha256(anomaly_key.encode()).digest()[:4], "big") % shards


def id_digest(occurrence_id: str) -> str:
    """A fixed-size digest of an occurrence id: bounded memory per remembered id."""
    return hashlib.blake2b(occurrence_id.encode(), digest_size=12).hexdigest()


def day_of(ms: int) -> int:
    return ms // DAY_MS


def repairs_from(days: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(attempts, successes) per action from day totals named ``t:<action>``/``s:<action>``."""
    return {
        name[2:]: (n, days.get(f"s:{name[2:]}", 0))
        for name, n in sorted(days.items())
        if name.startswith("t:")
    }


def dispositions_from(days: dict[str, int]) -> dict[str, int]:
    """The five disposition counts and their total from day totals named ``d:<type>``."""
    counts = empty_disposition_counts()
    for kind in DISPOSITION_TYPES:
        counts[kind] = days.get(f"d:{kind}", 0)
    counts["total"] = sum(counts[kind] for kind in DISPOSITION_TYPES)
    return counts


_SCHEMES: dict[str, str] = {
    "sqlite": "anomaly_counter.stores.sqlite:SQLiteStore",
    "redis": "anomaly_counter.stores.redis:RedisStore",
    "rediss": "anomaly_counter.stores.redis:RedisStore",
    "unix": "anomaly_counter.stores.redis:RedisStore",
    "redis+sentinel": "anomaly_counter.stores.redis:RedisStore",
    "redis+cluster": "anomaly_counter.stores.redis_cluster:RedisClusterStore",
    "rediss+cluster": "anomaly_counter.stores.redis_cluster:RedisClusterStore",
}


def store_from_url(url: str, settings: Settings) -> Store:
    """The store a URL names: ``sqlite:///path``, ``redis://``, ``rediss://``, ``unix://``,
    ``redis+sentinel://host:port,host:port/master_name[/db]``,
    ``redis+cluster://host:port,host:port,...``."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:  # (a "[" of an IPv6 address not closed)
        raise ConfigurationError(f"setting store_url: {redacted(url)!r}: {exc}") from None
    target = _SCHEMES.get(scheme)
    if target is None:
        raise ConfigurationError(
            f"setting store_url: unknown scheme {scheme!r} in {redacted(url)!r};"
            f" supported: {', '.join(s + '://' for s in _SCHEMES)}"
        )
    module_name, class_name = target.split(":")
    store_class = getattr(importlib.import_module(module_name), class_name)
    store: Store = store_class.from_url(url, settings)
    return store
