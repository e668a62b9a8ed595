"""The Alertmanager receiver: crafted payloads over HTTP, then end to end with real
Alertmanager processes that re-send, resolve and re-fire on second-scale intervals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from anomaly_counter import AnomalyCounter, Settings
from anomaly_counter.episodes import EpisodeRules

from .conftest import free_port
from .servers import Alertmanager, ServiceServer, eventually, utc_iso

LABELS = {"alertname": "DiskPressure", "job": "db", "namespace": "prod", "instance": "node-1"}
KEY = AnomalyCounter.hash_signature(
    {"alertname": "DiskPressure", "service": "db", "namespace": "prod"}
)
RECEIVER = "/v1/projects/team-a/alertmanager"


def _alert(status: str, starts: datetime, ends: datetime | None = None, **labels: str) -> dict:  # type: ignore[type-arg]
    return {
        "status": status,
        "labels": {**LABELS, **labels},
        "annotations": {"summary": "disk almost full"},
        "startsAt": utc_iso(starts),
        "endsAt": utc_iso(ends) if ends else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": "c0ffee" + "".join(sorted(labels.values()))[:10],
        "someFutureField": {"ignored": True},
    }


def _payload(*alerts: dict) -> dict:  # type: ignore[type-arg]
    return {
        "version": "4",
        "groupKey": '{}:{alertname="DiskPressure"}',
        "truncatedAlerts": 0,
        "status": alerts[0]["status"],
        "receiver": "counter",
        "groupLabels": {"alertname": "DiskPressure"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
        "notification_reason": "repeat",  # a newer release's field
    }


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceServer]:
    with ServiceServer(Settings(store_url=f"sqlite:///{tmp_path}/am.db")) as server:
        yield server


async def test_episodes_are_counted_once_and_resolutions_kept(service: ServiceServer) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    first = now - timedelta(minutes=30)
    async with service.client(service.token("team-a")) as http:
        r = await http.post(RECEIVER, json=_payload(_alert("firing", first)))
        assert r.json() == {
            "received": 1, "counted": 1, "spooled": 0, "duplicates": 0, "joined": 0, "resolved": 0,
            "too_old": 0,
        }  # fmt: skip
        for _ in range(3):  # repeats, and a second Alertmanager of an HA pair
            r = await http.post(RECEIVER, json=_payload(_alert("firing", first)))
            assert r.json()["duplicates"] == 1 and r.json()["counted"] == 0
        resolved = _alert("resolved", first, now - timedelta(minutes=5))
        r = await http.post(RECEIVER, json=_payload(resolved))
        assert r.json()["resolved"] == 1 and r.json()["counted"] == 0
        anomaly = (await http.get(f"/v1/projects/team-a/anomalies/{KEY}")).json()
        assert anomaly["count_24h"] == 1
        assert datetime.fromisoformat(anomaly["first_seen"]) == first  # at its startsAt
        assert datetime.fromisoformat(anomaly["last_resolved"]) == now - timedelta(minutes=5)
        assert anomaly["signature"]["instance"] == "node-1"  # the other labels are kept
        refire = _alert("firing", now - timedelta(minutes=1))
        other = _alert("firing", first, alertname="HighLatency")
        r = await http.post(RECEIVER, json=_payload(refire, other))
        assert r.json()["counted"] == 2
        anomaly = (await http.get(f"/v1/projects/team-a/anomalies/{KEY}")).json()
        assert anomaly["count_24h"] == 2
        old = _alert("firing", now - timedelta(days=40))
        r = await http.post(RECEIVER, json=_payload(old))
        assert r.status_code == 200 and r.json()["too_old"] == 1


async def test_instances_firing_together_are_one_incident(service: ServiceServer) -> None:
    """Seen end to end before: one alert firing on two instances counted 2, and a 10-pod
    outage went straight to PERMANENT_FIX in one incident."""
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(minutes=20)
    pods = [_alert("firing", start + timedelta(seconds=n), pod=f"api-{n}") for n in range(10)]
    async with service.client(service.token("team-a")) as http:
        r = await http.post(RECEIVER, json=_payload(*pods))
        assert (r.json()["counted"], r.json()["joined"]) == (1, 9)
        anomaly = (await http.get(f"/v1/projects/team-a/anomalies/{KEY}")).json()
        assert (anomaly["count_24h"], anomaly["escalation_level"]) == (1, None)
        assert (anomaly["firing"], anomaly["instances"]) == (10, 10)
        # all resolve, in any order; then one fires again in the same message as the last
        # resolution: the resolution is taken first, so it is a recurrence
        ended = now - timedelta(minutes=5)
        resolved = [
            _alert("resolved", a_start(p), ended, pod=f"api-{n}") for n, p in enumerate(pods)
        ]
        r = await http.post(RECEIVER, json=_payload(*reversed(resolved[1:])))
        assert r.json()["resolved"] == 9
        back = _alert("firing", now - timedelta(minutes=1), pod="api-3")
        r = await http.post(RECEIVER, json=_payload(resolved[0], back))
        assert (r.json()["counted"], r.json()["joined"], r.json()["resolved"]) == (1, 0, 1)
        anomaly = (await http.get(f"/v1/projects/team-a/anomalies/{KEY}")).json()
        assert (anomaly["count_24h"], anomaly["firing"], anomaly["instances"]) == (2, 1, 1)
        assert datetime.fromisoformat(anomaly["last_resolved"]) == ended


def a_start(alert: dict) -> datetime:  # type: ignore[type-arg]
    return datetime.fromisoformat(alert["startsAt"].replace("Z", "+00:00"))


async def test_a_refused_message_stores_none_of_its_resolutions(service: ServiceServer) -> None:
    """Seen in review: the resolutions of a message were stored before its alerts were
    checked, so a message answered 400 (which Alertmanager does not retry) had closed an
    episode all the same."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    async with service.client(service.token("team-a")) as http:
        await http.post(RECEIVER, json=_payload(_alert("firing", start)))
        resolved = _alert("resolved", start, start + timedelta(minutes=5))
        wrong = {**_alert("firing", start, pod="x"), "fingerprint": "bad\u0007print"}
        r = await http.post(RECEIVER, json=_payload(resolved, wrong))
        assert r.status_code == 400, r.text
        anomaly = (await http.get(f"/v1/projects/team-a/anomalies/{KEY}")).json()
        assert (anomaly["firing"], anomaly["last_resolved"]) == (1, None)


