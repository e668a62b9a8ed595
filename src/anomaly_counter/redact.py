"""What may be shown of a secret-bearing setting: in logs, answers, errors and metrics."""

from __future__ import annotations


def redacted(url: str) -> str:
    """A store URL fit to show: its password replaced by ``***`` (user information without a
    colon too: some clients take it as the password)."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if not sep or "@" not in authority:
        return url
    userinfo, host = authority.rsplit("@", 1)
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}://{shown}@{host}{slash}{path}"
