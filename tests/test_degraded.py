"""A store that cannot be reached: degraded answers by default, a named error when strict."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from anomaly_counter import AnomalyCounter, Settings, StoreUnavailableError

from .conftest import SIG, free_port


def unreachable(**options: object) -> AnomalyCounter:
    url = f"redis://127.0.0.1:{free_port()}/0"
    return AnomalyCounter.from_url(url, "team-a", settings=Settings(store_timeout=0.5, **options))  # type: ignore[arg-type]


async def test_calls_degrade_instead_of_raising() -> None:
    counter = unreachable()
    at = datetime(2026, 11, 1, tzinfo=UTC)
    frequency = await counter.record_anomaly(SIG, at=datetime.now(UTC))
    assert frequency.degraded and frequency.count_24h == 0 and frequency.escalation_level is None
    assert (await counter.record_many([{"signature": SIG}] * 3))[2].degraded
    assert (await counter.get_frequency("abc")).degraded  # type: ignore[union-attr]
    assert (await counter.get_frequency("abc", at=at)).last_seen == at  # type: ignore[union-attr]
    assert await counter.get_all_repair_stats("abc") == {}
    assert not await counter.should_skip_action("abc", "restart_pod")
    assert (await counter.get_disposition_stats("abc"))["total"] == 0
    assert await counter.top_anomalies() == []
    assert (await counter.get_all_disposition_stats())[1] == []
    await counter.record_repair_attempt("abc", "restart_pod", True)
    await counter.record_disposition("abc", "auto_repair")
    await counter.mark_permanent_fix_applied("abc", "fixed")
    await counter.aclose()


async def test_strict_raises_a_named_error() -> None:
    counter = unreachable(strict=True)
    with pytest.raises(StoreUnavailableError):
        await counter.record_anomaly(SIG)
    with pytest.raises(StoreUnavailableError):
        await counter.top_anomalies()
    with pytest.raises(StoreUnavailableError):
        await counter.ping()
    await counter.aclose()


async def test_sqlite_on_an_unwritable_path_degrades(tmp_path: object) -> None:
    url = "sqlite:////proc/no-such-dir/counter.db"
    counter = AnomalyCounter.from_url(url, "team-a", settings=Settings())
    assert (await counter.record_anomaly(SIG)).degraded
    await counter.aclose()
