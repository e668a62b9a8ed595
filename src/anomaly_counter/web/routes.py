"""The dashboard's pages: sign in, a project's chronic anomalies, one anomaly's story.

Server-rendered (Jinja2), readable without script; ``static/app.js`` only shows times in the
viewer's zone and refreshes the page's live part. Every page checks the session's token before
reading anything of the project, as the API does: another project's token sees nothing of it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, select_autoescape

from .. import __version__, search, timeline
from ..errors import (
    AmbiguousAnomalyError,
    AnomalyNotFoundError,
    InvalidInputError,
    StoreUnavailableError,
)
from ..notify.deliverer import send_again
from ..service.schemas import MatchesOut
from ..service.state import Service
from ..tokens import TokenRecord
from . import session, views

_env = Environment(
    loader=PackageLoader("anomaly_counter.web", "templates"),
    autoescape=select_autoescape(default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.globals.update(
    version=__version__,
    levels=views.LEVELS,
    level_filters=views.LEVEL_FILTERS,
    window_names=views.WINDOW_NAMES,
    disposition_names=views.DISPOSITION_NAMES,
    utc_text=views.utc_text,
    labels=views.labels_of,
    milestones=timeline.MILESTONES,
    params=lambda **kw: urlencode({k: v for k, v in kw.items() if v not in (None, "")}),
)
templates = Jinja2Templates(env=_env)

_HEADERS = {
    # only our own files; no frames; the pages hold project data: never cached
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    began = getattr(request.state, "began", None) or time.perf_counter()
    context.setdefault("now", datetime.now(UTC))
    context.setdefault("token", getattr(request.state, "token", None))
    response = templates.TemplateResponse(request, template, context, status_code=status)
    response.headers.update(_HEADERS)
    elapsed = (time.perf_counter() - began) * 1000
    response.headers["Server-Timing"] = f'app;dur={elapsed:.1f};desc="server time"'
    return response


async def _viewer(request: Request, project: str) -> TokenRecord:
    """The session's token, which must be this project's (else 403: nothing is read)."""
    request.state.began = time.perf_counter()
    token = session.token_of(request)
    if not token:
        raise session.SignInFirst(request.url.path)
    try:
        record = await _service(request).auth.verify(token)
    except HTTPException as exc:
        raise session.SignInFirst(request.url.path, stale=True) from exc
    if record.project != project:
        raise HTTPException(403, f"this session's token is for project {record.project!r}")
    return record


async def _shown(
    request: Request, project: str, make: Callable[[], Awaitable[Response]]
) -> Response:
    """A page of a project, or the reason there is none (sign in, 403, 404, 503)."""
    if session.cross_site_arrival(request):
        # the browser holds a cookie it would not send with a link from another site:
        # the same page, loaded again from here, comes with it
        return _page(request, "bounce.html", target=session.here(request))
    try:
        record = await _viewer(request, project)
        request.state.token = record
        return await make()
    except session.SignInFirst as exc:
        response = RedirectResponse(f"/signin?next={quote(exc.next_path)}", status_code=303)
        if exc.stale:
            session.forget(response, request)
        return response
    except HTTPException as exc:
        return _page(request, "error.html", exc.status_code, message=exc.detail, project=project)
    except InvalidInputError as exc:
        return _page(request, "error.html", 400, message=str(exc), project=project)
    except StoreUnavailableError:
        message = "The store cannot be reached just now; this page will be back with it."
        return _page(request, "error.html", 503, message=message, project=project)


@router.get("/favicon.ico")
async def favicon() -> Response:
    """Browsers ask for it on every page without a <link rel=icon>, such as the JSON ones."""
    return RedirectResponse("/static/favicon.svg", status_code=301)


# -- sign in and out ------------------------------------------------------------------------


@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def home(request: Request) -> Response:
    token = session.token_of(request)
    if token:
        try:
            record = await _service(request).auth.verify(token)
        except HTTPException:
            record = None
        if record is not None:
            return RedirectResponse(f"/projects/{record.project}", status_code=303)
    if session.cross_site_arrival(request):
        return _page(request, "bounce.html", target=session.here(request))
    return RedirectResponse("/signin", status_code=303)


@router.api_route("/signin", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def signin_form(request: Request, next: str | None = None, out: int = 0) -> Response:
    return _page(request, "signin.html", next=session.safe_next(next), signed_out=bool(out))


@router.post("/signin", response_class=HTMLResponse)
async def signin(request: Request) -> Response:
    session.same_origin(request)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    back = session.safe_next((form.get("next") or [""])[0])
    try:
        record = await _service(request).auth.verify(token)
    except HTTPException:
        message = "That token is not one this service knows (mistyped, or revoked)."
        return _page(request, "signin.html", 401, next=back, error=message)
    except StoreUnavailableError:
        message = "The store cannot be reached just now: try again in a moment."
        return _page(request, "signin.html", 503, next=back, error=message)
    target = back if back and back.startswith(f"/projects/{record.project}/") else None
    response = RedirectResponse(target or f"/projects/{record.project}", status_code=303)
    session.remember(response, request, token, record.read_only)
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    session.same_origin(request)
    response = RedirectResponse("/signin?out=1", status_code=303)
    session.forget(response, request)
    return response


# -- pages ----------------------------------------------------------------------------------


@router.api_route("/projects/{project}", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def project_page(
    request: Request,
    project: str,
    window: str = "24h",
    level: str = "REPEAT",
    q: str = "",
    limit: str = "100",
) -> Response:
    async def make() -> Response:
        # checked here, after the session: a wrong one is a page that says so, not bare JSON
        if window not in views.WINDOW_NAMES:
            raise InvalidInputError(f"unknown window {window!r}: 1h, 24h, 7d or 30d")
        if level not in views.LEVEL_FILTERS:
            raise InvalidInputError(f"unknown level {level!r}: {', '.join(views.LEVEL_FILTERS)}")
        if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= views.MAX_ROWS:
            raise InvalidInputError(f"limit must be a number from 1 to {views.MAX_ROWS}")
        query, problem = q.strip(), None
        try:
            if not search.words(query):
                query = ""  # nothing to look for: no search
        except InvalidInputError as exc:  # the project page, saying what to change
            problem, query = str(exc), ""
        counter = _service(request).counter(project)
        view = await views.project_view(
            counter, window=window, level=level, query=query, limit=int(limit)
        )
        return _page(
            request, "project.html", 400 if problem else 200, view=view, project=project,
            query=q.strip() if problem else query, problem=problem,
        )  # fmt: skip

    return await _shown(request, project, make)


@router.post("/projects/{project}/notices/retry")
async def retry_notices(request: Request, project: str) -> Response:
    """The project page's "send them again": every dead letter back in the outbox."""
    session.same_origin(request)

    async def make() -> Response:
        record: TokenRecord = request.state.token
        if record.read_only:
            raise HTTPException(403, "this token is read-only: it cannot send notices again")
        service = _service(request)
        await send_again(service.counter(project), service.settings, None)
        return RedirectResponse(f"/projects/{quote(project)}#notices", status_code=303)

    return await _shown(request, project, make)


