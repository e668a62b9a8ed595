"""Finding anomalies by name: what is indexed, how a query is read, what counts as a match.

An anomaly is indexed once, at its first occurrence, by the *terms* of its stored signature:
each label's value, case-folded, without control characters, cut to ``MAX_TERM_CHARS``. The
values of its four fingerprint fields (alert name, service, namespace, reason) are searchable
anywhere in them; the other labels' values (pod, instance, severity, ...) from their start. Each
store keeps two indexes per project, written in the same atomic step as that occurrence:

- term -> the anomalies that have it (sorted, so that a prefix reads a range of it);
- gram -> the fingerprint terms that hold it, where the grams of a term are its ``GRAM``-byte
  windows starting at each of its bytes (UTF-8), padded at the end with ``PAD``: every
  substring of up to ``GRAM`` bytes is then the start of some gram of every term holding it.

Grams cost a dozen index entries per distinct term; fingerprint values are few and shared by
many anomalies, while other labels are often unique to one (a pod's name), which is why only
the former are searchable inside.

A query is split into words; an anomaly matches when every word is in one of its values as
said above. A word of up to ``GRAM`` bytes reads the grams that start with it; a longer one
reads the terms of its rarest gram and keeps those that hold the whole word; and the terms
that start with the word. So a query reads index entries in proportion to what it finds,
never the whole project.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidInputError
from .signature import FINGERPRINT_FIELDS

MAX_TERM_CHARS = 64
"""Values are searchable by their first 64 characters."""
GRAM = 3
PAD = "\x01" * (GRAM - 1)
TERM_SEP = "\x1f"
"""Between the terms handed to a store in one string (terms hold no control characters)."""
GROUP_SEP = "\x1e"
"""Between the fingerprint terms and the others in that string."""
MAX_QUERY_WORDS = 8
MAX_CANDIDATES = 1_000
"""Anomalies a query word may find before its results are cut (``truncated``): a word that
broad (a namespace) wants another word to narrow it."""
MAX_TERMS = 200
"""Distinct indexed terms (over all of a project's shards) a query word may match on Redis
before its results are cut: what a common fragment costs stays bounded. (SQLite finds the
anomalies in one query, cut at ``MAX_CANDIDATES``.)"""
PROBED_GRAMS = 3
"""Grams of a long word whose index entries are counted, to read the rarest: a bounded cost
whatever the word (the first, a middle and the last)."""

_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)
"""Control characters, lone surrogates, and the invisible ones (zero-width, bidi controls):
none of them is part of what a person reads or types."""


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value)  # numbers and booleans as they read in JSON


def normalise(text: str) -> str:
    """Case-folded, control characters (and lone surrogates) removed."""
    return _CONTROL.sub("", text).casefold()


def fingerprint_labels(signature: Mapping[str, Any]) -> set[str]:
    """The labels whose values make the fingerprint (each field, or else its alias)."""
    used = set()
    for name, alias in FINGERPRINT_FIELDS.items():
        if name in signature:
            used.add(name)
        elif alias is not None and alias in signature:
            used.add(alias)
    return used


def terms_of(signature: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The distinct search terms of a signature: of its fingerprint fields, and the others."""
    inner = fingerprint_labels(signature)
    fingerprint: dict[str, None] = {}
    others: dict[str, None] = {}
    for name, value in signature.items():
        text = _text(value)
        term = normalise(text)[:MAX_TERM_CHARS] if text else ""
        if term:
            (fingerprint if name in inner else others)[term] = None
    return list(fingerprint), [term for term in others if term not in fingerprint]


@functools.lru_cache(maxsize=65_536)
def joined_terms(signature_json: str) -> str:
    """The terms of a signature (as stored, JSON) as one string, as a record request carries
    them: the fingerprint terms, ``GROUP_SEP``, the others. On every occurrence: the same
    labels recur, so each signature is worked out once."""
    fingerprint, others = terms_of(json.loads(signature_json))
    return TERM_SEP.join(fingerprint) + GROUP_SEP + TERM_SEP.join(others)


def grams_of(term: str) -> list[bytes]:
    """The grams of a term: one per byte of it (see the module's docstring)."""
    data = (term + PAD).encode()
    return [data[i : i + GRAM] for i in range(len(data) - GRAM + 1)]


def words(query: str) -> list[str]:
    """The words of a query, normalised, distinct (an empty list for none; a named error for
    more than ``MAX_QUERY_WORDS``: a word left out would let through what does not match)."""
    seen: dict[str, None] = {}
    for word in query.split():
        cleaned = normalise(word)
        if cleaned:
            seen[cleaned] = None
    if len(seen) > MAX_QUERY_WORDS:
        raise InvalidInputError(
            f"search query has {len(seen)} words, at most {MAX_QUERY_WORDS} allowed"
        )
    return list(seen)


def lookup(word: str) -> tuple[bytes, list[bytes]]:
    """How the gram index is read for a word: ``(prefix, grams)``. A short word (``GRAM``
    bytes or fewer) is a prefix of grams; a longer one has ``PROBED_GRAMS`` of its grams
    (unpadded), of which the rarest is read (any gram of the word finds every term holding
    it). Words are looked up by their first ``MAX_TERM_CHARS`` characters, as terms were
    indexed."""
    data = indexed(word).encode()
    if len(data) <= GRAM:
        return data, []
    last = len(data) - GRAM
    starts = sorted({0, last // 2, last})[:PROBED_GRAMS]
    return b"", list(dict.fromkeys(data[i : i + GRAM] for i in starts))


def indexed(word: str) -> str:
    """The part of a word that index entries can hold."""
    return word[:MAX_TERM_CHARS]


def holds(term: bytes | str, word: str) -> bool:
    """Whether an indexed term holds a word (the part of it that was indexed)."""
    text = term.decode("utf-8", "replace") if isinstance(term, bytes) else term
    return indexed(word) in text


def match_quality(signature: Mapping[str, Any], query_words: Iterable[str]) -> int | None:
    """How well a signature matches every word of a query: 0 when some value equals each word,
    1 when some value starts with each, 2 when some fingerprint value only holds it; None when a
    word matches no value. Lower is better."""
    inner = fingerprint_labels(signature)
    values = [
        (normalise(text), name in inner)
        for name, text in ((n, _text(v)) for n, v in signature.items())
        if text
    ]
    worst = 0
    for word in query_words:
        best: int | None = None
        for value, anywhere in values:
            if value == word:
                best = 0
                break
            if value.startswith(word):
                best = 1
            elif best is None and anywhere and word in value:
                best = 2
        if best is None:
            return None
        worst = max(worst, best)
    return worst
