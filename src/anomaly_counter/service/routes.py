"""The versioned routes, ``/v1/projects/{project}/...``: every capability of the library.

Each route checks the project's bearer token first (see ``auth``), then calls the library; the
library's named errors become 400 (wrong input) and 503 (store unreachable) in ``app``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..counter import AnomalyCounter
from ..model import Occurrence
from ..policy import should_skip
from ..validation import MAX_KEY_CHARS
from . import schemas as s
from .alertmanager import AlertmanagerPayload, episodes
from .app import Service

_bearer = HTTPBearer(auto_error=False, description="A token of the project (token create)")
_ERROR = {"model": s.ErrorBody}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {**_ERROR, "description": "Input the library refuses (it says why)"},
    401: {**_ERROR, "description": "No valid bearer token"},
    403: {**_ERROR, "description": "A token of another project"},
    413: {**_ERROR, "description": "Body too large"},
    503: {**_ERROR, "description": "The store cannot be reached: retry later"},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    404: {**_ERROR, "description": "No such anomaly in this project"},
}

ProjectId = Annotated[str, Path(description="Project id", min_length=1, max_length=64)]
AnomalyKey = Annotated[
    str, Path(description="Anomaly key (16 hex digits)", min_length=1, max_length=MAX_KEY_CHARS)
]


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


class Project:
    """The checked project of a request: its counter and the service around it."""

    def __init__(self, service: Service, project: str) -> None:
        self.service, self.id = service, project
        self.counter: AnomalyCounter = service.counter(project)

    async def timed(self, operation: str, call: Any) -> Any:
        async with self.service.metrics.timing(operation):
            return await call


async def _project(
    project: ProjectId,
    service: Annotated[Service, Depends(_service)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Project:
    token = f"Bearer {credentials.credentials}" if credentials else None
    await service.auth.check(token, project)
    return Project(service, project)


Checked = Annotated[Project, Depends(_project)]


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
    "/occurrences", tags=["occurrences"], response_model=s.FrequencyOut, responses=_SPOOLED
)
async def record_occurrence(body: s.OccurrenceIn, p: Checked, response: Response) -> s.FrequencyOut:
    """Count one occurrence; the answer has its windows and whether it crossed a level."""
    (frequency,) = await p.service.record(p.id, [_occurrence(body)])
    if frequency.spooled:
        response.status_code = 202
    return s.FrequencyOut.of(frequency)


@router.post(
    "/occurrences/batch", tags=["occurrences"], response_model=s.BatchOut, responses=_SPOOLED
)
async def record_batch(body: s.BatchIn, p: Checked, response: Response) -> s.BatchOut:
    """Count a batch in order; nothing of it is stored when one item is wrong."""
    frequencies = await p.service.record(p.id, [_occurrence(o) for o in body.occurrences])
    if any(f.spooled for f in frequencies):
        response.status_code = 202
    return s.BatchOut(results=[s.FrequencyOut.of(f) for f in frequencies])


@router.post(
    "/alertmanager",
    tags=["occurrences"],
    response_model=s.AlertmanagerOut,
    summary="Alertmanager webhook receiver (payload version 4)",
)
async def alertmanager(body: AlertmanagerPayload, p: Checked) -> s.AlertmanagerOut:
    """One occurrence per firing episode (fingerprint, startsAt), recorded at its startsAt:
    re-notifications count once; a resolved alert's resolution time is kept. Answers 2xx only
    once everything is stored, 503 when the store cannot take it (Alertmanager retries)."""
    found, too_old = episodes(body, p.service.settings.alert_labels, datetime.now(UTC))
    frequencies = []
    if found:
        occurrences = [Occurrence(e.signature, e.at, e.occurrence_id) for e in found]
        frequencies = await p.service.record(p.id, occurrences)
    p.service.metrics.refused(p.id, "rejected", too_old)
    # a group's resolutions at once, not one round trip after another
    resolutions = [
        p.counter.record_resolution(frequency.anomaly_key, at=episode.resolved_at)
        for episode, frequency in zip(found, frequencies, strict=True)
        if episode.resolved_at is not None
    ]
    if resolutions:
        await p.timed("resolve", asyncio.gather(*resolutions))
    resolved = len(resolutions)
    duplicates = sum(1 for f in frequencies if f.duplicate)
    spooled = sum(1 for f in frequencies if f.spooled)
    return s.AlertmanagerOut(
        received=len(body.alerts),
        counted=len(frequencies) - duplicates - spooled,
        spooled=spooled,
        duplicates=duplicates,
        resolved=resolved,
        too_old=too_old,
    )


@router.get("/anomalies", tags=["anomalies"], response_model=s.TopOut)
async def top_anomalies(
    p: Checked,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
    window: Annotated[str, Query(pattern="^(1h|24h|7d|30d)$")] = "24h",
) -> s.TopOut:
    """The anomalies with the most occurrences in a window, most first."""
    rows = await p.timed("top", p.counter.top_anomalies(limit=limit, window=window))
    return s.TopOut(window=window, anomalies=[s.TopRow.model_validate(r) for r in rows])


@router.get(
    "/anomalies/{anomaly_key}",
    tags=["anomalies"],
    response_model=s.FrequencyOut,
    responses=_NOT_FOUND,
)
async def get_anomaly(anomaly_key: AnomalyKey, p: Checked) -> s.FrequencyOut:
    """One anomaly's windows, first and last seen, repairs, dispositions and fix."""
    frequency = await p.timed("read", p.counter.get_frequency(anomaly_key))
    if frequency is None:
        raise HTTPException(404, "no such anomaly in this project")
    return s.FrequencyOut.of(frequency)


