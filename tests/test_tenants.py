"""Tenant isolation under hostile input: nothing crosses from one project to another."""

from __future__ import annotations

import pytest

from anomaly_counter import AnomalyCounter, InvalidInputError
from anomaly_counter.errors import AnomalyNotFoundError
from anomaly_counter.stores.base import AnomalyWrite

from .conftest import Clock, CounterFactory, RedisServer

HOSTILE = ["*", "?", "[a-z]", "{team-a}", "team-a:x", "\\", "%2A", "ü" * 40 + "🔥" * 30, "a b"]


async def test_hostile_keys_and_labels_stay_in_their_project(
    make_counter: CounterFactory, clock: Clock
) -> None:
    now_ms = int(clock.now.timestamp() * 1000)
    victim = make_counter("team-a")
    attacker = make_counter("team-b")
    victim_sig = {"alertname": "Victim", "service": "payments"}
    victim_key = (await victim.record_anomaly(victim_sig)).anomaly_key
    await victim.record_repair_attempt(victim_key, "restart_pod", True)
    await victim.record_disposition(victim_key, "human_approved")
    for text in HOSTILE:
        sig = {"alertname": text, "service": text, "namespace": text, "reason": text}
        key = (await attacker.record_anomaly(sig, occurrence_id=text)).anomaly_key
        with pytest.raises(AnomalyNotFoundError):  # no anomaly of theirs has that key
            await attacker.record_repair_attempt(text, text, False)
        await attacker.record_repair_attempt(key, text, False)
        await attacker.record_disposition(key, "timeout_ignored")
        await attacker.mark_permanent_fix_applied(key, text)
        # the store takes any key it is given (an import does): still only theirs
        write = AnomalyWrite(text, now_ms, now_ms)
        await attacker.store.record_disposition("team-b", write, "timeout_ignored")
        assert await attacker.get_frequency(text) is None  # no occurrence under that key
        assert (await attacker.get_disposition_stats(text))["total"] == 1
        assert await attacker.get_frequency(victim_key) is None
    assert await attacker.get_all_repair_stats(victim_key) == {}
    assert (await attacker.get_disposition_stats(victim_key))["total"] == 0
    assert all(row["anomaly_key"] != victim_key for row in await attacker.top_anomalies(100))
    summary, _ = await attacker.get_all_disposition_stats()
    assert summary["human_approved"] == 0
    # the victim sees exactly its own data, untouched
    frequency = await victim.get_frequency(victim_key)
    assert (
        frequency is not None and frequency.count_24h == 1 and not frequency.permanent_fix_applied
    )
    stats = await victim.get_all_repair_stats(victim_key)
    assert list(stats) == ["restart_pod"]
    restart = stats["restart_pod"]
    assert (restart["total"], restart["success"], restart["success_rate"]) == (1, 1, 1.0)
    assert restart["verified_pending"] == 1  # its own attempt, watched; nobody else's
    assert [row["anomaly_key"] for row in await victim.top_anomalies(100)] == [victim_key]
    summary, _ = await victim.get_all_disposition_stats()
    assert summary["total"] == 1 and summary["timeout_ignored"] == 0


@pytest.mark.parametrize("project", ["*", "a:b", "{x}", "a b", "", "ü", "x" * 65, "-lead"])
def test_project_ids_are_validated(project: str) -> None:
    with pytest.raises(InvalidInputError, match="project id"):
        AnomalyCounter.from_url("sqlite:///unused.db", project)


async def test_redis_keys_carry_only_encoded_parts(fresh_redis: RedisServer) -> None:
    counter = AnomalyCounter.from_url(fresh_redis.url, "team-b")
    try:
        for text in HOSTILE:  # (the store takes any key: an import's too)
            write = AnomalyWrite(text, 1_700_000_000_000, 1_700_000_000_000)
            await counter.store.record_repair("team-b", write, "restart_pod", True)
            await counter.record_anomaly({"alertname": text})
    finally:
        await counter.aclose()
    with fresh_redis.client() as client:
        keys = [k.decode() for k in client.keys("*")]
    assert keys
    for key in keys:
        prefix, tag, rest = key.split(":", 2)
        assert prefix == "ac" and tag.startswith("{team-b.") and tag.endswith("}")
        assert not any(c in rest for c in "*?[]{}\\ ") and rest.isascii()
