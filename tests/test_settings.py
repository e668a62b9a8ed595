"""Typed settings from a TOML file and the environment; bad ones fail naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_counter import AnomalyCounter, ConfigurationError, Thresholds, load_settings
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
    from anomaly_counter.notify.channels import SlackChannel, TelegramChannel, WebhookChannel

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
    assert settings.channels_for("payments") == (
        TelegramChannel("1:a", "-5", api_url="http://127.0.0.1:1"),
        SlackChannel("https://hooks.slack.com/x"),
        WebhookChannel("https://a.example/h", "s"),
        WebhookChannel("https://b.example/h"),
    )
    assert settings.channels_for("other") == ()
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
        ("notify_attempts = 0\n", "notify_attempts"),
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
