"""Redis store: one server-side script call per occurrence, one round trip per read.

Keys, for project P (percent-encoded) and anomaly A (percent-encoded)::

    {prefix}:{P.s}:a:A:m        meta hash: the packed state ('st', see common.lua), the fix's
                                text, the incident ('in') and flapping state ('fl')
    {prefix}:{P.s}:a:A:o        its open episodes: fingerprint -> 'start,seen' (hash; at most
                                max_open, see anomaly_counter.episodes)
    {prefix}:{P.s}:a:A:t        the tail: the latest occurrence times, packed (string)
    {prefix}:{P.s}:a:A:s        the signature of its first occurrence (string)
    {prefix}:{P.s}:a:A:r0..r3   rings: pushed-out occurrences per 1/60 of each window (hashes)
    {prefix}:{P.s}:a:A:i        occurrence ids a caller gave, seen (sorted set by arrival)
    {prefix}:{P.s}:a:A:w        write marks of spools and their writers (hash; write_marks.py)
    {prefix}:{P.s}:a:A:d        day counters: repairs and dispositions (hash)
    {prefix}:{P.s}:a:A:h        last 100 repair attempts (list)
    {prefix}:{P.s}:a:A:k, :l    the timeline: its milestones and the rest (lists, newest first;
                                see anomaly_counter.timeline)
    {prefix}:{P.s}:x:<index>    the shard's project indexes (sorted sets) and summary (hash)
    {prefix}:{P.s}:x:terms      search: '<term>\0<anomaly>' (sorted set, read by lex range)
    {prefix}:{P.s}:x:grams      search: '<gram>\0<term>' (see anomaly_counter.search)

``s`` is the anomaly's shard (0..15) within its project. All of an anomaly's keys and its
shard's indexes share the hash tag ``{P.s}``, so the scripts run unchanged on Redis Cluster when
each call holds the occurrences of one slot, and a project spreads over 16 slots instead of
piling onto one. The scripts are given an anomaly's meta key and name the others from it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import json
import re
import struct
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    TryAgainError,
)

from .. import search, timeline
from ..episodes import FLAP_MASK, FLAP_SLOTS
from ..errors import ConfigurationError, StoreError, StoreUnavailableError
from ..limits import anomaly_limit_error
from ..model import DISPOSITION_TYPES, WINDOWS, EscalationLevel
from ..outbox import KIND_CODES, KINDS, DeadLetter, Lease, OutboxEntry, OutboxStats, Settlement
from ..ranking import INDEX_SLACK, INDEX_SPREAD
from ..redact import redacted
from ..tokens import TokenRecord
from ..windows import GRAIN_MS, NEVER, RING_SLOTS, WINDOW_MS, WindowState
from .base import (
    ANOMALY_TTL_SECONDS,
    DAY_MS,
    FIX_VALIDITY_MS,
    REPAIR_HISTORY_LENGTH,
    RETENTION_DAYS,
    AnomalyWrite,
    Chunks,
    Recording,
    RecordRequest,
    Resolution,
    Snapshot,
    Store,
    WritePolicy,
    all_stored,
    day_of,
    dispositions_from,
    encode_part,
    id_digest,
    repairs_from,
    shard_of,
)
from .coalesce import Coalescer
from .image import SCORE_NAMES, AnomalyImage
from .redis_link import UNAVAILABLE, Link
from .write_marks import MAX_HELD, mark_of

if TYPE_CHECKING:
    from ..settings import Settings

SHARDS = 16
_CHUNKS_PER_ROUND = 20
_BOUND_INDEX = {name: w for w, name in enumerate(WINDOWS, 1)}  # the scripts' window numbers
_FIRST_PAGE, _LAST_PAGE = 8, 512  # index entries read from a shard at a time
_WRITES = frozenset(
    {
        "record",
        "admit",
        "unhold",
        "repair",
        "disposition",
        "fix",
        "undo",
        "resolve",
        "note",
        "forget",
        "outbox",
        "flap_sweep",
        "import",
        "delete",
    }
)
_SCRIPTS = ("record", "read", "repair", "disposition", "fix", "undo", "reindex", "resolve",
            "note", "state", "forget", "admit", "unhold", "outbox", "outbox_read",
            "flap_sweep", "export", "import", "delete")  # fmt: skip
_ADMIT_HOLD_MS = 300_000  # how long admit holds a new anomaly's place before its occurrence
_ADMIT_KEYS_PER_CALL = 1_000
_KNOWN_FOR_MS = 3_600_000  # an anomaly stored this recently lives on (35 days): admit skips it
_KNOWN_MOST = 65_536
_EXPORT_BATCH = 100  # anomalies exported per round trip
_NOTHING_NAMED: dict[str, Any] = {}
_NO_DISPOSITIONS = (0,) * len(DISPOSITION_TYPES)
OUTBOX_KEYS = ("ob", "obs", "obl", "obd")
"""The keys of a project shard's notices outbox (see outbox.lua): its stream, cursors and
counts, lease and dead letters. Never given a lifetime: a notice waits until it is settled."""
SHARD_KEYS = (
    "terms", "grams", "chronic", "summary", "dispositions", *WINDOWS, "live", "flapping"
)  # fmt: skip
"""The keys of a project shard (``{prefix}:{P.s}:x:<name>``): its search index, its chronic
anomalies, its day summary, its indexes by disposition total and by each window's count, its
live anomalies (for max_anomalies), and its flapping anomalies (scored by when each would stop
if nothing more happened)."""


def _lua_string(text: str) -> str:
    """A Lua string literal of the text's UTF-8 bytes, escaped as three-digit decimals (a
    shorter escape would swallow a digit that follows it)."""
    safe = b" _-:."
    return (
        "'"
        + "".join(
            chr(b) if chr(b).isascii() and (chr(b).isalnum() or b in safe) else f"\\{b:03d}"
            for b in text.encode()
        )
        + "'"
    )


def _lua_list(values: Iterable[int | str]) -> str:
    return "{" + ", ".join(_lua_string(v) if isinstance(v, str) else str(v) for v in values) + "}"


def lua_constants() -> str:
    """The rules the scripts share with Python, defined there (windows and their rings, index
    bounds, levels, dispositions, shard keys, timeline codes and bounds, search grams), as Lua
    source: each is written once, in Python."""
    codes = {f"TL_{kind.upper()}": code for kind, code in timeline.CODES.items()}
    milestones = timeline.MILESTONES
    levels = ", ".join(f"LEVEL_{level.name}" for level in EscalationLevel)
    lines = [
        f"local WINDOW, GRAIN = {_lua_list(WINDOW_MS)}, {_lua_list(GRAIN_MS)}",
        f"local RING, DAY = {RING_SLOTS}, {DAY_MS}",
        f"local INDEX_NAMES = {_lua_list(WINDOWS)}",
        f"local INDEX_SLACK, INDEX_SPREAD = {INDEX_SLACK}, {INDEX_SPREAD}",
        f"local {levels} = {', '.join(str(int(level)) for level in EscalationLevel)}",
        f"local DISPOSITIONS = {_lua_list(DISPOSITION_TYPES)}",
        f"local SHARD_KEYS = {_lua_list(SHARD_KEYS)}",
        # (the flapping index's lifetime is pushed out by its own writes: most anomalies
        # never flap, and every new one would pay for it)
        f"local SHARD_LIVED = {_lua_list(k for k in SHARD_KEYS if k != 'flapping')}",
        f"local MARKS_HELD = {MAX_HELD}",
        f"local FLAP_SLOTS, FLAP_MASK = {FLAP_SLOTS}, {FLAP_MASK}",
    ]
    lines += [f"local {name} = {_lua_string(code)}" for name, code in codes.items()]
    lines += [
        f"local TL_SEP = {_lua_string(timeline.SEP)}",
        "local TL_MILESTONE = {"
        + ", ".join(f"[{_lua_string(timeline.CODES[k])}] = true" for k in sorted(milestones))
        + "}",
        f"local TL_MILESTONE_ENTRIES, TL_MILESTONE_BYTES = {timeline.MILESTONE_ENTRIES},"
        f" {timeline.MILESTONE_BYTES}",
        f"local TL_ROUTINE_ENTRIES, TL_ROUTINE_BYTES = {timeline.ROUTINE_ENTRIES},"
        f" {timeline.ROUTINE_BYTES}",
        f"local GRAM, GRAM_PAD = {search.GRAM}, {_lua_string(search.PAD)}",
        f"local TERM_SEP, GROUP_SEP = {_lua_string(search.TERM_SEP)},"
        f" {_lua_string(search.GROUP_SEP)}",
    ]
    return "-- generated from anomaly_counter's Python modules (lua_constants)\n" + "\n".join(lines)


_MODULES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("record", "resolve", "flap_sweep"), ("episodes",)),
    **dict.fromkeys(("state", "export"), ("window",)),
}
"""The scripts that also get a module beside common.lua: episodes.lua (incidents and
flapping), window.lua (the counting state as replies give it). Only those: a chunk makes a
closure of each of its local functions at every call."""


def _script_source(name: str) -> str:
    lua = resources.files("anomaly_counter.stores") / "lua"
    parts = [lua_constants(), (lua / "common.lua").read_text()]
    parts += [(lua / f"{module}.lua").read_text() for module in _MODULES.get(name, ())]
    parts.append((lua / f"{name}.lua").read_text())
    return "\n".join(parts)


_Policy = tuple[int | str, ...]
_Write = tuple[str, _Policy, int, RecordRequest]
"""One occurrence to write: project, policy arguments, the caller's now, the request."""


