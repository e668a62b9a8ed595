"""The durable spool on its own: order, bounds, and recovery from torn and damaged files."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_counter import spool as spool_module
from anomaly_counter.spool import Spool, SpoolFullError


def _records(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"seq": i, "accepted_ms": 1_000 + i, "pad": "x" * 40} for i in range(start, start + n)]


def _drain(spool: Spool, batch: int = 7) -> list[object]:
    seen = []
    while True:
        records, position = spool.peek(batch)
        if not records:
            return seen
        seen += [r["seq"] for r in records]
        spool.commit(position, len(records))


def test_records_come_back_in_order_once_committed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(_records(5))
    spool.append(_records(5, start=5))
    stats = spool.stats()
    assert stats.depth == 10 and stats.oldest_ms == 1_000 and stats.size_bytes > 0
    records, position = spool.peek(3)
    assert [r["seq"] for r in records] == [0, 1, 2]
    assert [r["seq"] for r in spool.peek(3)[0]] == [0, 1, 2]  # peeking moves nothing
    spool.commit(position, 3)
    assert spool.stats().depth == 7 and spool.stats().oldest_ms == 1_003
    spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20)  # a restart resumes at the checkpoint
    assert again.stats().depth == 7
    assert _drain(again) == list(range(3, 10))
    assert again.stats() == spool_module.SpoolStats(0, 0, None, 0)


def test_an_uncommitted_batch_is_read_again_after_a_crash(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(_records(4))
    assert len(spool.peek(4)[0]) == 4  # stored in the store... then the process dies
    del spool
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert [r["seq"] for r in again.peek(10)[0]] == [0, 1, 2, 3]  # replayed again: ids dedup


def test_a_full_spool_refuses_and_keeps_what_it_has(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1_000)
    spool.append(_records(5))
    with pytest.raises(SpoolFullError, match="full"):
        spool.append(_records(20, start=5))
    assert spool.stats().depth == 5
    _, position = spool.peek(5)
    spool.commit(position, 5)  # room again once replayed
    spool.append(_records(5, start=5))
    assert _drain(spool) == [5, 6, 7, 8, 9]


def test_a_torn_tail_is_cut_off_and_nothing_intact_is_lost(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(_records(3))
    spool.close()
    segment = next(tmp_path.glob("segment-*.log"))
    with open(segment, "ab") as f:  # a crash in the middle of writing the fourth record
        f.write(spool_module.encode(_records(1, start=3)[0])[:25])
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.stats().depth == 3 and again.lost == 0
    again.append(_records(2, start=4))  # appends go on cleanly after the cut
    assert _drain(again) == [0, 1, 2, 4, 5]


def test_a_flipped_bit_loses_that_record_only_and_says_so(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(_records(5))
    spool.close()
    segment = next(tmp_path.glob("segment-*.log"))
    data = bytearray(segment.read_bytes())
    record = len(spool_module.encode(_records(1)[0]))
    data[record + 30] ^= 0x04  # inside the second record's payload
    segment.write_bytes(bytes(data))
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.lost == 1 and again.stats().depth == 4 and again.stats().lost == 1
    assert _drain(again) == [0, 2, 3, 4]


def test_segments_rotate_and_are_deleted_once_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 600)
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for start in range(0, 60, 6):
        spool.append(_records(6, start=start))
    assert len(list(tmp_path.glob("segment-*.log"))) >= 5
    assert _drain(spool, batch=4) == list(range(60))
    assert len(list(tmp_path.glob("segment-*.log"))) == 1  # the active one
    spool.close()
    assert Spool(tmp_path, max_bytes=1 << 20).stats().depth == 0
