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
    [projects.payments.notify]       # where the project's notices go (any of the three)
    telegram = { bot_token = "123:abc", chat_id = "-100200300" }
    slack = { webhook_url = "https://hooks.slack.com/services/T/B/X" }
    webhook = { url = "https://example.net/hook", secret = "s3cret" }
    [alertmanager.labels]            # which labels fill the four fingerprint fields
    service = ["app", "service", "job"]   # the first label present wins

The service's own settings (``host``, ``port``, ``public_url``, ...) are scalars like
``store_url``; every scalar can also come from ``ANOMALY_COUNTER_<NAME>``.

Three concerns, each a dataclass with its own checks: ``CoreSettings`` (the library),
``ServiceSettings`` (the HTTP service) and ``NotifySettings`` (notices). ``Settings`` is all three
at once, flat: ``Settings(store_url=..., port=..., notify_attempts=...)``, ``settings.port``. The
scalars that TOML keys and variables may set are read off the dataclasses' fields, so a new
setting is one field. Channels are plain data here (``TelegramConfig``, ...); ``notify`` makes
the channels that send (``notify.channels.channels_for``), and nothing here imports it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, TypeAlias, TypeVar, get_type_hints

from .episodes import EpisodeRules
from .errors import ConfigurationError
from .limits import Limits
from .policy import Thresholds
from .validation import PROJECT_ID

ENV_PREFIX = "ANOMALY_COUNTER_"
DEFAULT_STORE_URL = "sqlite:///anomaly-counter.db"
MIN_DEDUP_HORIZON_DAYS = 7
DEFAULT_TELEGRAM_API_URL = "https://api.telegram.org"


@dataclass(frozen=True, slots=True)
class AlertLabels:
    """The Alertmanager labels that fill each fingerprint field, first present wins."""

    alert_name: tuple[str, ...] = ("alertname",)
    service: tuple[str, ...] = ("service", "job")
    namespace: tuple[str, ...] = ("namespace",)
    error_type: tuple[str, ...] = ("reason", "error_type")

    def fields(self) -> dict[str, tuple[str, ...]]:
        return {
            "alert_name": self.alert_name,
            "service": self.service,
            "namespace": self.namespace,
            "error_type": self.error_type,
        }


class _Concern:
    """The root of the settings classes. Each concern's ``__post_init__`` calls on to the next
    (``super()``) and checks its own fields, so ``Settings``, made of all three, checks them all."""

    def __post_init__(self) -> None:
        pass


def _check_projects(projects: Iterable[str]) -> None:
    for project in projects:
        if not PROJECT_ID.fullmatch(project):
            raise ConfigurationError(f"projects: invalid project id {project!r}")


_LONGEST_WINDOW_MINUTES = 30 * 24 * 60  # a repair's verification window (the figures' retention)


def _check_positive(settings: object, *names: str) -> None:
    for name in names:
        if not getattr(settings, name) > 0:
            raise ConfigurationError(f"{name} must be positive, got {getattr(settings, name)}")


