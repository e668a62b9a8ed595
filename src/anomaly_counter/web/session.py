"""Who is looking: a project token pasted once into the sign-in form, kept in a cookie.

The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it)
and Secure when served over TLS; the token never appears in a URL. It grants the dashboard's
reads only: the API's write routes read the ``Authorization`` header and never the cookie, so
a page elsewhere cannot make a signed-in browser write anything. The forms that change the
session (sign in, sign out) refuse requests sent from another origin.
"""

from __future__ import annotations

import posixpath
from urllib.parse import urlsplit

from fastapi import HTTPException, Request, Response

COOKIE = "ac_session"
SECURE_COOKIE = "__Host-ac_session"
"""Over TLS the cookie's name says it was set by this host alone, on its whole path, Secure:
a browser refuses such a cookie from anywhere else (a sibling subdomain, plain HTTP)."""
MAX_AGE = 30 * 86_400
"""A read-only token keeps a browser signed in for 30 days (or until it signs out, or the token
is revoked); one that may write, only until the browser closes: the cookie holds the token."""


class SignInFirst(Exception):
    """The request has no (valid) session: send the viewer to the sign-in form."""

    def __init__(self, next_path: str, stale: bool = False) -> None:
        super().__init__(next_path)
        self.next_path = next_path
        self.stale = stale  # a cookie whose token no longer works: forget it


def _public(request: Request) -> tuple[str, str] | None:
    """The scheme and host of the configured ``public_url``, when there is one."""
    service = getattr(request.app.state, "service", None)
    url = urlsplit(service.settings.public_url) if service is not None else None
    return (url.scheme, url.netloc) if url is not None and url.netloc else None


def _over_tls(request: Request) -> bool:
    """Served over TLS: directly, or reached at the https ``public_url`` (a proxy in front
    that ends TLS forwards plain HTTP, with the public host)."""
    if request.url.scheme == "https":
        return True
    public = _public(request)
    return public is not None and public[0] == "https" and request.headers.get("host") == public[1]


def _name(request: Request) -> str:
    return SECURE_COOKIE if _over_tls(request) else COOKIE


def token_of(request: Request) -> str | None:
    """The session's token, if the browser sent one."""
    return request.cookies.get(_name(request))


def remember(response: Response, request: Request, token: str, read_only: bool) -> None:
    response.set_cookie(
        _name(request),
        token,
        max_age=MAX_AGE if read_only else None,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_over_tls(request),
    )


def forget(response: Response, request: Request) -> None:
    response.delete_cookie(
        _name(request),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_over_tls(request),
    )


def same_origin(request: Request) -> None:
    """Refuse a form sent from another site (a page elsewhere signing a browser in with the
    attacker's token, or out): browsers say where a request comes from."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, "this form must be sent from the dashboard itself")
    origin = request.headers.get("origin")
    mine = {f"{request.url.scheme}://{request.url.netloc}"}
    public = _public(request)
    if public is not None:
        mine.add(f"{public[0]}://{public[1]}")  # behind a proxy: the address people use
    if origin is not None and origin not in mine:
        raise HTTPException(403, "this form must be sent from the dashboard itself")


def safe_next(path: str | None) -> str | None:
    """A place to return to after signing in: a dashboard page of this site, nothing else."""
    if not path or "\\" in path or any(ord(c) < 32 for c in path):
        return None
    normal = posixpath.normpath(path)
    return normal if normal.startswith("/projects/") and not normal.startswith("//") else None


def cross_site_arrival(request: Request) -> bool:
    """A link followed from another site (a chat notice): the browser did not send the
    SameSite=Strict cookie, though it has one. Loading the page again from this site sends it."""
    return token_of(request) is None and request.headers.get("sec-fetch-site") == "cross-site"


def here(request: Request) -> str:
    """The path and query the browser asked for, as it sent them (a relative target: never
    built from a Host header)."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    return (raw + (b"?" + query if query else b"")).decode("latin-1")