@router.post("/anomalies/{anomaly_key}/repairs", tags=["repairs"], response_model=s.Done)
async def record_repair(anomaly_key: AnomalyKey, body: s.RepairIn, p: Checked) -> s.Done:
    """Count one repair attempt and whether it worked."""
    await p.timed(
        "repair",
        p.counter.record_repair_attempt(anomaly_key, body.action, body.success, at=body.at),
    )
    return s.Done()


@router.get("/anomalies/{anomaly_key}/repairs", tags=["repairs"], response_model=s.RepairsOut)
async def repairs(anomaly_key: AnomalyKey, p: Checked) -> s.RepairsOut:
    """Per action, every attempt of the last 30 days; and the last 100 attempts."""
    stats = await p.timed("read", p.counter.get_all_repair_stats(anomaly_key))
    history = await p.timed("read", p.counter.get_repair_history(anomaly_key))
    return s.RepairsOut.model_validate({"actions": stats, "history": history})


@router.get(
    "/anomalies/{anomaly_key}/repairs/{action}/skip", tags=["repairs"], response_model=s.SkipOut
)
async def should_skip_action(
    anomaly_key: AnomalyKey,
    action: Annotated[str, Path(min_length=1, max_length=MAX_KEY_CHARS)],
    p: Checked,
    min_success_rate: Annotated[float, Query(ge=0, le=1)] = 0.2,
) -> s.SkipOut:
    """Whether automation should stop trying this action (the reference's rule)."""
    stats = await p.timed("read", p.counter.get_repair_success_rate(anomaly_key, action))
    skip = should_skip(stats["total"], stats["success"], min_success_rate)
    return s.SkipOut(**stats, skip=skip, min_success_rate=min_success_rate)


@router.post(
    "/anomalies/{anomaly_key}/recommendations",
    tags=["repairs"],
    response_model=s.RecommendationsOut,
)
async def recommendations(
    anomaly_key: AnomalyKey, body: s.RecommendIn, p: Checked
) -> s.RecommendationsOut:
    """Candidate actions (default: those tried, and the configured ones) ranked by the lower
    confidence bound of their success rate, each with its evidence. A POST because the
    candidates are a typed list (a query string cannot tell ``false`` from ``"false"``); it
    changes nothing."""
    candidates = body.candidates
    if not candidates:
        tried = await p.timed("read", p.counter.get_all_repair_stats(anomaly_key))
        candidates = list(dict.fromkeys([*tried, *p.service.settings.repair_actions]))
    ranked = await p.timed(
        "read", p.counter.recommend_actions(anomaly_key, candidates, body.min_success_rate)
    )
    return s.RecommendationsOut(recommendations=[r.to_dict() for r in ranked])


@router.post("/anomalies/{anomaly_key}/dispositions", tags=["dispositions"], response_model=s.Done)
async def record_disposition(anomaly_key: AnomalyKey, body: s.DispositionIn, p: Checked) -> s.Done:
    """Count how one alert of this anomaly was disposed of."""
    await p.timed("disposition", p.counter.record_disposition(anomaly_key, body.type, at=body.at))
    return s.Done()


@router.get(
    "/anomalies/{anomaly_key}/dispositions",
    tags=["dispositions"],
    response_model=s.DispositionCounts,
)
async def disposition_stats(anomaly_key: AnomalyKey, p: Checked) -> s.DispositionCounts:
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


@router.post("/anomalies/{anomaly_key}/fix", tags=["anomalies"], response_model=s.Done)
async def mark_permanent_fix(anomaly_key: AnomalyKey, body: s.FixIn, p: Checked) -> s.Done:
    """Mark that the root cause got a permanent fix: the next occurrence is a regression."""
    await p.timed(
        "fix", p.counter.mark_permanent_fix_applied(anomaly_key, body.description, at=body.at)
    )
    return s.Done()
