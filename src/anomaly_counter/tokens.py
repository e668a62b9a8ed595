"""API tokens: made here, shown once, kept only as a digest.

A token reads ``act_<id>_<secret>``. The id finds its record in one look-up (no scan, whatever
the number of tokens); the secret is checked against the stored SHA-256 digest in constant
time. 24 random bytes of secret make guessing hopeless, so a fast digest is enough (a slow
password hash would only slow every request).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from .errors import InvalidInputError
from .validation import project_id

_TOKEN = re.compile(r"act_([0-9a-f]{16})_([A-Za-z0-9_-]{32})")
TOKEN_LIKE = re.compile(r"act_[0-9a-f]{16}_[A-Za-z0-9_-]*")
"""A token, or the start of one, anywhere in a text (to keep tokens out of URLs and logs)."""
_LABEL_CHARS = 200


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What a store keeps of a token: never the token itself."""

    token_id: str
    project: str
    digest: str
    created_ms: int
    label: str = ""
    read_only: bool = False  # reads only: every write route refuses it (403)
    admin: bool = False  # may also delete the project's data (docs/delete.md); others get 403


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(
    project: str,
    created_ms: int,
    label: str = "",
    *,
    read_only: bool = False,
    admin: bool = False,
) -> tuple[str, TokenRecord]:
    """A new token of a project: the text to hand out once, and the record to store."""
    if len(label) > _LABEL_CHARS:
        raise InvalidInputError(f"token label is longer than {_LABEL_CHARS} characters")
    if read_only and admin:
        raise InvalidInputError("a token is read-only or admin, not both")
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(24)
    record = TokenRecord(
        token_id, project_id(project), _digest(secret), created_ms, label, read_only, admin
    )
    return f"act_{token_id}_{secret}", record


def parse_token(text: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    match = _TOKEN.fullmatch(text)
    return (match.group(1), match.group(2)) if match else None


def token_matches(record: TokenRecord, secret: str) -> bool:
    return hmac.compare_digest(record.digest, _digest(secret))
