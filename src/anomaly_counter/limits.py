"""What one project may take of what all projects share: generous by default, per project.

The counter bounds what a project keeps (distinct anomalies, action names per anomaly); the
service bounds its own
time (requests per second and at once, in each process), so that one project's flood cannot
starve another's.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigurationError, LimitExceededError


@dataclass(frozen=True, slots=True)
class Limits:
    max_anomalies: int = 20_000  # distinct anomalies a project holds; a new one past it: 429
    max_actions: int = 50  # distinct repair action names per anomaly; a new one past it: 429
    requests_per_second: float = 1_000.0  # per service process, sustained (0: no limit)
    burst: int = 2_000  # requests above the sustained rate taken at once
    concurrent_requests: int = 2  # served at once per process; later ones wait their turn
    waiting_requests: int = 256  # waiting their turn; past it, 429

    def __post_init__(self) -> None:
        for name in ("max_anomalies", "max_actions", "burst", "concurrent_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"limit {name} must be a positive integer, got {value!r}")
        if isinstance(self.waiting_requests, bool) or not isinstance(self.waiting_requests, int):
            raise ConfigurationError(
                f"limit waiting_requests must be an integer, got {self.waiting_requests!r}"
            )
        if self.waiting_requests < 0:
            raise ConfigurationError(
                f"limit waiting_requests must not be negative, got {self.waiting_requests}"
            )
        rate = self.requests_per_second
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1e9:
            raise ConfigurationError(
                f"limit requests_per_second must be a number from 0 (no limit), got {rate!r}"
            )


def anomaly_limit_error(project: str, limit: int) -> LimitExceededError:
    """The refusal of an occurrence that would make a new anomaly past ``max_anomalies``."""
    return LimitExceededError(
        f"project {project} holds its limit of {limit} distinct anomalies (limit max_anomalies):"
        " occurrences of the anomalies it has still count; a new one is refused until some"
        " expire (35 days without an occurrence), or the limit is raised",
        "max_anomalies",
    )