@dataclass(frozen=True)
class CoreSettings(_Concern):
    """The library's settings: the store, the counting rules, and what the counter keeps."""

    store_url: str = DEFAULT_STORE_URL
    project: str = "default"
    thresholds: Thresholds = field(default_factory=Thresholds)
    project_thresholds: Mapping[str, Thresholds] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    project_limits: Mapping[str, Limits] = field(default_factory=dict)
    strict: bool = False
    store_timeout: float = 2.0
    write_attempts: int = 3  # repairs, dispositions, fixes: tries while the store is away
    min_replicas: int = 0  # Redis: replicas that must have an occurrence before it is counted
    dedup_horizon_days: int = 7
    dedup_max_ids: int = 10_000  # ids callers give, remembered per anomaly (write_marks.py)
    key_prefix: str = "ac"
    alert_labels: AlertLabels = field(default_factory=AlertLabels)
    repair_actions: tuple[str, ...] = ("restart_pod", "scale_up", "rollback")
    # repairs judged by what happened next (verification.py): a recurrence within the window
    # after a repair fails it; the verified rate decides once an action has enough settled
    verify_repairs: bool = True
    verify_window_minutes: float = 30.0
    verify_windows: Mapping[str, float] = field(default_factory=dict)  # by action, in minutes
    # a project's own: by action, and "*" for its default ([projects.<id>.verify_windows])
    project_verify_windows: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    verify_min_settled: int = 3
    # Alertmanager episodes: incidents rather than instances, and flapping (episodes.py)
    episodes: EpisodeRules = field(default_factory=EpisodeRules)
    project_episodes: Mapping[str, EpisodeRules] = field(default_factory=dict)
    # the durable spool ("" : none)
    spool_dir: str = ""
    spool_max_bytes: int = 268_435_456
    spool_project_share: float = 0.5  # of the spool's room, the most one project's backlog takes

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive(self, "store_timeout")
        if self.dedup_horizon_days < MIN_DEDUP_HORIZON_DAYS:
            raise ConfigurationError(
                f"dedup_horizon_days must be at least {MIN_DEDUP_HORIZON_DAYS},"
                f" got {self.dedup_horizon_days}"
            )
        _check_positive(self, "dedup_max_ids", "write_attempts", "verify_window_minutes")
        _check_positive(self, "verify_min_settled")
        windows = {"verify_window_minutes": self.verify_window_minutes, **{
            f"verify_windows.{action}": minutes for action, minutes in self.verify_windows.items()
        }, **{
            f"projects.{project}.verify_windows.{action}": minutes
            for project, table in self.project_verify_windows.items()
            for action, minutes in table.items()
        }}  # fmt: skip
        for name, minutes in windows.items():
            if (
                isinstance(minutes, bool)
                or not isinstance(minutes, int | float)
                or not 0 < minutes <= _LONGEST_WINDOW_MINUTES
            ):
                raise ConfigurationError(
                    f"{name} must be a number of minutes above 0 and at most 30 days,"
                    f" got {minutes!r}"
                )
        _check_projects((*self.project_thresholds, *self.project_limits))
        _check_projects(self.project_verify_windows)
        _check_projects(self.project_episodes)
        if not 0 < self.spool_project_share <= 1:
            raise ConfigurationError(
                f"spool_project_share must be above 0 and at most 1, got {self.spool_project_share}"
            )
        if self.min_replicas < 0:
            raise ConfigurationError(f"min_replicas must not be negative, got {self.min_replicas}")
        if not self.key_prefix or any(c in self.key_prefix for c in "{}:% "):
            raise ConfigurationError(
                f"key_prefix must be non-empty without '{{', '}}', ':', '%' or spaces,"
                f" got {self.key_prefix!r}"
            )

    def thresholds_for(self, project: str) -> Thresholds:
        """The thresholds of a project: its override, else the global ones."""
        return self.project_thresholds.get(project, self.thresholds)

    def limits_for(self, project: str) -> Limits:
        """The limits of a project: its override, else the global ones."""
        return self.project_limits.get(project, self.limits)

    def episodes_for(self, project: str) -> EpisodeRules:
        """How a project's episodes count and flap: its own table, else the global one."""
        return self.project_episodes.get(project, self.episodes)

    def verify_window_minutes_for(self, project: str, action: str) -> float:
        """How long a repair is watched: the project's window for the action, its default
        ("*"), the global window for the action, or ``verify_window_minutes``."""
        own = self.project_verify_windows.get(project, {})
        for table, name in ((own, action), (own, "*"), (self.verify_windows, action)):
            if name in table:
                return float(table[name])
        return self.verify_window_minutes


