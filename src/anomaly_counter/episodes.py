"""Episodes, incidents and flapping: what the firing/resolved transitions of an anomaly say.

An *episode* is one firing of one alert instance: Alertmanager names it by the alert's
fingerprint and its ``startsAt``. Several instances of one anomaly firing together (ten pods of a
service, say) are one *incident*: with ``count = "incidents"`` (the default for episodes), an
episode that starts while another episode of the anomaly is open, or within ``grouping_gap``
after the last one closed, joins that incident instead of counting as a recurrence; the incident
keeps how many instances it had. An episode is a recurrence when nothing of its anomaly was
firing when it started. The decision uses the episodes' times, not the order their messages
arrive in, so that a resolution delivered after a later firing decides the same way as far as
the store can know (see ``IncidentState.fire``).

*Flapping* follows Nagios and Icinga, on a fixed grid because an event stream has no checks:
time is cut in slots (``flap_slot``, 5 minutes by default); a slot is a *change* when an
incident of the anomaly started or ended in it (``IncidentState.fire`` and ``resolve`` say
which times). Over the last 21 slots, the percent of
changes is weighted linearly from 0.8 (the oldest slot) to 1.2 (the newest): the weights sum to
21, so a slot's weight is its share. The anomaly starts flapping when the percent rises above
``flap_start`` (30 %) and stops when it falls below ``flap_stop`` (25 %), so that the flag does
not flap itself. Evaluated at each transition, at the later of the newest slot and the writer's
clock, and for anomalies that went quiet by a sweep of the project's flapping index, ordered by
the time each would stop if nothing more happened (``leave_at``).

The stores apply these rules atomically with the occurrence or resolution (Redis in Lua,
mirroring this module: episodes.lua's ``incident_*`` and ``flap_*``); the tests hold the
flapping grid to a brute-force model and every store to this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigurationError

FLAP_SLOTS = 21
"""Slots the flapping percent looks at."""
FLAP_MASK = (1 << FLAP_SLOTS) - 1

COUNT_MODES = ("incidents", "instances")
_MINUTE_MS = 60_000


def slot_weight(k: int) -> int:
    """The weight, in hundredths, of the slot ``k`` slots before the newest (k = 0 newest ..
    20 oldest): 80 for the oldest to 120 for the newest, all 21 summing to 2,100 (100 %)."""
    return 120 - 2 * k


@dataclass(frozen=True, slots=True)
class EpisodeRules:
    """How a project's episodes are counted and when its anomalies flap (``[episodes]`` and
    ``[projects.<id>.episodes]`` in the settings)."""

    count: str = "incidents"  # or "instances": every episode counts
    grouping_gap_minutes: float = 0.0  # an episode within this after an incident closed joins it
    max_open: int = 16  # open episodes listed per anomaly (about 50 bytes each in Redis);
    # past it, counted in instances but not listed
    open_hours: float = 24.0  # an open episode not re-sent for this long is taken as over
    flap_slot_minutes: float = 5.0
    flap_start: float = 30.0  # percent: starts flapping above it
    flap_stop: float = 25.0  # percent: stops flapping below it

    def __post_init__(self) -> None:
        if self.count not in COUNT_MODES:
            raise ConfigurationError(
                f"episodes.count must be one of {', '.join(COUNT_MODES)}, got {self.count!r}"
            )
        numbers = {
            "grouping_gap_minutes": (self.grouping_gap_minutes, 0.0, 7 * 24 * 60.0),
            "open_hours": (self.open_hours, 1 / 60, 30 * 24.0),
            "flap_slot_minutes": (self.flap_slot_minutes, 1 / 60, 24 * 60.0),
            "flap_start": (self.flap_start, 0.0, 100.0),
            "flap_stop": (self.flap_stop, 0.0, 100.0),
        }
        for name, (value, low, high) in numbers.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"episodes.{name} must be a number, got {value!r}")
            if not low <= value <= high or (name != "grouping_gap_minutes" and value <= 0):
                raise ConfigurationError(
                    f"episodes.{name} must be above 0 (0 allowed for grouping_gap_minutes)"
                    f" and at most {high:g}, got {value!r}"
                )
        if isinstance(self.max_open, bool) or not isinstance(self.max_open, int):
            raise ConfigurationError(f"episodes.max_open must be an integer, got {self.max_open!r}")
        if not 1 <= self.max_open <= 10_000:
            raise ConfigurationError(f"episodes.max_open must be 1 to 10000, got {self.max_open}")
        if not self.flap_stop <= self.flap_start:
            raise ConfigurationError(
                "episodes.flap_stop must not be above episodes.flap_start,"
                f" got {self.flap_stop} and {self.flap_start}"
            )

    @property
    def gap_ms(self) -> int:
        return round(self.grouping_gap_minutes * _MINUTE_MS)

    @property
    def open_ms(self) -> int:
        return round(self.open_hours * 60 * _MINUTE_MS)

    @property
    def slot_ms(self) -> int:
        return round(self.flap_slot_minutes * _MINUTE_MS)

    def store_args(self) -> tuple[int | float, ...]:
        """What a store call applies: count incidents (1/0), gap, max open, open lifetime,
        slot width, start and stop thresholds (percent)."""
        return (
            int(self.count == "incidents"),
            self.gap_ms,
            self.max_open,
            self.open_ms,
            self.slot_ms,
            float(self.flap_start),
            float(self.flap_stop),
        )


# -- flapping ----------------------------------------------------------------------------------


@dataclass(slots=True)
class FlapState:
    """An anomaly's last 21 slots: ``mask`` bit k set when slot ``newest - k`` had a change."""

    slot_ms: int = 0
    newest: int = -1  # the newest slot with a change (-1: none yet)
    mask: int = 0
    flapping: bool = False

    def mark(self, at_ms: int, slot_ms: int) -> None:
        """A transition at ``at_ms``; one older than the 21 slots changes nothing."""
        slot = at_ms // slot_ms
        if self.slot_ms != slot_ms or self.newest < 0:  # (a new width starts over)
            self.slot_ms, self.newest, self.mask = slot_ms, slot, 1
        elif slot > self.newest:
            shift = slot - self.newest
            self.mask = ((self.mask << shift) & FLAP_MASK if shift < FLAP_SLOTS else 0) | 1
            self.newest = slot
        elif self.newest - slot < FLAP_SLOTS:
            self.mask |= 1 << (self.newest - slot)

    def units(self, at_slot: int) -> int:
        """The weighted changes of the 21 slots ending at ``at_slot`` (at or after newest)."""
        if self.newest < 0:
            return 0
        shift = max(0, at_slot - self.newest)
        total = 0
        for k in range(FLAP_SLOTS - shift):
            if self.mask >> k & 1:
                total += slot_weight(k + shift)
        return total

    def _units_now(self, now_ms: int) -> int:
        """The weighted changes of the 21 slots ending at the later of the newest and now."""
        if self.newest < 0 or self.slot_ms <= 0:
            return 0
        return self.units(max(self.newest, now_ms // self.slot_ms))

    def evaluate(self, now_ms: int, start: float, stop: float) -> bool | None:
        """Apply the thresholds as of now: True when it starts flapping, False when it stops,
        None when the flag stays."""
        if self.newest < 0 or self.slot_ms <= 0:
            return None
        units = self._units_now(now_ms)
        if not self.flapping and units > start * FLAP_SLOTS:
            self.flapping = True
            return True
        if self.flapping and units < stop * FLAP_SLOTS:
            self.flapping = False
            return False
        return None

    def percent_text(self, now_ms: int) -> str:
        """The weighted percent of changes as of now, to one decimal (as C's printf rounds:
        the stores' scripts write the same text)."""
        return f"{self._units_now(now_ms) / FLAP_SLOTS:.1f}"

    def percent(self, now_ms: int) -> float:
        return float(self.percent_text(now_ms))

    def flapping_at(self, now_ms: int, stop: float) -> bool:
        """The flag as of now, for a read: one that went quiet since its last evaluation has
        stopped even before the sweep says so."""
        return self.flapping and self._units_now(now_ms) >= stop * FLAP_SLOTS

    def leave_at(self, stop: float) -> int:
        """When it would stop flapping if nothing more happened: the start of the first slot
        whose 21-slot percent is below ``stop``."""
        for slot in range(self.newest + 1, self.newest + FLAP_SLOTS + 1):
            if self.units(slot) < stop * FLAP_SLOTS:
                return slot * self.slot_ms
        return (self.newest + FLAP_SLOTS) * self.slot_ms

    def encode(self) -> str:
        return f"{self.slot_ms},{self.newest},{self.mask},{int(self.flapping)}"

    @classmethod
    def decode(cls, text: str | None) -> FlapState:
        if not text:
            return cls()
        slot_ms, newest, mask, flapping = (int(part) for part in text.split(","))
        return cls(slot_ms, newest, mask, bool(flapping))


# -- incidents ---------------------------------------------------------------------------------

NO_END = -1


@dataclass(slots=True)
class IncidentState:
    """The current (or last) incident of an anomaly and its open episodes."""

    start_ms: int = -1  # -1: none yet
    end_ms: int = NO_END  # the latest end of its closed episodes
    instances: int = 0
    unlisted: int = 0  # open episodes past max_open: in instances, not in ``open``
    open: dict[str, tuple[int, int]] = field(default_factory=dict)  # fingerprint: (start, seen)

    def expire(self, now_ms: int, open_ms: int) -> None:
        """Take as over the open episodes not re-sent for ``open_ms`` (a lost resolution must
        not make every later firing join): ended when last seen."""
        stale = [fp for fp, (_, seen) in self.open.items() if now_ms - seen > open_ms]
        for fp in stale:
            self.end_ms = max(self.end_ms, self.open.pop(fp)[1])

    def fire(
        self, fingerprint: str, start_ms: int, end_ms: int, now_ms: int, rules: EpisodeRules
    ) -> tuple[bool, list[int]]:
        """A new episode (``end_ms`` NO_END while it fires): whether it starts an incident (a
        recurrence; else it joins the current one), and its changes for flapping: its start
        when it started an incident (or moved the incident's start earlier), and the incident's
        end when it arrived resolved and nothing is open after it."""
        end = end_ms
        prior = self.open.get(fingerprint)
        if prior is not None:
            if prior[0] < start_ms:  # an instance fires once at a time: its last episode is over
                del self.open[fingerprint]
                self.end_ms = max(self.end_ms, start_ms - 1)
            elif prior[0] > start_ms:  # an earlier episode of it, arriving late: over by then
                end = prior[0] - 1 if end == NO_END else min(end, prior[0] - 1)
            else:  # the same episode again
                self.open[fingerprint] = (prior[0], max(prior[1], now_ms))
                return False, []
        firing = bool(self.open)
        gap = rules.gap_ms
        joins = (
            self.start_ms >= 0
            and (firing or start_ms <= self.end_ms + gap)
            and (end == NO_END or end >= self.start_ms - gap)
        )
        marks = []
        if joins:
            if start_ms < self.start_ms:  # (the incident started earlier than seen so far)
                marks.append(start_ms)
            self.instances += 1
            self.start_ms = min(self.start_ms, start_ms)
            self._add(fingerprint, start_ms, end, now_ms, rules.max_open)
        else:
            marks.append(start_ms)
            if self.start_ms < 0 or (not firing and start_ms > self.end_ms + gap):  # a new one
                self.start_ms, self.end_ms, self.instances, self.unlisted = start_ms, NO_END, 1, 0
                self._add(fingerprint, start_ms, end, now_ms, rules.max_open)
            # (else an incident before the current one, arriving late: a recurrence then)
        if end != NO_END and not self.open and self.end_ms != NO_END:
            marks.append(self.end_ms if joins or self.start_ms == start_ms else end)
        return not joins, marks

    def seen(self, fingerprint: str, now_ms: int) -> None:
        """An open episode re-sent (Alertmanager repeats firing alerts): it is still open."""
        prior = self.open.get(fingerprint)
        if prior is not None and prior[1] < now_ms:
            self.open[fingerprint] = (prior[0], now_ms)

    def _add(self, fingerprint: str, start_ms: int, end: int, now_ms: int, max_open: int) -> None:
        if end != NO_END:
            self.end_ms = max(self.end_ms, end)
        elif len(self.open) < max_open:
            self.open[fingerprint] = (start_ms, now_ms)
        else:
            self.unlisted += 1

    def resolve(self, fingerprint: str, start_ms: int, end_ms: int) -> list[int]:
        """An open episode resolved at ``end_ms`` (``fingerprint`` "": the anomaly as a whole,
        as the resolve API says it: every open episode). One not open (unknown, or resolved
        already) changes nothing: it does not move the incident's end. Its change for
        flapping: the incident's end, when it closed the last open episode."""
        if not fingerprint:
            if not self.open:
                return []
            self.open.clear()
        else:
            prior = self.open.get(fingerprint)
            if prior is None or prior[0] > start_ms:
                return []
            del self.open[fingerprint]
        self.end_ms = max(self.end_ms, end_ms)
        return [] if self.open else [self.end_ms]

    def encode_head(self) -> str:
        return f"{self.start_ms},{self.end_ms},{self.instances},{self.unlisted}"

    @classmethod
    def decode(cls, head: str | None, open_episodes: dict[str, tuple[int, int]]) -> IncidentState:
        if not head:
            return cls(open=dict(open_episodes))
        start, end, instances, unlisted = (int(part) for part in head.split(","))
        return cls(start, end, instances, unlisted, dict(open_episodes))
