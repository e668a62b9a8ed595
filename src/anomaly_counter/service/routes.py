"""The versioned routes, ``/v1/projects/{project}/...``: every capability of the library.

Each route checks the project's bearer token first (see ``auth``), and a write route that the
token may write (read-only tokens: 403), then calls the library; the library's named errors
become 400 (wrong input) and 503 (store unreachable) in ``app``. Writes name their token in the
anomaly's timeline (``by``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .. import validation
from ..counter import AnomalyCounter
from ..deletion import DeletedAnomaly, DeletedProject
from ..errors import InvalidInputError
from ..model import ActionStats, AnomalyFrequency, AnomalyRow, EscalationLevel, Occurrence
from ..notify.deliverer import send_again
from ..policy import should_skip
from ..tokens import TokenRecord
from ..validation import MAX_KEY_CHARS
from ..windows import HISTORY
from . import schemas as s
from .alertmanager import AlertmanagerPayload, Episode, episodes
from .auth import may_delete, may_write
from .state import CHECKED_TOKEN, Service

T = TypeVar("T")
_bearer = HTTPBearer(auto_error=False, description="A token of the project (token create)")
_ERROR = {"model": s.ErrorBody}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {**_ERROR, "description": "Input the library refuses (it says why)"},
    401: {**_ERROR, "description": "No valid bearer token"},
    403: {**_ERROR, "description": "A token of another project"},
    413: {**_ERROR, "description": "Body too large"},
    503: {**_ERROR, "description": "The store cannot be reached: retry later"},
}

ProjectId = Annotated[str, Path(description="Project id", min_length=1, max_length=64)]
AnomalyKey = Annotated[
    str, Path(description="Anomaly key (16 hex digits)", min_length=1, max_length=MAX_KEY_CHARS)
]


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


class Project:
    """The checked project of a request: its counter, the service around it, and the token
    the request came with."""

    def __init__(self, service: Service, project: str, token: TokenRecord) -> None:
        self.service, self.id, self.token = service, project, token
        self.counter: AnomalyCounter = service.counter(project)

    @property
    def by(self) -> str:
        """Who writes, as the timeline tells it: the token's id."""
        return self.token.token_id

    async def timed(self, operation: str, call: Awaitable[T]) -> T:
        async with self.service.metrics.timing(operation):
            return await call


