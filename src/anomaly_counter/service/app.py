"""The FastAPI application: one store, one counter per project, the notices' deliverer and the
metrics of this process. ``create_app(settings)`` builds it; ``anomaly-counter serve`` runs it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
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
from ..settings import Settings
from ..stores.base import Store
from ..web.routes import router as pages
from .metrics import CONTENT_TYPE
from .middleware import Admission, BodyLimit, HttpMetrics, Passed, Refused
from .routes import router
from .schemas import MatchesOut
from .server import NoTokenInQuery
from .state import CHECKED_TOKEN, Service

logger = structlog.get_logger("anomaly_counter.service")
RETRY_AFTER_SECONDS = "5"
UNAVAILABLE = "the store cannot be reached; retry later"
_MAX_ERRORS_SHOWN = 20
_PROJECT_ROUTE = re.compile(r"/v1/projects/([^/]+)/")


def create_app(settings: Settings, store: Store | None = None) -> FastAPI:
    service = Service(settings, store)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.deliverer.start()
        service.sweeper.start()
        if service.replayer is not None:
            service.replayer.start()  # what a previous run left in the spool goes in first
        try:
            yield
        finally:
            if service.replayer is not None:
                await service.replayer.stop()
            await service.sweeper.stop()
            await service.deliverer.stop()
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
