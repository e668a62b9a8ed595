"""Typed settings: defaults, then an optional TOML file, then ``ANOMALY_COUNTER_*`` variables.

Invalid settings fail at start-up with a ConfigurationError naming the setting.

TOML layout::

    store_url = "redis://localhost:6379/0"
    project = "default"
    [thresholds]
    repeat = 3
    escalate = 5
    permanent_fix = 10
    [projects.payments.thresholds]   # per-project overrides
    repeat = 2
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .policy import Thresholds
from .validation import PROJECT_ID

ENV_PREFIX = "ANOMALY_COUNTER_"
DEFAULT_STORE_URL = "sqlite:///anomaly-counter.db"
MIN_DEDUP_HORIZON_DAYS = 7


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the counter can be configured with."""

    store_url: str = DEFAULT_STORE_URL
    project: str = "default"
    thresholds: Thresholds = field(default_factory=Thresholds)
    project_thresholds: Mapping[str, Thresholds] = field(default_factory=dict)
    strict: bool = False
    store_timeout: float = 2.0
    dedup_horizon_days: int = 7
    dedup_max_ids: int = 10_000
    key_prefix: str = "ac"

    def __post_init__(self) -> None:
        if not self.store_timeout > 0:
            raise ConfigurationError(f"store_timeout must be positive, got {self.store_timeout}")
        if self.dedup_horizon_days < MIN_DEDUP_HORIZON_DAYS:
            raise ConfigurationError(
                f"dedup_horizon_days must be at least {MIN_DEDUP_HORIZON_DAYS},"
                f" got {self.dedup_horizon_days}"
            )
        if self.dedup_max_ids < 1:
            raise ConfigurationError(f"dedup_max_ids must be positive, got {self.dedup_max_ids}")
        for project in self.project_thresholds:
            if not PROJECT_ID.fullmatch(project):
                raise ConfigurationError(f"projects: invalid project id {project!r}")
        if not self.key_prefix or any(c in self.key_prefix for c in "{}:% "):
            raise ConfigurationError(
                f"key_prefix must be non-empty without '{{', '}}', ':', '%' or spaces,"
                f" got {self.key_prefix!r}"
            )

    def thresholds_for(self, project: str) -> Thresholds:
        """The thresholds of a project: its override, else the global ones."""
        return self.project_thresholds.get(project, self.thresholds)


_SCALARS: dict[str, type] = {
    "store_url": str,
    "project": str,
    "strict": bool,
    "store_timeout": float,
    "dedup_horizon_days": int,
    "dedup_max_ids": int,
    "key_prefix": str,
}
_THRESHOLD_NAMES = ("repeat", "escalate", "permanent_fix")


def _convert(name: str, raw: object, kind: type) -> Any:
    if isinstance(raw, kind) and not (kind is not bool and isinstance(raw, bool)):
        return raw
    if isinstance(raw, str):
        text = raw.strip()
        try:
            if kind is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if kind is int:
                return int(text)
            if kind is float:
                return float(text)
        except ValueError:
            pass
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    raise ConfigurationError(f"setting {name} must be a {kind.__name__}, got {raw!r}")


def _thresholds(name: str, table: object, base: Thresholds) -> Thresholds:
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"setting {name} must be a table")
    unknown = set(table) - set(_THRESHOLD_NAMES)
    if unknown:
        raise ConfigurationError(f"setting {name} has unknown keys: {', '.join(sorted(unknown))}")
    values = {k: _convert(f"{name}.{k}", v, int) for k, v in table.items()}
    return replace(base, **values)


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from defaults, the TOML file (``ANOMALY_COUNTER_CONFIG`` or the argument), the
    environment, then keyword overrides (flags), each layer winning over the one before."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    thresholds = Thresholds()
    per_project: dict[str, Thresholds] = {}
    path = config_file or env.get(f"{ENV_PREFIX}CONFIG")
    if path:
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"setting config: cannot read {path}: {exc}") from exc
        for key, raw in document.items():
            if key in _SCALARS:
                values[key] = _convert(key, raw, _SCALARS[key])
            elif key == "thresholds":
                thresholds = _thresholds("thresholds", raw, thresholds)
            elif key == "projects" and isinstance(raw, Mapping):
                for project, table in raw.items():
                    sub = table.get("thresholds", {}) if isinstance(table, Mapping) else table
                    per_project[project] = sub
            else:
                raise ConfigurationError(f"unknown setting {key!r} in {path}")
    for key, kind in _SCALARS.items():
        if f"{ENV_PREFIX}{key.upper()}" in env:
            values[key] = _convert(
                f"{ENV_PREFIX}{key.upper()}", env[f"{ENV_PREFIX}{key.upper()}"], kind
            )
    env_thresholds = {
        name: env[f"{ENV_PREFIX}THRESHOLD_{name.upper()}"]
        for name in _THRESHOLD_NAMES
        if f"{ENV_PREFIX}THRESHOLD_{name.upper()}" in env
    }
    if env_thresholds:
        thresholds = _thresholds(f"{ENV_PREFIX}THRESHOLD_*", env_thresholds, thresholds)
    resolved = {
        project: _thresholds(f"projects.{project}.thresholds", table, thresholds)
        for project, table in per_project.items()
    }
    known = {f.name for f in fields(Settings)}
    for key, raw in overrides.items():
        if key not in known:
            raise ConfigurationError(f"unknown setting {key!r}")
        if raw is not None:
            values[key] = raw
    return Settings(thresholds=thresholds, project_thresholds=resolved, **values)
