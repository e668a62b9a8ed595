"""Per-project limits of the service: a rate, and turns taken in order; past them 429 with
Retry-After naming the limit, counted in /metrics, and never another project's problem."""

from __future__ import annotations

import asyncio
from pathlib import Path

from anomaly_counter import Settings
from anomaly_counter.limits import Limits

from .conftest import SIG
from .servers import ServiceServer, v1


def _settings(tmp_path: Path, **limits: object) -> Settings:
    return Settings(
        store_url=f"sqlite:///{tmp_path / 'limits.db'}",
        project_limits={"team-a": Limits(**limits)},  # type: ignore[arg-type]
    )


async def test_a_project_over_its_rate_gets_429_and_others_do_not(tmp_path: Path) -> None:
    with ServiceServer(_settings(tmp_path, requests_per_second=2, burst=5)) as server:
        async with (
            server.client(server.token("team-a")) as a,
            server.client(server.token("team-b")) as b,
        ):
            answers = [await a.post(v1("/occurrences"), json={"signature": SIG}) for _ in range(8)]
            statuses = [r.status_code for r in answers]
            assert statuses[:5] == [200] * 5 and 429 in statuses[5:], statuses
            refused = next(r for r in answers if r.status_code == 429)
            assert int(refused.headers["Retry-After"]) >= 1
            assert "over its rate of 2 requests per second" in refused.json()["detail"]
            for _ in range(8):  # another project's lane: its own rate (the default)
                r = await b.post(v1("/occurrences", "team-b"), json={"signature": SIG})
                assert r.status_code == 200
            metrics = (await b.get("/metrics")).text
            assert (
                'anomaly_counter_limited_total{limit="requests_per_second",project="team-a"}'
                in (metrics)
            )
            await asyncio.sleep(1.1)  # the rate refills
            assert (await a.post(v1("/occurrences"), json={"signature": SIG})).status_code == 200


async def test_turns_are_taken_in_order_and_a_full_line_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path, concurrent_requests=1, waiting_requests=1)
    with ServiceServer(settings) as server:
        token = server.token("team-a")
        # a client that sends its headers and holds its body back keeps the project's one turn
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            f"POST {v1('/occurrences')} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n".encode()
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        async with server.client(token) as http, server.client(server.token("team-b")) as b:
            waiting = asyncio.create_task(http.post(v1("/occurrences"), json={"signature": SIG}))
            await asyncio.sleep(0.2)  # it waits its turn...
            assert not waiting.done()
            r = await http.post(v1("/occurrences"), json={"signature": SIG})  # the line is full
            assert r.status_code == 429 and "requests waiting" in r.json()["detail"]
            assert "Retry-After" in r.headers
            r = await b.post(v1("/occurrences", "team-b"), json={"signature": SIG})
            assert r.status_code == 200  # another project does not wait at all
            writer.close()  # the held request goes away: the waiting one takes its turn
            assert (await asyncio.wait_for(waiting, 10)).status_code == 200