@dataclass(frozen=True)
class ServiceSettings(_Concern):
    """The HTTP service's settings (``anomaly-counter serve``)."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""  # the base of links in notices (default: http://host:port)
    max_body_bytes: int = 1_048_576
    max_alertmanager_body_bytes: int = 33_554_432  # a large alert group must not be refused
    header_timeout: float = 10.0  # seconds for a request's line and headers to arrive
    body_timeout: float = 30.0  # seconds for its whole body
    keep_alive_timeout: float = 5.0  # seconds an idle connection stays open
    max_header_bytes: int = 65_536  # request line and headers together
    max_headers: int = 100
    max_concurrent_requests: int = 1_000  # in this process; past it, 503 and Retry-After
    start_on_spool: bool = False  # serve: start although the store was never reached
    auth_stale_seconds: float = 86_400.0  # a known token's answer kept while the store errs
    sweep_seconds: float = 30.0  # how often quiet flapping anomalies are looked at again

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.port < 65536:
            raise ConfigurationError(f"port must be from 1 to 65535, got {self.port}")
        if self.max_body_bytes < 1024:
            raise ConfigurationError(
                f"max_body_bytes must be at least 1024, got {self.max_body_bytes}"
            )
        _check_positive(self, "header_timeout", "body_timeout", "keep_alive_timeout")
        if self.max_header_bytes < 4096:
            raise ConfigurationError(
                f"max_header_bytes must be at least 4096, got {self.max_header_bytes}"
            )
        _check_positive(self, "max_headers", "max_concurrent_requests", "sweep_seconds")
        if self.auth_stale_seconds < 0:
            raise ConfigurationError(
                f"auth_stale_seconds must not be negative, got {self.auth_stale_seconds}"
            )

    @property
    def base_url(self) -> str:
        """Where the service is reached, for links: ``public_url`` or http://host:port."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


@dataclass(frozen=True, slots=True)
class TelegramConfig:
    """``telegram = { bot_token, chat_id }``: Bot API ``sendMessage`` to one chat."""

    kind: ClassVar[str] = "telegram"
    bot_token: str
    chat_id: str
    api_url: str = ""  # "" : the settings' telegram_api_url


@dataclass(frozen=True, slots=True)
class SlackConfig:
    """``slack = { webhook_url }``: a Slack incoming webhook."""

    kind: ClassVar[str] = "slack"
    webhook_url: str


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """``webhook = { url, secret }``: a JSON webhook, signed when it has a secret."""

    kind: ClassVar[str] = "webhook"
    url: str
    secret: str = ""


ChannelConfig: TypeAlias = TelegramConfig | SlackConfig | WebhookConfig
"""Where a project's notices go, as settings (``notify`` makes the channels that send them)."""
_CHANNEL_CONFIGS: dict[str, type[ChannelConfig]] = {
    c.kind: c for c in (TelegramConfig, SlackConfig, WebhookConfig)
}


@dataclass(frozen=True)
class NotifySettings(_Concern):
    """The settings of notices: each project's channels, and how they are sent."""

    project_channels: Mapping[str, tuple[ChannelConfig, ...]] = field(default_factory=dict)
    telegram_api_url: str = DEFAULT_TELEGRAM_API_URL
    notify_attempts: int = 0  # failed tries before a notice is a dead letter (0: no bound
    # but notify_dead_after)
    notify_backoff: float = 0.5  # seconds before the first retry; doubles, with jitter
    notify_max_pause: float = 60.0  # the longest pause between tries (and Retry-After's cap)
    notify_timeout: float = 5.0
    notify_dead_after: float = 86_400.0  # seconds of failed tries before a dead letter
    notify_lease: float = 30.0  # a deliverer's hold on an outbox partition, renewed while alive
    notify_poll: float = 1.0  # how often an idle deliverer looks for notices (those of its own
    # process's writes are sent at once)
    outbox_max: int = 10_000  # notices a project's outbox holds at most (and dead letters)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive(
            self, "notify_backoff", "notify_max_pause", "notify_timeout", "notify_dead_after",
            "notify_lease", "notify_poll", "outbox_max",
        )  # fmt: skip
        if self.notify_poll * 2 >= self.notify_lease:
            raise ConfigurationError(
                f"notify_poll ({self.notify_poll}) must be under half of notify_lease"
                f" ({self.notify_lease}): a deliverer renews its leases at each poll"
            )
        if self.notify_attempts < 0:
            raise ConfigurationError(
                f"notify_attempts must be 0 or more, got {self.notify_attempts}"
            )
        _check_projects(self.project_channels)
        for project, configs in self.project_channels.items():
            for config in configs:
                if not isinstance(config, ChannelConfig):
                    raise ConfigurationError(
                        f"project_channels[{project!r}] must hold"
                        f" {', '.join(c.__name__ for c in _CHANNEL_CONFIGS.values())},"
                        f" got {type(config).__name__}"
                    )


@dataclass(frozen=True)
class Settings(NotifySettings, ServiceSettings, CoreSettings):
    """Everything the counter can be configured with: the three concerns' fields, flat."""


def _scalar_kinds(cls: type[Any]) -> Mapping[str, type]:
    """The scalar fields (str, int, float, bool) of a settings dataclass and their types: what
    a TOML key or an ``ANOMALY_COUNTER_*`` variable may set."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if hints[f.name] in (str, int, float, bool)}


_SCALARS = _scalar_kinds(Settings)
_THRESHOLDS = _scalar_kinds(Thresholds)
_LIMITS = _scalar_kinds(Limits)
_EPISODES = _scalar_kinds(EpisodeRules)
_Table = TypeVar("_Table", Thresholds, Limits, EpisodeRules)


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


def _overlay(name: str, table: object, base: _Table, kinds: Mapping[str, type]) -> _Table:
    """``base`` with the values of a settings table (each checked against its kind)."""
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"setting {name} must be a table")
    unknown = set(table) - set(kinds)
    if unknown:
        raise ConfigurationError(f"setting {name} has unknown keys: {', '.join(sorted(unknown))}")
    values = {k: _convert(f"{name}.{k}", v, kinds[k]) for k, v in table.items()}
    return replace(base, **values)


def _thresholds(name: str, table: object, base: Thresholds) -> Thresholds:
    return _overlay(name, table, base, _THRESHOLDS)


def _limits(name: str, table: object, base: Limits) -> Limits:
    return _overlay(name, table, base, _LIMITS)


def _from_env(env: Mapping[str, str], prefix: str, names: Iterable[str]) -> dict[str, str]:
    """The values of ``<prefix><NAME>`` variables that are set, by name."""
    return {n: env[f"{prefix}{n.upper()}"] for n in names if f"{prefix}{n.upper()}" in env}


def _names(name: str, raw: object) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) and x for x in raw):
        raise ConfigurationError(f"setting {name} must be a non-empty list of names")
    return tuple(raw)


def _alert_labels(raw: object) -> AlertLabels:
    if not isinstance(raw, Mapping) or set(raw) - {"labels"}:
        raise ConfigurationError(
            "setting alertmanager must hold only a [alertmanager.labels] table"
        )
    table = raw.get("labels", {})
    if not isinstance(table, Mapping):
        raise ConfigurationError("setting alertmanager.labels must be a table")
    known = AlertLabels().fields()
    unknown = set(table) - set(known)
    if unknown:
        raise ConfigurationError(
            f"setting alertmanager.labels has unknown keys: {', '.join(sorted(unknown))}"
            f" (known: {', '.join(known)})"
        )
    return AlertLabels(
        **{field_: _names(f"alertmanager.labels.{field_}", v) for field_, v in table.items()}
    )


def _channels(name: str, table: object) -> tuple[ChannelConfig, ...]:
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"setting {name} must be a table")
    channels: list[ChannelConfig] = []
    for kind, entries in table.items():
        config = _CHANNEL_CONFIGS.get(kind)
        if config is None:
            raise ConfigurationError(
                f"setting {name}.{kind}: unknown channel (known: {', '.join(_CHANNEL_CONFIGS)})"
            )
        keys = _scalar_kinds(config)  # (the keys a channel's table may have: its fields)
        required = {
            f.name for f in fields(config) if f.default is MISSING and f.default_factory is MISSING
        }
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, Mapping):
                raise ConfigurationError(f"setting {name}.{kind} must be a table")
            missing, unknown = required - set(entry), set(entry) - set(keys)
            if missing or unknown:
                raise ConfigurationError(
                    f"setting {name}.{kind} needs {', '.join(sorted(required))}"
                    + (f"; unknown keys: {', '.join(sorted(unknown))}" if unknown else "")
                )
            values = {k: _convert(f"{name}.{kind}.{k}", v, keys[k]) for k, v in entry.items()}
            channels.append(config(**values))
    return tuple(channels)


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
    limits = Limits()
    per_project: dict[str, Any] = {}
    per_project_limits: dict[str, Any] = {}
    episodes = EpisodeRules()
    per_project_episodes: dict[str, Any] = {}
    notify: dict[str, Any] = {}
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
            elif key == "limits":
                limits = _limits("limits", raw, limits)
            elif key == "episodes":
                episodes = _overlay("episodes", raw, episodes, _EPISODES)
            elif key == "projects" and isinstance(raw, Mapping):
                for project, table in raw.items():
                    if not isinstance(table, Mapping):
                        raise ConfigurationError(f"setting projects.{project} must be a table")
                    unknown = set(table) - {
                        "thresholds",
                        "limits",
                        "notify",
                        "verify_windows",
                        "episodes",
                    }
                    if unknown:
                        raise ConfigurationError(
                            f"setting projects.{project} has unknown keys:"
                            f" {', '.join(sorted(unknown))}"
                        )
                    if "thresholds" in table:
                        per_project[project] = table["thresholds"]
                    if "limits" in table:
                        per_project_limits[project] = table["limits"]
                    if "notify" in table:
                        notify[project] = table["notify"]
                    if "episodes" in table:
                        per_project_episodes[project] = table["episodes"]
                    if "verify_windows" in table:
                        windows = table["verify_windows"]
                        if not isinstance(windows, Mapping):
                            raise ConfigurationError(
                                f"setting projects.{project}.verify_windows must be a table"
                            )
                        values.setdefault("project_verify_windows", {})[project] = dict(windows)
            elif key == "alertmanager":
                values["alert_labels"] = _alert_labels(raw)
            elif key == "repair_actions":
                values["repair_actions"] = _names("repair_actions", raw)
            elif key == "verify_windows":
                if not isinstance(raw, Mapping):
                    raise ConfigurationError("setting verify_windows must be a table")
                values["verify_windows"] = dict(raw)
            else:
                raise ConfigurationError(f"unknown setting {key!r} in {path}")
    for key, kind in _SCALARS.items():
        if f"{ENV_PREFIX}{key.upper()}" in env:
            values[key] = _convert(
                f"{ENV_PREFIX}{key.upper()}", env[f"{ENV_PREFIX}{key.upper()}"], kind
            )
    env_thresholds = _from_env(env, f"{ENV_PREFIX}THRESHOLD_", _THRESHOLDS)
    if env_thresholds:
        thresholds = _thresholds(f"{ENV_PREFIX}THRESHOLD_*", env_thresholds, thresholds)
    env_limits = _from_env(env, f"{ENV_PREFIX}LIMIT_", _LIMITS)
    if env_limits:
        limits = _limits(f"{ENV_PREFIX}LIMIT_*", env_limits, limits)
    resolved = {
        project: _thresholds(f"projects.{project}.thresholds", table, thresholds)
        for project, table in per_project.items()
    }
    values["project_limits"] = {
        project: _limits(f"projects.{project}.limits", table, limits)
        for project, table in per_project_limits.items()
    }
    values["project_episodes"] = {
        project: _overlay(f"projects.{project}.episodes", table, episodes, _EPISODES)
        for project, table in per_project_episodes.items()
    }
    if notify:
        values["project_channels"] = {
            project: _channels(f"projects.{project}.notify", table)
            for project, table in notify.items()
        }
    known = {f.name for f in fields(Settings)}
    for key, raw in overrides.items():
        if key not in known:
            raise ConfigurationError(f"unknown setting {key!r}")
        if raw is not None:
            values[key] = raw
    return Settings(
        thresholds=thresholds,
        project_thresholds=resolved,
        limits=limits,
        episodes=values.pop("episodes", episodes),
        **values,
    )
