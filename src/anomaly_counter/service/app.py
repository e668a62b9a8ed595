"""The FastAPI application: one store, one counter per project, the notice dispatcher and the
metrics of this process. ``create_app(settings)`` builds it; ``anomaly-counter serve`` runs it."""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import replace
from typing import Any

import structlog
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.routing import Match
from starlette.types import Scope

from .. import __version__
from ..counter import AnomalyCounter
from ..errors import (
    AmbiguousAnomalyError,
    AnomalyNotFoundError,
    InvalidInputError,
    LimitExceededError,
    SpoolFullError,
    StoreError,
    StoreFileError,
    StoreUnavailableError,
)
from ..model import AnomalyFrequency, Occurrence
from ..notify.dispatcher import Dispatcher
from ..replay import Replayer
from ..settings import Settings
from ..spool import spool_of
from ..stores.base import Store, store_from_url
from .auth import Authenticator
from .known_tokens import KnownTokens
from .lanes import Lanes
from .metrics import CONTENT_TYPE, Metrics
from .middleware import Admission, BodyLimit, HttpMetrics, Passed, Refused
from .schemas import MatchesOut
from .server import NoTokenInQuery

logger = structlog.get_logger("anomaly_counter.service")
RETRY_AFTER_SECONDS = "5"
UNAVAILABLE = "the store cannot be reached; retry later"
CHECKED_TOKEN = "checked_token"
"""Where the body's gate leaves the token it checked, in the request's state."""
_MAX_ERRORS_SHOWN = 20
_PROJECT_ROUTE = re.compile(r"/v1/projects/([^/]+)/")


