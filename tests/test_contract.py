"""The contract every store keeps, run over SQLite and a real redis-server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from anomaly_counter import (
    DISPOSITION_TYPES,
    AnomalyCounter,
    AnomalyNotFoundError,
    InvalidInputError,
    OccurrenceTimeError,
    UnknownDispositionError,
)
from anomaly_counter.model import PermanentFix
from anomaly_counter.stores.base import AnomalyWrite

from .conftest import SIG, Clock, CounterFactory

KEY = AnomalyCounter.hash_signature(SIG)


async def test_counts_every_window_and_first_and_last_seen(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter()
    start = clock.now
    ages = [timedelta(days=20), timedelta(days=3), timedelta(hours=5), timedelta(minutes=30)]
    for age in ages:
        await counter.record_anomaly(SIG, at=start - age)
    frequency = await counter.record_anomaly(SIG)
    assert (frequency.count_1h, frequency.count_24h, frequency.count_7d, frequency.count_30d) == (
        2, 3, 4, 5,
    )  # fmt: skip
    assert frequency.first_seen == start - timedelta(days=20)
    assert frequency.last_seen == start
    assert frequency.anomaly_key == KEY
    assert frequency.signature == SIG
    again = await counter.get_frequency(KEY)
    assert again is not None and again.count_30d == 5 and not again.duplicate


async def test_window_lower_bound_is_inclusive(make_counter: CounterFactory, clock: Clock) -> None:
    counter = make_counter()
    await counter.record_anomaly(SIG, at=clock.now - timedelta(hours=1))
    frequency = await counter.get_frequency(KEY)
    assert frequency is not None and frequency.count_1h == 1
    clock.advance(milliseconds=1)
    frequency = await counter.get_frequency(KEY)
    assert frequency is not None and frequency.count_1h == 0 and frequency.count_24h == 1


async def test_same_timestamp_occurrences_are_all_counted(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter()
    for _ in range(5):
        frequency = await counter.record_anomaly(SIG, at=clock.now)
    assert frequency.count_1h == 5  # the reference collapsed these into one (D1)


async def test_first_seen_stays_first_ever(make_counter: CounterFactory, clock: Clock) -> None:
    counter = make_counter()
    first = clock.now - timedelta(days=29)
    await counter.record_anomaly(SIG, at=first)
    clock.advance(days=10)  # the first occurrence has left the 30-day window
    frequency = await counter.record_anomaly(SIG)
    assert frequency.count_30d == 1
    assert frequency.first_seen == first  # not the oldest one still kept (D12)


async def test_windows_end_at_the_given_time(make_counter: CounterFactory, clock: Clock) -> None:
    counter = make_counter()
    for minutes in (0, 10, 20, 90):
        await counter.record_anomaly(SIG, at=clock.now - timedelta(minutes=minutes))
    past = await counter.get_frequency(KEY, at=clock.now - timedelta(minutes=15))
    assert past is not None and (past.count_1h, past.count_24h) == (1, 2)
    late = await counter.record_anomaly(SIG, at=clock.now - timedelta(minutes=50))
    assert late.count_1h == 2  # 50 and 90 minutes ago, seen from 50 minutes ago
    assert late.count_24h == 2
    assert late.last_seen == clock.now


async def test_times_out_of_range_and_naive_times_are_refused(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter()
    with pytest.raises(OccurrenceTimeError, match="older than 30 days"):
        await counter.record_anomaly(SIG, at=clock.now - timedelta(days=30, seconds=1))
    with pytest.raises(OccurrenceTimeError, match="future"):
        await counter.record_anomaly(SIG, at=clock.now + timedelta(minutes=6))
    other = make_counter("team-b")  # (a repair's time is an event's, and says so)
    await other.record_anomaly(SIG)
    with pytest.raises(OccurrenceTimeError, match=r"^event time .* older than 30 days"):
        await other.record_repair_attempt(
            KEY, "restart_pod", True, at=clock.now - timedelta(days=40)
        )
    with pytest.raises(OccurrenceTimeError, match="naive"):
        await counter.record_anomaly(SIG, at=datetime(2026, 3, 29, 12, 0))
    ok = await counter.record_anomaly(SIG, at=clock.now + timedelta(minutes=4))
    assert ok.count_1h == 1
    assert await counter.get_frequency(KEY) is not None


async def test_other_time_zones_are_the_same_instant(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter()
    taipei = clock.now.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Taipei"))
    frequency = await counter.record_anomaly(SIG, at=taipei)
    assert frequency.last_seen == clock.now and frequency.last_seen.tzinfo == UTC


async def test_escalation_reports_each_crossing_once(make_counter: CounterFactory) -> None:
    counter = make_counter()
    crossings = []
    for _ in range(12):
        frequency = await counter.record_anomaly(SIG)
        crossings.append(frequency.escalated_to)
        expected = {3: "REPEAT", 5: "ESCALATE", 10: "PERMANENT_FIX"}
        level = [lv for k, lv in sorted(expected.items()) if frequency.count_24h >= k]
        assert frequency.escalation_level == (level[-1] if level else None)
    assert (
        crossings
        == [None, None, "REPEAT", None, "ESCALATE", *[None] * 4, "PERMANENT_FIX"] + [None] * 2
    )


async def test_cooled_off_anomaly_is_announced_again(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter()
    first = [(await counter.record_anomaly(SIG)).escalated_to for _ in range(3)]
    assert first[-1] == "REPEAT"
    clock.advance(days=2)
    again = [(await counter.record_anomaly(SIG)).escalated_to for _ in range(3)]
    assert again == [None, None, "REPEAT"]


async def test_per_project_thresholds(make_counter: CounterFactory) -> None:
    from anomaly_counter import Thresholds

    counter = make_counter(project_thresholds={"team-a": Thresholds(2, 4, 6)})
    levels = [(await counter.record_anomaly(SIG)).escalated_to for _ in range(6)]
    assert levels == [None, "REPEAT", None, "ESCALATE", None, "PERMANENT_FIX"]
    assert counter.THRESHOLDS == {"REPEAT": 2, "ESCALATE": 4, "PERMANENT_FIX": 6}


async def test_occurrence_ids_are_counted_once(make_counter: CounterFactory, clock: Clock) -> None:
    counter = make_counter()
    first = await counter.record_anomaly(SIG, occurrence_id="fp1@2026-03-29T11:00")
    clock.advance(hours=4)  # Alertmanager's repeat interval
    repeat = await counter.record_anomaly(SIG, occurrence_id="fp1@2026-03-29T11:00")
    clock.advance(days=6, hours=23)  # still within the 7-day horizon
    late = await counter.record_anomaly(SIG, occurrence_id="fp1@2026-03-29T11:00")
    assert not first.duplicate and repeat.duplicate and late.duplicate
    assert late.count_30d == 1 and late.escalated_to is None
    other = await counter.record_anomaly(SIG, occurrence_id="fp1@2026-04-05T10:00")
    assert not other.duplicate and other.count_30d == 2


async def test_occurrence_ids_are_per_anomaly_and_per_project(
    make_counter: CounterFactory,
) -> None:
    a, b = make_counter("team-a"), make_counter("team-b")
    await a.record_anomaly(SIG, occurrence_id="x")
    assert not (await a.record_anomaly({**SIG, "service": "web"}, occurrence_id="x")).duplicate
    assert not (await b.record_anomaly(SIG, occurrence_id="x")).duplicate


async def test_record_many_counts_in_order_with_duplicates(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter()
    batch = [
        {"signature": SIG, "at": clock.now - timedelta(minutes=i), "occurrence_id": f"e{i % 4}"}
        for i in range(6)
    ]
    results = await counter.record_many(batch)
    assert [r.duplicate for r in results] == [False] * 4 + [True] * 2
    assert [r.escalated_to for r in results].count("REPEAT") == 1
    frequency = await counter.get_frequency(KEY)
    assert frequency is not None and frequency.count_1h == 4


async def test_record_many_stores_nothing_when_one_item_is_bad(
    make_counter: CounterFactory,
) -> None:
    counter = make_counter()
    with pytest.raises(InvalidInputError, match="occurrence 1"):
        await counter.record_many([{"signature": SIG}, {"signature": "not a mapping"}])
    assert await counter.get_frequency(KEY) is None
    assert await counter.record_many([]) == []


async def test_repairs_count_every_attempt_in_retention(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter(verify_repairs=False)  # (the reference's figures, as they were)
    await counter.record_anomaly(SIG)
    for i in range(150):  # the reference judged only the last 100 (D9)
        await counter.record_repair_attempt(KEY, "restart_pod", success=i < 30)
    await counter.record_repair_attempt(KEY, "scale_up", True)
    stats = await counter.get_repair_success_rate(KEY, "restart_pod")
    assert stats == {"action": "restart_pod", "total": 150, "success": 30, "success_rate": 0.2}
    assert not await counter.should_skip_action(KEY, "restart_pod")
    assert await counter.should_skip_action(KEY, "restart_pod", min_success_rate=0.25)
    history = await counter.get_repair_history(KEY)
    assert len(history) == 100 and history[0]["action"] == "scale_up"
    all_stats = await counter.get_all_repair_stats(KEY)
    assert all_stats["scale_up"] == {"total": 1, "success": 1, "success_rate": 1.0}
    frequency = await counter.record_anomaly(SIG)
    assert frequency.auto_repair_count == 151 and frequency.count_24h == 2
    clock.advance(days=31)
    assert await counter.get_all_repair_stats(KEY) == {}


async def test_should_skip_needs_two_attempts(make_counter: CounterFactory) -> None:
    counter = make_counter()
    await counter.record_anomaly(SIG)
    await counter.record_repair_attempt(KEY, "restart_pod", False)
    assert not await counter.should_skip_action(KEY, "restart_pod")
    await counter.record_repair_attempt(KEY, "restart_pod", False)
    assert await counter.should_skip_action(KEY, "restart_pod")
    assert (await counter.get_repair_success_rate(KEY, "never")) == {
        "action": "never", "total": 0, "success": 0, "success_rate": 0.0,
    }  # fmt: skip


async def test_recommendations_rank_by_evidence(make_counter: CounterFactory) -> None:
    counter = make_counter()
    await counter.record_anomaly(SIG)
    for ok in (False, False, False, False, True):
        await counter.record_repair_attempt(KEY, "restart_pod", ok)
    for ok in (True, True, True, False):
        await counter.record_repair_attempt(KEY, "rollback", ok)
    ranked = await counter.recommend_actions(KEY, ["restart_pod", "scale_up", "rollback"])
    assert [r.action for r in ranked] == ["rollback", "scale_up", "restart_pod"]
    assert [r.rank for r in ranked] == [1, 2, 3]
    assert ranked[1].total == 0 and "never tried" in ranked[1].reason
    assert ranked[2].skip is False and "1/5" in ranked[2].reason
    assert ranked[0].to_dict()["success_rate"] == 0.75
    with pytest.raises(InvalidInputError):
        await counter.recommend_actions(KEY, [])


async def test_dispositions_all_five_and_unknown_refused(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter()
    await counter.record_anomaly(SIG)
    for kind in DISPOSITION_TYPES:
        await counter.record_disposition(KEY, kind)
    await counter.record_disposition(KEY, "timeout_ignored")
    with pytest.raises(UnknownDispositionError, match="unknown disposition"):
        await counter.record_disposition(KEY, "ignored_forever")
    stats = await counter.get_disposition_stats(KEY)
    assert stats == {**dict.fromkeys(DISPOSITION_TYPES, 1), "timeout_ignored": 2, "total": 6}
    frequency = await counter.record_anomaly(SIG)
    assert frequency.timeout_ignored_count == 2 and frequency.auto_repair_disposition_count == 1
    assert frequency.total_resolution_count == 6 and frequency.human_approved_count == 1
    assert frequency.to_dict()["timeout_ignored_count"] == 2


async def test_project_disposition_summary_and_top(make_counter: CounterFactory) -> None:
    counter = make_counter()
    other = make_counter("team-b")
    keys = []
    for n in range(30):
        signature = {"alertname": f"Alert{n}", "service": "svc"}
        key = (await counter.record_anomaly(signature)).anomaly_key
        keys.append(key)
        for _ in range(n % 7):
            await counter.record_disposition(key, "human_approved")
    with pytest.raises(AnomalyNotFoundError, match="team-b"):  # (not an anomaly of theirs)
        await other.record_disposition(keys[0], "manual_resolved")
    summary, top = await counter.get_all_disposition_stats(limit=5)
    expected_total = sum(n % 7 for n in range(30))
    assert summary["human_approved"] == expected_total == summary["total"]
    assert summary["manual_resolved"] == 0
    assert [row["total"] for row in top] == [6, 6, 6, 6, 5]
    assert all(row["alert_name"].startswith("Alert") for row in top)
    _, everything = await counter.get_all_disposition_stats(limit=100)
    assert len(everything) == sum(1 for n in range(30) if n % 7)  # any limit, not only 20


async def test_top_anomalies_is_exact_as_counts_decay(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter()
    start = clock.now
    # Alert n fires n times, the even ones 20 hours ago, the odd ones just now.
    for n in range(1, 25):
        at = start - timedelta(hours=20) if n % 2 == 0 else start
        await counter.record_many([{"signature": {"alertname": f"A{n}"}, "at": at}] * n)
    top = await counter.top_anomalies(limit=3)
    assert [(row["alert_name"], row["count"]) for row in top] == [("A24", 24), ("A23", 23),
                                                                  ("A22", 22)]  # fmt: skip
    clock.advance(hours=5)  # the even ones left the 24h window; no write told the index
    top = await counter.top_anomalies(limit=3)
    assert [(row["alert_name"], row["count"]) for row in top] == [("A23", 23), ("A21", 21),
                                                                  ("A19", 19)]  # fmt: skip
    assert [r["count"] for r in await counter.top_anomalies(limit=100, window="1h")] == []
    week = await counter.top_anomalies(limit=100, window="7d")
    assert len(week) == 24 and week[0]["count_7d"] == 24
    with pytest.raises(InvalidInputError):
        await counter.top_anomalies(window="2h")
    with pytest.raises(InvalidInputError):
        await counter.top_anomalies(limit=0)


async def test_permanent_fix_and_regression(make_counter: CounterFactory, clock: Clock) -> None:
    counter = make_counter()
    before = await counter.record_anomaly(SIG)
    assert not before.permanent_fix_applied and not before.regressed
    assert before.permanent_fix is None and before.regressed_at is None
    clock.advance(minutes=1)
    fixed_at = clock.now
    await counter.mark_permanent_fix_applied(KEY, "raised the memory limit to 1 GiB", by="alice")
    read = await counter.get_frequency(KEY)
    assert read is not None and not read.regressed
    assert read.permanent_fix == PermanentFix("raised the memory limit to 1 GiB", fixed_at, "alice")
    assert read.to_dict()["permanent_fix"] == {
        "description": "raised the memory limit to 1 GiB",
        "at": fixed_at.isoformat(),
        "by": "alice",
    }
    early = await counter.record_anomaly(SIG, at=fixed_at - timedelta(minutes=30))
    assert not early.regressed and not early.newly_regressed  # it happened before the fix
    clock.advance(hours=2)
    back = await counter.record_anomaly(SIG)
    again = await counter.record_anomaly(SIG)
    assert back.permanent_fix_applied and back.regressed and back.newly_regressed
    assert back.regressed_at == clock.now and back.permanent_fix == read.permanent_fix
    assert again.regressed and not again.newly_regressed
    # The anomaly stays regressed (tried as a new user would: reads said regressed: false)
    shown = await counter.get_frequency(KEY)
    assert shown is not None and shown.regressed and shown.regressed_at == clock.now
    assert shown.to_dict()["regressed_at"] == clock.now.isoformat()
    late = await counter.record_anomaly(SIG, at=clock.now - timedelta(hours=3))
    assert late.regressed and not late.newly_regressed  # the anomaly is; this one came before
    clock.advance(minutes=1)
    await counter.mark_permanent_fix_applied(KEY, "second fix")
    fixed = await counter.get_frequency(KEY)
    assert fixed is not None and not fixed.regressed and fixed.permanent_fix is not None
    assert fixed.permanent_fix.description == "second fix" and fixed.permanent_fix.by is None
    clock.advance(minutes=1)
    assert (await counter.record_anomaly(SIG)).newly_regressed
    clock.advance(days=91)
    expired = await counter.record_anomaly(SIG)
    assert not expired.permanent_fix_applied and not expired.regressed
    assert expired.permanent_fix is None


async def test_undoing_a_fix(make_counter: CounterFactory, clock: Clock) -> None:
    counter = make_counter()
    await counter.record_anomaly(SIG)
    assert not await counter.undo_permanent_fix(KEY)  # nothing to undo
    await counter.mark_permanent_fix_applied(KEY, "wrong anomaly", by="bob")
    clock.advance(minutes=5)
    assert (await counter.record_anomaly(SIG)).newly_regressed
    assert await counter.undo_permanent_fix(KEY, by="bob")
    undone = await counter.get_frequency(KEY)
    assert undone is not None and not undone.permanent_fix_applied and not undone.regressed
    assert undone.permanent_fix is None and undone.regressed_at is None
    after = await counter.record_anomaly(SIG)
    assert not after.regressed and not after.newly_regressed
    assert not await counter.undo_permanent_fix(KEY)
    story = await counter.timeline(KEY)  # newest first; the same instant: latest written first
    assert [e.kind for e in story] == ["escalated", "fix_undone", "regressed", "fix", "first_seen"]
    assert story[1].by == "bob" and story[3].by == "bob" and story[3].description == "wrong anomaly"
    with pytest.raises(InvalidInputError):
        await counter.undo_permanent_fix(KEY, by="x" * 65)


async def test_unknown_anomaly_reads_are_empty(make_counter: CounterFactory) -> None:
    counter = make_counter()
    assert await counter.get_frequency("0123456789abcdef") is None
    assert await counter.get_all_repair_stats("0123456789abcdef") == {}
    assert (await counter.get_disposition_stats("0123456789abcdef"))["total"] == 0
    assert await counter.top_anomalies() == []
    summary, top = await counter.get_all_disposition_stats()
    assert summary["total"] == 0 and top == []


async def test_invalid_inputs_get_named_errors(make_counter: CounterFactory) -> None:
    counter = make_counter()
    bad_calls = [
        counter.record_anomaly("PodCrash"),  # type: ignore[arg-type]
        counter.record_anomaly({"alertname": {"nested": 1}}),
        counter.record_anomaly({f"l{i}": "v" for i in range(40)}),
        counter.record_anomaly({"alertname": "x" * 5000}),
        counter.record_anomaly(SIG, occurrence_id=""),
        counter.get_frequency(""),
        counter.get_frequency("x" * 200),
        counter.get_frequency("bad\x00key"),
        counter.record_repair_attempt(KEY, "", True),
        counter.record_repair_attempt(KEY, "restart_pod", "yes"),  # type: ignore[arg-type]
        counter.should_skip_action(KEY, "restart_pod", min_success_rate=2),
        counter.mark_permanent_fix_applied(KEY, ""),
        counter.get_all_disposition_stats(limit=-1),
    ]
    for call in bad_calls:
        with pytest.raises(InvalidInputError):
            await call
    with pytest.raises(InvalidInputError, match="project id"):
        AnomalyCounter.from_url("sqlite:///unused.db", "bad project!")


async def test_concurrent_writers_one_counter(make_counter: CounterFactory) -> None:
    counter = make_counter()
    results = await asyncio.gather(*(counter.record_anomaly(SIG) for _ in range(50)))
    assert sorted(r.count_24h for r in results) == list(range(1, 51))
    levels = [r.escalated_to for r in results if r.escalated_to]
    assert sorted(levels) == ["ESCALATE", "PERMANENT_FIX", "REPEAT"]


async def test_a_smaller_tail_capacity_keeps_counting(
    make_counter: CounterFactory, clock: Clock
) -> None:
    from anomaly_counter import Thresholds

    roomy = make_counter(thresholds=Thresholds(10, 20, 100))  # keeps 200 times exactly
    start = clock.now - timedelta(hours=10)
    await roomy.record_many(
        [{"signature": SIG, "at": start + timedelta(minutes=3 * i)} for i in range(150)]
    )
    tight = make_counter()  # the default keeps 128: the next write pushes the rest out
    frequency = await tight.record_anomaly(SIG)
    assert (frequency.count_1h, frequency.count_24h, frequency.count_30d) == (1, 151, 151)
    again = await tight.get_frequency(KEY, at=start + timedelta(minutes=3 * 149))
    assert again is not None and again.count_24h == 150


async def test_resolutions_keep_the_latest_of_a_known_anomaly(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter()
    await counter.record_resolution(KEY, at=clock.now)  # unknown anomaly: nothing kept
    assert await counter.get_frequency(KEY) is None
    await counter.record_anomaly(SIG, at=clock.now - timedelta(hours=2))
    assert (await counter.get_frequency(KEY)).last_resolved is None  # type: ignore[union-attr]
    await counter.record_resolution(KEY, at=clock.now - timedelta(hours=1))
    await counter.record_resolution(KEY, at=clock.now - timedelta(hours=1, minutes=30))
    frequency = await counter.get_frequency(KEY)
    assert frequency is not None and frequency.last_resolved == clock.now - timedelta(hours=1)
    assert frequency.count_24h == 1  # a resolution counts nothing
    assert frequency.to_dict()["last_resolved"] == (clock.now - timedelta(hours=1)).isoformat()
    other = await make_counter("team-b").get_frequency(KEY)
    assert other is None


async def test_tokens_are_kept_as_digests_by_id(make_counter: CounterFactory) -> None:
    from anomaly_counter.tokens import new_token, parse_token, token_matches

    store = make_counter().store
    text_a, record_a = new_token("team-a", 1_000, label="alertmanager")
    text_b, record_b = new_token("team-b", 2_000)
    for record in (record_a, record_b):
        await store.save_token(record)
    parsed = parse_token(text_a)
    assert parsed is not None and parsed[0] == record_a.token_id
    found = await store.get_token(parsed[0])
    assert found == record_a and token_matches(found, parsed[1])
    assert parsed[1] not in repr(found)  # the secret itself is never stored
    assert not token_matches(found, parse_token(text_b)[1])  # type: ignore[index]
    assert await store.list_tokens() == [record_a, record_b]
    assert await store.list_tokens("team-b") == [record_b]
    assert await store.revoke_token(record_a.token_id)
    assert not await store.revoke_token(record_a.token_id)
    assert await store.get_token(record_a.token_id) is None
    assert parse_token("act_nothex_short") is None


async def test_a_retried_repair_or_disposition_counts_once(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter()
    store, now = counter.store, int(clock.now.timestamp() * 1000)
    for write_id in ("w1", "w1", "w2"):  # the second is a retry of the first
        await store.record_repair(
            "team-a", AnomalyWrite(KEY, now, now, write_id), "restart_pod", True
        )
        await store.record_disposition(
            "team-a", AnomalyWrite(KEY, now, now, f"d-{write_id}"), "auto_repair"
        )
    await store.record_repair("team-a", AnomalyWrite(KEY, now, now), "restart_pod", False)  # no id
    assert (await counter.get_all_repair_stats(KEY))["restart_pod"]["total"] == 3
    assert (await counter.get_disposition_stats(KEY))["auto_repair"] == 2
    other = make_counter("team-b")  # ids are per anomaly and project
    await other.store.record_repair(
        "team-b", AnomalyWrite(KEY, now, now, "w1"), "restart_pod", True
    )
    assert (await other.get_all_repair_stats(KEY))["restart_pod"]["total"] == 1