async def _project(
    request: Request,
    project: ProjectId,
    service: Annotated[Service, Depends(_service)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Project:
    checked: TokenRecord | None = getattr(request.state, CHECKED_TOKEN, None)
    if checked is not None:  # a write: checked for this path's project before its body was read
        return Project(service, project, checked)
    token = f"Bearer {credentials.credentials}" if credentials else None
    return Project(service, project, await service.auth.check(token, project))


Checked = Annotated[Project, Depends(_project)]


async def _writer(p: Checked) -> Project:
    may_write(p.token)
    return p


Writer = Annotated[Project, Depends(_writer)]
"""A project's token that may write (a read-only one gets 403)."""


async def _named(anomaly_key: AnomalyKey, p: Checked) -> str:
    """The key of the anomaly the path names: its key (a write refuses one never seen with 404,
    unless its first occurrence waits in the spool), or words of its labels that match one
    anomaly (else 404, or 300 with the matches). Checked after the token, so another project's
    token learns nothing."""
    return await p.counter.resolve(anomaly_key, known=False)


Named = Annotated[str, Depends(_named)]
_NAMED: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    300: {"model": s.MatchesOut, "description": "A name that several anomalies match"},
    404: {**_ERROR, "description": "No anomaly of this project has that key or name"},
}


_QUERY_NAMES: dict[int, frozenset[str]] = {}


def _query_names(route: APIRoute) -> frozenset[str]:
    known = _QUERY_NAMES.get(id(route))  # routes live as long as the app: id() is stable
    if known is not None:
        return known
    names: set[str] = set()
    pending = [route.dependant]
    while pending:  # the route's parameters and those of its dependencies
        dependant = pending.pop()
        names.update(p.alias for p in dependant.query_params)
        pending.extend(dependant.dependencies)
    _QUERY_NAMES[id(route)] = known = frozenset(names)
    return known


async def _no_unknown_query(request: Request) -> None:
    """Unknown query parameters are refused, as unknown body fields are: a misspelt
    ``limt=5`` would otherwise be silently ignored."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    unknown = sorted(set(request.query_params) - _query_names(route))
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name),
                    "msg": "Unknown query parameter",
                    "input": request.query_params[name],
                }
                for name in unknown
            ]
        )


router = APIRouter(
    prefix="/v1/projects/{project}", responses=ERRORS, dependencies=[Depends(_no_unknown_query)]
)


def _occurrence(body: s.OccurrenceIn) -> Occurrence:
    return Occurrence(body.signature, body.at, body.occurrence_id)


_SPOOLED: dict[int | str, dict[str, Any]] = {
    202: {"description": "Kept in the durable spool (the store is down): counted when it is back"}
}


@router.post(
    "/occurrences", tags=["occurrences"], response_model=AnomalyFrequency, responses=_SPOOLED
)
async def record_occurrence(
    body: s.OccurrenceIn, p: Writer, response: Response
) -> AnomalyFrequency:
    """Count one occurrence; the answer has its windows and whether it crossed a level."""
    (frequency,) = await p.service.record(p.id, [_occurrence(body)])
    if frequency.spooled:
        response.status_code = 202
    return frequency


@router.post(
    "/occurrences/batch", tags=["occurrences"], response_model=s.BatchOut, responses=_SPOOLED
)
async def record_batch(body: s.BatchIn, p: Writer, response: Response) -> s.BatchOut:
    """Count a batch in order; nothing of it is stored when one item is wrong."""
    frequencies = await p.service.record(p.id, [_occurrence(o) for o in body.occurrences])
    if any(f.spooled for f in frequencies):
        response.status_code = 202
    return s.BatchOut(results=frequencies)


@router.post(
    "/alertmanager",
    tags=["occurrences"],
    response_model=s.AlertmanagerOut,
    summary="Alertmanager webhook receiver (payload version 4)",
)
async def alertmanager(body: AlertmanagerPayload, p: Writer) -> s.AlertmanagerOut:
    """One episode per alert (fingerprint, startsAt), at its startsAt: re-notifications count
    once; an episode that starts while another instance of its anomaly fires joins that
    incident instead of counting (``episodes.count``); a resolved alert's resolution is kept
    and closes its episode. Answers 2xx only once everything is stored, 503 when the store
    cannot take it (Alertmanager retries)."""
    found, too_old = episodes(body, p.service.settings.alert_labels, datetime.now(UTC))
    p.service.metrics.refused(p.id, "rejected", too_old)
    occurrences = [
        Occurrence(e.signature, e.at, e.occurrence_id, e.fingerprint, e.resolved_at) for e in found
    ]
    try:  # all of it checked before any of it is stored (its resolutions included)
        keys = p.counter.validate(occurrences)
    except InvalidInputError:
        p.service.metrics.refused(p.id, "rejected", len(occurrences))
        raise
    ended = [(key, e) for key, e in zip(keys, found, strict=True) if e.resolved_at is not None]
    # The group's resolutions first (at once, not one round trip after another): an open
    # episode that ended is closed before a firing of the same message is judged, as in time.
    await _resolve(p, ended)
    frequencies = await p.service.record(p.id, occurrences) if occurrences else []
    # ... and the resolutions of episodes first seen in this message, now that they are known
    new = {e.occurrence_id for e, f in zip(found, frequencies, strict=True) if not f.duplicate}
    await _resolve(p, [(key, e) for key, e in ended if e.occurrence_id in new])
    duplicates = sum(1 for f in frequencies if f.duplicate)
    spooled = sum(1 for f in frequencies if f.spooled)
    joined = sum(1 for f in frequencies if f.joined)
    return s.AlertmanagerOut(
        received=len(body.alerts),
        counted=len(frequencies) - duplicates - spooled - joined,
        spooled=spooled,
        duplicates=duplicates,
        joined=joined,
        resolved=len(ended),
        too_old=too_old,
    )


async def _resolve(p: Writer, ended: list[tuple[str, Episode]]) -> None:
    """Note the resolutions of these episodes, each with its anomaly's key (those of
    anomalies never seen do nothing)."""
    if ended:
        await p.timed(
            "resolve",
            asyncio.gather(
                *(
                    p.counter.record_resolution(
                        key, at=e.resolved_at, by=p.by, episode=e.fingerprint, started=e.at
                    )
                    for key, e in ended
                )
            ),
        )


Window = Annotated[str, Query(pattern="^(1h|24h|7d|30d)$")]


@router.get("/anomalies", tags=["anomalies"], response_model=s.TopOut)
async def top_anomalies(
    p: Checked,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
    window: Window = "24h",
    q: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=512,
            description="Search: anomalies whose label values hold every word (any case)",
        ),
    ] = None,
    level: Annotated[
        str | None,
        Query(
            pattern="^(REPEAT|ESCALATE|PERMANENT_FIX)$",
            description="Only the anomalies at this level or above, most frequent in window",
        ),
    ] = None,
) -> s.TopOut:
    """The anomalies with the most occurrences in a window, most first; with ``q``, those
    whose labels match it (best match first); with ``level``, the chronic ones."""
    if q is not None:
        found = await p.timed("search", p.counter.search(q, limit=limit, min_level=level))
    elif level is not None:
        found = await p.timed("top", p.counter.chronic_anomalies(level, window, limit))
    else:
        found = await p.timed("top", p.counter.top(limit=limit, window=window))
        rows = [AnomalyRow.of(f, window) for f in found.anomalies]
        return s.TopOut(window=window, anomalies=rows)
    return s.TopOut(
        window=window,
        anomalies=[AnomalyRow.of(f, window) for f in found.anomalies],
        total=found.total,
        truncated=found.truncated,
    )


@router.get("/flapping", tags=["anomalies"], response_model=s.TopOut)
async def flapping_anomalies(
    p: Checked, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
) -> s.TopOut:
    """The anomalies flapping now (firing and resolving again and again), the highest
    ``flap_percent`` first, with their 24 h counts."""
    found = await p.timed("flapping", p.counter.flapping_anomalies(limit))
    return s.TopOut(
        window="24h",
        anomalies=[AnomalyRow.of(f, "24h") for f in found.anomalies],
        total=found.total,
    )


@router.get(
    "/anomalies/{anomaly_key}",
    tags=["anomalies"],
    response_model=AnomalyFrequency,
    responses=_NAMED,
)
async def get_anomaly(anomaly_key: AnomalyKey, p: Checked) -> AnomalyFrequency:
    """One anomaly's windows, first and last seen, repairs, dispositions, fix and regression;
    by its key, or by a name (``PodCrashLoopBackOff``, ``PodCrashLoopBackOff api``): one
    anomaly matching it, else 300 with the matches to choose from."""
    return await p.timed("read", p.counter.anomaly(anomaly_key))


@router.get(
    "/anomalies/{anomaly_key}/history",
    tags=["anomalies"],
    response_model=s.HistoryOut,
    responses=_NAMED,
)
async def history(p: Checked, anomaly_key: Named, window: Window = "7d") -> s.HistoryOut:
    """Occurrences over time: per minute over 1h, hourly over 24h and 7d, daily over 30d."""
    series = await p.timed("read", p.counter.history(anomaly_key, window))
    if series is None:
        raise HTTPException(404, "no such anomaly in this project")
    return s.HistoryOut(
        anomaly_key=anomaly_key,
        window=window,
        bucket_seconds=HISTORY[window][0] // 1000,
        buckets=[s.HistoryBucket(start=start, count=n) for start, n in series],
    )


@router.get(
    "/anomalies/{anomaly_key}/timeline",
    tags=["anomalies"],
    response_model=s.TimelineOut,
    response_model_exclude_none=True,  # an entry carries the fields of its kind alone
    responses=_NAMED,
)
async def timeline(
    p: Checked, anomaly_key: Named, limit: Annotated[int, Query(ge=1, le=200)] = 200
) -> s.TimelineOut:
    """The anomaly's story, newest first: first seen, escalations, repairs, dispositions,
    fixes, regressions, resolutions, notices; each with who reported it where known."""
    entries = await p.timed("read", p.counter.timeline(anomaly_key, limit=limit))
    if not entries and await p.counter.get_frequency(anomaly_key) is None:
        raise HTTPException(404, "no such anomaly in this project")
    return s.TimelineOut(anomaly_key=anomaly_key, entries=entries)


@router.get("/escalations", tags=["anomalies"], response_model=s.EscalationsOut)
async def escalations(
    p: Checked, days: Annotated[int, Query(ge=1, le=30)] = 30
) -> s.EscalationsOut:
    """Crossings into each level per UTC day: how often this project's anomalies became
    chronic."""
    rows = await p.timed("read", p.counter.escalations_by_day(days))
    return s.EscalationsOut(
        days=[s.EscalationDay(day=day.isoformat(), **counts) for day, counts in rows]
    )


@router.post(
    "/anomalies/{anomaly_key}/repairs", tags=["repairs"], response_model=s.Done, responses=_NAMED
)
async def record_repair(p: Writer, anomaly_key: Named, body: s.RepairIn) -> s.Done:
    """Count one repair attempt and whether it worked."""
    await p.timed(
        "repair",
        p.counter.record_repair_attempt(
            anomaly_key, body.action, body.success, at=body.at, by=p.by
        ),
    )
    return s.Done(anomaly_key=anomaly_key)


@router.get(
    "/anomalies/{anomaly_key}/repairs",
    tags=["repairs"],
    response_model=s.RepairsOut,
    responses=_NAMED,
)
async def repairs(p: Checked, anomaly_key: Named) -> s.RepairsOut:
    """Per action, every attempt of the last 30 days; and the last 100 attempts."""
    stats = await p.timed("read", p.counter.repair_stats(anomaly_key))
    history = await p.timed("read", p.counter.repair_history(anomaly_key))
    return s.RepairsOut(actions=stats, history=history)


@router.get(
    "/anomalies/{anomaly_key}/repairs/{action}/skip",
    tags=["repairs"],
    response_model=s.SkipOut,
    responses=_NAMED,
)
async def should_skip_action(
    p: Checked,
    anomaly_key: Named,
    action: Annotated[str, Path(min_length=1, max_length=MAX_KEY_CHARS)],
    min_success_rate: Annotated[float, Query(ge=0, le=1)] = 0.2,
) -> s.SkipOut:
    """Whether automation should stop trying this action: the reference's rule, on its verified
    outcomes once enough settled (``basis``), else on what was reported."""
    name = validation.action(action)
    found = await p.timed("read", p.counter.repair_stats(anomaly_key))
    stats = found.get(name, ActionStats(0, 0, 0.0))
    skip = should_skip(*stats.judged(), min_success_rate)
    return s.SkipOut(
        total=stats.total,
        success=stats.success,
        success_rate=stats.success_rate,
        verified=stats.verified,
        basis=stats.basis,
        action=name,
        skip=skip,
        min_success_rate=min_success_rate,
    )


@router.post(
    "/anomalies/{anomaly_key}/recommendations",
    tags=["repairs"],
    response_model=s.RecommendationsOut,
    responses=_NAMED,
)
async def recommendations(
    p: Checked, anomaly_key: Named, body: s.RecommendIn
) -> s.RecommendationsOut:
    """Candidate actions (default: those tried, and the configured ones) ranked by the lower
    confidence bound of their success rate, each with its evidence. A POST because the
    candidates are a typed list (a query string cannot tell ``false`` from ``"false"``); it
    changes nothing."""
    (ranked,) = await p.timed(
        "read",
        p.counter.recommendations([anomaly_key], body.candidates or None, body.min_success_rate),
    )
    return s.RecommendationsOut(recommendations=ranked)


@router.post(
    "/anomalies/{anomaly_key}/dispositions",
    tags=["dispositions"],
    response_model=s.Done,
    responses=_NAMED,
)
async def record_disposition(p: Writer, anomaly_key: Named, body: s.DispositionIn) -> s.Done:
    """Count how one alert of this anomaly was disposed of."""
    await p.timed(
        "disposition",
        p.counter.record_disposition(anomaly_key, body.type, at=body.at, by=p.by),
    )
    return s.Done(anomaly_key=anomaly_key)


@router.get(
    "/anomalies/{anomaly_key}/dispositions",
    tags=["dispositions"],
    response_model=s.DispositionCounts,
    responses=_NAMED,
)
async def disposition_stats(p: Checked, anomaly_key: Named) -> s.DispositionCounts:
    """The five disposition counts of the last 30 days and their total."""
    stats = await p.timed("read", p.counter.get_disposition_stats(anomaly_key))
    return s.DispositionCounts(**stats)


@router.get("/dispositions", tags=["dispositions"], response_model=s.DispositionSummaryOut)
async def disposition_summary(
    p: Checked, limit: Annotated[int, Query(ge=1, le=10_000)] = 20
) -> s.DispositionSummaryOut:
    """The project's dispositions of the last 30 days, and its anomalies with the most."""
    summary, by_anomaly = await p.timed("read", p.counter.get_all_disposition_stats(limit))
    return s.DispositionSummaryOut.model_validate({"summary": summary, "by_anomaly": by_anomaly})


