"""Pure ASGI middleware: a bound on request bodies, and HTTP metrics by route template."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics


async def _reply(
    send: Send, status: int, detail: str, extra: Mapping[str, str] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Refused(Exception):
    """What ``BodyLimit``'s gate answers instead of reading a request's body."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


@dataclass(frozen=True, slots=True)
class Passed:
    """A request the gate let through: whether it was authenticated (and may send the larger
    Alertmanager body), and the turn it holds while its body is read and handled (entering it
    may wait, or raise ``Refused``)."""

    authenticated: bool
    turn: AbstractAsyncContextManager[None]


Gate = Callable[[Scope], Awaitable[Passed]]
"""Checks a request from its headers before any byte of its body is read: raises ``Refused``,
or lets it pass."""


class BodyLimit:
    """Answers 413 to a body over its limit, declared or streamed, before any handler sees it
    (the body is read once here, and handed on as it came). The gate runs first: a request
    without a valid token of its project is refused before its body is read, so that no one
    can make the service read and hold large bodies without credentials. Alertmanager webhooks
    that passed it get a limit of their own: a 4xx makes Alertmanager drop a notification, so a
    large alert group must fit."""

    def __init__(
        self, app: ASGIApp, limit: int, alertmanager_limit: int, gate: Gate, timeout: float
    ) -> None:
        self.app, self.default, self.alertmanager = app, limit, alertmanager_limit
        self.gate, self.timeout = gate, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        try:
            passed = await self.gate(scope)
            async with passed.turn:
                await self._serve(scope, receive, send, passed.authenticated)
        except Refused as refused:
            # (what the client goes on sending is read and dropped, never held, so that it sees
            # the answer: closing on an unread body would reset the connection under it)
            await _reply(send, refused.status, refused.detail, refused.headers)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, authenticated: bool) -> None:
        large = authenticated and scope["path"].endswith("/alertmanager")
        limit = self.alertmanager if large else self.default
        too_big = f"request body is larger than {limit} bytes"
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _reply(send, 400, "invalid Content-Length")
                    return
                if declared > limit:
                    await _reply(send, 413, too_big)
                    return
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(self.timeout):
                if not await _read(receive, chunks, limit):
                    await _reply(send, 413, too_big)
                    return
        except TimeoutError:
            detail = f"the request body did not arrive within {self.timeout:g} seconds"
            await _reply(send, 408, detail, _CLOSE)
            return
        except _Gone:
            return
        body, sent = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


_CLOSE = {"Connection": "close"}


class _Gone(Exception):
    """The client went away while sending its body."""


async def _read(receive: Receive, chunks: list[bytes], limit: int) -> bool:
    """Read a body into chunks; False when it grows past the limit."""
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return False
        chunks.append(chunk)
        more = message.get("more_body", False)
    return True


class Admission:
    """At most ``limit`` requests at a time in this process: past it, 503 with Retry-After
    before anything is read (a client should come back, not queue without bound)."""

    def __init__(self, app: ASGIApp, limit: int, retry_after: str) -> None:
        self.app, self.limit, self.retry_after = app, limit, retry_after
        self.running = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.running >= self.limit:
            detail = "the service is at its limit of concurrent requests; retry later"
            await _reply(send, 503, detail, {"Retry-After": self.retry_after})
            return
        self.running += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.running -= 1


class HttpMetrics:
    """Counts and times requests by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.http_requests.labels(method, template, str(status)).inc()
            self.metrics.http_seconds.labels(method, template).observe(time.perf_counter() - began)
