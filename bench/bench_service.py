"""The service over HTTP: Alertmanager payloads of 100 alerts, and single-occurrence POSTs at a
steady 500 requests/s, against the service on Redis and on the embedded store.

The service runs as its own process (``anomaly-counter serve``, one uvicorn worker), started
here on a free port, with a redis-server of its own; the load generator is this process, on the
same machine (2 cores: the generator takes some of the CPU the service could use; it writes
prepared requests on raw keep-alive connections, to take as little as it can). Latencies
are measured from when each request was due (open loop: a slow answer does not delay the
requests after it, so queueing shows in the figures).

    python bench/bench_service.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime

import httpx

from bench_record import Server, machine  # beside this script, on its sys.path

CLI = [sys.executable, "-m", "anomaly_counter.cli"]
PROJECT = "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """``anomaly-counter serve`` in a process of its own, and a token of the bench project."""

    def __init__(self, store_url: str) -> None:
        self.store_url = store_url
        self.port = _free_port()
        made = subprocess.run(
            [*CLI, "--store", store_url, "--project", PROJECT, "--json", "token", "create"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        self.token = json.loads(made.stdout)["token"]
        self.workdir = tempfile.mkdtemp()  # its spool goes here (serve spools by default)
        self.process = subprocess.Popen(
            [*CLI, "--store", store_url, "serve", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.workdir,
        )  # fmt: skip
        for _ in range(200):
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the service did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)


def _payload(batch: int, size: int = 100) -> dict:  # type: ignore[type-arg]
    """An Alertmanager group of ``size`` firing alerts, each a new episode of one of 500
    anomalies (so that every alert is counted, not deduplicated)."""
    now = datetime.now(UTC)
    alerts = []
    for i in range(size):
        n = batch * size + i
        labels = {"alertname": f"Alert{n % 50}", "job": f"svc-{n % 10}", "namespace": "prod",
                  "instance": f"node-{n % 7}", "severity": "warning"}  # fmt: skip
        alerts.append({
            "status": "firing", "labels": labels, "annotations": {"summary": "bench"},
            "startsAt": now.isoformat(), "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph", "fingerprint": f"{n:016x}",
        })  # fmt: skip
    group = {"groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "groupKey": "{}"}
    sender = {"receiver": "bench", "externalURL": "http://alertmanager", "truncatedAlerts": 0}
    return {"version": "4", "status": "firing", **group, **sender, "alerts": alerts}


class Connection:
    """One keep-alive HTTP/1.1 connection with requests packed in advance: a load generator
    much cheaper than an HTTP client library, so that on a 2-core machine the service, not the
    generator, is what is measured."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in lines
            if line.lower().startswith(b"content-length")
        )
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def _request(service: Service, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {service.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def alertmanager_rate(service: Service, payloads: int, senders: int = 8) -> float:
    """Alerts/s: ``senders`` concurrent senders (Alertmanager sends groups in parallel)."""
    path = f"/v1/projects/{PROJECT}/alertmanager"
    requests = [_request(service, path, json.dumps(_payload(b)).encode()) for b in range(payloads)]
    connections = [await Connection.open(service.port) for _ in range(senders)]
    status, body = await connections[0].post(requests[0])  # warm: scripts loaded
    assert status == 200, body
    queue = list(range(1, payloads))

    async def sender(connection: Connection) -> None:
        while queue:
            status, body = await connection.post(requests[queue.pop()])
            assert status == 200, body

    began = time.perf_counter()
    await asyncio.gather(*(sender(c) for c in connections))
    elapsed = time.perf_counter() - began
    for connection in connections:
        connection.close()
    return (payloads - 1) * 100 / elapsed


async def steady_latencies(
    service: Service, rate: float, seconds: float, connections: int = 32
) -> list[float]:
    """Single-occurrence POSTs sent on a fixed schedule over a pool of keep-alive connections;
    each latency counts from its due time (waiting for a free connection included)."""
    path = f"/v1/projects/{PROJECT}/occurrences"
    requests = [
        _request(service, path, json.dumps(
            {"signature": {"alertname": f"Steady{i}", "service": "api"}}
        ).encode())
        for i in range(200)
    ]  # fmt: skip
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await Connection.open(service.port))
    for i in range(50):  # warm
        connection = await idle.get()
        await connection.post(requests[i])
        idle.put_nowait(connection)
    latencies: list[float] = []

    async def one(i: int, due: float) -> None:
        connection = await idle.get()
        try:
            status, body = await connection.post(requests[i % len(requests)])
        finally:
            idle.put_nowait(connection)
        assert status == 200, body
        latencies.append(time.perf_counter() - due)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait().close()
    return latencies


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    payloads = 60 if options.quick else 300
    seconds = 4.0 if options.quick else 20.0
    print(f"Machine: {machine()}")
    redis_server = Server()
    tmp = tempfile.mkdtemp()
    rows = []
    try:
        for name, url in (("Redis", redis_server.url), ("SQLite", f"sqlite:///{tmp}/bench.db")):
            service = Service(url)
            try:
                rate = await alertmanager_rate(service, payloads)
                latencies = await steady_latencies(service, 500, seconds)
            finally:
                service.stop()
            ms = [1000 * x for x in latencies]
            rows.append((name, rate, len(ms), statistics.median(ms), _percentile(ms, 0.99),
                         max(ms)))  # fmt: skip
            print(
                f"{name}: {rate:,.0f} alerts/s; 500 req/s: p50 {rows[-1][3]:.1f} ms,"
                f" p99 {rows[-1][4]:.1f} ms, max {rows[-1][5]:.1f} ms ({len(ms)} requests)"
            )
    finally:
        redis_server.stop()
    print()
    print(
        "| store | Alertmanager, payloads of 100: alerts/s (target >= 5,000) |"
        " 500 POST/s: requests | p50 | p99 (target <= 25 ms) | max |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, rate, n, p50, p99, top in rows:
        print(f"| {name} | {rate:,.0f} | {n:,} | {p50:.1f} ms | {p99:.1f} ms | {top:.1f} ms |")


if __name__ == "__main__":
    asyncio.run(main())