@router.post(
    "/anomalies/{anomaly_key}/fix", tags=["anomalies"], response_model=s.Done, responses=_NAMED
)
async def mark_permanent_fix(p: Writer, anomaly_key: Named, body: s.FixIn) -> s.Done:
    """Mark that the root cause got a permanent fix: the next occurrence is a regression."""
    await p.timed(
        "fix",
        p.counter.mark_permanent_fix_applied(anomaly_key, body.description, at=body.at, by=p.by),
    )
    return s.Done(anomaly_key=anomaly_key)


@router.delete(
    "/anomalies/{anomaly_key}/fix",
    tags=["anomalies"],
    response_model=s.UndoneOut,
    responses={**_NAMED, 404: {**_ERROR, "description": "No such anomaly, or no fix in force"}},
)
async def undo_permanent_fix(p: Writer, anomaly_key: Named) -> s.UndoneOut:
    """Take back the permanent fix in force (marked by mistake): the anomaly is no longer
    fixed nor regressed; the timeline keeps the fix and says who undid it."""
    if not await p.timed("fix", p.counter.undo_permanent_fix(anomaly_key, by=p.by)):
        raise HTTPException(404, "this anomaly has no permanent fix in force")
    return s.UndoneOut(anomaly_key=anomaly_key)


@router.get("/notices/dead", tags=["notices"], response_model=s.DeadLettersOut)
async def dead_letters(p: Checked) -> s.DeadLettersOut:
    """The notices no channel of the project took within ``notify_dead_after`` (or that a
    channel refused for good), oldest first, with the outbox at a glance."""
    stats = await p.timed("read", p.counter.outbox_stats())
    letters = await p.timed("read", p.counter.dead_letters())
    return s.DeadLettersOut(
        outbox=s.OutboxOut(
            depth=stats.depth,
            oldest=_time_or_none(stats.oldest_ms),
            overflowed=stats.overflowed,
            dead=stats.dead,
            dead_overflowed=stats.dead_overflowed,
        ),
        letters=[
            s.DeadLetterOut(
                notice_id=d.notice_id,
                channel=d.channel,
                anomaly_key=d.entry.anomaly_key,
                kind=d.entry.kind,
                level=EscalationLevel(d.entry.level).name if d.entry.level else None,
                at=_time(d.entry.at_ms),
                error=d.error,
                attempts=d.attempts,
                first_failed=_time(d.first_failed_ms),
                dead=_time(d.dead_ms),
            )
            for d in letters
        ],
    )


