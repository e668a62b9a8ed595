"""Notices: one per crossing and per regression, on Telegram, Slack and a signed webhook, sent
in the background with retries, to a real local HTTP server standing in for the chat APIs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from anomaly_counter import AnomalyCounter, Settings
from anomaly_counter.notify.channels import IDEMPOTENCY_HEADER, SIGNATURE_HEADER
from anomaly_counter.settings import SlackConfig, TelegramConfig, WebhookConfig

from .conftest import SIG
from .servers import ChatServer, ServiceServer, eventually

KEY = AnomalyCounter.hash_signature(SIG)
SECRET = "s3cret"


@pytest.fixture
def chat() -> Iterator[ChatServer]:
    server = ChatServer()
    yield server
    server.close()


def _settings(store_url: str, chat: ChatServer, **options: object) -> Settings:
    channels = (
        TelegramConfig("123:abc", "-100"),
        SlackConfig(f"{chat.url}/slack/T1/B1/X"),
        WebhookConfig(f"{chat.url}/hook", SECRET),
    )
    return Settings(
        store_url=store_url,
        project_channels={"team-a": channels},
        telegram_api_url=chat.url,
        notify_backoff=0.01,
        public_url="https://counter.example.net",
        **options,  # type: ignore[arg-type]
    )


def test_channels_are_made_from_the_settings() -> None:
    from anomaly_counter.notify.channels import (
        SlackChannel,
        TelegramChannel,
        WebhookChannel,
        channels_for,
    )

    settings = Settings(
        project_channels={
            "team-a": (
                TelegramConfig("1:a", "-5"),
                TelegramConfig("2:b", "-6", api_url="http://proxy"),
                SlackConfig("https://hooks.slack.com/x"),
                WebhookConfig("https://a.example/h", SECRET),
            )
        },
        telegram_api_url="http://local",
    )
    assert channels_for(settings, "team-a") == (
        TelegramChannel("1:a", "-5", api_url="http://local"),  # the settings' telegram_api_url
        TelegramChannel("2:b", "-6", api_url="http://proxy"),  # unless the channel has its own
        SlackChannel("https://hooks.slack.com/x"),
        WebhookChannel("https://a.example/h", SECRET),
    )
    assert channels_for(settings, "team-b") == ()
    assert channels_for(Settings(), "team-a") == ()


async def _record(server: ServiceServer, token: str, n: int, signature: dict = SIG) -> None:  # type: ignore[type-arg]
    async with server.client(token) as http:
        for _ in range(n):
            r = await http.post("/v1/projects/team-a/occurrences", json={"signature": signature})
            assert r.status_code == 200, r.text


async def test_one_notice_per_crossing_on_every_channel(store_url: str, chat: ChatServer) -> None:
    with ServiceServer(_settings(store_url, chat)) as server:
        token = server.token("team-a")
        await _record(server, token, 1)
        async with server.client(token) as http:
            r = await http.post(
                f"/v1/projects/team-a/anomalies/{KEY}/repairs",
                json={"action": "restart_pod", "success": False},
            )
            assert r.status_code == 200, r.text
        await _record(server, token, 11)
        received = chat.wait_for(9)
        await asyncio.sleep(0.3)  # nothing more comes
        assert len(chat.received) == 9  # REPEAT, ESCALATE, PERMANENT_FIX x 3 channels
        async with server.client() as http:
            metrics = (await http.get("/metrics")).text
        async with server.client(token) as http:  # each notice is in the anomaly's story
            for _ in range(50):  # written once each delivery is answered
                story = (await http.get(f"/v1/projects/team-a/anomalies/{KEY}/timeline")).json()
                notices = [e for e in story["entries"] if e["kind"] == "notice"]
                if len(notices) >= 9:
                    break
                await asyncio.sleep(0.1)
        assert sorted((e["channel"], e["outcome"]) for e in notices) == sorted(
            [(c, "sent") for c in ("telegram", "slack", "webhook")] * 3
        )
    telegram = [r for r in received if r.path == "/bot123:abc/sendMessage"]
    slack = [r for r in received if r.path == "/slack/T1/B1/X"]
    hooks = [r for r in received if r.path == "/hook"]
    assert len(telegram) == len(slack) == len(hooks) == 3
    assert [h.json()["level"] for h in hooks] == ["REPEAT", "ESCALATE", "PERMANENT_FIX"]
    first = hooks[0].json()
    assert first["alert_name"] == "PodCrashLoopBackOff" and first["service"] == "api"
    assert first["namespace"] == "prod" and first["counts"]["24h"] == 3
    assert first["link"] == f"https://counter.example.net/projects/team-a/anomalies/{KEY}"
    assert first["api_link"] == f"https://counter.example.net/v1/projects/team-a/anomalies/{KEY}"
    assert first["repairs"]["restart_pod"]["total"] == 1
    assert first["recommended"]["action"] != "restart_pod"  # it failed: try another first
    assert "recurring" in first["meaning"]
    assert len({h.headers[IDEMPOTENCY_HEADER] for h in hooks}) == 3  # one id per notice
    for hook in hooks:
        assert hook.headers[IDEMPOTENCY_HEADER] == hook.json()["notice_id"]  # (signed too)
        t, v1 = (part.split("=", 1)[1] for part in hook.headers[SIGNATURE_HEADER].split(","))
        mac = hmac.new(SECRET.encode(), f"{t}.".encode() + hook.body, hashlib.sha256)
        assert hmac.compare_digest(v1, mac.hexdigest())
    message = telegram[0].json()
    assert message["chat_id"] == "-100" and message["parse_mode"] == "HTML"
    assert "<b>REPEAT: PodCrashLoopBackOff</b>" in message["text"]
    assert "restart_pod 0/1 (0%)" in message["text"]
    assert "*REPEAT: PodCrashLoopBackOff*" in slack[0].json()["text"]
    assert 'anomaly_counter_notifications_total{channel="webhook",outcome="sent"} 3.0' in metrics


async def test_a_regression_after_a_fix_is_told_once(store_url: str, chat: ChatServer) -> None:
    settings = _settings(store_url, chat)
    settings = Settings(
        store_url=store_url,
        project_channels={"team-a": (settings.project_channels["team-a"][2],)},
        notify_backoff=0.01,
    )
    with ServiceServer(settings) as server:
        token = server.token("team-a")
        await _record(server, token, 1)
        async with server.client(token) as http:
            r = await http.post(
                f"/v1/projects/team-a/anomalies/{KEY}/fix", json={"description": "fixed"}
            )
            assert r.status_code == 200
        await _record(server, token, 2)  # regressed twice (told once); the second is a REPEAT
        received = chat.wait_for(2)
        await asyncio.sleep(0.3)
    assert sorted(r.json()["kind"] for r in chat.received) == ["escalation", "regression"]
    regression = next(r.json() for r in received if r.json()["kind"] == "regression")
    assert "did not hold" in regression["meaning"]


async def test_a_notice_failing_once_is_sent_once_with_one_key(
    store_url: str, chat: ChatServer
) -> None:
    settings = Settings(
        store_url=store_url,
        project_channels={"team-a": (WebhookConfig(f"{chat.url}/flaky"),)},
        notify_backoff=0.01,
    )
    chat.plan = [500]  # the first try fails, the second gets through
    with ServiceServer(settings) as server:
        await _record(server, server.token("team-a"), 3)
        tries = chat.wait_for(2)
        await asyncio.sleep(0.5)  # nothing more comes

        async def counted() -> str | None:
            async with server.client() as http:
                text = (await http.get("/metrics")).text
            return text if 'outcome="sent"} 1.0' in text else None

        metrics = await eventually(counted)
    assert len(chat.received) == 2
    keys = [t.headers[IDEMPOTENCY_HEADER] for t in tries]
    assert keys[0] == keys[1] == tries[1].json()["notice_id"]  # the same key on both tries
    assert 'anomaly_counter_notifications_total{channel="webhook",outcome="failed"} 1.0' in metrics


async def test_retry_after_is_honoured(store_url: str, chat: ChatServer) -> None:
    settings = Settings(
        store_url=store_url,
        project_channels={"team-a": (WebhookConfig(f"{chat.url}/busy"),)},
        notify_backoff=0.01,  # (its own pauses would be a few ms)
    )
    chat.plan, chat.retry_after = [429], "2"
    with ServiceServer(settings) as server:
        await _record(server, server.token("team-a"), 3)
        tries = chat.wait_for(2)
    assert [t.status for t in tries] == [429, 200]
    assert 1.9 <= tries[1].at - tries[0].at < 4.0


async def test_a_notice_refused_for_good_is_a_dead_letter_and_retried(
    store_url: str, chat: ChatServer, tmp_path: Path
) -> None:
    settings = Settings(
        store_url=store_url,
        project_channels={"team-a": (WebhookConfig(f"{chat.url}/hook"),)},
        notify_backoff=0.01,
    )
    chat.plan = [400]  # wrong, and would stay wrong: no second try
    with ServiceServer(settings) as server:
        token = server.token("team-a")
        await _record(server, token, 3)

        async def dead() -> dict | None:  # type: ignore[type-arg]
            async with server.client(token) as http:
                body = (await http.get("/v1/projects/team-a/notices/dead")).json()
            return body if body["letters"] else None

        listed = await eventually(dead)
        assert listed is not None and len(chat.received) == 1
        (letter,) = listed["letters"]
        assert letter["error"] == "HTTP 400" and letter["attempts"] == 1
        assert letter["kind"] == "escalation" and letter["level"] == "REPEAT"
        outbox = {"depth": 0, "oldest": None, "overflowed": 0, "dead": 1, "dead_overflowed": 0}
        assert listed["outbox"] == outbox
        async with server.client() as http:
            text = (await http.get("/metrics")).text
        assert 'anomaly_counter_notifications_total{channel="webhook",outcome="dead"} 1.0' in text
        # the receiver is mended; a person sends it again from the command line
        config = tmp_path / "settings.toml"
        config.write_text(  # (the same channels as the service: retries go to channels known)
            f'store_url = "{store_url}"\n'
            f'[projects.team-a.notify]\nwebhook = {{ url = "{chat.url}/hook" }}\n'
        )
        cli = [sys.executable, "-m", "anomaly_counter.cli", "--config", str(config),
               "--project", "team-a", "notices"]  # fmt: skip
        shown = await _run(*cli, "dead")
        assert shown.returncode == 0, shown.stderr
        assert letter["notice_id"] in shown.stdout and "1 dead" in shown.stdout
        retried = await _run(*cli, "retry", letter["notice_id"])
        assert "1 dead letter(s) back" in retried.stdout
        received = chat.wait_for(2)
        again = await _run(*cli, "retry", "--all")
        assert again.returncode == 1 and "no such dead letter" in again.stderr
    assert len(received) == 2
    assert received[1].headers[IDEMPOTENCY_HEADER] == letter["notice_id"]
    assert received[1].json()["level"] == "REPEAT"


async def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)


async def test_delivery_never_slows_ingestion(store_url: str, chat: ChatServer) -> None:
    chat.hold = threading.Event()  # the chat API does not answer until released
    with ServiceServer(_settings(store_url, chat)) as server:
        await _record(server, server.token("team-a"), 12)  # every crossing recorded...
        assert len(chat.received) == 0  # ...while no notice has been answered yet
        chat.hold.set()
        assert len(chat.wait_for(9)) == 9


async def test_two_service_processes_tell_each_crossing_once(
    store_url: str, chat: ChatServer
) -> None:
    settings = _settings(store_url, chat)
    with (
        ServiceServer(settings) as one,
        ServiceServer(settings) as two,
        ServiceServer(settings) as three,
    ):
        token = one.token("team-a")
        servers = (one, two, three, one, two, three)
        anomalies = [{**SIG, "alertname": f"Crash{i}"} for i in range(4)]  # (in partitions
        # of their own, mostly: several deliverers at work at once)
        await asyncio.gather(
            *(_record(server, token, 4, sig) for server in servers for sig in anomalies)
        )
        received = chat.wait_for(36)
        await asyncio.sleep(1.0)
    assert len(chat.received) == 36  # 4 anomalies x 3 crossings x 3 channels, each once
    hooks = [r for r in received if r.path == "/hook"]
    assert len({h.headers[IDEMPOTENCY_HEADER] for h in hooks}) == 12
    for key in {h.json()["anomaly_key"] for h in hooks}:  # in order, for each anomaly
        levels = [h.json()["level"] for h in hooks if h.json()["anomaly_key"] == key]
        assert levels == ["REPEAT", "ESCALATE", "PERMANENT_FIX"]