async def test_count_instances_restores_one_count_per_alert(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('[projects.team-a.episodes]\ncount = "instances"\n')
    from anomaly_counter import load_settings

    settings = load_settings(config, store_url=f"sqlite:///{tmp_path}/i.db")
    start = datetime.now(UTC) - timedelta(minutes=5)
    with ServiceServer(settings) as server:
        async with server.client(server.token("team-a")) as http:
            pods = [_alert("firing", start, pod=f"api-{n}") for n in range(3)]
            r = await http.post(RECEIVER, json=_payload(*pods))
            assert (r.json()["counted"], r.json()["joined"]) == (3, 0)


async def test_payloads_that_stay_wrong_get_a_4xx(service: ServiceServer) -> None:
    now = datetime.now(UTC)
    async with service.client(service.token("team-a")) as http:
        wrong_version = {**_payload(_alert("firing", now)), "version": "3"}
        no_alerts = {k: v for k, v in _payload(_alert("firing", now)).items() if k != "alerts"}
        bad_time = _payload({**_alert("firing", now), "startsAt": "yesterday"})
        for body in (wrong_version, no_alerts, bad_time, [1, 2]):
            r = await http.post(RECEIVER, json=body)
            assert r.status_code == 422, body
        many_labels = {f"label_{i}": "v" * 300 for i in range(100)}
        r = await http.post(RECEIVER, json=_payload(_alert("firing", now, **many_labels)))
        assert r.status_code == 200 and r.json()["counted"] == 1  # kept within the bounds


async def test_a_custom_label_mapping(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('[alertmanager.labels]\nservice = ["app", "job"]\n')
    from anomaly_counter import load_settings

    settings = load_settings(config, store_url=f"sqlite:///{tmp_path}/m.db")
    with ServiceServer(settings) as server:
        async with server.client(server.token("team-a")) as http:
            alert = _alert("firing", datetime.now(UTC), app="checkout")
            await http.post(RECEIVER, json=_payload(alert))
            key = AnomalyCounter.hash_signature(
                {"alertname": "DiskPressure", "service": "checkout", "namespace": "prod"}
            )
            assert (await http.get(f"/v1/projects/team-a/anomalies/{key}")).status_code == 200


# -- end to end with the real Alertmanager ------------------------------------------------------


async def test_end_to_end_with_two_real_alertmanagers(service: ServiceServer) -> None:
    token = service.token("team-a")
    receiver = f"{service.url}{RECEIVER}"
    other = {**LABELS, "alertname": "HighLatency"}
    other_key = AnomalyCounter.hash_signature(
        {"alertname": "HighLatency", "service": "db", "namespace": "prod"}
    )
    async with service.client(token) as http:

        async def anomaly(key: str) -> dict[str, Any]:
            r = await http.get(f"/v1/projects/team-a/anomalies/{key}")
            return r.json() if r.status_code == 200 else {}

        async def duplicates() -> float:
            text = (await http.get("/metrics")).text
            for line in text.splitlines():
                if line.startswith("anomaly_counter_occurrences_total") and "duplicate" in line:
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        with Alertmanager(receiver, token) as one, Alertmanager(receiver, token) as two:
            started = datetime.now(UTC) - timedelta(seconds=30)
            for am in (one, two):  # an HA pair: both get every alert, both notify
                am.push(LABELS, started)
                am.push(other, started)
            # repeats every second, from both: many deliveries, one episode each
            assert await eventually(lambda: _at_least(duplicates, 6), within=30)
            assert (await anomaly(KEY))["count_24h"] == 1
            assert (await anomaly(other_key))["count_24h"] == 1

            resolved_at = datetime.now(UTC)
            for am in (one, two):
                am.push(LABELS, started, resolved_at)

            async def resolved() -> bool:
                return bool((await anomaly(KEY)).get("last_resolved"))

            assert await eventually(resolved, within=30)
            assert (await anomaly(KEY))["count_24h"] == 1  # resolving counts nothing

            refired = datetime.now(UTC)
            for am in (one, two):
                am.push(LABELS, refired)  # fires again: a new episode

            async def counted_twice() -> bool:
                return (await anomaly(KEY)).get("count_24h") == 2

            assert await eventually(counted_twice, within=30)
            seen = await duplicates()
            assert await eventually(lambda: _at_least(duplicates, seen + 4), within=30)
            assert (await anomaly(KEY))["count_24h"] == 2  # still, after more repeats
            assert (await anomaly(other_key))["count_24h"] == 1


async def test_a_flipping_alert_is_reported_flapping_once_and_stops_once(tmp_path: Path) -> None:
    """A real Alertmanager relays an alert that fires and resolves every two seconds: flapping
    (1-second slots here, for the test's time), said once; once it settles, the sweep says it
    stopped, once."""
    episodes = EpisodeRules(flap_slot_minutes=1 / 60)
    settings = Settings(store_url=f"sqlite:///{tmp_path}/f.db", episodes=episodes, sweep_seconds=1)
    with ServiceServer(settings) as server:
        token = server.token("team-a")
        async with server.client(token) as http:

            async def anomaly() -> dict[str, Any]:
                r = await http.get(f"/v1/projects/team-a/anomalies/{KEY}")
                return r.json() if r.status_code == 200 else {}

            async def flapping_events() -> list[bool]:
                r = await http.get(f"/v1/projects/team-a/anomalies/{KEY}/timeline")
                return [e["started"] for e in r.json()["entries"] if e["kind"] == "flapping"]

            with Alertmanager(f"{server.url}{RECEIVER}", token) as am:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and not (await anomaly()).get("flapping"):
                    started = datetime.now(UTC)
                    am.push(LABELS, started)
                    await asyncio.sleep(1.0)
                    am.push(LABELS, started, datetime.now(UTC))
                    await asyncio.sleep(1.0)
                flipping = await anomaly()
                assert flipping["flapping"] and flipping["flap_percent"] > 30, flipping
                listed = (await http.get("/v1/projects/team-a/flapping")).json()["anomalies"]
                assert [a["anomaly_key"] for a in listed] == [KEY]

                async def settled() -> bool:
                    return await flapping_events() == [False, True]

                assert await eventually(settled, within=40)  # 21 quiet slots, then the sweep
            assert not (await anomaly())["flapping"]
            assert (await http.get("/v1/projects/team-a/flapping")).json()["anomalies"] == []


async def _at_least(read: Any, n: float) -> bool:
    return bool(await read() >= n)


async def test_a_store_outage_is_a_503_that_alertmanager_retries(tmp_path: Path) -> None:
    """While the store is down the receiver answers 503 (Alertmanager retries it); the retry
    after recovery counts each episode once."""
    from .conftest import RedisServer

    redis_server = RedisServer(free_port(), str(tmp_path))
    redis_server.start()
    settings = Settings(store_url=redis_server.url, store_timeout=0.5)
    try:
        with ServiceServer(settings) as server:
            async with server.client(server.token("team-a")) as http:
                started = datetime.now(UTC) - timedelta(minutes=1)
                payload = _payload(_alert("firing", started))
                assert (await http.get("/v1/projects/team-a/anomalies")).status_code == 200
                redis_server.stop()  # the token stays cached: the write itself meets the outage
                r = await http.post(RECEIVER, json=payload)
                assert r.status_code == 503 and r.headers["retry-after"] == "5"
                redis_server.start()
                r = await http.post(RECEIVER, json=payload)  # Alertmanager's retry
                assert r.status_code == 200 and r.json()["counted"] == 1
                r = await http.post(RECEIVER, json=payload)  # and its next repeat
                assert r.json()["duplicates"] == 1
                metrics = (await http.get("/metrics")).text
        assert (
            'anomaly_counter_occurrences_total{outcome="degraded",project="team-a"} 1.0' in metrics
        )
    finally:
        redis_server.stop()
