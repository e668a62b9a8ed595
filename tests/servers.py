"""Real servers for the service tests: our service on uvicorn in a thread, a small HTTP server
standing in for the chat APIs (Telegram, Slack, a webhook) that records what it gets, and a
real Alertmanager process delivering to the receiver."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from anomaly_counter import Settings
from anomaly_counter.service.app import create_app
from anomaly_counter.service.server import uvicorn_config
from anomaly_counter.stores.base import store_from_url
from anomaly_counter.tokens import new_token

from .conftest import free_port, require_binary


class ServiceServer:
    """The service on a free port, served by uvicorn in a thread of its own (its own loop)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.app = create_app(settings)
        config = uvicorn_config(
            self.app, settings, host="127.0.0.1", port=self.port, log_level="warning",
            lifespan="on",
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServiceServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the service did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def token(self, project: str, *, admin: bool = False) -> str:
        """A new token of a project, stored through a store of this thread's own."""
        return make_token(self.settings, project, admin=admin)

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10)


class ServeProcess:
    """``anomaly-counter serve`` in a process of its own (its memory measured apart from the
    test's), on a free port, with a demo token of project ``team-a``. ``wrap`` goes before
    the command (say, to run it in a namespace of its own); ``env`` adds to the environment.
    What it prints is kept in ``output`` (read all along, so that a full pipe never stops it).
    """

    def __init__(
        self,
        store: str,
        cwd: Path,
        *options: str,
        wrap: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        demo_token: bool = True,  # (making one needs the store: not during an outage)
    ) -> None:
        self.port = free_port()
        self.command = [
            *wrap, sys.executable, "-m", "anomaly_counter.cli", "--store", store,
            "--project", "team-a", "serve", "--port", str(self.port),
            *(["--demo-token"] if demo_token else []), *options,
        ]  # fmt: skip
        self.demo_token = demo_token
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.token = ""
        self.output: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServeProcess:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=self.cwd, env=self.env,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                ready = self.token or not self.demo_token
                if ready and httpx.get(f"{self.url}/healthz").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("serve did not start:\n" + "".join(self.output[-20:]))

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if not self.token and line.startswith("a token of project"):
                self.token = line.rsplit(" ", 1)[1].strip()

    def client(self, token: str) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10)

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        (line,) = [x for x in status.splitlines() if x.startswith("VmRSS:")]
        return int(line.split()[1]) * 1024

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def v1(path: str, project: str = "team-a") -> str:
    """A route of a project's API."""
    return f"/v1/projects/{project}{path}"


