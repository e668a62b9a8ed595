"""Where notices go: the HTTP request each channel makes of a notice (no I/O here).

Channels are made from settings (``[projects.<id>.notify]`` in the TOML file, plain data there):
``channels_for(settings, project)``. Their base URLs are settings too, so a test or an
air-gapped site points them at a server of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, assert_never

from ..settings import (
    DEFAULT_TELEGRAM_API_URL,
    ChannelConfig,
    NotifySettings,
    SlackConfig,
    TelegramConfig,
    WebhookConfig,
)

if TYPE_CHECKING:
    from .notice import Notice

SIGNATURE_HEADER = "X-Anomaly-Counter-Signature"
"""``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``, as Stripe-style webhooks do: the
time in the signed text lets a receiver refuse replays."""


@dataclass(frozen=True, slots=True)
class Request:
    url: str
    body: bytes
    headers: dict[str, str]


class Channel(Protocol):
    @property
    def name(self) -> str:
        """The channel's kind, the label of its metrics: telegram, slack, webhook."""
        ...

    @property
    def ident(self) -> str:
        """Which channel this is, stably across restarts and processes (the outbox keeps each
        channel's progress by it): its kind and a digest of where it sends."""
        ...

    def request(self, notice: Notice) -> Request: ...


IDEMPOTENCY_HEADER = "Idempotency-Key"
"""The notice's id, the same on every try and from every process (also ``notice_id`` in a
webhook's signed body): a receiver drops a notice it has seen (delivery is at least once)."""


def _ident(kind: str, *where: str) -> str:
    return f"{kind}:{hashlib.sha256('|'.join(where).encode()).hexdigest()[:12]}"


def _headers(notice: Notice) -> dict[str, str]:
    headers = dict(_JSON)
    if notice.notice_id:
        headers[IDEMPOTENCY_HEADER] = notice.notice_id
    return headers


def _json(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class TelegramChannel:
    """Telegram Bot API ``sendMessage`` to one chat."""

    bot_token: str
    chat_id: str
    api_url: str = DEFAULT_TELEGRAM_API_URL

    @property
    def name(self) -> str:
        return "telegram"

    def request(self, notice: Notice) -> Request:
        body = {
            "chat_id": self.chat_id,
            "text": notice.html(),
            "parse_mode": "HTML",
            "disable_web_page_preview": True,
        }
        url = f"{self.api_url.rstrip('/')}/bot{self.bot_token}/sendMessage"
        return Request(url, _json(body), _headers(notice))

    @property
    def ident(self) -> str:
        return _ident(self.name, self.api_url, self.bot_token, self.chat_id)


@dataclass(frozen=True, slots=True)
class SlackChannel:
    """A Slack incoming webhook."""

    webhook_url: str

    @property
    def name(self) -> str:
        return "slack"

    def request(self, notice: Notice) -> Request:
        return Request(self.webhook_url, _json({"text": notice.markdown()}), _headers(notice))

    @property
    def ident(self) -> str:
        return _ident(self.name, self.webhook_url)


@dataclass(frozen=True, slots=True)
class WebhookChannel:
    """A generic JSON webhook, signed with HMAC-SHA256 when it has a secret."""

    url: str
    secret: str = ""

    @property
    def name(self) -> str:
        return "webhook"

    def request(self, notice: Notice) -> Request:
        body = _json(notice.payload())
        headers = _headers(notice)
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body, int(time.time()))
        return Request(self.url, body, headers)

    @property
    def ident(self) -> str:
        return _ident(self.name, self.url)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value for a body sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def channel_of(config: ChannelConfig, telegram_api_url: str = DEFAULT_TELEGRAM_API_URL) -> Channel:
    """The channel that sends to where a channel's settings point."""
    match config:
        case TelegramConfig():
            api_url = config.api_url or telegram_api_url
            return TelegramChannel(config.bot_token, config.chat_id, api_url)
        case SlackConfig():
            return SlackChannel(config.webhook_url)
        case WebhookConfig():
            return WebhookChannel(config.url, config.secret)
        case _:
            assert_never(config)


def channels_for(settings: NotifySettings, project: str) -> tuple[Channel, ...]:
    """The channels a project's notices go to (none without ``[projects.<id>.notify]``)."""
    configs = settings.project_channels.get(project, ())
    return tuple(channel_of(c, settings.telegram_api_url) for c in configs)
