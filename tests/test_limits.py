"""Per-project limits of the service: a rate, and turns taken in order; past them 429 with
Retry-After naming the limit, counted in /metrics, and never another project's problem."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from anomaly_counter import LimitExceededError, Settings
from anomaly_counter.limits import Limits

from .conftest import SIG, CounterFactory
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


async def test_an_anomaly_takes_at_most_max_actions_names(make_counter: CounterFactory) -> None:
    counter = make_counter(project_limits={"team-a": Limits(max_actions=3)})
    other = make_counter("team-b")  # the default limit (50): not this one's
    key = (await counter.record_anomaly(SIG)).anomaly_key
    for action in ("restart_pod", "scale_up", "rollback"):
        await counter.record_repair_attempt(key, action, True)
    with pytest.raises(LimitExceededError, match="at most 3") as refused:
        await counter.record_repair_attempt(key, "action-4", True)
    assert refused.value.limit == "max_actions"
    await counter.record_repair_attempt(key, "restart_pod", False)  # a known name still counts
    stats = await counter.get_all_repair_stats(key)
    assert set(stats) == {"restart_pod", "scale_up", "rollback"}
    assert stats["restart_pod"]["total"] == 2
    other_key = (await other.record_anomaly(SIG)).anomaly_key
    for i in range(5):
        await other.record_repair_attempt(other_key, f"action-{i}", True)
    # recommendations stay bounded by the limit even for names kept before it was lowered
    lowered = make_counter("team-b", project_limits={"team-b": Limits(max_actions=2)})
    (ranked,) = await lowered.recommendations([other_key], candidates=None)
    assert len(ranked) <= 2 + len(Settings().repair_actions)


async def test_the_api_answers_429_past_max_actions_and_counts_it(tmp_path: Path) -> None:
    with ServiceServer(_settings(tmp_path, max_actions=1)) as server:
        async with server.client(server.token("team-a")) as http:
            key = (await http.post(v1("/occurrences"), json={"signature": SIG})).json()[
                "anomaly_key"
            ]
            repairs = v1(f"/anomalies/{key}/repairs")
            assert (await http.post(repairs, json={"action": "a", "success": True})).is_success
            r = await http.post(repairs, json={"action": "b", "success": True})
            assert r.status_code == 429 and "max_actions" in r.json()["detail"]
            metrics = (await http.get("/metrics")).text
            assert 'limit="max_actions",project="team-a"} 1.0' in metrics


async def test_the_signature_bound_holds_for_every_kind_of_label(tmp_path: Path) -> None:
    with ServiceServer(_settings(tmp_path)) as server:
        async with server.client(server.token("team-a")) as http:
            huge = {f"n{i}": int("9" * 4000) for i in range(32)}  # 128 KB of digits
            r = await http.post(v1("/occurrences"), json={"signature": huge})
            assert r.status_code == 400 and "64 bits" in r.text, r.text
            wide = {f"label{i:02d}": "x" * 250 for i in range(20)}  # 5 KB as JSON
            r = await http.post(v1("/occurrences"), json={"signature": wide})
            assert r.status_code == 400 and "4096 bytes" in r.text, r.text
            assert (await http.get(v1("/anomalies"))).json()["anomalies"] == []
