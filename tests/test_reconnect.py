"""A Redis restart: calls during the outage degrade, and the counter carries on after it."""

from __future__ import annotations

import tempfile

from anomaly_counter import AnomalyCounter, Settings

from .conftest import SIG, RedisServer, free_port


async def test_counter_reconnects_after_a_restart() -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(free_port(), directory)
        server.start()
        counter = AnomalyCounter.from_url(
            server.url, "team-a", settings=Settings(store_timeout=0.5)
        )
        try:
            assert (await counter.record_anomaly(SIG)).count_24h == 1
            server.stop()
            assert (await counter.record_anomaly(SIG)).degraded
            server.start()  # empty again: it kept nothing on disk
            results = [await counter.record_anomaly(SIG) for _ in range(3)]
            # at most the first call after the restart may still meet a dead connection
            assert not results[-1].degraded
            assert results[-1].count_24h == sum(not r.degraded for r in results)
        finally:
            await counter.aclose()
            server.stop()
