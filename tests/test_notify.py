"""Notices: one per crossing and per regression, on Telegram, Slack and a signed webhook, sent
in the background with retries, to a real local HTTP server standing in for the chat APIs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
from collections.abc import Iterator

import pytest

from anomaly_counter import AnomalyCounter, Settings
from anomaly_counter.notify.channels import SIGNATURE_HEADER
from anomaly_counter.settings import SlackConfig, TelegramConfig, WebhookConfig

from .conftest import SIG, free_port
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
        async with server.client(token) as http:
            await http.post(
                f"/v1/projects/team-a/anomalies/{KEY}/repairs",
                json={"action": "restart_pod", "success": False},
            )
        await _record(server, token, 12)
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
    for hook in hooks:
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


async def test_retries_then_gives_up_and_counts(store_url: str, chat: ChatServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"
    settings = Settings(
        store_url=store_url,
        project_channels={
            "team-a": (WebhookConfig(f"{chat.url}/flaky"),),
            "team-b": (WebhookConfig(dead),),
        },
        notify_backoff=0.01,
        notify_attempts=3,
    )
    chat.plan = [500, 503]  # the first two attempts fail, the third gets through
    with ServiceServer(settings) as server:
        await _record(server, server.token("team-a"), 3)
        assert len(chat.wait_for(3)) == 3
        async with server.client(server.token("team-b")) as http:
            for _ in range(3):
                await http.post("/v1/projects/team-b/occurrences", json={"signature": SIG})

        async def counted() -> str | None:
            async with server.client() as http:
                text = (await http.get("/metrics")).text
            wanted = 'anomaly_counter_notifications_total{channel="webhook",outcome="failed"} 1.0'
            return text if wanted in text else None

        metrics = await eventually(counted)
    assert metrics is not None
    assert 'anomaly_counter_notifications_total{channel="webhook",outcome="sent"} 1.0' in metrics
    chat.plan = [400]  # wrong and will stay wrong: no retry
    chat.received.clear()
    with ServiceServer(settings) as server:
        await _record(server, server.token("team-a"), 3, {**SIG, "alertname": "Other"})
        await asyncio.sleep(0.5)
    assert len(chat.received) == 1


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
    with ServiceServer(settings) as one, ServiceServer(settings) as two:
        token = one.token("team-a")
        await asyncio.gather(*(_record(server, token, 10) for server in (one, two, one, two)))
        received = chat.wait_for(9)
        await asyncio.sleep(0.3)
    assert len(chat.received) == 9
    levels = sorted(r.json()["level"] for r in received if r.path == "/hook")
    assert levels == ["ESCALATE", "PERMANENT_FIX", "REPEAT"]
