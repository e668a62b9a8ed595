"""The few named errors of anomaly-counter.

Callers catch these; the service maps them to HTTP statuses and the CLI to one-line messages.
"""

from __future__ import annotations


class AnomalyCounterError(Exception):
    """Base of every error this library raises on purpose."""


class InvalidInputError(AnomalyCounterError, ValueError):
    """An argument is wrong and will stay wrong: retrying the same call cannot succeed."""


class OccurrenceTimeError(InvalidInputError):
    """An occurrence time is naive, older than the 30-day retention, or too far in the future."""


class UnknownDispositionError(InvalidInputError):
    """A disposition type that is not one of the five known ones."""


class ConfigurationError(AnomalyCounterError):
    """Settings or a store URL are invalid; raised at start-up, naming the setting."""


class StoreUnavailableError(AnomalyCounterError):
    """The store could not be reached or did not answer in time (raised only with strict=True)."""