@functools.lru_cache(maxsize=64)
def _policy_args(policy: WritePolicy) -> _Policy:
    return (
        *policy.thresholds, policy.tail_capacity, ANOMALY_TTL_SECONDS, policy.dedup_horizon_ms,
        policy.dedup_max_ids, FIX_VALIDITY_MS, RETENTION_DAYS, _shard_share(policy.max_anomalies),
        _outbox_share(policy),
        _rules_arg(policy),  # (read only by the calls that have an episode)
    )  # fmt: skip


def _episode_arg(request: RecordRequest) -> str:
    """An occurrence's episode in one argument (most have none: "", one argument the less to
    send and read): '<ends_ms>|<fingerprint>'."""
    return f"{request.ends_ms}|{request.episode}" if request.episode else ""


@functools.lru_cache(maxsize=64)
def _rules_arg(policy: WritePolicy) -> str:
    """The episodes' rules in one script argument (episodes.lua's rules_of)."""
    return ",".join(str(arg) for arg in policy.episodes.store_args())


def _outbox_share(policy: WritePolicy) -> int:
    """Each shard's share of the project's outbox, rounded up (0: no outbox)."""
    return -(-policy.outbox_max // SHARDS)


def _shard_share(max_anomalies: int) -> int:
    """What each shard of a project may hold of its max_anomalies: a shard cannot see the
    others' counts (on a cluster they live on other nodes), so each holds its part, rounded
    down (so that all hold no more than the limit), and at least one."""
    return max(1, max_anomalies // SHARDS)


_Group = tuple[list[str], list[Any], list[int]]
"""One script call of a record batch: its keys, its arguments, the positions it answers."""


def _record_groups(prefix: str, items: Sequence[_Write], by_slot: bool = False) -> list[_Group]:
    """The script calls of a record batch: one per policy (occurrences of different projects
    may differ), and on a cluster also one per slot (project shard), since a call's keys must
    live in one slot. On one server a batch of any mix of anomalies is one call: the server
    pays per call and per key name as well as per occurrence."""
    groups: dict[tuple[str, _Policy], _Group] = {}
    for position, (project, policy, now_ms, request) in enumerate(items):
        keys = _keys(prefix, project, request.anomaly_key)
        slot = keys.shard if by_slot else ""
        group = groups.get((slot, policy))
        if group is None:
            group = groups[slot, policy] = ([], list(policy), [])
        group[0].append(keys.meta)
        group[1].extend(
            (request.anomaly_key, request.at_ms, now_ms, mark_of(request), request.signature_json,
             request.search_terms, _episode_arg(request))
        )  # fmt: skip
        group[2].append(position)
    return list(groups.values())


def _record_snapshots(
    items: Sequence[_Write],
    groups: Sequence[_Group],
    replies: Sequence[Any],
    known: dict[tuple[str, str], int],
) -> list[Snapshot]:
    """The snapshots of a record batch's replies; the anomalies stored noted in ``known``."""
    snapshots: list[Snapshot] = [None] * len(items)  # type: ignore[list-item]
    for (_, _, positions), group_replies in zip(groups, replies, strict=True):
        for position, reply in zip(positions, group_replies, strict=True):
            project, _, now_ms, request = items[position]
            snapshot, named = _snapshot(request.anomaly_key, reply)
            snapshot.duplicate = bool(named.get("duplicate"))
            snapshot.escalated_to = int(named.get("escalated", 0))
            snapshot.newly_regressed = bool(named.get("newly_regressed"))
            snapshot.refused = bool(named.get("refused"))
            snapshot.joined = bool(named.get("joined"))
            if not snapshot.refused:
                known[project, request.anomaly_key] = now_ms
            snapshots[position] = snapshot
    while len(known) > _KNOWN_MOST:
        del known[next(iter(known))]
    return snapshots


def _sha1(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


class _Keys:
    """The key names of one anomaly and of its shard."""

    def __init__(self, prefix: str, project: str, anomaly_key: str) -> None:
        tag = f"{{{encode_part(project)}.{shard_of(anomaly_key, SHARDS)}}}"
        self.shard = f"{prefix}:{tag}:x:"
        base = f"{prefix}:{tag}:a:{encode_part(anomaly_key)}:"
        # the scripts take the meta key and name the anomaly's other keys from it
        self.meta, self.days, self.history, self.timeline, self.milestones = (
            base + s for s in ("m", "d", "h", "l", "k")
        )

    def index(self, name: str) -> str:
        return self.shard + name


@functools.lru_cache(maxsize=65_536)
def _keys(prefix: str, project: str, anomaly_key: str) -> _Keys:
    return _Keys(prefix, project, anomaly_key)


def _shard_index_key(prefix: str, project: str, shard: int, name: str) -> str:
    return f"{prefix}:{{{encode_part(project)}.{shard}}}:x:{name}"


class RedisScripts(Store):
    """What the Redis stores share: the keys, the scripts and the replies. How commands reach
    the server(s) is the subclass's: ``_run``."""

    pipeline_chunk = 50
    # A record call's keys must live in one slot on a cluster; on one server a batch of any
    # mix of anomalies is one call (the server pays per call and per key name).
    _calls_by_slot = False

    def __init__(self, settings: Settings) -> None:
        self._prefix = settings.key_prefix
        self._timeout = settings.store_timeout
        # With min_replicas, each write waits (WAIT, same round trip) until that many replicas
        # have it: an acknowledged write then survives a failover to one of them.
        self._min_replicas = settings.min_replicas
        self._wait: list[tuple[Any, ...]] = (
            # half the store timeout: the answer must come back before the socket gives up
            [("WAIT", settings.min_replicas, max(1, int(settings.store_timeout * 500)))]
            if settings.min_replicas
            else []
        )
        self._tokens = f"{self._prefix}:tokens"
        self._limits_for = settings.limits_for
        self._lease_ms = int(settings.notify_lease * 1000)  # (a settled notice renews it)
        self._dead_share = -(-settings.outbox_max // SHARDS)  # dead letters a shard keeps
        self._sources = {name: _script_source(name) for name in _SCRIPTS}
        self._shas = {name: _sha1(source) for name, source in self._sources.items()}
        self._writes: Coalescer[_Write, Snapshot] = Coalescer(self._record_now)
        self._known: dict[tuple[str, str], int] = {}  # (project, anomaly) -> when last stored

    def _share(self, project: str) -> int:
        return _shard_share(self._limits_for(project).max_anomalies)

    def _placed(self, project: str, placed: bool) -> None:
        """Raise the refusal of a write that would have made a new anomaly past the limit."""
        if not placed:
            raise anomaly_limit_error(project, self._limits_for(project).max_anomalies)

    async def _run(self, commands: Sequence[tuple[Any, ...]], replicate: bool) -> list[Any]:
        """Replies to commands (errors as values), in as few round trips as may be. Writes
        (``replicate``) are followed by the WAIT of min_replicas, and raise unless it is met."""
        raise NotImplementedError

    async def _eval(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """Run one script for each (keys, args), in one round trip.

        EVALSHA goes straight out; only on NOSCRIPT (a restarted or flushed server: those
        calls did not run) is the script loaded and those calls sent again.
        """
        sha = self._shas[name]
        commands = [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls]
        replies = await self._run(commands, replicate=name in _WRITES)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # those did not run: run again (with a WAIT of their own)
            await self._query(("SCRIPT", "LOAD", self._sources[name]))
            again = await self._eval(name, [calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        raise_errors(replies)
        return replies

    async def _query(self, command: tuple[Any, ...]) -> Any:
        """The reply to one command that writes no counts (raised if an error)."""
        return (await self._queries([command]))[0]

    async def _queries(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        replies = await self._run(commands, replicate=False)
        raise_errors(replies)
        return replies

    # -- occurrences --------------------------------------------------------------------------

    async def record(
        self, recording: Recording, requests: Sequence[RecordRequest]
    ) -> list[Snapshot]:
        project, policy, now_ms = recording
        policy_args = _policy_args(policy)
        results = await self._writes.submit(
            [(project, policy_args, now_ms, request) for request in requests]
        )
        return list(results)

    async def _record_now(self, items: Sequence[_Write]) -> list[Snapshot]:
        groups = _record_groups(self._prefix, items, self._calls_by_slot)
        replies = await self._eval("record", [(keys, args) for keys, args, _ in groups])
        return _record_snapshots(items, groups, replies, self._known)

    async def admit(self, recording: Recording, anomaly_keys: Sequence[str]) -> None:
        project, policy, now_ms = recording
        since = now_ms - _KNOWN_FOR_MS
        unknown = [k for k in anomaly_keys if self._known.get((project, k), since) <= since]
        if not unknown:
            return
        head = (_shard_share(policy.max_anomalies), _ADMIT_HOLD_MS)
        calls: list[tuple[list[str], list[Any]]] = []
        open_calls: dict[str, tuple[list[str], list[Any]]] = {}  # by slot, until full
        for key in unknown:
            keys = _keys(self._prefix, project, key)
            slot = keys.shard if self._calls_by_slot else ""
            call = open_calls.get(slot)
            if call is None or len(call[0]) == _ADMIT_KEYS_PER_CALL:
                call = open_calls[slot] = ([], [*head])
                calls.append(call)
            call[0].append(keys.meta)
            call[1].append(key)
        held = await self._eval("admit", calls)
        if all(held):
            return
        # Refused: the places the other calls held are given back (else they would keep room
        # from the project's next batch until they end).
        given = [(k, [h, *a[2:]]) for (k, a), h in zip(calls, held, strict=True) if h]
        if given:
            await self._eval("unhold", given)
        raise anomaly_limit_error(project, policy.max_anomalies)

    async def record_chunks(
        self, recording: Recording, chunks: Chunks, *, whole: Sequence[str] | None = None
    ) -> AsyncIterator[list[Snapshot]]:
        """Chunks in rounds of up to _CHUNKS_PER_ROUND, each round one ``_eval``: its
        occurrences grouped into as few calls as may be (on a cluster one per slot: a round's
        calls then carry many occurrences each, and the server pays per call). With
        min_replicas nothing of a round counts as stored before the replicas have all of it:
        answers are handed out only once its WAITs say so (else the whole round is retried)."""
        project, policy, now_ms = recording
        if whole is not None:
            await self.admit(recording, whole)
        policy_args = _policy_args(policy)
        round_: list[list[_Write]] = []
        for chunk in chunks:
            round_.append([(project, policy_args, now_ms, request) for request in chunk])
            if len(round_) == _CHUNKS_PER_ROUND:
                for snapshots in await self._record_round(round_):
                    yield all_stored(snapshots, recording) if whole is not None else snapshots
                round_ = []
        if round_:
            for snapshots in await self._record_round(round_):
                yield all_stored(snapshots, recording) if whole is not None else snapshots

    async def _record_round(self, round_: Sequence[list[_Write]]) -> list[list[Snapshot]]:
        items = [item for chunk in round_ for item in chunk]
        snapshots = await self._record_now(items)
        answers, offset = [], 0
        for chunk in round_:
            answers.append(snapshots[offset : offset + len(chunk)])
            offset += len(chunk)
        return answers

    def _check_replicated(
        self,
        waited: Any,
        replies: Sequence[Any],
        not_run: tuple[type[Exception], ...] = (NoScriptError,),
    ) -> None:
        """With min_replicas: raise unless the writes that ran (replies other than those of
        commands that did not run) reached enough replicas."""
        if waited is not None and any(not isinstance(r, not_run) for r in replies):
            replicated(waited, self._min_replicas)

    async def read(
        self, project: str, anomaly_keys: Sequence[str], at_ms: int, now_ms: int
    ) -> list[Snapshot | None]:
        args: list[Any] = [at_ms, now_ms, RETENTION_DAYS, FIX_VALIDITY_MS]
        calls = [([_keys(self._prefix, project, key).meta], args) for key in anomaly_keys]
        replies = await self._eval("read", calls)
        snapshots: list[Snapshot | None] = []
        for key, reply in zip(anomaly_keys, replies, strict=True):
            if reply is None:
                snapshots.append(None)
                continue
            snapshot, named = _snapshot(key, reply)
            resolved = int(named.get("resolved", -1))
            snapshot.resolved_ms = resolved if resolved >= 0 else None
            snapshot.firing = int(named.get("firing", 0))
            snapshot.instances = int(named.get("instances", 0))
            flap = named.get("flap", b"")
            snapshot.flap = flap.decode() if isinstance(flap, bytes) else str(flap or "")
            snapshots.append(snapshot)
        return snapshots

    # -- repairs and dispositions -------------------------------------------------------------

    async def record_repair(
        self, project: str, write: AnomalyWrite, action: str, success: bool, until_ms: int = 0
    ) -> None:
        anomaly_key, at_ms, now_ms, write_id, by = write
        keys = _keys(self._prefix, project, anomaly_key)
        args = [action, int(success), at_ms, now_ms, ANOMALY_TTL_SECONDS, RETENTION_DAYS]
        script_keys = [keys.days, keys.history, keys.meta]
        digest = id_digest(write_id) if write_id else ""
        entry = timeline.encode("repair", at_ms, action, success, by)
        tail = [REPAIR_HISTORY_LENGTH, digest, entry, anomaly_key, self._share(project), until_ms]
        (done,) = await self._eval("repair", [(script_keys, [*args, *tail])])
        self._placed(project, done != -1)

    async def _day_totals(self, key: str, now_ms: int) -> dict[str, int]:
        return day_totals(_pairs(await self._query(("HGETALL", key))), now_ms)

    async def repair_stats(
        self, project: str, anomaly_key: str, now_ms: int
    ) -> dict[str, tuple[int, int]]:
        days = await self._day_totals(_keys(self._prefix, project, anomaly_key).days, now_ms)
        return repairs_from(days)

    async def repair_history(self, project: str, anomaly_key: str) -> list[dict[str, Any]]:
        key = _keys(self._prefix, project, anomaly_key).history
        raw = await self._query(("LRANGE", key, 0, -1))
        return [_attempt(json.loads(item)) for item in raw]

    async def repair_histories(
        self, project: str, anomaly_keys: Sequence[str]
    ) -> list[list[dict[str, Any]]]:
        commands = [
            ("LRANGE", _keys(self._prefix, project, key).history, 0, -1) for key in anomaly_keys
        ]
        replies = await self._queries(commands) if commands else []
        return [[_attempt(json.loads(item)) for item in raw] for raw in replies]

    async def record_disposition(self, project: str, write: AnomalyWrite, disposition: str) -> None:
        anomaly_key, at_ms, now_ms, write_id, by = write
        keys = _keys(self._prefix, project, anomaly_key)
        script_keys = [keys.days, keys.index("dispositions"), keys.index("summary"), keys.meta]
        args = [anomaly_key, disposition, at_ms, now_ms, ANOMALY_TTL_SECONDS, RETENTION_DAYS]
        digest = id_digest(write_id) if write_id else ""
        entry = timeline.encode("disposition", at_ms, disposition, by)
        share = self._share(project)
        (done,) = await self._eval("disposition", [(script_keys, [*args, digest, entry, share])])
        self._placed(project, done != -2)

    async def disposition_stats(
        self, project: str, anomaly_key: str, now_ms: int
    ) -> dict[str, int]:
        days = await self._day_totals(_keys(self._prefix, project, anomaly_key).days, now_ms)
        return dispositions_from(days)

    async def disposition_summary(self, project: str, now_ms: int) -> dict[str, int]:
        totals: dict[str, int] = {}
        for names in (await self.summary_days(project, now_ms)).values():
            for name, n in names.items():
                totals[name] = totals.get(name, 0) + n
        return dispositions_from(totals)

    async def summary_days(self, project: str, now_ms: int) -> dict[int, dict[str, int]]:
        keys = [_shard_index_key(self._prefix, project, s, "summary") for s in range(SHARDS)]
        days: dict[int, dict[str, int]] = {}
        for raw in await self._queries([("HGETALL", key) for key in keys]):
            for day, name, n in _day_fields(_pairs(raw), now_ms):
                names = days.setdefault(day, {})
                names[name] = names.get(name, 0) + n
        return days

    async def repair_stats_many(
        self, project: str, anomaly_keys: Sequence[str], now_ms: int
    ) -> list[dict[str, tuple[int, int]]]:
        commands = [("HGETALL", _keys(self._prefix, project, k).days) for k in anomaly_keys]
        replies = await self._queries(commands) if commands else []
        return [repairs_from(day_totals(_pairs(raw), now_ms)) for raw in replies]

    # -- index --------------------------------------------------------------------------------

    async def candidates(self, project: str, index: str) -> AsyncIterator[tuple[str, int]]:
        # A query of the top k reads about k entries in all (the threshold algorithm stops soon
        # after): pages start small and double, so the cost follows the result, not the index.
        keys = [_shard_index_key(self._prefix, project, s, index) for s in range(SHARDS)]
        first = [_page_command(key, 0, _FIRST_PAGE) for key in keys]
        pages = [_scored(raw) for raw in await self._queries(first)]
        sizes = [_FIRST_PAGE] * SHARDS
        offsets = [len(page) for page in pages]
        heap: list[tuple[float, bytes, int, int]] = []
        for shard, page in enumerate(pages):
            if page:
                heap.append((-page[0][1], page[0][0], shard, 0))
        heapq.heapify(heap)
        while heap:
            negative, member, shard, position = heapq.heappop(heap)
            page = pages[shard]
            if position + 1 == len(page) and len(page) == sizes[shard]:
                # refill this shard before yielding: its next entries may outrank others'
                start, sizes[shard] = offsets[shard], min(sizes[shard] * 2, _LAST_PAGE)
                page = _scored(await self._query(_page_command(keys[shard], start, sizes[shard])))
                pages[shard], offsets[shard], position = page, start + len(page), -1
            if position + 1 < len(page):
                following = page[position + 1]
                heapq.heappush(heap, (-following[1], following[0], shard, position + 1))
            if negative < 0:
                yield member.decode(), int(-negative)

    async def chronic(self, project: str) -> list[tuple[str, int]]:
        keys = [_shard_index_key(self._prefix, project, s, "chronic") for s in range(SHARDS)]
        pages = await self._queries([("ZRANGE", key, 0, -1, "WITHSCORES") for key in keys])
        return [(member.decode(), int(score)) for page in pages for member, score in _scored(page)]

    async def refresh_index(
        self, project: str, index: str, entries: Sequence[tuple[str, int, int]]
    ) -> None:
        which = _BOUND_INDEX.get(index, 0)
        calls = []
        for key, bound, current in entries:
            keys = _keys(self._prefix, project, key)
            calls.append(([keys.index(index), keys.meta], [key, bound, current, which]))
        if calls:
            await self._eval("reindex", calls)

    # -- permanent fixes ----------------------------------------------------------------------

    async def mark_fix(self, project: str, write: AnomalyWrite, description: str) -> None:
        anomaly_key, at_ms, now_ms, write_id, by = write
        keys = _keys(self._prefix, project, anomaly_key)
        digest = id_digest(write_id) if write_id else ""
        entry = timeline.encode("fix", at_ms, description, by)
        args = [at_ms, description, ANOMALY_TTL_SECONDS, FIX_VALIDITY_MS, now_ms, digest, by, entry]
        args += [anomaly_key, self._share(project)]
        (done,) = await self._eval("fix", [([keys.meta], args)])
        self._placed(project, done != -1)

    async def undo_fix(self, project: str, write: AnomalyWrite) -> bool:
        anomaly_key, at_ms, now_ms, write_id, by = write
        keys = _keys(self._prefix, project, anomaly_key)
        digest = id_digest(write_id) if write_id else ""
        entry = timeline.encode("fix_undone", at_ms, by)
        args = [now_ms, FIX_VALIDITY_MS, digest, ANOMALY_TTL_SECONDS, entry]
        (undone,) = await self._eval("undo", [([keys.meta], args)])
        return bool(undone)

    async def resolve(self, recording: Recording, resolution: Resolution) -> None:
        project, policy, now_ms = recording
        key, at_ms, by, episode, started_ms = resolution
        entry = timeline.encode("resolved", at_ms, by)
        args = [at_ms, entry, ANOMALY_TTL_SECONDS, key, episode, started_ms, now_ms]
        args += [_outbox_share(policy), _rules_arg(policy)]
        await self._eval("resolve", [([_keys(self._prefix, project, key).meta], args)])

    async def flapping(self, project: str) -> list[tuple[str, int]]:
        keys = [_shard_index_key(self._prefix, project, s, "flapping") for s in range(SHARDS)]
        pages = await self._queries([("ZRANGE", key, 0, -1, "WITHSCORES") for key in keys])
        found = [(member.decode(), int(score)) for page in pages for member, score in _scored(page)]
        return sorted(found, key=lambda entry: (-entry[1], entry[0]))

    async def sweep(self, recording: Recording, limit: int) -> int:
        project, policy, now_ms = recording
        keys = [_shard_index_key(self._prefix, project, s, "flapping") for s in range(SHARDS)]
        pages = await self._queries(
            [("ZRANGE", key, "-inf", now_ms, "BYSCORE", "LIMIT", 0, limit) for key in keys]
        )
        head = [now_ms, _outbox_share(policy), _rules_arg(policy), ANOMALY_TTL_SECONDS]
        calls, room = [], limit
        for page in pages:  # (one call per shard: its keys live in one slot)
            members = [member.decode() for member in page][:room]
            room -= len(members)
            if members:
                metas = [_keys(self._prefix, project, m).meta for m in members]
                calls.append((metas, [*head, *members]))
        return sum(int(n) for n in await self._eval("flap_sweep", calls)) if calls else 0

    # -- the story ----------------------------------------------------------------------------

    async def states(self, project: str, anomaly_keys: Sequence[str]) -> list[WindowState | None]:
        calls: list[tuple[list[str], list[Any]]] = [
            ([_keys(self._prefix, project, key).meta], []) for key in anomaly_keys
        ]
        replies = await self._eval("state", calls) if calls else []
        return [None if reply is None else _state(reply) for reply in replies]

    async def timeline(self, project: str, anomaly_key: str) -> list[str]:
        keys = _keys(self._prefix, project, anomaly_key)
        parts = await self._queries(
            [("LRANGE", keys.milestones, 0, -1), ("LRANGE", keys.timeline, 0, -1)]
        )
        return [entry.decode() for part in parts for entry in part]

    async def note(self, project: str, anomaly_key: str, entry: str) -> None:
        keys = _keys(self._prefix, project, anomaly_key)
        await self._eval("note", [([keys.meta], [entry, ANOMALY_TTL_SECONDS])])

    # -- the notices outbox (outbox.lua, outbox_read.lua; a partition is a project shard) ----

    outbox_partitions = SHARDS

    def _outbox(self, project: str, partition: int) -> list[str]:
        return [_shard_index_key(self._prefix, project, partition, "ob")]

    async def outbox_lease(
        self, project: str, partitions: Sequence[int], holder: str, lease_ms: int
    ) -> list[Lease]:
        calls = [(self._outbox(project, p), ["lease", holder, lease_ms]) for p in partitions]
        return [Lease(int(taken)) for taken in await self._eval("outbox", calls)]

    async def outbox_read(
        self, project: str, partition: int, channels: Sequence[str], limit: int
    ) -> tuple[list[OutboxEntry], dict[str, str]]:
        (reply,) = await self._eval(
            "outbox_read", [(self._outbox(project, partition), ["read", limit, *channels])]
        )
        cursors = {c: cursor.decode() for c, cursor in zip(channels, reply, strict=False)}
        entries = [_outbox_entry(partition, e) for e in reply[len(channels)]]
        return entries, cursors

    async def outbox_settle(self, project: str, partition: int, settlement: Settlement) -> bool:
        holder, channel, entry, channels, dead = settlement
        field, letter = (
            (f"{dead.notice_id}|{channel}", json.dumps(dead.fields())) if dead else ("", "")
        )
        args = ["settle", holder, self._lease_ms, channel, entry.entry_id, field, letter,
                self._dead_share, *channels]  # fmt: skip
        (settled,) = await self._eval("outbox", [(self._outbox(project, partition), args)])
        return bool(settled)

    async def outbox_release(self, project: str, partition: int, holder: str) -> None:
        await self._eval("outbox", [(self._outbox(project, partition), ["release", holder])])

    async def outbox_stats(self, project: str) -> OutboxStats:
        replies = await self._eval(
            "outbox_read", [(self._outbox(project, p), ["stats"]) for p in range(SHARDS)]
        )
        oldest = [int(r[1]) for r in replies if int(r[1]) >= 0]
        return OutboxStats(
            depth=sum(int(r[0]) for r in replies),
            oldest_ms=min(oldest) if oldest else None,
            overflowed=sum(int(r[2]) for r in replies),
            dead=sum(int(r[3]) for r in replies),
            dead_overflowed=sum(int(r[4]) for r in replies),
        )

    async def dead_letters(self, project: str) -> list[DeadLetter]:
        replies = await self._eval(
            "outbox_read", [(self._outbox(project, p), ["dead"]) for p in range(SHARDS)]
        )
        letters = [DeadLetter.from_fields(json.loads(text)) for r in replies for text in r]
        return sorted(letters, key=lambda d: (d.dead_ms, d.notice_id))

    async def retry_dead_letters(self, project: str, letters: Sequence[DeadLetter]) -> int:
        calls: dict[int, list[Any]] = {}
        for letter in letters:
            e = letter.entry
            calls.setdefault(e.partition, ["retry", int(time.time() * 1000)]).extend(
                (f"{letter.notice_id}|{letter.channel}", KIND_CODES[e.kind], e.level, e.at_ms,
                 ",".join(map(str, e.counts)), letter.notice_id, letter.channel, e.anomaly_key)
            )  # fmt: skip
        if not calls:
            return 0
        replies = await self._eval(
            "outbox", [(self._outbox(project, p), args) for p, args in calls.items()]
        )
        return sum(int(r) for r in replies)

    async def search(
        self, project: str, word: str, limit: int
    ) -> tuple[list[tuple[str, str]], bool]:
        terms = [_shard_index_key(self._prefix, project, s, "terms") for s in range(SHARDS)]
        grams = [_shard_index_key(self._prefix, project, s, "grams") for s in range(SHARDS)]
        prefix, wanted = search.lookup(word)
        if wanted:  # the rarest of the word's grams in each shard
            counts = await self._queries(
                [("ZLEXCOUNT", key, b"[" + g + b"\0", b"[" + g + b"\0\xff") for key in grams
                 for g in wanted]
            )  # fmt: skip
            ranges = []
            for shard, key in enumerate(grams):
                mine = counts[shard * len(wanted) : (shard + 1) * len(wanted)]
                rarest = wanted[mine.index(min(mine))]
                ranges.append((key, b"[" + rarest + b"\0", b"[" + rarest + b"\0\xff"))
        else:
            ranges = [(key, b"[" + prefix, b"[" + prefix + b"\xff") for key in grams]
        start = b"[" + search.indexed(word).encode()
        page = limit + 1
        replies = await self._queries(
            [("ZRANGEBYLEX", key, low, high, "LIMIT", 0, page) for key, low, high in ranges]
            + [("ZRANGEBYLEX", key, start, start + b"\xff", "LIMIT", 0, page) for key in terms]
        )
        # the terms (of each shard) that hold the word, then the anomalies indexed under them
        holding: dict[tuple[int, str], None] = {}
        for shard, members in enumerate(replies[:SHARDS]):
            for member in members:
                term = member.partition(b"\0")[2].decode("utf-8", "replace")
                if search.holds(term, word):
                    holding[shard, term] = None
        more = len(holding) > search.MAX_TERMS
        holding = dict.fromkeys(list(holding)[: search.MAX_TERMS])
        found: dict[tuple[str, str], None] = {}
        for members in replies[SHARDS:]:  # the terms that start with the word
            for member in members:
                term, _, key = member.decode("utf-8", "replace").partition("\0")
                found[term, key] = None
        commands = []
        for shard, term in holding:
            low = b"[" + term.encode() + b"\0"
            commands.append(("ZRANGEBYLEX", terms[shard], low, low + b"\xff", "LIMIT", 0, page))
        for command, members in zip(commands, await self._queries(commands), strict=True):
            term = command[2][1:-1].decode()
            for member in members:
                found[term, member.partition(b"\0")[2].decode()] = None
        more |= any(len(members) >= page for members in replies) or len(found) > limit
        return list(found)[:limit], more

    async def forget_terms(self, project: str, entries: Sequence[tuple[str, str]]) -> None:
        calls = []
        for term, key in entries:
            keys = _keys(self._prefix, project, key)
            calls.append(([keys.index("terms"), keys.index("grams")], [term, key]))
        if calls:
            await self._eval("forget", calls)

    # -- API tokens: one hash, field per token id (few, looked up by id) ------------------------

    async def save_token(self, record: TokenRecord) -> None:
        await self._query(("HSET", self._tokens, record.token_id, _token_json(record)))

    async def get_token(self, token_id: str) -> TokenRecord | None:
        raw = await self._query(("HGET", self._tokens, token_id))
        return _token_from_json(raw) if raw is not None else None

    async def list_tokens(self, project: str | None = None) -> list[TokenRecord]:
        raw = await self._query(("HVALS", self._tokens))
        records = [_token_from_json(value) for value in raw]
        chosen = [r for r in records if project is None or r.project == project]
        return sorted(chosen, key=lambda r: (r.created_ms, r.token_id))

    async def revoke_token(self, token_id: str) -> bool:
        return bool(await self._query(("HDEL", self._tokens, token_id)))

    async def ping(self) -> None:
        await self._query(("PING",))

    # -- export and import (export.lua, import.lua) ------------------------------------------

    def export_anomalies(self, project: str) -> AsyncIterator[AnomalyImage]:
        return self._export(project)

    async def _export(self, project: str) -> AsyncIterator[AnomalyImage]:
        # Every anomaly of a project has a place in its shard's live set (for max_anomalies):
        # the list to export, without a SCAN of every node.
        lives = [_shard_index_key(self._prefix, project, s, "live") for s in range(SHARDS)]
        pages = await self._queries([("ZRANGE", key, 0, -1) for key in lives])
        members = sorted({member.decode() for page in pages for member in page})
        for start in range(0, len(members), _EXPORT_BATCH):
            batch = members[start : start + _EXPORT_BATCH]
            calls = [([_keys(self._prefix, project, key).meta], [key]) for key in batch]
            for key, reply in zip(batch, await self._eval("export", calls), strict=True):
                if reply is not None:  # (a place held for a batch, or an anomaly gone since)
                    yield _image(key, reply)

    async def import_anomalies(
        self, project: str, images: Sequence[AnomalyImage], policy: WritePolicy, now_ms: int
    ) -> int:
        calls = []
        for image in images:
            keys = _keys(self._prefix, project, image.anomaly_key)
            state = image.state
            tail = struct.pack(f"<{len(state.tail)}d", *state.tail) if state is not None else b""
            terms = (
                search.joined_terms(image.signature_json)
                if image.signature_json is not None
                else ""
            )
            args = [image.anomaly_key, _image_json(image), ANOMALY_TTL_SECONDS, FIX_VALIDITY_MS,
                    now_ms, _shard_share(policy.max_anomalies), policy.dedup_horizon_ms, tail,
                    terms]  # fmt: skip
            calls.append(([keys.meta], args))
        placed = await self._eval("import", calls) if calls else []
        return sum(1 for done in placed if done)

    async def held_anomalies(self, project: str, anomaly_keys: Sequence[str]) -> list[str]:
        # (held: with a state, as export.lua takes it)
        held: list[str] = []
        for start in range(0, len(anomaly_keys), _EXPORT_BATCH):
            part = anomaly_keys[start : start + _EXPORT_BATCH]
            replies = await self._queries(
                [("HEXISTS", _keys(self._prefix, project, key).meta, "st") for key in part]
            )
            held += [key for key, there in zip(part, replies, strict=True) if there]
        return sorted(held)

    async def import_summary(
        self, project: str, days: dict[int, dict[str, int]], now_ms: int
    ) -> None:
        # The counters go to shard 0's summary (a read adds up the shards'), and leave the
        # others', so that a summary imported twice is counted once.
        keys = [_shard_index_key(self._prefix, project, s, "summary") for s in range(SHARDS)]
        values = {f"{day}|{name}": n for day, names in days.items() for name, n in names.items()}
        if not values:
            return
        commands: list[tuple[Any, ...]] = [("HDEL", key, *values) for key in keys[1:]]
        commands.append(("HSET", keys[0], *(v for item in values.items() for v in item)))
        commands.append(("TTL", keys[0]))
        replies = await self._run(commands, replicate=True)
        raise_errors(replies)
        if int(replies[-1]) < ANOMALY_TTL_SECONDS:  # (never shortened, as extend() does)
            await self._run([("EXPIRE", keys[0], ANOMALY_TTL_SECONDS)], replicate=True)

    # -- deleting (delete.lua; see docs/delete.md) ----------------------------------------------

    async def delete_anomaly(self, project: str, anomaly_key: str) -> bool:
        meta = _keys(self._prefix, project, anomaly_key).meta
        for _ in range(_DELETE_ATTEMPTS):
            # its search entries were made from its first occurrence's signature: read here,
            # and handed in with the terms made of it (the script checks it is still the one)
            signature = await self._query(("GET", meta[:-1] + "s")) or b""
            args = [anomaly_key, signature, _search_terms(signature), *ANOMALY_KEYS]
            (done,) = await self._eval("delete", [([meta], args)])
            if done >= 0:
                self._known.pop((project, anomaly_key), None)
                return bool(done)
        raise StoreError(f"redis store: anomaly {anomaly_key!r} kept changing while deleted")

    async def delete_project(self, project: str) -> int:
        raw = _pairs(await self._query(("HGETALL", self._tokens)))
        tokens = [i for i, value in raw.items() if _token_from_json(value).project == project]
        if tokens:  # first: the API refuses the project's writers from now on
            await self._query(("HDEL", self._tokens, *tokens))
        tag = f"{self._prefix}:{{{encode_part(project)}."
        # The SCAN pattern also finds the keys of a project whose id is this one's, a dot and
        # more ({team.b.3}): the expression keeps this project's own ({team.3}).
        mine = re.compile(re.escape(tag.encode()) + rb"(\d+)\}:(?:a:([^:]+):m$)?")
        anomalies: set[bytes] = set()
        async for keys in self._scan(_glob_escaped(tag) + "*"):
            by_shard: dict[bytes, list[bytes]] = {}
            for key in keys:
                found = mine.match(key)
                if found is not None:
                    by_shard.setdefault(found.group(1), []).append(key)
                    if found.group(2):  # (an anomaly is counted by its state, its meta key)
                        anomalies.add(found.group(2))
            if by_shard:  # (one command per shard: its keys share one slot)
                replies = await self._run(
                    [("UNLINK", *k) for k in by_shard.values()], replicate=True
                )
                raise_errors(replies)
        for known in [k for k in self._known if k[0] == project]:
            del self._known[known]
        return len(anomalies)

    async def _scan(self, match: str) -> AsyncIterator[list[bytes]]:
        """The keys that match a pattern, a page at a time (SCAN: a key there all along is
        found once at least, one written meanwhile may not be)."""
        cursor: Any = 0
        while True:
            cursor, keys = await self._query(("SCAN", cursor, "MATCH", match, "COUNT", SCAN_PAGE))
            if keys:
                yield keys
            if int(cursor) == 0:
                return


ANOMALY_KEYS = ("m", "o", "t", "s", "r0", "r1", "r2", "r3", "i", "w", "d", "h", "k", "l")
"""The suffixes of an anomaly's keys (see the module's docstring)."""
SCAN_PAGE = 1_000
_DELETE_ATTEMPTS = 3  # (its signature changes once at most: from none to its first occurrence's)


def _search_terms(signature: bytes) -> str:
    """The search terms record.lua was given with a signature as stored ("" for none, or one
    that cannot be read: its entries are then dropped as searches meet them, forget_terms)."""
    try:
        return search.joined_terms(signature.decode()) if signature else ""
    except ValueError:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        return ""


def _glob_escaped(text: str) -> str:
    """Text matched as it is by a SCAN pattern."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


class RedisStore(RedisScripts):
    """Store on one Redis server (``redis://``, ``rediss://``, ``unix://``), or on the master
    Sentinel names (``redis+sentinel://``)."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        super().__init__(settings)
        self._client = client
        self._link = Link(client.connection_pool, settings.store_timeout)

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> RedisStore:
        options = connection_options(settings)
        path = urlsplit(url).path
        if url.startswith(("redis://", "rediss://")) and not re.fullmatch(r"/?\d*", path):
            # (redis-py would ignore it, and use database 0)
            raise ConfigurationError(
                f"setting store_url: the path of {redacted(url)!r} must be a database number"
            )
        try:
            if url.startswith("redis+sentinel://"):
                client = _sentinel_client(url, options)
            else:
                client = aioredis.Redis.from_url(url, **options)
        except ValueError as exc:
            raise ConfigurationError(f"setting store_url: {exc}") from exc
        return cls(client, settings)

    async def _run(self, commands: Sequence[tuple[Any, ...]], replicate: bool) -> list[Any]:
        """Replies to commands (errors as values), in one round trip. Writes (``replicate``)
        are followed by the WAIT of min_replicas, and raise unless it is met."""
        wait = self._wait if replicate else []
        replies = await self._link.round_trip([*commands, *wait])
        if wait:
            self._check_replicated(replies.pop(), replies)
        return replies

    async def record_chunks(
        self, recording: Recording, chunks: Chunks, *, whole: Sequence[str] | None = None
    ) -> AsyncIterator[list[Snapshot]]:
        project, policy, now_ms = recording
        # Every chunk goes out on one connection before any answer is read: the server works
        # through them in order while the caller reads and handles the first answers. (Two
        # connections would not do: the server interleaves them, and the first chunk's answers
        # would come back last.)
        if self._wait:
            answers = super().record_chunks(recording, chunks, whole=whole)
            async for snapshots in answers:
                yield snapshots
            return
        if whole is not None:
            await self.admit(recording, whole)
        policy_args = _policy_args(policy)
        sha = self._shas["record"]
        connection = await self._link.connection()
        held = True  # until given back
        sent: list[tuple[list[_Write], list[_Group]]] = []
        try:
            for chunk in chunks:
                items = [(project, policy_args, now_ms, request) for request in chunk]
                groups = _record_groups(self._prefix, items)
                commands = [("EVALSHA", sha, len(k), *k, *a) for k, a, _ in groups]
                await self._link.send(connection, [hiredis.pack_command(c) for c in commands])
                sent.append((items, groups))
            for index, (items, groups) in enumerate(sent):
                replies = await connection.read_replies(len(groups))
                if any(isinstance(reply, NoScriptError) for reply in replies):
                    # A restarted or flushed server: read what is still coming, then run again
                    # the calls that did not run.
                    later = [await connection.read_replies(len(g)) for _, g in sent[index + 1 :]]
                    self._link.give_back(connection)
                    held = False
                    rest = zip(sent[index:], [replies, *later], strict=True)
                    for (rest_items, rest_groups), rest_replies in rest:
                        await self._rerun_missing(rest_groups, rest_replies)
                        snapshots = _record_snapshots(
                            rest_items, rest_groups, rest_replies, self._known
                        )
                        yield all_stored(snapshots, recording) if whole is not None else snapshots
                    return
                snapshots = _record_snapshots(items, groups, replies, self._known)
                yield all_stored(snapshots, recording) if whole is not None else snapshots
        except BaseException as exc:
            if held:
                await self._link.discard(connection)
            if isinstance(exc, UNAVAILABLE):
                raise self._link.unavailable(exc) from exc
            raise
        self._link.give_back(connection)

    async def _rerun_missing(self, groups: Sequence[_Group], replies: list[Any]) -> None:
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        again = await self._eval("record", [(groups[i][0], groups[i][1]) for i in missing])
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply

    async def aclose(self) -> None:
        await self._link.aclose()
        await self._client.aclose()


def connection_options(settings: Settings) -> dict[str, Any]:
    """redis-py connection options of every Redis store."""
    return {
        "socket_timeout": settings.store_timeout,
        "socket_connect_timeout": settings.store_timeout,
        # No silent retries: a retried write could count twice (redis-py #261).
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
    }


def _snapshot(anomaly_key: str, reply: Sequence[Any]) -> tuple[Snapshot, dict[str, Any]]:
    """A snapshot from a script's reply (see reply() in common.lua), and its named values."""
    c1, c2, c3, c4, first, last, repairs, fix, flat, signature = reply[:10]
    # (by name: the scripts' DISPOSITIONS are generated from DISPOSITION_TYPES, in its order)
    dispositions = dict(zip(DISPOSITION_TYPES, reply[10:] or _NO_DISPOSITIONS, strict=True))
    dispositions["total"] = sum(dispositions.values())
    named = (
        {name.decode(): value for name, value in zip(flat[::2], flat[1::2], strict=True)}
        if flat
        else _NOTHING_NAMED  # most replies: no crossing, no fix
    )
    snapshot = Snapshot(
        anomaly_key=anomaly_key,
        counts=(c1, c2, c3, c4),
        first_seen_ms=first if first >= 0 else None,
        last_seen_ms=last if last >= 0 else None,
        repair_total=repairs,
        fix_at_ms=fix if fix >= 0 else None,
        dispositions=dispositions,
        signature=json.loads(signature) if signature else {},
    )
    if snapshot.fix_at_ms is not None:
        regressed = int(named.get("regressed_at", -1))
        snapshot.regressed_ms = regressed if regressed >= 0 else None
        text, by = named.get("fix_text"), named.get("fix_by")
        snapshot.fix_description = text.decode() if text else None
        snapshot.fix_by = by.decode() if by else None
    return snapshot, named


def _state(reply: Sequence[Any]) -> WindowState:
    """A window state from the state script's named reply."""
    named = {name.decode(): value for name, value in zip(reply[::2], reply[1::2], strict=True)}
    packed: bytes = named["tail"]
    tail = sorted(struct.unpack(f"<{len(packed) // 8}d", packed))
    rings = []
    for r in range(1, 5):
        ring = {int(slot): int(n) for slot, n in _pairs(named[f"ring{r}"]).items()}
        slot, pending = named[f"pending{r}"]
        if pending > 0:
            ring[slot] = ring.get(slot, 0) + pending
        rings.append(ring)
    evicted, newest = named["evicted"], named["newest"]
    return WindowState(
        capacity=1 << 30,
        tail=[int(t) for t in tail],
        evicted_max=evicted if evicted >= 0 else NEVER,
        newest=newest if newest >= 0 else NEVER,
        rings=rings,
    )


def raise_errors(replies: Sequence[Any]) -> None:
    """Raise the first error among replies read with errors as values, as one of ours:
    StoreUnavailableError when the server cannot take it for now, StoreError otherwise."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise store_error(reply) from reply


_FOR_NOW = (BusyLoadingError, ReadOnlyError, MasterDownError, TryAgainError, ClusterDownError,
            OutOfMemoryError)  # fmt: skip
_FOR_NOW_CODES = ("BUSY ", "NOREPLICAS ", "MISCONF ")  # (error replies redis-py leaves unnamed)


def store_error(exc: Exception) -> StoreUnavailableError | StoreError:
    """One of our errors for an error reply of the server."""
    if isinstance(exc, _FOR_NOW) or str(exc).startswith(_FOR_NOW_CODES):
        return StoreUnavailableError(f"redis store: {exc}")
    return StoreError(f"redis store: {exc}")


def _pairs(raw: dict[bytes, bytes] | Sequence[bytes]) -> dict[bytes, bytes]:
    """A hash from its HGETALL reply (a map in RESP3, redis-py's default; flat in RESP2)."""
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2], strict=True))


def _page_command(key: str, start: int, size: int) -> tuple[Any, ...]:
    return ("ZREVRANGE", key, start, start + size - 1, "WITHSCORES")


def _scored(raw: Sequence[Any]) -> list[tuple[bytes, float]]:
    """Members and scores from a WITHSCORES reply (pairs in RESP3, flat in RESP2)."""
    if raw and isinstance(raw[0], list):
        return [(member, float(score)) for member, score in raw]
    return [(member, float(score)) for member, score in zip(raw[::2], raw[1::2], strict=True)]


def replicated(reply: Any, wanted: int) -> None:
    """Raise unless WAIT says ``wanted`` replicas have the writes before it."""
    if isinstance(reply, Exception) or int(reply) < wanted:
        raise StoreUnavailableError(
            f"redis store: the write reached {reply} of {wanted} replicas in time"
        )


def _sentinel_client(url: str, options: dict[str, Any]) -> aioredis.Redis:
    """A client of the master that Sentinel names, ``redis+sentinel://[:password@]host:port,
    host:port/master_name[/db]``: after a failover its connections find the new master."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    names = [p for p in parts.path.split("/") if p]
    if not hosts or not names or len(names) > 2:
        raise ValueError(
            f"{redacted(url)!r} is not redis+sentinel://host:port[,host:port...]/master[/db]"
        )
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"sentinel address {host!r} is not host:port")
        sentinels.append((name.strip("[]"), int(port)))
    db = int(names[1]) if len(names) == 2 and names[1].isdigit() else 0
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        sentinels,
        # (redis-py's default retries, with a second of backoff, would spend the store timeout
        # on the first sentinel that cannot be reached, and hide why)
        sentinel_kwargs={key: options[key] for key in ("socket_timeout", "retry")},
        password=unquote(parts.password) if parts.password else None,
        **options,
    )
    client: aioredis.Redis = sentinel.master_for(names[0], db=db)
    return client


def _token_json(record: TokenRecord) -> str:
    return json.dumps(dataclasses.asdict(record))


def _token_from_json(raw: bytes) -> TokenRecord:
    return TokenRecord(**json.loads(raw))


def _day_fields(raw: dict[bytes, bytes], now_ms: int) -> Iterator[tuple[int, str, int]]:
    """The day counters (fields ``<day>|<name>``) of the retained days: (day, name, count)."""
    since = day_of(now_ms) - RETENTION_DAYS
    for field, value in raw.items():
        day, bar, name = field.decode().partition("|")
        if bar and int(day) >= since:
            yield int(day), name, int(value)


def day_totals(raw: dict[bytes, bytes], now_ms: int) -> dict[str, int]:
    """Totals of day counters over the retained days."""
    totals: dict[str, int] = {}
    for _, name, n in _day_fields(raw, now_ms):
        totals[name] = totals.get(name, 0) + n
    return totals


def _outbox_entry(partition: int, raw: Sequence[Any]) -> OutboxEntry:
    entry_id, flat = raw[0].decode(), raw[1]
    f = {name.decode(): value.decode() for name, value in zip(flat[::2], flat[1::2], strict=True)}
    c = [int(x) for x in f["c"].split(",")]
    return OutboxEntry(
        partition, entry_id, f["k"], KINDS[f["n"]], int(f["l"]), int(f["a"]),
        (c[0], c[1], c[2], c[3]), int(f["w"]), f.get("i", ""), f.get("o", ""),
    )  # fmt: skip


def _attempt(entry: dict[str, Any]) -> dict[str, Any]:
    """A repair history entry as the stores give it (repair.lua keeps 'until' and 'back' only
    when it is verified)."""
    until, back = entry.get("until"), entry.get("back")
    return {
        "action": entry["action"],
        "success": entry["success"],
        "at_ms": int(entry["at"]),
        "until_ms": int(until) if until else None,
        "back_ms": int(back) if back else None,
    }


# -- export and import: an anomaly's image from export.lua's reply, and for import.lua --------


def _image(anomaly_key: str, reply: Sequence[Any]) -> AnomalyImage:
    """An anomaly's image from export.lua's named reply."""
    named = {name.decode(): value for name, value in zip(reply[::2], reply[1::2], strict=True)}
    first, newest, evicted, has_days, level, fix, regressed = (int(v) for v in named["st"])
    meta = {k.decode(): v.decode() for k, v in _pairs(named["meta"]).items()}
    scores = {name.decode(): int(float(score)) for name, score in _pairs(named["scores"]).items()}
    state = None
    if newest >= 0 or named["tail"]:  # (else known only by a repair, disposition or fix)
        parts = {"newest": newest, "evicted": evicted, "tail": named["tail"]}
        for r in range(1, 5):
            parts[f"ring{r}"], parts[f"pending{r}"] = named[f"ring{r}"], named[f"pending{r}"]
        state = _state([v for name, value in parts.items() for v in (name.encode(), value)])
    days = []
    for field, n in _pairs(named["days"]).items():
        day, bar, name = field.decode().partition("|")
        if bar:
            days.append((int(day), name, int(n)))
    marks = {}
    for field, value in _pairs(named["marks"]).items():
        touched, _, held = value.decode().partition(",")
        marks[field.decode()] = (held, int(touched))
    signature = named["signature"].decode()
    return AnomalyImage(
        anomaly_key=anomaly_key,
        signature_json=signature or None,
        first_seen_ms=first if first >= 0 else None,
        last_seen_ms=newest if newest >= 0 else None,
        level=level,
        state=state,
        fix_at_ms=fix if fix >= 0 else None,
        fix_description=meta.get("fixd") if fix >= 0 else None,
        fix_by=(meta.get("fixb") or None) if fix >= 0 else None,
        regressed_ms=regressed if regressed >= 0 else None,
        resolved_ms=int(meta["rs"]) if "rs" in meta else None,
        verify_until_ms=int(meta["vu"]) if "vu" in meta else None,
        incident=meta.get("in"),
        flap=meta.get("fl"),
        flap_leave_ms=scores["flapping"] if scores["flapping"] >= 0 else None,
        open_episodes={
            fp.decode(): (int(e.split(b",")[0]), int(e.split(b",")[1]))
            for fp, e in _pairs(named["open"]).items()
        },
        has_days=bool(has_days),
        days=days,
        repairs=[_attempt(json.loads(item)) for item in named["history"]],
        timeline=[e.decode() for e in (*named["milestones"], *named["routine"])],
        ids={d.decode(): int(float(t)) for d, t in _pairs(named["ids"]).items()},
        marks=marks,
        scores={name: max(0, scores[name]) for name in SCORE_NAMES},
    )


def _image_json(image: AnomalyImage) -> str:
    """An image as import.lua reads it: times -1 for none, hashes and lists flat, as text."""
    state = image.state
    meta: dict[str, str] = {}
    if image.fix_at_ms is not None:
        meta.update(fixd=image.fix_description or "", fixb=image.fix_by or "")
    named = {"rs": image.resolved_ms, "vu": image.verify_until_ms, "in": image.incident,
             "fl": image.flap}  # fmt: skip
    meta.update({name: str(value) for name, value in named.items() if value is not None})
    milestones = [e for e in image.timeline if timeline.is_milestone(e)]
    routine = [e for e in image.timeline if not timeline.is_milestone(e)]
    meta.update(kb=str(sum(len(e.encode()) for e in milestones)),
                lb=str(sum(len(e.encode()) for e in routine)))  # fmt: skip
    if image.signature_json is not None:
        meta["ix"] = "1"
    history = []
    for attempt in image.repairs:
        entry = {"action": attempt["action"], "success": attempt["success"], "at": attempt["at_ms"]}
        if attempt["until_ms"] is not None:
            entry["until"] = attempt["until_ms"]
        if attempt["back_ms"] is not None:
            entry["back"] = attempt["back_ms"]
        history.append(json.dumps(entry))
    data = {
        "first": _or_none(image.first_seen_ms),
        "newest": _or_none(state.newest if state is not None and state.newest != NEVER else None),
        "evicted": _or_none(
            state.evicted_max if state is not None and state.evicted_max != NEVER else None
        ),
        "has_days": int(image.has_days or bool(image.days)),
        "level": image.level,
        "fix": _or_none(image.fix_at_ms),
        "regressed": _or_none(image.regressed_ms),
        "flap_leave": _or_none(image.flap_leave_ms),
        "scores": [image.scores.get(name, 0) for name in SCORE_NAMES],
        "meta": meta,
        "signature": image.signature_json or "",
        "rings": [
            [str(v) for item in sorted(ring.items()) for v in item]
            for ring in (state.rings if state is not None else [{}] * len(WINDOW_MS))
        ],
        "ids": [str(v) for digest, seen in sorted(image.ids.items()) for v in (seen, digest)],
        "marks": [
            v
            for name, (held, touched) in sorted(image.marks.items())
            for v in (name, f"{touched},{held}")
        ],
        "days": [v for day, name, n in image.days for v in (f"{day}|{name}", str(n))],
        "history": history,
        "milestones": milestones,
        "routine": routine,
        "open": [
            v
            for fp, (start, seen) in sorted(image.open_episodes.items())
            for v in (fp, f"{start},{seen}")
        ],
    }
    return json.dumps(data, ensure_ascii=False)


def _or_none(value: int | None) -> int:
    return -1 if value is None else value