@router.api_route("/projects/{project}/anomalies/{key}.json", methods=["GET", "HEAD"])
async def anomaly_data(request: Request, project: str, key: str) -> Response:
    async def make() -> Response:
        counter = _service(request).counter(project)
        try:  # a name that matches one anomaly answers as its key would
            found = await counter.anomaly(key)
        except AmbiguousAnomalyError as exc:
            matches = MatchesOut.of(str(exc), exc.matches).model_dump(mode="json")
            return _json(matches, 300)
        except AnomalyNotFoundError as exc:
            return _json({"detail": str(exc)}, 404)
        view = await views.anomaly_view(counter, found, await _token_labels(request, project))
        return _json(views.anomaly_json(view))

    return await _shown(request, project, make)


@router.api_route(
    "/projects/{project}/anomalies/{key}", methods=["GET", "HEAD"], response_class=HTMLResponse
)
async def anomaly_page(request: Request, project: str, key: str) -> Response:
    async def make() -> Response:
        view = await _anomaly(request, project, key)
        if isinstance(view, Response):
            return view
        # the curl lines' address: the public one when set, else the one the browser used
        public = _service(request).settings.public_url
        base = (public or str(request.base_url)).rstrip("/")
        return _page(request, "anomaly.html", view=view, project=project, base=base)

    return await _shown(request, project, make)


def _json(data: Any, status: int = 200) -> Response:
    response = JSONResponse(data, status_code=status)
    response.headers.update(_HEADERS)
    return response


async def _token_labels(request: Request, project: str) -> dict[str, str]:
    """The labels of the project's tokens by id, to name who wrote an entry."""
    return {t.token_id: t.label for t in await _service(request).store.list_tokens(project)}


async def _anomaly(request: Request, project: str, ref: str) -> views.AnomalyView | Response:
    """The view of the anomaly a key names; a name that matches one goes to its page, one
    that matches several to the search."""
    service = _service(request)
    counter = service.counter(project)
    found = await counter.find(ref)
    if found.anomaly is None:
        if found.matches:
            return RedirectResponse(f"/projects/{project}?q={quote(ref)}", status_code=303)
        raise HTTPException(404, f"no anomaly {ref!r} in project {project!r}")
    if found.anomaly.anomaly_key != ref:
        target = f"/projects/{project}/anomalies/{found.anomaly.anomaly_key}"
        return RedirectResponse(target, status_code=303)
    who = await _token_labels(request, project)
    return await views.anomaly_view(counter, found.anomaly, who)
