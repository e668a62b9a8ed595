"""Each counting rule is defined once, in Python, and the Redis scripts get it from there
(issue 12: swapping two dispositions in the Lua table left the whole suite green while Redis
reported each as the other). Here the scripts' own values are read back from a real Redis and
held to Python's, and a script whose table disagrees is caught."""

from __future__ import annotations

import json
import random
from importlib import resources
from typing import Any

import pytest

from anomaly_counter import AnomalyCounter
from anomaly_counter.model import DISPOSITION_TYPES, WINDOWS, EscalationLevel
from anomaly_counter.policy import Thresholds, level_for
from anomaly_counter.ranking import index_bound
from anomaly_counter.stores import redis as redis_store
from anomaly_counter.stores import write_marks
from anomaly_counter.windows import GRAIN_MS, RING_SLOTS, WINDOW_MS

from .conftest import SIG, RedisServer

_READ_BACK = """
local levels = {}
for c = 0, 40 do levels[#levels + 1] = level_for(c, 3, 5, 10) end
local bounds = {}
for c = 0, 1000, 7 do bounds[#bounds + 1] = index_bound(c) end
return cjson.encode({window = WINDOW, grain = GRAIN, ring = RING, day = DAY,
                     indexes = INDEX_NAMES, dispositions = DISPOSITIONS,
                     shard_keys = SHARD_KEYS, levels = levels, bounds = bounds})
"""


def _common() -> str:
    return (resources.files("anomaly_counter.stores") / "lua" / "common.lua").read_text()


def _python_rules() -> dict[str, Any]:
    thresholds = Thresholds(3, 5, 10)
    return {
        "window": list(WINDOW_MS),
        "grain": list(GRAIN_MS),
        "ring": RING_SLOTS,
        "day": 86_400_000,
        "indexes": list(WINDOWS),
        "dispositions": list(DISPOSITION_TYPES),
        "shard_keys": list(redis_store.SHARD_KEYS),
        "levels": [int(level_for(c, thresholds)) for c in range(41)],
        "bounds": [index_bound(c) for c in range(0, 1001, 7)],
    }


def _lua_rules(server: RedisServer, constants: str) -> dict[str, Any]:
    with server.client() as client:
        return dict(json.loads(client.eval(f"{constants}\n{_common()}\n{_READ_BACK}", 0)))


def test_the_scripts_rules_are_pythons(fresh_redis: RedisServer) -> None:
    assert _lua_rules(fresh_redis, redis_store.lua_constants()) == _python_rules()
    assert int(EscalationLevel.PERMANENT_FIX) == 3  # (the levels compared are these numbers)


def test_a_script_that_disagrees_is_caught(fresh_redis: RedisServer) -> None:
    swapped = redis_store.lua_constants().replace(
        "'human_approved', 'manual_resolved'", "'manual_resolved', 'human_approved'"
    )
    assert swapped != redis_store.lua_constants()
    assert _lua_rules(fresh_redis, swapped) != _python_rules()
    shadowed = redis_store.lua_constants() + "\nlocal RING = 128"  # a literal again, in Lua
    assert _lua_rules(fresh_redis, shadowed) != _python_rules()


def test_the_scripts_hold_no_copy_of_a_rule() -> None:
    lua = resources.files("anomaly_counter.stores") / "lua"
    for script in lua.iterdir():
        text = script.read_text()
        for copy in (*DISPOSITION_TYPES, "86400000", "3600000 ", "'24h'", "124"):
            assert copy not in text.replace("REFRESH_EVERY = 3600000", ""), (script.name, copy)


@pytest.mark.parametrize("order", [DISPOSITION_TYPES, tuple(reversed(DISPOSITION_TYPES))])
async def test_dispositions_are_read_by_name(
    fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, order: tuple[str, ...]
) -> None:
    # Python's order changed: the scripts made from it follow, and each count keeps its name
    monkeypatch.setattr(redis_store, "DISPOSITION_TYPES", order)
    monkeypatch.setattr(redis_store, "_NO_DISPOSITIONS", (0,) * len(order))
    async with AnomalyCounter.from_url(fresh_redis.url, "team-a") as counter:
        key = (await counter.record_anomaly(SIG)).anomaly_key
        await counter.record_disposition(key, "human_approved")
        await counter.record_disposition(key, "human_approved")
        await counter.record_disposition(key, "timeout_ignored")
        frequency = await counter.get_frequency(key)
        assert frequency is not None
        assert frequency.human_approved_count == 2 and frequency.manual_resolved_count == 0
        assert frequency.timeout_ignored_count == 1 and frequency.total_resolution_count == 3


_NUMBERED = """
local marks, out = KEYS[1], {}
for i = 1, #ARGV, 2 do
  local seen = seen_numbered(marks, 'w1:' .. ARGV[i] .. ':' .. ARGV[i + 1], '0', 3600)
  out[#out + 1] = cjson.encode({seen, redis.call('HGET', marks, 'ww1') or '',
                                redis.call('HGET', marks, 'uw1') or ''})
end
return out
"""


def test_a_writers_numbers_are_held_alike_by_the_scripts_and_sqlite(
    fresh_redis: RedisServer,
) -> None:
    """The rule of write_marks is written twice (Lua for Redis, Python for SQLite): the same
    writes, in and out of order, with floors moving, replays noted apart, and a batch's run,
    answer alike step by step."""
    rng = random.Random(13)
    steps: list[tuple[int, int]] = []
    for n in range(1, 400):
        floor = max(1, n - rng.randint(0, 12))
        steps.append((n + rng.choice((0, 0, 0, 2, -3)), floor))
        if rng.random() < 0.1:  # a replay looks one up
            steps.append((rng.randint(1, n), write_marks.LOOK_UP_ONLY))
    held, late, expected = "", "", []
    for number, floor in steps:
        seen, held_after, late_after = write_marks.numbered_marks(held, late, number, floor)
        held = held if held_after is None else held_after
        late = late if late_after is None else late_after
        expected.append([seen, f"0,{held}" if held else "", f"0,{late}" if late else ""])
    argv = [str(v) for step in steps for v in step]
    with fresh_redis.client() as client:
        script = f"{redis_store.lua_constants()}\n{_common()}\n{_NUMBERED}"
        answers = [json.loads(a) for a in client.eval(script, 1, "marks", *argv)]
    assert answers == expected
    assert any(seen for seen, _, _ in expected)
    assert any("-" in h and "," in h for _, h, _ in expected) and expected[-1][2]
