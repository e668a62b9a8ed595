"""The notices outbox (issue 13): how fast deliverers drain it, what an idle deliverer costs the
store, and what writing notices with their occurrences costs recording.

On a redis-server of its own and on a SQLite file, through the library (the deliverers run in
this process, each with a counter and a holder of its own, as service processes would): 1,000
anomalies each cross into REPEAT and ESCALATE (2,000 notices), then 1 or 3 deliverers send them
to a local HTTP receiver (a thread of this process, answering 200 at once) that counts each
notice id. Prints the machine and Markdown.

    python bench/bench_outbox.py
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from anomaly_counter import AnomalyCounter, Settings
from anomaly_counter.notify.deliverer import Deliverer
from anomaly_counter.settings import WebhookConfig
from bench_record import Server, machine  # beside this script, on its sys.path

ANOMALIES = 1_000


class Receiver:
    def __init__(self) -> None:
        self.ids: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.ids[self.headers.get("Idempotency-Key", "")] += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def _settings(url: str, receiver: Receiver, project: str = "bench") -> Settings:
    return Settings(
        store_url=url,
        project_channels={project: (WebhookConfig(receiver.url),)},
        notify_poll=0.2,
    )


def _batch(tag: str) -> list[dict[str, Any]]:
    signatures = [{"alertname": f"Crossing{i}", "service": tag} for i in range(ANOMALIES)]
    return [{"signature": s} for s in signatures] * 5  # REPEAT at 3, ESCALATE at 5


async def drain(url: str, deliverers: int, tag: str) -> dict[str, float]:
    receiver = Receiver()
    settings = _settings(url, receiver)
    async with AnomalyCounter.from_url(settings=settings, project="bench") as writer:
        await writer.record_many(_batch(tag))
        waiting = (await writer.outbox_stats()).depth
    counters = [
        AnomalyCounter.from_url(settings=settings, project="bench") for _ in range(deliverers)
    ]
    running = [Deliverer(settings, lambda _, c=c: c) for c in counters]  # type: ignore[misc]
    began = time.perf_counter()
    for d in running:
        await d.start()
    for _ in range(60_000):  # (10 minutes at most)
        if sum(receiver.ids.values()) >= waiting:
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - began
    for d in running:
        await d.stop()
    for c in counters:
        await c.aclose()
    receiver.server.shutdown()
    twice = sum(1 for n in receiver.ids.values() if n > 1)
    return {"notices": waiting, "seconds": elapsed, "twice": twice}


async def record_cost(url: str, receiver: Receiver, tag: str) -> tuple[float, float]:
    """Recording 1,000 anomalies into REPEAT and ESCALATE, without channels (no outbox) and
    with them, side by side (median of 5 pairs)."""
    ratios, without_rates = [], []
    for pair in range(5):
        rates = []
        for channels in (False, True):
            project = f"{tag}{pair}{channels}"  # (a fresh outbox each time)
            settings = _settings(url, receiver, project) if channels else Settings(store_url=url)
            async with AnomalyCounter.from_url(settings=settings, project=project) as counter:
                batch = _batch(f"{tag}{pair}{channels}")
                began = time.perf_counter()
                for start in range(0, len(batch), 100):
                    await counter.record_many(batch[start : start + 100])
                rates.append(len(batch) / (time.perf_counter() - began))
        without_rates.append(rates[0])
        ratios.append(rates[1] / rates[0])
    return sorted(without_rates)[2], sorted(ratios)[2]


async def idle_calls(server: Server) -> float:
    """Store calls per second of one idle deliverer of one project with nothing to send
    (Redis: counted by the server)."""
    receiver = Receiver()
    settings = _settings(server.url, receiver, "idle")
    async with AnomalyCounter.from_url(settings=settings, project="idle") as counter:
        deliverer = Deliverer(settings, lambda _: counter)
        await deliverer.start()
        await asyncio.sleep(1.0)
        before = _calls(server)
        await asyncio.sleep(10.0)
        after = _calls(server)
        await deliverer.stop()
    receiver.server.shutdown()
    return (after - before) / 10.0


def _calls(server: Server) -> int:
    """Script calls the server ran (each a round trip's part; a poll is one round trip)."""
    stats = server.client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(f"Machine: {machine()}")
    rows = []
    server = Server()
    try:
        for n in (1, 3):
            rows.append(("Redis", n, await drain(server.url, n, f"r{n}")))
        cost = [("Redis", *await record_cost(server.url, Receiver(), "cost"))]
        idle = await idle_calls(server)
    finally:
        server.stop()
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{os.path.join(directory, 'outbox.db')}"
        for n in (1, 3):
            rows.append(("SQLite", n, await drain(url, n, f"s{n}")))
        cost.append(("SQLite", *await record_cost(url, Receiver(), "cost")))
    print()
    print("| store | deliverers | notices | drained in | notices/s | sent twice |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, r in rows:
        print(
            f"| {name} | {n} | {r['notices']:,.0f} | {r['seconds']:.2f} s |"
            f" {r['notices'] / r['seconds']:,.0f} | {r['twice']:.0f} |"
        )
    print()
    print("| store | recording without channels | with channels / without (median of 5 pairs) |")
    print("|---|---:|---:|")
    for name, rate, ratio in cost:
        print(f"| {name} | {rate:,.0f} occurrences/s | {ratio:.2f} |")
    print()
    print(
        f"One idle deliverer of one project on Redis: {idle:.1f} script calls/s (its 16"
        " partitions leased in one round trip per notify_poll, 0.2 s here and 1 s by default;"
        " the outbox's figures read every 5 polls)."
    )


if __name__ == "__main__":
    asyncio.run(main())
