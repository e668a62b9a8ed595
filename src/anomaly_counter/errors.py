"""The few named errors of anomaly-counter.

Callers catch these; the service maps them to HTTP statuses and the CLI to one-line messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import AnomalyFrequency


class AnomalyCounterError(Exception):
    """Base of every error this library raises on purpose."""


class InvalidInputError(AnomalyCounterError, ValueError):
    """An argument is wrong and will stay wrong: retrying the same call cannot succeed."""


class OccurrenceTimeError(InvalidInputError):
    """An occurrence time is naive, older than the 30-day retention, or too far in the future."""


class UnknownDispositionError(InvalidInputError):
    """A disposition type that is not one of the five known ones."""


class AnomalyNotFoundError(InvalidInputError):
    """A key or a name that refers to no anomaly of the project."""


class AmbiguousAnomalyError(InvalidInputError):
    """A name that several anomalies of the project match: ``matches`` holds them, best first
    (``AnomalyFrequency`` each), to choose one by its key or with more words."""

    def __init__(self, message: str, matches: list[AnomalyFrequency]) -> None:
        super().__init__(message)
        self.matches = matches


class ConfigurationError(AnomalyCounterError):
    """Settings or a store URL are invalid; raised at start-up, naming the setting."""


class StoreUnavailableError(AnomalyCounterError):
    """The store could not be reached, did not answer in time, or cannot take writes for now
    (a replica after a failover, loading, out of memory). Stores and the spool's replay raise
    it; the facade's calls raise it with ``strict=True``, spool the write when a spool is set,
    and answer ``degraded`` otherwise. Retrying later may succeed."""


class StoreError(AnomalyCounterError):
    """The store refused an operation for a reason retrying will not fix: the user lacks a
    permission, a constraint failed, a script failed. A fault in the deployment or a bug, not
    in the input; the message says what the store said."""


class SourceUnavailableError(AnomalyCounterError):
    """A source of alert history (Prometheus, for a backfill) could not be reached or did not
    answer in time, or answered that it cannot serve now (5xx). Nothing was stored; retrying
    later may succeed."""


class SpoolFullError(AnomalyCounterError):
    """The store cannot take a write and the spool holds its maximum (or its disk is full):
    the occurrence was refused, not stored anywhere. Retrying later may succeed."""


class StoreFileError(ConfigurationError):
    """The SQLite store's file cannot be used as it is: not an SQLite database, damaged, a
    directory, or a path that cannot be created or written. Retrying cannot help; the message
    names the file and what is wrong."""


class LimitExceededError(InvalidInputError):
    """A write would take its project past one of its limits (``limit`` names the setting):
    refused, nothing stored. It stays refused until the limit is raised (the API: 429)."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit
