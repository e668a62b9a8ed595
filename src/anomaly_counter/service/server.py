"""How the service is served: uvicorn, with the limits a server facing careless and hostile
clients needs and uvicorn does not have.

uvicorn closes idle keep-alive connections, but waits forever for a request's headers and takes
headers of any size. ``GuardedHttp`` closes a connection whose request line and headers have not
arrived within ``header_timeout`` (408), and refuses headers past ``max_header_bytes`` or
``max_headers`` (431). The body's own limits (size, ``body_timeout``) are ``BodyLimit``'s, in the
application.

A token belongs in the Authorization header: a URL is kept by access logs, proxies and browser
histories. ``NoTokenInQuery`` refuses a request whose query string holds one (400), and the
access log never shows one (``hide_tokens``), refused or not.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import unquote_plus

import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..settings import ServiceSettings
from ..tokens import TOKEN_LIKE

TOKEN_IN_QUERY = (
    "a token in the URL is refused: tokens go in the Authorization header"
    " (Authorization: Bearer <token>), which logs and browser histories do not keep"
)


def _holds_token(text: str) -> bool:
    """Whether a part of a URL holds a token, as sent or percent-decoded."""
    return bool(TOKEN_LIKE.search(text) or TOKEN_LIKE.search(unquote_plus(text)))


def hide_tokens(target: str) -> str:
    """A request's path and query fit for a log: a token in the path shown as ``***``, and so
    is each query value (or name) that holds one."""
    path, mark, query = target.partition("?")
    path = TOKEN_LIKE.sub("***", path)
    if mark and _holds_token(query):
        query = "&".join(_hide_parameter(part) for part in query.split("&"))
    return path + mark + query


def _hide_parameter(part: str) -> str:
    name, _, value = part.partition("=")
    if _holds_token(name):
        return "***"
    return f"{name}=***" if _holds_token(value) else part


class NoTokenInQuery:
    """Refuses (400) a request whose query string holds a token, before anything reads it:
    the answer says where tokens go, and never repeats the token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _holds_token(scope["query_string"].decode("latin-1")):
            await JSONResponse({"detail": TOKEN_IN_QUERY}, status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _HideTokens(logging.Filter):
    """Keeps tokens out of uvicorn's access log, which shows each request's path and query."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = hide_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(hide_tokens(a) if isinstance(a, str) else a for a in record.args)
        return True


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline and a size bound on each request's head."""

    settings: ServiceSettings  # set on a subclass made per server (uvicorn makes the instances)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._head_count = 0
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # (what a refused client still sends is dropped)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = self._head_count = 0
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, 1)
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        super().on_headers_complete()

    def _count(self, size: int, headers: int) -> None:
        self._head_bytes += size
        self._head_count += headers
        if not self._refused and (
            self._head_bytes > self.settings.max_header_bytes
            or self._head_count > self.settings.max_headers
        ):
            self._refuse(431, "Request Header Fields Too Large")

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.settings.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.cycle is None or self.cycle.response_complete:  # (its head never came)
            self._refuse(408, "Request Timeout")

    def _refuse(self, status: int, reason: str) -> None:
        self._refused = True
        self._disarm()
        if self.transport.is_closing():
            return
        body = f"{reason}: see the service's limits".encode()
        self.transport.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        self.transport.close()


def uvicorn_config(
    app: Any, settings: ServiceSettings, *, access_log: bool = False, **options: Any
) -> uvicorn.Config:
    """The uvicorn configuration of the service (``serve``, and the tests' servers)."""
    protocol = type("Http", (GuardedHttp,), {"settings": settings})
    config = uvicorn.Config(
        app,
        host=options.pop("host", settings.host),
        port=options.pop("port", settings.port),
        http=protocol,
        timeout_keep_alive=int(max(1, settings.keep_alive_timeout)),
        access_log=access_log,
        **options,
    )
    # (after the Config, which sets uvicorn's logging up; the logger is the process's)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _HideTokens) for f in access.filters):
        access.addFilter(_HideTokens())
    return config
