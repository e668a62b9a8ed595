"""Repairs judged by what happened next (issue 14): a repair followed by a recurrence inside
its verification window failed, one without succeeded once the window closed, whatever order
the repair and the occurrence arrive in; the policy goes by the verified rate once enough
attempts settled. On SQLite, Redis and Cluster."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from anomaly_counter import AnomalyCounter

from .conftest import SIG, Clock, CounterFactory

KEY = AnomalyCounter.hash_signature(SIG)


async def _verdicts(counter: AnomalyCounter) -> list[str | None]:
    return [a.verdict for a in await counter.repair_history(KEY)]


async def test_a_recurrence_inside_the_window_fails_the_repair(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter()
    await counter.record_anomaly(SIG)
    await counter.record_repair_attempt(KEY, "restart_pod", True)
    assert await _verdicts(counter) == ["pending"]
    clock.advance(minutes=20)
    await counter.record_anomaly(SIG)  # back 20 minutes later: the restart did not hold
    (attempt,) = await counter.repair_history(KEY)
    assert attempt.verdict == "failed" and attempt.success  # (its caller said it worked)
    assert attempt.recurred_at == clock.now
    assert attempt.verify_until == attempt.timestamp + timedelta(minutes=30)
    clock.advance(hours=2)
    assert await _verdicts(counter) == ["failed"]  # (a closed window does not change it)
    stats = (await counter.repair_stats(KEY))["restart_pod"]
    assert (stats.total, stats.success, stats.success_rate) == (1, 1, 1.0)  # as reported
    assert stats.verified is not None
    assert (stats.verified.failed, stats.verified.succeeded, stats.verified.pending) == (1, 0, 0)
    assert stats.verified.median_recurrence_seconds == 20 * 60


async def test_no_recurrence_succeeds_when_the_window_closes(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter(verify_windows={"rollback": 120})
    await counter.record_anomaly(SIG)
    await counter.record_repair_attempt(KEY, "restart_pod", False)
    await counter.record_repair_attempt(KEY, "rollback", True)
    clock.advance(minutes=31)
    assert await _verdicts(counter) == ["pending", "succeeded"]  # rollback's window is 2 h
    clock.advance(minutes=60)
    await counter.record_anomaly(SIG)  # after restart_pod's window, inside rollback's
    assert await _verdicts(counter) == ["failed", "succeeded"]
    clock.advance(hours=2)
    await counter.record_anomaly(SIG)  # after both: changes nothing
    assert await _verdicts(counter) == ["failed", "succeeded"]


async def test_the_order_of_arrival_decides_nothing(
    make_counter: CounterFactory, clock: Clock
) -> None:
    """The occurrence that falsifies a repair may arrive before the repair is written (a
    spool replaying, a late report): the verdict is the same."""
    counter = make_counter()
    start = clock.now - timedelta(hours=1)  # (all of it in the past)
    await counter.record_anomaly(SIG, at=start)
    await counter.record_anomaly(SIG, at=start + timedelta(minutes=10))  # arrives first
    await counter.record_repair_attempt(KEY, "restart_pod", True, at=start + timedelta(minutes=1))
    assert await _verdicts(counter) == ["failed"]
    # and an occurrence before the repair, arriving after it, is not its recurrence
    other = make_counter("team-b")
    await other.record_anomaly(SIG, at=start)
    await other.record_repair_attempt(KEY, "scale_up", True, at=start + timedelta(minutes=5))
    await other.record_anomaly(SIG, at=start + timedelta(minutes=2))
    await other.record_anomaly(SIG, at=start + timedelta(minutes=40))  # after the window
    assert await _verdicts(other) == ["succeeded"]


async def test_a_replayed_occurrence_does_not_fail_a_repair_twice_or_late(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter()
    start = clock.now - timedelta(hours=1)
    await counter.record_anomaly(SIG, at=start, occurrence_id="o-1")
    await counter.record_repair_attempt(KEY, "restart_pod", True, at=start + timedelta(minutes=1))
    # the occurrence before the repair, sent again (a retry): a duplicate, not a recurrence
    await counter.record_anomaly(SIG, at=start, occurrence_id="o-1")
    clock.advance(minutes=31)
    assert await _verdicts(counter) == ["succeeded"]


async def test_a_repair_and_its_recurrence_racing_decide_once(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counters = [make_counter() for _ in range(4)]
    start = clock.now - timedelta(hours=1)
    await counters[0].record_anomaly(SIG, at=start)
    repair_at = start + timedelta(minutes=1)
    await asyncio.gather(
        *(
            c.record_repair_attempt(KEY, f"a{i}", True, at=repair_at)
            for i, c in enumerate(counters)
        ),
        *(
            c.record_anomaly(SIG, at=start + timedelta(minutes=5 + i))
            for i, c in enumerate(counters)
        ),
    )
    history = await counters[0].repair_history(KEY)
    assert [a.verdict for a in history] == ["failed"] * 4
    # each noted the recurrence that reached it first (an earlier one arriving after it was
    # falsified does not move it: the verdict is what is decided, once)
    times = {start + timedelta(minutes=5 + i) for i in range(4)}
    assert {a.recurred_at for a in history} <= times


async def test_the_policy_goes_by_the_verified_rate_once_enough_settled(
    make_counter: CounterFactory, clock: Clock
) -> None:
    """restart_pod is always reported successful and the alert always comes back; scale_up
    is reported failed twice out of four but the alert stays away after each."""
    counter = make_counter(verify_min_settled=3)
    await counter.record_anomaly(SIG)
    for i in range(4):
        await counter.record_repair_attempt(KEY, "restart_pod", True)
        clock.advance(minutes=5)
        await counter.record_anomaly(SIG)  # back after 5 minutes, every time
        clock.advance(minutes=40)
        await counter.record_repair_attempt(KEY, "scale_up", i % 2 == 0)
        clock.advance(minutes=40)  # and gone for good after it
    assert await counter.should_skip_action(KEY, "restart_pod")  # 0 of 4 held
    assert not await counter.should_skip_action(KEY, "scale_up")
    ranked = await counter.recommend_actions(KEY, ["restart_pod", "scale_up"])
    assert [r.action for r in ranked] == ["scale_up", "restart_pod"]
    restart = ranked[1]
    assert (
        restart.basis == "verified" and restart.skip and (restart.total, restart.success) == (4, 0)
    )
    assert "stayed away after 0 of 4" in restart.reason
    stats = (await counter.repair_stats(KEY))["restart_pod"]
    assert stats.basis == "verified" and stats.success_rate == 1.0  # (reported: all fine)
    # before enough settled, the reported rate decides, and says so
    fresh = make_counter("team-b", verify_min_settled=3)
    await fresh.record_anomaly(SIG)
    await fresh.record_repair_attempt(KEY, "restart_pod", True)
    await fresh.record_repair_attempt(KEY, "restart_pod", True)
    (early,) = await fresh.recommend_actions(KEY, ["restart_pod"])
    assert early.basis == "reported" and not early.skip


async def test_off_it_is_the_reference_behaviour(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter(verify_repairs=False)
    await counter.record_anomaly(SIG)
    await counter.record_repair_attempt(KEY, "restart_pod", True)
    await counter.record_repair_attempt(KEY, "restart_pod", True)
    clock.advance(minutes=5)
    await counter.record_anomaly(SIG)
    (entry, _) = await counter.get_repair_history(KEY)
    assert set(entry) == {"action", "success", "timestamp"}  # the reference's entry
    assert await counter.get_all_repair_stats(KEY) == {
        "restart_pod": {"total": 2, "success": 2, "success_rate": 1.0}
    }
    assert not await counter.should_skip_action(KEY, "restart_pod")


async def test_switched_off_after_on_it_answers_as_the_reference(
    make_counter: CounterFactory, clock: Clock
) -> None:
    on = make_counter()
    await on.record_anomaly(SIG)
    await on.record_repair_attempt(KEY, "restart_pod", True)
    clock.advance(minutes=5)
    await on.record_anomaly(SIG)
    assert await _verdicts(on) == ["failed"]
    off = make_counter(verify_repairs=False)
    (entry,) = await off.get_repair_history(KEY)
    assert set(entry) == {"action", "success", "timestamp"}
    assert await off.get_all_repair_stats(KEY) == {
        "restart_pod": {"total": 1, "success": 1, "success_rate": 1.0}
    }


async def test_verified_figures_cover_the_last_30_days(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter()
    await counter.record_anomaly(SIG)
    await counter.record_repair_attempt(KEY, "restart_pod", True)
    clock.advance(minutes=5)
    await counter.record_anomaly(SIG)  # failed
    clock.advance(days=31)
    await counter.record_repair_attempt(KEY, "restart_pod", True)
    clock.advance(hours=1)  # (held)
    (stats,) = (await counter.repair_stats(KEY)).values()
    assert stats.verified is not None
    assert (stats.verified.succeeded, stats.verified.failed) == (1, 0)  # the old one is out
    assert [a.verdict for a in await counter.repair_history(KEY)] == ["succeeded", "failed"]


async def test_a_storm_after_a_failed_repair_is_counted_and_decides_nothing_more(
    make_counter: CounterFactory, clock: Clock
) -> None:
    """Once every watched attempt is falsified, the occurrences that follow change nothing of
    it (the store stops reading the history for them: RESULTS measures what they cost)."""
    counter = make_counter()
    start = clock.now - timedelta(hours=1)
    await counter.record_anomaly(SIG, at=start)
    await counter.record_repair_attempt(KEY, "restart_pod", True, at=start)
    for i in range(1, 200):
        await counter.record_anomaly(SIG, at=start + timedelta(seconds=5 * i))
    (attempt,) = await counter.repair_history(KEY)
    assert attempt.verdict == "failed" and attempt.recurred_at == start + timedelta(seconds=5)
    frequency = await counter.get_frequency(KEY)
    assert frequency is not None and frequency.count_24h == 200


async def test_a_project_has_its_own_windows(make_counter: CounterFactory, clock: Clock) -> None:
    counter = make_counter(project_verify_windows={"team-a": {"*": 10, "rollback": 60}})
    await counter.record_anomaly(SIG)
    await counter.record_repair_attempt(KEY, "restart_pod", True)
    await counter.record_repair_attempt(KEY, "rollback", True)
    clock.advance(minutes=11)
    assert await _verdicts(counter) == ["pending", "succeeded"]  # rollback 1 h, the rest 10 min


async def test_a_notice_says_how_many_attempts_held(
    make_counter: CounterFactory, clock: Clock
) -> None:
    from anomaly_counter.notify.notice import ESCALATION, Notice
    from anomaly_counter.outbox import OutboxEntry

    counter = make_counter()
    await counter.record_anomaly(SIG)
    for _ in range(3):
        await counter.record_repair_attempt(KEY, "restart_pod", True)
        clock.advance(minutes=5)
        await counter.record_anomaly(SIG)  # back every time
    clock.advance(hours=1)
    frequency = await counter.get_frequency(KEY)
    entry = OutboxEntry(0, "1", KEY, ESCALATION, 1, 0, (1, 4, 4, 4))
    notice = Notice.of_entry(
        "team-a", entry, frequency, await counter.get_all_repair_stats(KEY), [], "http://x"
    )
    assert "restart_pod 3/3 (100%), held after 0 of 3" in notice.markdown()


async def test_the_histories_of_many_anomalies_in_one_call(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter()
    keys = []
    for i in range(30):
        signature = {**SIG, "alertname": f"Many{i}"}
        frequency = await counter.record_anomaly(signature)
        keys.append(frequency.anomaly_key)
        for action in ("restart_pod", "scale_up")[: 1 + i % 2]:
            await counter.record_repair_attempt(frequency.anomaly_key, action, i % 3 == 0)
    store = counter.store
    one_by_one = [await store.repair_history("team-a", key) for key in [*keys, "0" * 16]]
    assert await store.repair_histories("team-a", [*keys, "0" * 16]) == one_by_one
    ranked = await counter.recommendations(keys)
    assert all(r and r[0].basis == "reported" for r in ranked)  # (all pending yet)
