"""Incidents rather than instances, and flapping (issue 14): Alertmanager episodes of one
anomaly firing together count once; the firing/resolved transitions on a 5-minute grid make the
flapping percent, with a start and a stop threshold. Flapping is held to a brute-force model
written plainly here, on random streams (in and out of order), in Python and on every store."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest

from anomaly_counter import AnomalyCounter
from anomaly_counter.episodes import EpisodeRules, FlapState, IncidentState
from anomaly_counter.errors import ConfigurationError
from anomaly_counter.model import Occurrence
from anomaly_counter.settings import WebhookConfig, load_settings

from .conftest import SIG, Clock, CounterFactory

KEY = AnomalyCounter.hash_signature(SIG)
SLOT = timedelta(minutes=5)


@dataclass
class FlapModel:
    """Flapping as the issue defines it, the slow and obvious way: the set of slots that had a
    change; over the 21 slots ending at the later of the newest change and now, the weighted
    percent (0.8 oldest .. 1.2 newest, summing to 21); start above 30 %, stop below 25 %."""

    start: float = 30.0
    stop: float = 25.0
    slot_ms: int = 300_000
    changed: set[int] = field(default_factory=set)
    flapping: bool = False

    def percent(self, now_ms: int) -> float:
        if not self.changed:
            return 0.0
        end = max(max(self.changed), now_ms // self.slot_ms)
        slots = range(end - 20, end + 1)  # oldest first
        weights = [0.8 + 0.4 * i / 20 for i in range(21)]
        return sum(w for w, s in zip(weights, slots, strict=True) if s in self.changed) / 21 * 100

    def step(self, at_ms: int | None, now_ms: int) -> None:
        if at_ms is not None:
            newest = max(self.changed, default=at_ms // self.slot_ms)
            if at_ms // self.slot_ms > newest - 21:  # (older than the 21 slots: nothing)
                self.changed.add(at_ms // self.slot_ms)
        percent = self.percent(now_ms)
        if not self.flapping and percent > self.start + 1e-9:
            self.flapping = True
        elif self.flapping and percent < self.stop - 1e-9:
            self.flapping = False


def _stream(rng: random.Random, n: int, start_ms: int) -> list[tuple[str, int, int]]:
    """(kind, time, now) steps: firings and resolutions at a random pace (bursts of flips and
    quiet stretches), now and then out of order, and looks of the sweep (time 0)."""
    steps, now = [], start_ms
    for _ in range(n):
        now += rng.choice((20_000, 60_000, 120_000, 300_000, 600_000, 1_800_000))
        kind = rng.choice(("fire", "fire", "resolve", "resolve", "sweep"))
        at = now - (rng.randrange(0, 1_800_000) if rng.random() < 0.2 else 0)  # late ones
        steps.append((kind, at, now))
    return steps


def test_the_weights_go_from_0_8_to_1_2_and_sum_to_21() -> None:
    flap = FlapState()
    for k in range(21):
        flap.mark(k * 300_000, 300_000)
    assert flap.units(20) == 2100  # every slot changed: 100 %
    assert flap.percent(20 * 300_000) == 100.0
    only_oldest, only_newest = FlapState(), FlapState()
    only_oldest.mark(0, 300_000)
    only_oldest.newest, only_oldest.mask = 20, 1 << 20  # (slot 0 seen from slot 20)
    only_newest.mark(20 * 300_000, 300_000)
    assert only_oldest.units(20) == 80 and only_newest.units(20) == 120


@pytest.mark.parametrize("seed", range(40))
def test_flapping_matches_the_model_on_random_streams(seed: int) -> None:
    rng = random.Random(seed)
    model, flap = FlapModel(), FlapState()
    for kind, at, now in _stream(rng, 150, 1_700_000_000_000):
        mark = None if kind == "sweep" else at
        model.step(mark, now)
        if mark is not None:
            flap.mark(mark, 300_000)
        flap.evaluate(now, 30.0, 25.0)
        assert flap.flapping == model.flapping
        assert flap.percent(now) == pytest.approx(round(model.percent(now), 1), abs=0.051)


def test_between_the_thresholds_the_flag_holds() -> None:
    """Hysteresis: a percent between 25 and 30 changes nothing, whichever way it came."""
    flap = FlapState()
    start = 1_700_000_000_000 // 300_000 * 300_000
    for k in range(8):  # 8 of the last slots changed: well above 30 %
        flap.mark(start + k * 300_000, 300_000)
        flap.evaluate(start + k * 300_000, 30.0, 25.0)
    assert flap.flapping
    seen = []
    for quiet in range(1, 30):  # then quiet: it falls slot by slot
        now = start + (7 + quiet) * 300_000
        before = flap.flapping
        flap.evaluate(now, 30.0, 25.0)
        percent = flap.percent(now)
        seen.append(percent)
        if 25.0 <= percent <= 30.0:
            assert flap.flapping == before
    assert not flap.flapping and any(25.0 <= p <= 30.0 for p in seen)


def test_the_rules_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="flap_stop"):
        EpisodeRules(flap_start=20, flap_stop=25)
    with pytest.raises(ConfigurationError, match="count"):
        EpisodeRules(count="alerts")
    with pytest.raises(ConfigurationError, match="flap_slot_minutes"):
        EpisodeRules(flap_slot_minutes=0)


def test_the_rules_come_from_the_file_globally_and_per_project(tmp_path: Any) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        "[episodes]\ngrouping_gap_minutes = 10\nflap_start = 40\n"
        '[projects.team-b.episodes]\ncount = "instances"\n'
    )
    settings = load_settings(config)
    assert settings.episodes_for("team-a") == EpisodeRules(grouping_gap_minutes=10, flap_start=40)
    assert settings.episodes_for("team-b").count == "instances"
    assert settings.episodes_for("team-b").flap_start == 40  # (on top of the global table)


# -- on every store ------------------------------------------------------------------------


def _episode(at: datetime, fingerprint: str, ends: datetime | None = None) -> Occurrence:
    return Occurrence(SIG, at, f"am:{fingerprint}:{int(at.timestamp() * 1000)}", fingerprint, ends)


async def _fire(counter: AnomalyCounter, at: datetime, fingerprint: str) -> Any:
    (frequency,) = await counter.record_many([_episode(at, fingerprint)])
    return frequency


async def test_instances_firing_together_are_one_incident(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter()
    t0 = clock.now - timedelta(minutes=30)
    first = await _fire(counter, t0, "pod-a")
    second = await _fire(counter, t0 + timedelta(seconds=20), "pod-b")
    assert (first.count_24h, first.joined) == (1, False)
    assert (second.count_24h, second.joined) == (1, True)
    again = await _fire(counter, t0, "pod-a")  # a re-sent episode
    assert again.duplicate and again.count_24h == 1
    assert (again.firing, again.instances) == (0, 0)  # (a write's answer, on every store)
    now = await counter.get_frequency(KEY)
    assert now is not None and (now.count_24h, now.firing, now.instances) == (1, 2, 2)
    # out of order: pod-b's resolution before pod-a's; the incident ends with the last
    b_start = t0 + timedelta(seconds=20)
    await counter.record_resolution(
        KEY, at=t0 + timedelta(minutes=5), episode="pod-b", started=b_start
    )
    mid = await counter.get_frequency(KEY)
    assert mid is not None and mid.firing == 1
    await counter.record_resolution(KEY, at=t0 + timedelta(minutes=4), episode="pod-a", started=t0)
    after = await counter.get_frequency(KEY)
    assert after is not None and (after.firing, after.instances) == (0, 2)
    assert after.last_resolved == t0 + timedelta(minutes=5)
    third = await _fire(counter, t0 + timedelta(minutes=6), "pod-a")  # back: a recurrence
    assert (third.count_24h, third.joined, third.instances) == (2, False, 0)
    back = await counter.get_frequency(KEY)
    assert back is not None and (back.firing, back.instances) == (1, 1)


async def test_a_resolution_sent_after_the_next_firing_decides_the_same(
    make_counter: CounterFactory, clock: Clock
) -> None:
    """A firing that started after an episode ended, arriving before that episode's
    resolution, is a recurrence as far as the store can tell only once the resolution is in:
    the same message (Alertmanager sends a group's resolved and firing alerts together)
    decides as in time order; here the two orders of separate messages."""
    t0 = clock.now - timedelta(minutes=30)
    in_order, late = make_counter(), make_counter("team-b")
    for counter in (in_order, late):
        await _fire(counter, t0, "pod-a")
    await in_order.record_resolution(KEY, at=t0 + timedelta(minutes=2), episode="pod-a", started=t0)
    (a,) = await in_order.record_many([_episode(t0 + timedelta(minutes=3), "pod-b")])
    # the same, resolved and firing in one batch of the receiver (resolutions first)
    await late.record_resolution(KEY, at=t0 + timedelta(minutes=2), episode="pod-a", started=t0)
    (b,) = await late.record_many([_episode(t0 + timedelta(minutes=3), "pod-b")])
    assert (a.count_24h, a.joined) == (b.count_24h, b.joined) == (2, False)


async def test_an_episode_that_arrives_resolved_joins_when_it_overlapped(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter()
    t0 = clock.now - timedelta(hours=2)
    await _fire(counter, t0, "pod-a")
    await counter.record_resolution(KEY, at=t0 + timedelta(minutes=10), episode="pod-a", started=t0)
    # pod-b fired from 5 to 8 minutes in, seen only now, resolved: it overlapped pod-a
    (b,) = await counter.record_many(
        [_episode(t0 + timedelta(minutes=5), "pod-b", ends=t0 + timedelta(minutes=8))]
    )
    assert b.joined and b.count_24h == 1
    # pod-c from 30 to 31 minutes in: a recurrence after the incident closed
    (c,) = await counter.record_many(
        [_episode(t0 + timedelta(minutes=30), "pod-c", ends=t0 + timedelta(minutes=31))]
    )
    assert not c.joined and c.count_24h == 2


async def test_a_grouping_gap_joins_a_refire_inside_it(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter(episodes=EpisodeRules(grouping_gap_minutes=10))
    t0 = clock.now - timedelta(hours=1)
    await _fire(counter, t0, "pod-a")
    await counter.record_resolution(KEY, at=t0 + timedelta(minutes=1), episode="pod-a", started=t0)
    inside = await _fire(counter, t0 + timedelta(minutes=8), "pod-a")
    assert inside.joined and inside.count_24h == 1
    await counter.record_resolution(
        KEY, at=t0 + timedelta(minutes=9), episode="pod-a", started=t0 + timedelta(minutes=8)
    )
    outside = await _fire(counter, t0 + timedelta(minutes=20), "pod-a")
    assert not outside.joined and outside.count_24h == 2


async def test_count_instances_counts_every_episode(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter(episodes=EpisodeRules(count="instances"))
    t0 = clock.now - timedelta(minutes=10)
    for n in range(10):  # a 10-pod outage
        await _fire(counter, t0 + timedelta(seconds=n), f"pod-{n}")
    now = await counter.get_frequency(KEY)
    assert now is not None and (now.count_24h, now.escalation_level) == (10, "PERMANENT_FIX")
    assert (now.firing, now.instances) == (10, 10)
    by_incident = make_counter("team-b")
    for n in range(10):
        await _fire(by_incident, t0 + timedelta(seconds=n), f"pod-{n}")
    one = await by_incident.get_frequency(KEY)
    assert one is not None and (one.count_24h, one.escalation_level, one.instances) == (1, None, 10)


async def test_open_episodes_are_bounded_and_forgotten_when_never_resent(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter(episodes=EpisodeRules(max_open=2, open_hours=6))
    t0 = clock.now - timedelta(minutes=10)
    for n in range(3):
        await _fire(counter, t0 + timedelta(seconds=n), f"pod-{n}")
    now = await counter.get_frequency(KEY)
    assert now is not None and (now.count_24h, now.firing, now.instances) == (1, 2, 3)
    clock.advance(hours=7)  # no resolution ever came, nor a re-send: taken as over
    later = await _fire(counter, clock.now, "pod-9")
    assert not later.joined and later.count_24h == 2


async def test_the_library_and_the_api_count_every_call(
    make_counter: CounterFactory, clock: Clock
) -> None:
    """The reference's one call, one count: occurrences without an episode never join."""
    counter = make_counter()
    await _fire(counter, clock.now - timedelta(minutes=1), "pod-a")
    for _ in range(2):
        frequency = await counter.record_anomaly(SIG)
    assert frequency.count_24h == 3 and not frequency.joined


def _flapping_settings(**options: Any) -> dict[str, Any]:
    channels = {"team-a": (WebhookConfig("http://127.0.0.1:9/h"),)}  # keeps notices (unsent)
    return {"project_channels": channels, **options}


async def test_flapping_on_every_store_matches_the_model(
    make_counter: CounterFactory, clock: Clock
) -> None:
    """A change is the anomaly firing while none of its episodes was open, or resolving the
    last open one: here each firing is a new instance, and each resolution (the resolve API)
    closes all; in time order (the grid's own out-of-order cases are the model test's)."""
    rng = random.Random(7)
    counter = make_counter(episodes=EpisodeRules(open_hours=720))
    model = FlapModel()
    start = clock.now
    fired, open_now = 0, 0
    for kind, _, now_ms in _stream(rng, 60, int(start.timestamp() * 1000)):
        clock.now = at = datetime.fromtimestamp(now_ms / 1000, start.tzinfo)
        if kind == "fire" or fired == 0:
            fired += 1
            await counter.record_many([_episode(at, f"pod-{fired}")])
            model.step(now_ms if open_now == 0 else None, now_ms)  # (already firing: no change)
            open_now += 1
        elif kind == "resolve":
            await counter.record_resolution(KEY, at=at)
            model.step(now_ms if open_now else None, now_ms)  # (nothing open: no change)
            open_now = 0
        else:
            await counter.sweep_flapping()
            model.step(None, now_ms)
        frequency = await counter.get_frequency(KEY)
        assert frequency is not None
        assert frequency.flap_percent == pytest.approx(round(model.percent(now_ms), 1), abs=0.051)
        assert frequency.flapping == model.flapping, (kind, now_ms)


async def test_starting_and_stopping_to_flap_are_events(
    make_counter: CounterFactory, clock: Clock
) -> None:
    counter = make_counter(**_flapping_settings())
    growing = make_counter("team-b")
    t0 = clock.now
    for n in range(8):  # fires and resolves every 5 minutes
        clock.now = t0 + n * SLOT
        await _fire(counter, clock.now, "pod-a")
        await counter.record_resolution(
            KEY, at=clock.now + timedelta(minutes=1), episode="pod-a", started=clock.now
        )
        await _fire(growing, clock.now, f"pod-{n}")  # (a growing outage: one change)
    now = await counter.get_frequency(KEY)
    assert now is not None and now.flapping and now.flap_percent > 30
    listed = await counter.flapping_anomalies()
    assert [f.anomaly_key for f in listed.anomalies] == [KEY]
    assert (await growing.flapping_anomalies()).anomalies == []
    started = [e for e in await counter.timeline(KEY) if e.kind == "flapping"]
    assert [e.started for e in started] == [True]
    # quiet: the sweep (not a next occurrence) says it stopped, once
    clock.advance(hours=2)
    assert await counter.sweep_flapping() == 1
    assert await counter.sweep_flapping() == 0
    after = await counter.get_frequency(KEY)
    assert after is not None and not after.flapping and after.flap_percent == 0
    events = [e for e in await counter.timeline(KEY) if e.kind == "flapping"]
    assert [e.started for e in events] == [False, True]  # (newest first)
    assert (await counter.flapping_anomalies()).anomalies == []
    store = counter.store
    entries = [
        e
        for p in range(store.outbox_partitions)
        for e in (await store.outbox_read("team-a", p, ["c"], 100))[0]
    ]
    assert [e.kind for e in entries if e.kind.startswith("flapping")] == [
        "flapping",
        "flapping_stopped",
    ]


async def test_two_sweepers_at_once_tell_each_stop_once(
    make_counter: CounterFactory, clock: Clock
) -> None:
    one, two = make_counter(**_flapping_settings()), make_counter(**_flapping_settings())
    t0 = clock.now
    for n in range(8):
        clock.now = t0 + n * SLOT
        for a in range(5):
            signature = {**SIG, "pod": f"p{a}", "service": f"api-{a}"}
            await one.record_many([Occurrence(signature, clock.now, f"am:f{a}:{n}", f"f{a}")])
            await one.record_resolution(
                AnomalyCounter.hash_signature(signature), at=clock.now, episode=f"f{a}",
                started=clock.now,
            )  # fmt: skip
    assert (await two.flapping_anomalies()).total == 5
    clock.advance(hours=3)
    stopped = await asyncio.gather(one.sweep_flapping(), two.sweep_flapping())
    assert sum(stopped) == 5
    assert (await one.flapping_anomalies()).total == 0


@dataclass
class Reference:
    """What a store must decide, from episodes.py itself (the stores apply it in SQL and in
    Lua): the count, joins, open episodes, instances and the flapping state."""

    rules: EpisodeRules
    incident: IncidentState = field(default_factory=IncidentState)
    flap: FlapState = field(default_factory=FlapState)
    count: int = 0
    seen: set[str] = field(default_factory=set)

    def changes(self, marks: list[int], now_ms: int) -> None:
        for at in marks:
            self.flap.mark(at, self.rules.slot_ms)
        if marks:
            self.flap.evaluate(now_ms, self.rules.flap_start, self.rules.flap_stop)

    def fire(self, fingerprint: str, start: int, end: int, now_ms: int) -> bool | None:
        """Joined (True), counted (False), or None for a re-sent episode."""
        if f"{fingerprint}:{start}" in self.seen:
            self.incident.seen(fingerprint, now_ms)
            return None
        self.seen.add(f"{fingerprint}:{start}")
        self.incident.expire(now_ms, self.rules.open_ms)
        starts, marks = self.incident.fire(fingerprint, start, end, now_ms, self.rules)
        self.count += starts
        self.changes(marks, now_ms)
        return not starts

    def resolve(self, fingerprint: str, start: int, at: int, now_ms: int) -> None:
        self.changes(self.incident.resolve(fingerprint, start, at), now_ms)


async def test_every_store_decides_as_episodes_py_on_random_streams(
    make_counter: CounterFactory, clock: Clock
) -> None:
    """Instances firing and resolving, re-sent, late and out of order, some arriving
    resolved, a grouping gap; after each step the store's answer is the reference's."""
    rules = EpisodeRules(grouping_gap_minutes=2, max_open=4, open_hours=1)
    rng = random.Random(11)
    counter = make_counter(episodes=rules)
    ref = Reference(rules)
    base = clock.now
    now_ms = int(base.timestamp() * 1000)
    fired: list[tuple[str, int]] = []
    seen = {"joined": 0, "counted": 0, "flapping": 0, "duplicate": 0}

    def moment(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, base.tzinfo)

    for step in range(160):
        now_ms += rng.choice((5_000, 30_000, 90_000, 240_000, 900_000))
        clock.now = moment(now_ms)
        roll = rng.random()
        if roll < 0.4 or not fired:
            fingerprint = f"pod-{rng.randrange(3)}"
            start = now_ms - (rng.randrange(0, 600_000) if rng.random() < 0.3 else 0)
            if rng.random() < 0.15 and fired:  # re-sent
                fingerprint, start = rng.choice(fired)
            end = start + rng.randrange(1_000, 300_000) if rng.random() < 0.2 else -1
            end = min(end, now_ms)
            ends = moment(end) if end >= 0 else None
            (answer,) = await counter.record_many(
                [Occurrence(SIG, moment(start), f"am:{fingerprint}:{start}", fingerprint, ends)]
            )
            expected = ref.fire(fingerprint, start, end if end >= start else -1, now_ms)
            if end >= start and expected is not None:  # the receiver resolves it too
                await counter.record_resolution(
                    KEY, at=moment(end), episode=fingerprint, started=moment(start)
                )
                ref.resolve(fingerprint, start, end, now_ms)
            assert answer.duplicate == (expected is None), step
            assert answer.joined == bool(expected), step
            seen["duplicate" if expected is None else "joined" if expected else "counted"] += 1
            fired.append((fingerprint, start))
        elif roll < 0.9:
            open_now = [(fp, s) for fp, (s, _) in ref.incident.open.items()]
            fingerprint, start = rng.choice(open_now if open_now and roll < 0.8 else fired)
            at = min(now_ms, max(start, now_ms - rng.randrange(0, 300_000)))
            if rng.random() < 0.1:  # the resolve API: the anomaly as a whole
                fingerprint, start = "", -1
            await counter.record_resolution(
                KEY,
                at=moment(at),
                episode=fingerprint or None,
                started=moment(start) if fingerprint else None,
            )
            ref.resolve(fingerprint, start, at, now_ms)
        else:
            await counter.sweep_flapping()
            ref.flap.evaluate(now_ms, rules.flap_start, rules.flap_stop)
        read = await counter.get_frequency(KEY)
        assert read is not None
        got = (read.count_24h, read.firing, read.instances, read.flap_percent, read.flapping)
        want = (
            ref.count,
            len(ref.incident.open),
            ref.incident.instances,
            ref.flap.percent(now_ms),
            ref.flap.flapping_at(now_ms, rules.flap_stop),
        )
        assert got == want, (step, got, want)
        seen["flapping"] += read.flapping
    assert min(seen.values()) > 3, seen  # (the stream went through every case)


async def test_resolutions_that_close_nothing_change_nothing(
    make_counter: CounterFactory, clock: Clock
) -> None:
    """Seen in review: a re-sent resolution, or one of an episode never seen firing, moved the
    incident's end (a later firing then joined a long-closed incident) and counted as a
    flapping change."""
    counter = make_counter()
    t0 = clock.now - timedelta(hours=1)
    await _fire(counter, t0, "pod-a")
    await counter.record_resolution(KEY, at=t0 + timedelta(minutes=5), episode="pod-a", started=t0)
    before = await counter.get_frequency(KEY)
    assert before is not None
    for _ in range(2):  # re-sent, and one of an episode never seen
        await counter.record_resolution(
            KEY, at=t0 + timedelta(minutes=5), episode="pod-a", started=t0
        )
    await counter.record_resolution(
        KEY, at=clock.now, episode="pod-b", started=clock.now - timedelta(minutes=1)
    )
    await counter.record_resolution(KEY, at=clock.now)  # the resolve API, nothing open
    after = await counter.get_frequency(KEY)
    assert after is not None and after.flap_percent == before.flap_percent
    # pod-b, seen only now and already resolved, 40 minutes after: a recurrence
    (b,) = await counter.record_many(
        [_episode(clock.now - timedelta(minutes=10), "pod-b", ends=clock.now)]
    )
    assert not b.joined and b.count_24h == 2
