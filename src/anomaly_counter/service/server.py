"""How the service is served: uvicorn, with the limits a server facing careless and hostile
clients needs and uvicorn does not have.

uvicorn closes idle keep-alive connections, but waits forever for a request's headers and takes
headers of any size. ``GuardedHttp`` closes a connection whose request line and headers have not
arrived within ``header_timeout`` (408), and refuses headers past ``max_header_bytes`` or
``max_headers`` (431). The body's own limits (size, ``body_timeout``) are ``BodyLimit``'s, in the
application.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..settings import Settings


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline and a size bound on each request's head."""

    settings: Settings  # set on a subclass made for each server (uvicorn makes the instances)

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
    app: Any, settings: Settings, *, access_log: bool = False, **options: Any
) -> uvicorn.Config:
    """The uvicorn configuration of the service (``serve``, and the tests' servers)."""
    protocol = type("Http", (GuardedHttp,), {"settings": settings})
    return uvicorn.Config(
        app,
        host=options.pop("host", settings.host),
        port=options.pop("port", settings.port),
        http=protocol,
        timeout_keep_alive=int(max(1, settings.keep_alive_timeout)),
        access_log=access_log,
        **options,
    )
