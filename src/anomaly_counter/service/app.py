"""The FastAPI application: one store, one counter per project, the notice dispatcher and the
metrics of this process. ``create_app(settings)`` builds it; ``anomaly-counter serve`` runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Match

from .. import __version__
from ..counter import AnomalyCounter
from ..errors import InvalidInputError, StoreUnavailableError
from ..model import AnomalyFrequency, Occurrence
from ..notify.dispatcher import Dispatcher
from ..settings import Settings
from ..stores.base import Store, store_from_url
from .auth import Authenticator
from .metrics import CONTENT_TYPE, Metrics
from .middleware import BodyLimit, HttpMetrics

logger = structlog.get_logger("anomaly_counter.service")
RETRY_AFTER_SECONDS = "5"


class Service:
    """What the routes share. Counters answer strictly: a store that cannot take a write is a
    503 (Alertmanager retries it), never a 2xx for something not stored."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = replace(settings, strict=True)
        self.store = store or store_from_url(self.settings.store_url, self.settings)
        self.metrics = Metrics()
        self.auth = Authenticator(self.store)
        self._counters: dict[str, AnomalyCounter] = {}
        self.dispatcher = Dispatcher(self.settings, self.counter, self.metrics)

    def counter(self, project: str) -> AnomalyCounter:
        counter = self._counters.get(project)
        if counter is None:
            counter = AnomalyCounter(self.store, project, settings=self.settings)
            self._counters[project] = counter
        return counter

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
        self.metrics.counted(project, frequencies)
        self.dispatcher.watch(project, frequencies)
        return frequencies


def create_app(settings: Settings, store: Store | None = None) -> FastAPI:
    from .routes import router  # the routes import this module's Service

    service = Service(settings, store)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.dispatcher.start()
        try:
            yield
        finally:
            await service.dispatcher.stop()
            await service.store.aclose()

    app = FastAPI(
        title="anomaly-counter",
        version=__version__,
        summary="Which alerts keep coming back, how often, and whether their repairs work.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.include_router(router)

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

    @app.exception_handler(InvalidInputError)
    async def invalid(_: Request, exc: InvalidInputError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(StoreUnavailableError)
    async def unavailable(_: Request, exc: StoreUnavailableError) -> JSONResponse:
        logger.warning("store_unavailable", error=str(exc))
        return JSONResponse(
            {"detail": "the store cannot be reached; retry later"},
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
        """Ready when the store answers."""
        try:
            async with service.metrics.timing("ping"):
                await service.store.ping()
        except StoreUnavailableError as exc:
            return PlainTextResponse(f"store unavailable: {exc}", status_code=503)
        return PlainTextResponse("ok")

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE)

    app.add_middleware(
        BodyLimit,
        limit=service.settings.max_body_bytes,
        alertmanager_limit=service.settings.max_alertmanager_body_bytes,
    )
    app.add_middleware(HttpMetrics, metrics=service.metrics)
    return app