def make_token(
    settings: Settings, project: str, *, read_only: bool = False, admin: bool = False
) -> str:
    async def create() -> str:
        store = store_from_url(settings.store_url, settings)
        try:
            text, record = new_token(
                project, int(time.time() * 1000), read_only=read_only, admin=admin
            )
            await store.save_token(record)
            return text
        finally:
            await store.aclose()

    result: list[str] = []
    # a loop of its own: the caller may be inside one already
    thread = threading.Thread(target=lambda: result.append(asyncio.run(create())))
    thread.start()
    thread.join()
    return result[0]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 200  # what it was answered
    at: float = field(default_factory=time.monotonic)  # when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ChatServer:
    """Answers each request with the next status of ``plan`` (then 200), and records it."""

    plan: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    hold: threading.Event | None = None  # when set: answer only once it is set
    down: int | None = None  # when set: answer every request with this status (after plan)
    retry_after: str | None = None  # sent with every answer that is not a success

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if outer.hold is not None:
                    outer.hold.wait(30)
                with outer.lock:
                    status = outer.plan.pop(0) if outer.plan else (outer.down or 200)
                    outer.received.append(Received(self.path, dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if outer.retry_after is not None and status >= 300:
                    self.send_header("Retry-After", outer.retry_after)
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        with self.lock:
            return list(self.received)


def start_until_ready(arguments: Sequence[str], url: str) -> subprocess.Popen[bytes]:
    """Start a Prometheus or an Alertmanager and wait, 20 s at most, until its ``/-/ready``
    answers (its stderr in the error when it exits before)."""
    process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read().decode())  # type: ignore[union-attr]
        time.sleep(0.05)
    raise RuntimeError(f"{arguments[0]} did not become ready")


class Alertmanager:
    """A real Alertmanager on a free port, sending every group to one receiver each second
    (a bearer token, resolutions too)."""

    def __init__(self, receiver_url: str, token: str) -> None:
        self.binary = require_binary("prometheus-alertmanager")
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="alertmanager-")
        config = {
            "route": {
                "receiver": "counter",
                "group_by": ["alertname"],
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1s",
            },
            "receivers": [
                {
                    "name": "counter",
                    "webhook_configs": [
                        {
                            "url": receiver_url,
                            "send_resolved": True,
                            "http_config": {
                                "authorization": {"type": "Bearer", "credentials": token}
                            },
                        }
                    ],
                }
            ],
        }
        self.config = Path(self.directory) / "alertmanager.yml"
        self.config.write_text(json.dumps(config))  # JSON is YAML
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Alertmanager:
        self.process = start_until_ready(
            [self.binary, f"--config.file={self.config}", f"--storage.path={self.directory}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
             "--log.level=warn"],
            self.url,
        )  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(10)

    def push(self, labels: dict[str, str], starts: datetime, ends: datetime | None = None) -> None:
        alert: dict[str, Any] = {"labels": labels, "startsAt": utc_iso(starts)}
        if ends is not None:
            alert["endsAt"] = utc_iso(ends)
        r = httpx.post(f"{self.url}/api/v2/alerts", json=[alert], timeout=5)
        assert r.status_code == 200, r.text


def utc_iso(moment: datetime) -> str:
    """A time as Alertmanager's API takes it (and its webhook gives it): RFC 3339, UTC, Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def eventually(check: Callable[[], Any], within: float = 10.0) -> Any:
    """Poll an async check until it returns a truthy value (or ``within`` seconds pass)."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


async def wait_until_up(http: httpx.AsyncClient) -> None:
    """Wait until a service process started elsewhere answers /healthz."""
    for _ in range(300):
        try:
            if (await http.get("/healthz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("the service did not start")


class FaultyProxy:
    """A TCP proxy to Redis owned by a test, which breaks the connection on purpose:

    - ``loss``: now and then closes it after the server answered, without passing the answer
      on (a write that landed but whose reply was lost), or in the middle of a reply;
    - ``budget`` (bytes, once): forwards that many more bytes of commands, then closes it (what
      follows never reaches the server; what came whole is answered first);
    - ``trickle`` (seconds): passes replies on one byte at a time, this long apart.
    """

    def __init__(self, target_port: int, loss: float = 0.0) -> None:
        from .conftest import free_port  # (conftest imports this module)

        self.target_port, self.loss, self.port = target_port, loss, free_port()
        self.budget: int | None = None
        self.forwarded = 0  # command bytes forwarded since last set to 0
        self.cut = 0  # connections broken
        self.trickle = 0.0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )

        async def forward_commands() -> None:
            while data := await reader.read(65536):
                if self.budget is not None and self.forwarded + len(data) > self.budget:
                    upstream_writer.write(data[: self.budget - self.forwarded])
                    await upstream_writer.drain()
                    self.budget = None
                    self.cut += 1
                    await asyncio.sleep(0.2)  # the server answers what it got whole
                    upstream_writer.close()
                    writer.close()
                    return
                self.forwarded += len(data)
                upstream_writer.write(data)
                await upstream_writer.drain()
            upstream_writer.close()

        async def forward_replies() -> None:
            while data := await upstream_reader.read(65536):
                if random.random() < self.loss:
                    self.cut += 1
                    if random.random() < 0.5:
                        writer.write(data[: len(data) // 2])  # cut in the middle of a reply
                    writer.close()
                    upstream_writer.close()
                    return
                if self.trickle:
                    for i in range(len(data)):
                        writer.write(data[i : i + 1])
                        await writer.drain()
                        await asyncio.sleep(self.trickle)
                    continue
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(forward_commands(), forward_replies(), return_exceptions=True)

    async def stop(self) -> None:
        self.server.close()