class Service:
    """What the routes share. Counters answer strictly: a store that cannot take a write is a
    503 (Alertmanager retries it), never a 2xx for something not stored."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = replace(settings, strict=True)
        self.store = store or store_from_url(self.settings.store_url, self.settings)
        self.metrics = Metrics()
        self.lanes = Lanes(settings.limits_for, settings.body_timeout, self.metrics.limit_reached)
        self._counters: dict[str, AnomalyCounter] = {}
        self.dispatcher = Dispatcher(self.settings, self.counter, self.metrics)
        self.replayer: Replayer | None = None
        self.spool = spool_of(self.settings)
        if self.spool is not None:
            self.replayer = Replayer(self.spool, self.counter, self._replayed)
            self.metrics.watch_spool(self.spool)
        # the tokens the store vouched for, kept beside the spool (its lock makes this process
        # the file's only writer) for an outage, and a restart during one
        directory = self.spool.directory if self.spool is not None else None
        known = KnownTokens(directory, self.settings.auth_stale_seconds)
        self.auth = Authenticator(self.store, known)

    def counter(self, project: str) -> AnomalyCounter:
        counter = self._counters.get(project)
        if counter is None:
            counter = AnomalyCounter(
                self.store, project, settings=self.settings, spool=self.spool, replay=False
            )
            counter.on_replay_refused = functools.partial(self.metrics.limit_reached, project)
            self._counters[project] = counter
        return counter

    def _replayed(self, project: str, frequencies: list[AnomalyFrequency]) -> None:
        self.metrics.spool_replayed.inc(len(frequencies))
        self.metrics.counted(project, frequencies)
        self.dispatcher.watch(project, frequencies)

    async def record(
        self, project: str, occurrences: Sequence[Occurrence]
    ) -> list[AnomalyFrequency]:
        """Count occurrences, account for them, and queue the notices they call for."""
        counter = self.counter(project)
        try:
            async with self.metrics.timing("record"):
                if len(occurrences) == 1:
                    o = occurrences[0]
                    frequencies = [
                        await counter.record_anomaly(
                            o.signature, at=o.at, occurrence_id=o.occurrence_id
                        )
                    ]
                else:
                    frequencies = await counter.record_many(occurrences)
        except InvalidInputError:
            self.metrics.refused(project, "rejected", len(occurrences))
            raise
        except StoreUnavailableError:
            self.metrics.refused(project, "degraded", len(occurrences))
            raise
        except SpoolFullError:
            self.metrics.refused(project, "refused", len(occurrences))
            raise
        spooled = sum(1 for f in frequencies if f.spooled)
        self.metrics.refused(project, "spooled", spooled)
        self.metrics.counted(project, [f for f in frequencies if not f.spooled])
        self.dispatcher.watch(project, frequencies)
        return frequencies


def create_app(settings: Settings, store: Store | None = None) -> FastAPI:
    from ..web.routes import router as pages
    from .routes import router  # the routes import this module's Service

    service = Service(settings, store)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.dispatcher.start()
        if service.replayer is not None:
            service.replayer.start()  # what a previous run left in the spool goes in first
        try:
            yield
        finally:
            if service.replayer is not None:
                await service.replayer.stop()
            await service.dispatcher.stop()
            if service.spool is not None:
                service.spool.close()
            await service.store.aclose()

    app = FastAPI(
        title="anomaly-counter",
        version=__version__,
        summary="Which alerts keep coming back, how often, and whether their repairs work.",
        lifespan=lifespan,
        docs_url=None,  # served below from files of our own: /docs works offline
        redoc_url=None,
    )
    app.state.service = service
    app.include_router(router)
    app.include_router(pages)
    app.mount("/static", StaticFiles(packages=[("anomaly_counter.web", "static")]), name="static")

    @app.api_route("/docs", methods=["GET", "HEAD"], include_in_schema=False)
    async def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="anomaly-counter API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )
        page.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
        page.headers["X-Frame-Options"] = "DENY"
        return page

    @app.exception_handler(405)
    async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's Allow names the methods of the first route matching the path only; one
        # path served by several routes (GET and POST .../repairs) must list them all.
        allowed: set[str] = set()
        for route in app.router.routes:
            if route.matches(request.scope)[0] is not Match.NONE:  # the path matches
                allowed |= getattr(route, "methods", None) or set()
        return JSONResponse(
            {"detail": "Method Not Allowed"},
            status_code=405,
            headers={"Allow": ", ".join(sorted(allowed))},
        )

    @app.exception_handler(RequestValidationError)
    async def unprocessable(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Each error says where and what, never the value it refused: that value may not be
        # JSON at all (NaN, a lone surrogate) or may be a secret (a token in a query string).
        errors = exc.errors()
        detail: list[dict[str, Any]] = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in errors[:_MAX_ERRORS_SHOWN]
        ]
        if len(errors) > _MAX_ERRORS_SHOWN:  # (a body of 2,000 bad items: the first few say it)
            more = len(errors) - _MAX_ERRORS_SHOWN
            detail.append({"loc": [], "msg": f"and {more} more errors", "type": "more"})
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(InvalidInputError)
    async def invalid(_: Request, exc: InvalidInputError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(AnomalyNotFoundError)
    async def not_found(_: Request, exc: AnomalyNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(AmbiguousAnomalyError)
    async def ambiguous(_: Request, exc: AmbiguousAnomalyError) -> JSONResponse:
        matches = MatchesOut.of(str(exc), exc.matches)
        return JSONResponse(matches.model_dump(mode="json"), status_code=300)

    @app.exception_handler(StoreFileError)
    async def store_file(_: Request, exc: StoreFileError) -> JSONResponse:
        logger.error("store_file_unusable", error=str(exc))  # (the file's name: logs only)
        return JSONResponse(
            {"detail": "the store's file cannot be used (see the service's log)"},
            status_code=503,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )

    @app.exception_handler(LimitExceededError)
    async def limit_exceeded(request: Request, exc: LimitExceededError) -> JSONResponse:
        found = _PROJECT_ROUTE.match(request.url.path)
        service.metrics.limit_reached(found.group(1) if found else "", exc.limit)
        return JSONResponse({"detail": str(exc)}, status_code=429)

    @app.exception_handler(SpoolFullError)
    async def spool_full(_: Request, exc: SpoolFullError) -> JSONResponse:
        logger.error("spool_full", error=str(exc))
        return JSONResponse(
            {"detail": f"the store cannot be reached and {exc}; retry later"},
            status_code=503,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )

    @app.exception_handler(StoreError)
    async def store_error(_: Request, exc: StoreError) -> JSONResponse:
        logger.error("store_error", error=str(exc))  # (what the store said: logs only)
        return JSONResponse(
            {"detail": "the store refused the operation (see the service's log)"},
            status_code=500,
        )

    @app.exception_handler(StoreUnavailableError)
    async def unavailable(_: Request, exc: StoreUnavailableError) -> JSONResponse:
        logger.warning("store_unavailable", error=str(exc))
        return JSONResponse(
            {"detail": UNAVAILABLE},
            status_code=503,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )

    @app.get("/healthz", tags=["operations"], response_class=PlainTextResponse)
    async def healthz() -> str:
        """Alive (does not look at the store)."""
        return "ok"

    @app.get(
        "/readyz",
        tags=["operations"],
        response_class=PlainTextResponse,
        responses={503: {"description": "The store cannot be reached"}},
    )
    async def readyz() -> Response:
        """Ready when the store answers, or when the spool can take what it cannot (the
        answer says so)."""
        waiting = service.spool.depth if service.spool is not None else 0
        try:
            async with service.metrics.timing("ping"):
                await service.store.ping()
        except StoreUnavailableError as exc:
            # the reason goes to the log: it names the store's address, which this unauthenticated
            # answer does not
            logger.warning("not_ready", error=str(exc))
            if service.spool is None:
                return PlainTextResponse("store unavailable", status_code=503)
            stats = service.spool.stats()
            if service.spool.full:
                return PlainTextResponse("store unavailable and spool full", 503)
            return PlainTextResponse(
                f"on spool: store unavailable; {stats.depth} occurrences waiting"
            )
        if waiting:
            return PlainTextResponse(f"ok; replaying the spool: {waiting} occurrences waiting")
        return PlainTextResponse("ok")

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE)

    async def gate(scope: Scope) -> Passed:
        found = _PROJECT_ROUTE.match(scope["path"])
        if found is None:
            return Passed(False, nullcontext())  # (the dashboard's forms: the default limit)
        authorization = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None
        )
        try:
            record = await service.auth.check(authorization, found.group(1))  # (path: decoded)
        except HTTPException as exc:
            raise Refused(exc.status_code, str(exc.detail), exc.headers) from None
        except StoreUnavailableError as exc:
            logger.warning("store_unavailable", error=str(exc))
            raise Refused(503, UNAVAILABLE, {"Retry-After": RETRY_AFTER_SECONDS}) from None
        scope.setdefault("state", {})[CHECKED_TOKEN] = record  # (the route takes it as checked)
        return Passed(True, service.lanes.of(record.project).turn())

    app.add_middleware(
        BodyLimit,
        limit=service.settings.max_body_bytes,
        alertmanager_limit=service.settings.max_alertmanager_body_bytes,
        gate=gate,
        timeout=service.settings.body_timeout,
    )
    app.add_middleware(NoTokenInQuery)  # (before the gate: a token there is refused unread)
    app.add_middleware(HttpMetrics, metrics=service.metrics)
    app.add_middleware(
        Admission,
        limit=service.settings.max_concurrent_requests,
        retry_after=RETRY_AFTER_SECONDS,
    )
    return app
