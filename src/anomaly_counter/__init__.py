"""anomaly-counter: which alerts keep coming back, how often, and whether their fixes work."""

from importlib.metadata import PackageNotFoundError, version

from .counter import AnomalyCounter, get_anomaly_counter, reset_anomaly_counter
from .errors import (
    AmbiguousAnomalyError,
    AnomalyCounterError,
    AnomalyNotFoundError,
    ConfigurationError,
    InvalidInputError,
    LimitExceededError,
    OccurrenceTimeError,
    SpoolFullError,
    StoreError,
    StoreFileError,
    StoreUnavailableError,
    UnknownDispositionError,
)
from .model import (
    DISPOSITION_TYPES,
    WINDOWS,
    AnomalyFrequency,
    EscalationLevel,
    Occurrence,
)
from .policy import ActionRecommendation, Thresholds
from .settings import Settings, load_settings

try:
    __version__ = version("anomaly-counter")
except PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "0.0.0"
from .signature import derive_key_from_incident, hash_signature

__all__ = [
    "DISPOSITION_TYPES",
    "WINDOWS",
    "ActionRecommendation",
    "AmbiguousAnomalyError",
    "AnomalyCounter",
    "AnomalyCounterError",
    "AnomalyFrequency",
    "AnomalyNotFoundError",
    "ConfigurationError",
    "EscalationLevel",
    "InvalidInputError",
    "LimitExceededError",
    "Occurrence",
    "OccurrenceTimeError",
    "Settings",
    "SpoolFullError",
    "StoreError",
    "StoreFileError",
    "StoreUnavailableError",
    "Thresholds",
    "UnknownDispositionError",
    "derive_key_from_incident",
    "get_anomaly_counter",
    "hash_signature",
    "load_settings",
    "reset_anomaly_counter",
]
