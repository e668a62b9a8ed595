"""Prometheus metrics of one service process, in a registry of its own.

Labels are bounded: project, outcome, level, channel, operation, method, route template and
status; never an anomaly key, a label value from an alert, or a raw path.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..model import AnomalyFrequency
from ..outbox import OutboxStats
from ..spool import Spool

CONTENT_TYPE = CONTENT_TYPE_LATEST
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.occurrences = Counter(
            "anomaly_counter_occurrences",
            "Occurrences received, by outcome: new (counted), duplicate (an id already counted),"
            " spooled (kept in the spool while the store is down), degraded (the store could"
            " not take it and there is no spool: 503), refused (the spool is full: 503),"
            " rejected (refused input)",
            ["project", "outcome"],
            registry=r,
        )
        self.escalations = Counter(
            "anomaly_counter_escalations",
            "Occurrences that took an anomaly into a higher level",
            ["project", "level"],
            registry=r,
        )
        self.regressions = Counter(
            "anomaly_counter_regressions",
            "Anomalies that came back after a permanent fix (first occurrence after it)",
            ["project"],
            registry=r,
        )
        self.flapping_stopped = Counter(
            "anomaly_counter_flapping_stopped_by_sweep",
            "Quiet anomalies the sweep found no longer flapping",
            ["project"],
            registry=r,
        )
        self.notifications = Counter(
            "anomaly_counter_notifications",
            "Tries to deliver notices from this process, by channel and outcome: sent, failed"
            " (to be tried again, or dead), dead (put in the dead-letter list)",
            ["channel", "outcome"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            "anomaly_counter_outbox_depth",
            "Notices waiting in the project's outbox (for at least one channel)",
            ["project"],
            registry=r,
        )
        self.outbox_oldest = Gauge(
            "anomaly_counter_outbox_oldest_age_seconds",
            "Age of the oldest notice waiting in the project's outbox (0: none)",
            ["project"],
            registry=r,
        )
        self.outbox_overflowed = Gauge(
            "anomaly_counter_outbox_overflowed",
            "Notices never written because the project's outbox was full (since it began)",
            ["project"],
            registry=r,
        )
        self.dead_overflowed = Gauge(
            "anomaly_counter_dead_letters_overflowed",
            "Dead letters not kept because the project's list was full (since it began)",
            ["project"],
            registry=r,
        )
        self.dead_letters = Gauge(
            "anomaly_counter_dead_letters",
            "Notices in the project's dead-letter list (see `anomaly-counter notices dead`)",
            ["project"],
            registry=r,
        )
        self.store_seconds = Histogram(
            "anomaly_counter_store_seconds",
            "Time of store calls made for requests, by operation",
            ["operation"],
            buckets=_FAST,
            registry=r,
        )
        self.limited = Counter(
            "anomaly_counter_limited",
            "Requests refused (429) by a limit of their project, and spooled occurrences"
            " dropped on replay by one (max_anomalies), by limit",
            ["project", "limit"],
            registry=r,
        )
        self.spool_replayed = Counter(
            "anomaly_counter_spool_replayed",
            "Occurrences stored from the spool (its rate is the replay rate)",
            registry=r,
        )
        self.http_requests = Counter(
            "anomaly_counter_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "anomaly_counter_http_request_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            buckets=_FAST,
            registry=r,
        )

    def limit_reached(self, project: str, limit: str) -> None:
        self.limited.labels(project, limit).inc()

    def watch_spool(self, spool: Spool) -> None:
        """Spool gauges, read when scraped."""
        r = self.registry
        depth = Gauge("anomaly_counter_spool_depth", "Occurrences waiting in the spool", registry=r)
        depth.set_function(lambda: spool.depth)
        size = Gauge("anomaly_counter_spool_bytes", "Bytes the spool holds", registry=r)
        size.set_function(lambda: spool.stats().size_bytes)
        room = Gauge(
            "anomaly_counter_spool_max_bytes",
            "The most the spool takes (spool_max_bytes)",
            registry=r,
        )
        room.set(spool.max_bytes)
        age = Gauge(
            "anomaly_counter_spool_oldest_age_seconds",
            "Age of the oldest occurrence waiting in the spool (0: none)",
            registry=r,
        )

        def oldest() -> float:
            oldest_ms = spool.stats().oldest_ms
            return 0.0 if oldest_ms is None else max(0.0, time.time() - oldest_ms / 1000)

        age.set_function(oldest)
        lost = Gauge("anomaly_counter_spool_lost", "Damaged spool records skipped", registry=r)
        lost.set_function(lambda: spool.lost)

    def counted(self, project: str, frequencies: list[AnomalyFrequency]) -> None:
        duplicates = sum(1 for f in frequencies if f.duplicate)
        if duplicates:
            self.occurrences.labels(project, "duplicate").inc(duplicates)
        if len(frequencies) > duplicates:
            self.occurrences.labels(project, "new").inc(len(frequencies) - duplicates)
        for f in frequencies:
            if f.escalated_to:
                self.escalations.labels(project, f.escalated_to).inc()
            if f.newly_regressed:
                self.regressions.labels(project).inc()

    def refused(self, project: str, outcome: str, n: int = 1) -> None:
        if n:
            self.occurrences.labels(project, outcome).inc(n)

    @asynccontextmanager
    async def timing(self, operation: str) -> AsyncIterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.store_seconds.labels(operation).observe(time.perf_counter() - began)

    # the deliverer's outcomes
    def notice_sent(self, channel: str) -> None:
        self.notifications.labels(channel, "sent").inc()

    def notice_failed(self, channel: str) -> None:
        self.notifications.labels(channel, "failed").inc()

    def notice_dead(self, channel: str) -> None:
        self.notifications.labels(channel, "dead").inc()

    def outbox(self, project: str, stats: OutboxStats) -> None:
        self.outbox_depth.labels(project).set(stats.depth)
        oldest = stats.oldest_ms
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000)
        self.outbox_oldest.labels(project).set(age)
        self.outbox_overflowed.labels(project).set(stats.overflowed)
        self.dead_letters.labels(project).set(stats.dead)
        self.dead_overflowed.labels(project).set(stats.dead_overflowed)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