@router.post("/notices/dead/retry", tags=["notices"], response_model=s.RetriedOut)
async def retry_dead_letters(p: Writer, body: s.RetryIn) -> s.RetriedOut:
    """Send dead letters again (those named, or all): each goes back in the outbox for the
    channel that did not take it, with its notice id (so a receiver that did get it drops it)."""
    retried, left = await p.timed(
        "write", send_again(p.counter, p.service.settings, body.notice_ids)
    )
    return s.RetriedOut(retried=retried, left=sorted({d.notice_id for d in left}))


# -- deleting (see docs/delete.md): an admin token of the project only ---------------------


async def _admin(p: Checked) -> Project:
    may_delete(p.token)
    return p


Admin = Annotated[Project, Depends(_admin)]
"""A project's admin token (``token create --admin``): others get 403."""
_ADMIN_403: dict[int | str, dict[str, Any]] = {
    403: {**_ERROR, "description": "A token of another project, or not an admin one"}
}


@router.delete(
    "/anomalies/{anomaly_key}",
    tags=["admin"],
    response_model=DeletedAnomaly,
    responses={**_NAMED, **_ADMIN_403},
)
async def delete_anomaly(anomaly_key: AnomalyKey, p: Admin) -> DeletedAnomaly:
    """Delete one anomaly, by its key or a name that matches it, and everything of it: counts,
    repairs, dispositions, fix, timeline, episodes, search entries, notices; what the
    project's summaries counted of it; its place under max_anomalies. It cannot be undone. An
    occurrence that comes later counts as its first."""
    return await p.timed("delete", p.counter.delete_anomaly(anomaly_key))


@router.delete("", tags=["admin"], response_model=DeletedProject, responses=_ADMIN_403)
async def delete_project(p: Admin) -> DeletedProject:
    """Delete the project and everything of it, its tokens too (this one included). It cannot
    be undone; called again, it finishes what an interruption left (and says 0 anomalies)."""
    tokens = [t.token_id for t in await p.service.store.list_tokens(p.id)]
    deleted = await p.timed("delete", p.counter.delete_project())
    await p.service.auth.forget(tokens)
    return deleted


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _time_or_none(ms: int | None) -> datetime | None:
    return None if ms is None else _time(ms)
