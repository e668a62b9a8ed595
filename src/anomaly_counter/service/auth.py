"""Bearer tokens per project: 401 without a valid token, 403 with another project's.

The check runs before anything of the project is read, so a foreign token learns nothing, not
even whether an anomaly exists. The store's answers are cached for a few seconds: a revoked
token stops working within ``CACHE_SECONDS``.

While the store cannot be reached, a token keeps the store's last answer for
``auth_stale_seconds`` after the store gave it (``known_tokens``: kept beside the spool, so a
restarted service still knows its clients); a token without one gets ``StoreUnavailableError``
(503). A known token waits for the store at most ``KNOWN_WAIT_SECONDS`` (its look-up carries on,
and replaces the known answer when it comes), so that an outage where the store does not
answer at all costs an acknowledgement no more than the write's own ``store_timeout``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable
from functools import partial

from fastapi import HTTPException, status

from ..errors import StoreUnavailableError
from ..stores.base import Store
from ..tokens import TokenRecord, parse_token, token_matches
from .known_tokens import KnownTokens

CACHE_SECONDS = 5.0
KNOWN_WAIT_SECONDS = 0.2
_CACHE_SIZE = 10_000


class Authenticator:
    """Checks bearer tokens against the store's records (see the module's docstring)."""

    def __init__(self, store: Store, known: KnownTokens | None = None) -> None:
        self._store = store
        self._known = known if known is not None else KnownTokens(None, 86_400.0)
        # never longer than a stale answer may be kept (auth_stale_seconds)
        self._cache_seconds = min(CACHE_SECONDS, self._known.max_age)
        # id -> (until, answer), least recently used first; an answer "unknown" is None
        self._cache: OrderedDict[str, tuple[float, TokenRecord | None]] = OrderedDict()
        self._lookups: dict[str, asyncio.Task[TokenRecord | None]] = {}  # one per token id
        self._saving: set[asyncio.Task[None]] = set()

    async def _record(self, token_id: str) -> TokenRecord | None:
        cached = self._cache.get(token_id)
        if cached is not None and cached[0] > asyncio.get_running_loop().time():
            self._cache.move_to_end(token_id)
            return cached[1]
        lookup = self._lookups.get(token_id)
        if lookup is None:
            lookup = asyncio.create_task(self._look_up(token_id))
            self._lookups[token_id] = lookup
            lookup.add_done_callback(partial(self._settled, token_id))
        known = self._known.answer(token_id)
        if known is None:
            # the store's answer, or StoreUnavailableError (503): nothing else can vouch for it
            record = await asyncio.shield(lookup)
        else:
            try:
                record = await asyncio.wait_for(asyncio.shield(lookup), KNOWN_WAIT_SECONDS)
            except (StoreUnavailableError, TimeoutError):
                return known  # the store's last answer, at most auth_stale_seconds old
        await self._known.save()  # the store's answer is on disk before it is acted on
        return record

    async def _look_up(self, token_id: str) -> TokenRecord | None:
        record = await self._store.get_token(token_id)
        self._cache[token_id] = (asyncio.get_running_loop().time() + self._cache_seconds, record)
        self._cache.move_to_end(token_id)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        if record is None:
            self._known.forget(token_id)  # the store's answer wins: revoked, or never made
        else:
            self._known.confirm(record)
        if self._known.unsaved:  # written whoever waits for this answer, and however long
            saving = asyncio.create_task(self._known.save())
            self._saving.add(saving)
            saving.add_done_callback(self._saving.discard)
        return record

    def _settled(self, token_id: str, lookup: asyncio.Task[TokenRecord | None]) -> None:
        if self._lookups.get(token_id) is lookup:
            del self._lookups[token_id]
        if not lookup.cancelled():
            lookup.exception()  # retrieved: those who waited had it, and no one else needs it

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

    async def forget(self, token_ids: Iterable[str]) -> None:
        """Tokens the store no longer has (their project was deleted): refused by this process
        at once, not within ``CACHE_SECONDS``, and never answered for during an outage."""
        for token_id in token_ids:
            self._cache.pop(token_id, None)
            self._known.forget(token_id)
        await self._known.save()


def for_project(record: TokenRecord, project: str) -> TokenRecord:
    if record.project != project:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this token is not for this project")
    return record


def may_write(record: TokenRecord) -> TokenRecord:
    if record.read_only:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this token is read-only")
    return record


def may_delete(record: TokenRecord) -> TokenRecord:
    """Deleting takes an admin token of the project (``token create --admin``): what a
    read-write token may do can be undone or outgrown, a deletion cannot."""
    if not record.admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "deleting takes an admin token of this project"
        )
    return record


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )
