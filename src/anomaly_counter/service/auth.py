"""Bearer tokens per project: 401 without a valid token, 403 with another project's.

The check runs before anything of the project is read, so a foreign token learns nothing, not
even whether an anomaly exists. Look-ups are cached for a few seconds: a revoked token stops
working within ``CACHE_SECONDS``. While the store cannot be reached, tokens this process has
already seen are taken as last read.
"""

from __future__ import annotations

import time

from fastapi import HTTPException, status

from ..errors import StoreUnavailableError
from ..stores.base import Store
from ..tokens import TokenRecord, parse_token, token_matches

CACHE_SECONDS = 5.0
_CACHE_SIZE = 10_000


class Authenticator:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, tuple[float, TokenRecord | None]] = {}

    async def _record(self, token_id: str) -> TokenRecord | None:
        now = time.monotonic()
        cached = self._cache.get(token_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            record = await self._store.get_token(token_id)
        except StoreUnavailableError:
            # While the store is down, a token this process has seen keeps working (as it was
            # when last read), so that occurrences can still be accepted into the spool.
            if cached is not None:
                return cached[1]
            raise
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[token_id] = (now + CACHE_SECONDS, record)
        return record

    async def token_of(self, authorization: str | None) -> TokenRecord:
        """The token of a request's ``Authorization: Bearer <token>``."""
        if not authorization:
            raise _unauthorized("missing bearer token (Authorization: Bearer <token>)")
        scheme, _, text = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise _unauthorized("malformed bearer token")
        return await self.verify(text.strip())

    async def verify(self, token: str) -> TokenRecord:
        """The record of a token (as the dashboard's sign-in form or cookie carries it)."""
        parsed = parse_token(token)
        if parsed is None:
            raise _unauthorized("malformed bearer token")
        record = await self._record(parsed[0])
        if record is None or not token_matches(record, parsed[1]):
            raise _unauthorized("unknown or revoked token")
        return record

    async def check(self, authorization: str | None, project: str) -> TokenRecord:
        """The request's token, which must be one of this project's."""
        return for_project(await self.token_of(authorization), project)


def for_project(record: TokenRecord, project: str) -> TokenRecord:
    if record.project != project:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this token is not for this project")
    return record


def may_write(record: TokenRecord) -> TokenRecord:
    if record.read_only:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this token is read-only")
    return record


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )
