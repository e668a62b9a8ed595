"""Typed settings from a TOML file and the environment; bad ones fail naming the setting."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

import pytest

from anomaly_counter import AnomalyCounter, ConfigurationError, Settings, Thresholds, load_settings
from anomaly_counter.counter import get_anomaly_counter, reset_anomaly_counter
from anomaly_counter.redact import redacted


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.store_url == "sqlite:///anomaly-counter.db"
    assert settings.thresholds == Thresholds(3, 5, 10)
    assert settings.dedup_horizon_days == 7 and not settings.strict


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "counter.toml"
    config.write_text(
        'store_url = "redis://cache:6379/2"\nstrict = true\n'
        "[thresholds]\nrepeat = 2\nescalate = 6\npermanent_fix = 12\n"
        "[projects.payments.thresholds]\nrepeat = 1\n"
    )
    env = {"ANOMALY_COUNTER_CONFIG": str(config), "ANOMALY_COUNTER_THRESHOLD_ESCALATE": "7"}
    settings = load_settings(environ=env, project="payments")
    assert settings.store_url == "redis://cache:6379/2" and settings.strict
    assert settings.thresholds == Thresholds(2, 7, 12)
    assert settings.thresholds_for("payments") == Thresholds(1, 7, 12)
    assert settings.thresholds_for("other") == Thresholds(2, 7, 12)
    assert settings.project == "payments"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ANOMALY_COUNTER_THRESHOLD_REPEAT": "0"}, "threshold_repeat"),
        ({"ANOMALY_COUNTER_THRESHOLD_REPEAT": "abc"}, "ANOMALY_COUNTER_THRESHOLD_"),
        ({"ANOMALY_COUNTER_THRESHOLD_ESCALATE": "3"}, "strictly increase"),
        ({"ANOMALY_COUNTER_THRESHOLD_PERMANENT_FIX": "4"}, "threshold_permanent_fix"),
        ({"ANOMALY_COUNTER_STRICT": "maybe"}, "ANOMALY_COUNTER_STRICT"),
        ({"ANOMALY_COUNTER_STORE_TIMEOUT": "-1"}, "store_timeout"),
        ({"ANOMALY_COUNTER_DEDUP_HORIZON_DAYS": "3"}, "dedup_horizon_days"),
        ({"ANOMALY_COUNTER_KEY_PREFIX": "a{b}"}, "key_prefix"),
        ({"ANOMALY_COUNTER_CONFIG": "/no/such/file.toml"}, "config"),
    ],
)
def test_invalid_settings_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        load_settings(environ=env)


def test_bad_file_entries(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigurationError, match="colour"):
        load_settings(config)
    config.write_text("[projects.p.thresholds]\nrepeat = 20\n")
    with pytest.raises(ConfigurationError, match="strictly increase"):
        load_settings(config)


def test_unknown_store_scheme_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown scheme 'mongodb'"):
        AnomalyCounter.from_url("mongodb://x")
    with pytest.raises(ConfigurationError, match="store_url"):
        AnomalyCounter.from_url("sqlite://host/x.db")


def test_store_urls_are_shown_without_their_password() -> None:
    """Found by an attacker: `serve` printed the store URL with its password, and errors
    echoed it."""
    assert redacted("redis://:s3cret@db:6379/0") == "redis://:***@db:6379/0"
    assert redacted("redis://app:s3cret@db:6379/0") == "redis://app:***@db:6379/0"
    assert redacted("redis+cluster://u:p@a:1,b:2") == "redis+cluster://u:***@a:1,b:2"
    assert redacted("rediss://s3cret@db/1") == "rediss://***@db/1"
    assert redacted("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(ConfigurationError) as error:
        AnomalyCounter.from_url("mongodb://admin:s3cret@x")
    assert "s3cret" not in str(error.value)


def test_a_redis_database_that_is_not_a_number_is_refused() -> None:
    """Found by a careless user: `redis://host/abc` was taken as database 0, silently."""
    with pytest.raises(ConfigurationError, match="database number"):
        AnomalyCounter.from_url("redis://127.0.0.1:6379/abc")
    AnomalyCounter.from_url("redis://127.0.0.1:6379/3")  # (connects lazily)
    AnomalyCounter.from_url("redis://127.0.0.1:6379")


def test_process_wide_accessor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMALY_COUNTER_STORE_URL", f"sqlite:///{tmp_path}/acc.db")
    monkeypatch.setenv("ANOMALY_COUNTER_PROJECT", "ops")
    monkeypatch.setenv("ANOMALY_COUNTER_THRESHOLD_REPEAT", "2")
    reset_anomaly_counter()
    counter = get_anomaly_counter()
    assert get_anomaly_counter() is counter
    assert counter.project_id == "ops" and counter.THRESHOLDS["REPEAT"] == 2
    reset_anomaly_counter()
    assert get_anomaly_counter() is not counter
    reset_anomaly_counter()


def test_service_settings_channels_and_label_mapping(tmp_path: Path) -> None:
    from anomaly_counter.notify.channels import (
        SlackChannel,
        TelegramChannel,
        WebhookChannel,
        channels_for,
    )
    from anomaly_counter.settings import SlackConfig, TelegramConfig, WebhookConfig

    config = tmp_path / "service.toml"
    config.write_text(
        'public_url = "https://counter.example.net/"\nport = 9000\n'
        'repair_actions = ["restart_pod", "drain_node"]\n'
        '[alertmanager.labels]\nservice = ["app", "job"]\n'
        '[projects.payments.notify]\ntelegram = { bot_token = "1:a", chat_id = "-5" }\n'
        'slack = { webhook_url = "https://hooks.slack.com/x" }\n'
        '[[projects.payments.notify.webhook]]\nurl = "https://a.example/h"\nsecret = "s"\n'
        '[[projects.payments.notify.webhook]]\nurl = "https://b.example/h"\n'
    )
    env = {"ANOMALY_COUNTER_TELEGRAM_API_URL": "http://127.0.0.1:1", "ANOMALY_COUNTER_HOST": "::"}
    settings = load_settings(config, environ=env)
    assert settings.base_url == "https://counter.example.net" and settings.port == 9000
    assert settings.host == "::" and settings.repair_actions == ("restart_pod", "drain_node")
    assert settings.alert_labels.service == ("app", "job")
    assert settings.alert_labels.alert_name == ("alertname",)
    assert settings.project_channels["payments"] == (  # plain data in the settings...
        TelegramConfig("1:a", "-5"),
        SlackConfig("https://hooks.slack.com/x"),
        WebhookConfig("https://a.example/h", "s"),
        WebhookConfig("https://b.example/h"),
    )
    assert channels_for(settings, "payments") == (  # ...of which notify makes its channels
        TelegramChannel("1:a", "-5", api_url="http://127.0.0.1:1"),
        SlackChannel("https://hooks.slack.com/x"),
        WebhookChannel("https://a.example/h", "s"),
        WebhookChannel("https://b.example/h"),
    )
    assert channels_for(settings, "other") == ()
    assert load_settings(environ={}).base_url == "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[projects.p.notify]\npager = { url = "x" }\n', "projects.p.notify.pager"),
        ('[projects.p.notify]\nslack = { url = "x" }\n', "needs webhook_url"),
        ('[projects.p.notify]\nwebhook = { url = "x", token = "y" }\n', "unknown keys: token"),
        ("[projects.p]\nnotfy = {}\n", "projects.p has unknown keys: notfy"),
        ('[alertmanager.labels]\nteam = ["x"]\n', "alertmanager.labels has unknown keys"),
        ("[alertmanager.labels]\nservice = []\n", "alertmanager.labels.service"),
        ("port = 70000\n", "port"),
        ("notify_attempts = -1\n", "notify_attempts"),
        ("notify_dead_after = 0\n", "notify_dead_after"),
        ("outbox_max = 0\n", "outbox_max"),
        ("notify_poll = 20\n", "notify_poll"),
        ("verify_window_minutes = inf\n", "verify_window_minutes"),
        ("[verify_windows]\nrollback = 0\n", "verify_windows.rollback"),
        ("min_replicas = -1\n", "min_replicas"),
        ("write_attempts = 0\n", "write_attempts"),
        ('[projects."bad id"]\nnotify = {}\n', "invalid project id"),
    ],
)
def test_bad_service_settings_name_the_setting(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigurationError, match=named.replace(".", r"\.")):
        load_settings(config, environ={})


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:26379",  # no master name
        "redis+sentinel:///mymaster",  # no sentinels
        "redis+sentinel://127.0.0.1/mymaster",  # no port
        "redis+sentinel://127.0.0.1:26379/mymaster/0/extra",
    ],
)
def test_bad_sentinel_urls_are_configuration_errors(url: str) -> None:
    from anomaly_counter import Settings
    from anomaly_counter.stores.base import store_from_url

    with pytest.raises(ConfigurationError, match="store_url"):
        store_from_url(url, Settings(store_url=url))


def test_settings_import_nothing_of_notify() -> None:
    """Settings are plain data: notify builds on them, never the other way round."""
    code = (
        "import sys, anomaly_counter.settings\n"
        "assert not [m for m in sys.modules if m.startswith('anomaly_counter.notify')], "
        "sorted(m for m in sys.modules if m.startswith('anomaly_counter.notify'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


_TABLES = {  # the fields set by TOML tables or lists, not by a scalar key or variable
    "project_verify_windows",
    "episodes",
    "project_episodes",
    "verify_windows",
    "thresholds",
    "project_thresholds",
    "limits",
    "project_limits",
    "alert_labels",
    "repair_actions",
    "project_channels",
}


def _other_value(default: object) -> object:
    """A valid value of a scalar setting other than its default."""
    if isinstance(default, bool):
        return not default
    if isinstance(default, str):
        return f"{default}x"
    assert isinstance(default, int | float)
    return default * 2 if default else type(default)(1)


def _text(value: object, toml: bool) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if toml else str(value)


def test_every_scalar_setting_comes_from_the_environment_and_the_file(tmp_path: Path) -> None:
    """A new setting is one field: no list of settings to add it to as well."""
    hints = get_type_hints(Settings)
    defaults = Settings()
    scalars = [f.name for f in fields(Settings) if f.name not in _TABLES]
    assert len(scalars) >= 29
    for name in scalars:
        kind = hints[name]
        assert kind in (str, int, float, bool), f"{name}: {kind} cannot come from TOML or env"
        value = _other_value(getattr(defaults, name))
        env = {f"ANOMALY_COUNTER_{name.upper()}": _text(value, toml=False)}
        assert getattr(load_settings(environ=env), name) == value, name
        config = tmp_path / f"{name}.toml"
        config.write_text(f"{name} = {_text(value, toml=True)}\n")
        assert getattr(load_settings(config, environ={}), name) == value, name


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ANOMALY_COUNTER_PORT": "80a"}, "setting ANOMALY_COUNTER_PORT must be a int, got '80a'"),
        ({"ANOMALY_COUNTER_NOTIFY_BACKOFF": "x"}, "must be a float, got 'x'"),
        ({"ANOMALY_COUNTER_START_ON_SPOOL": "2"}, "must be a bool, got '2'"),
        ({"ANOMALY_COUNTER_LIMIT_BURST": "1.5"}, "LIMIT_*.burst must be a int, got '1.5'"),
    ],
)
def test_a_value_of_the_wrong_kind_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        load_settings(environ=env)
    assert message in str(error.value)


def test_each_concern_checks_its_own_settings() -> None:
    from anomaly_counter.notify.channels import TelegramChannel
    from anomaly_counter.settings import CoreSettings, NotifySettings, ServiceSettings

    settings = Settings(store_url="sqlite:///x.db", port=9000, notify_attempts=2)
    assert all(isinstance(settings, c) for c in (CoreSettings, ServiceSettings, NotifySettings))
    assert (settings.store_url, settings.port, settings.notify_attempts) == (
        "sqlite:///x.db",
        9000,
        2,
    )
    for concern, bad in [
        (CoreSettings, {"store_timeout": 0}),
        (ServiceSettings, {"port": 0}),
        (NotifySettings, {"notify_timeout": 0}),
    ]:
        name = next(iter(bad))
        with pytest.raises(ConfigurationError, match=name):
            concern(**bad)
        with pytest.raises(ConfigurationError, match=name):
            Settings(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="TelegramConfig, SlackConfig, WebhookConfig"):
        Settings(project_channels={"p": (TelegramChannel("1:a", "-5"),)})  # type: ignore[dict-item]


def test_verification_windows_by_project_and_action(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(
        "verify_window_minutes = 20\n[verify_windows]\nrollback = 120\n"
        '[projects.payments.verify_windows]\n"*" = 45\nscale_up = 5\n'
    )
    settings = load_settings(config, environ={})
    assert settings.verify_window_minutes_for("payments", "scale_up") == 5
    assert settings.verify_window_minutes_for("payments", "restart_pod") == 45
    assert settings.verify_window_minutes_for("payments", "rollback") == 45  # (its own default)
    assert settings.verify_window_minutes_for("search", "rollback") == 120
    assert settings.verify_window_minutes_for("search", "restart_pod") == 20
    bad = tmp_path / "bad.toml"
    bad.write_text("[projects.payments.verify_windows]\nscale_up = -1\n")
    with pytest.raises(ConfigurationError, match=r"projects\.payments\.verify_windows\.scale_up"):
        load_settings(bad, environ={})
