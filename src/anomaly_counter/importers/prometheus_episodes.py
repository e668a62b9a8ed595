"""Episodes from samples, pure: the firing episodes that Prometheus's samples of ``ALERTS``
and ``ALERTS_FOR_STATE`` tell, each with Alertmanager's fingerprint of its alert (what an
episode is, and why: ``importers/prometheus.py``)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

_ONGOING_STEPS = 2  # a series with a sample this few intervals before the end still fires
_SPLIT_STEPS = 1.5  # without ALERTS_FOR_STATE: a gap longer than this ends an episode

SeriesKey = tuple[tuple[str, str], ...]
"""An alert's labels (those of its ALERTS series but ``__name__`` and ``alertstate``), sorted."""


# -- Alertmanager's fingerprint -----------------------------------------------------------------

_FNV_OFFSET = 14_695_981_039_346_656_037
_FNV_PRIME = 1_099_511_628_211
_U64 = (1 << 64) - 1


def fingerprint(labels: Mapping[str, str]) -> str:
    """An alert's fingerprint as Alertmanager's webhook gives it: 64-bit FNV-1a over the label
    names in order, each name and value followed by the byte 0xff (prometheus/common's
    ``LabelSet.Fingerprint``), as 16 hex digits. (Code point order is UTF-8's byte order.)"""
    digest = _FNV_OFFSET
    for name in sorted(labels):
        for byte in b"%s\xff%s\xff" % (name.encode(), labels[name].encode()):
            digest = ((digest ^ byte) * _FNV_PRIME) & _U64
    return f"{digest:016x}"


# -- episodes from samples (pure) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FiringEpisode:
    """One firing episode of one alert, as Prometheus sent it to Alertmanager."""

    labels: dict[str, str]  # the alert's labels, external labels added
    fingerprint: str
    starts_ms: int  # its first firing evaluation (startsAt), in ms
    ends_ms: int | None  # when it resolved (None: still firing)
    split_by_gaps: bool = False  # no ALERTS_FOR_STATE said which samples are one episode

    @property
    def alert_name(self) -> str:
        return self.labels.get("alertname", "")


@dataclass(slots=True)
class _Run:
    first: int
    last: int

    def take(self, ms: int) -> None:
        self.first, self.last = min(self.first, ms), max(self.last, ms)


@dataclass(slots=True)
class _Series:
    interval: int = 0  # the smallest gap seen between two of its evaluations (0: none)
    runs: dict[int, _Run] = field(default_factory=dict)  # activeAt (s): its firing samples
    first_active: dict[int, int] = field(default_factory=dict)  # activeAt (s): first sample
    loose: set[int] = field(default_factory=set)  # firing samples no ALERTS_FOR_STATE explains

    def note_gaps(self, states: Sequence[tuple[int, float]]) -> None:
        """The evaluation interval, from the gaps inside episodes (between two, the gap is
        the time it was not active: it says nothing of the interval)."""
        gaps = [b[0] - a[0] for a, b in pairwise(states) if b[1] == a[1] and b[0] > a[0]]
        if gaps:
            self.interval = min(gaps) if not self.interval else min(self.interval, *gaps)


class History:
    """What the samples of ALERTS (firing) and ALERTS_FOR_STATE say, added chunk by chunk (a
    sample on the border of two chunks may come twice: it changes nothing)."""

    def __init__(self, step_ms: int) -> None:
        self.step_ms = step_ms
        self.series: dict[SeriesKey, _Series] = {}
        self.rules: list[AlertRule] = []  # Prometheus's alerting rules, where it told them

    def add(
        self,
        active: Mapping[SeriesKey, Sequence[tuple[int, float]]],
        firing: Mapping[SeriesKey, Sequence[tuple[int, float]]],
        *,
        known_only: bool = False,
    ) -> None:
        """One chunk's samples, ``(ms, value)`` in time order by series: ALERTS_FOR_STATE's
        (value: activeAt, seconds) and ALERTS{alertstate="firing"}'s. ``known_only``: only
        move the first firing sample of episodes already found earlier (a look back)."""
        for key, samples in firing.items():
            series = self.series.get(key)
            if series is None:
                if known_only:
                    continue
                series = self.series[key] = _Series()
            states = active.get(key, ())
            times = [ms for ms, _ in states]
            series.note_gaps(states)
            for ms, value in states:
                started = int(value)
                series.first_active[started] = min(series.first_active.get(started, ms), ms)
            for ms, _ in samples:
                # the ALERTS_FOR_STATE sample of the same evaluation (the same timestamp)
                i = bisect_right(times, ms) - 1
                if i >= 0 and ms - times[i] <= self.step_ms:
                    started = int(states[i][1])
                    run = series.runs.get(started)
                    if run is not None:
                        run.take(ms)
                    elif not known_only:
                        series.runs[started] = _Run(ms, ms)
                elif not known_only:
                    series.loose.add(ms)

    def look_back_to(self, start_ms: int) -> int | None:
        """Where to look back to for the starts of the episodes that were active before
        ``start_ms`` and fire from their first sample since: they may have fired before it."""
        earliest = None
        for series in self.series.values():
            for started, run in series.runs.items():
                active_ms = started * 1000
                if active_ms < start_ms and series.first_active.get(started, 0) >= run.first:
                    earliest = active_ms if earliest is None else min(earliest, active_ms)
        return earliest

    def episodes(self, end_ms: int, external: Mapping[str, str]) -> list[FiringEpisode]:
        """The firing episodes, oldest first, each from the evaluation that made it fire
        (Prometheus's ``FiredAt``, which it sends as ``startsAt``: see ``_fired_at``). The
        latest of a series still fires when its last sample is within two evaluations of
        ``end_ms``; the others resolved one evaluation after their last firing sample
        (Prometheus's ``ResolvedAt``, Alertmanager's ``endsAt``)."""
        found: list[FiringEpisode] = []
        for key, series in self.series.items():
            labels = {**external, **dict(key)}  # (Prometheus adds only those an alert lacks)
            alert = fingerprint(labels)
            interval = series.interval or self.step_ms
            hold = hold_of(self.rules, labels)
            loose = list(_split(sorted(series.loose), _SPLIT_STEPS * interval))
            latest = max((run.last for run in [*series.runs.values(), *loose]), default=0)
            for started, run in series.runs.items():
                first_active = series.first_active.get(started, run.first)
                starts = _fired_at(started, run, first_active, interval, hold)
                ends = _end(run.last, interval, end_ms, run.last == latest)
                found.append(FiringEpisode(labels, alert, starts, ends))
            for run in loose:
                ends = _end(run.last, interval, end_ms, run.last == latest)
                found.append(FiringEpisode(labels, alert, run.first, ends, split_by_gaps=True))
        found.sort(key=lambda e: (e.starts_ms, e.fingerprint))
        return found


def _fired_at(
    active_at: int, run: _Run, first_active_ms: int, interval_ms: int, hold_ms: int | None
) -> int:
    """When an episode started firing, in ms: its first firing sample, when a pending one came
    before it. When its first sample fires already, that may be later than it fired:
    Prometheus writes no ALERTS in its first evaluations after it starts (while it sends their
    alerts), and a look back may not reach the start. Its rule's ``for`` (``hold_ms``, when
    known) tells: the first evaluation at least that long after ``activeAt`` (whose
    milliseconds are those of every evaluation of its group)."""
    if first_active_ms < run.first or hold_ms is None:
        return run.first
    active_ms = active_at * 1000 + run.first % 1000
    return min(run.first, active_ms + -(-hold_ms // interval_ms) * interval_ms)


@dataclass(frozen=True, slots=True)
class AlertRule:
    """An alerting rule as Prometheus's rules API lists it: its name, its fixed labels and its
    ``for`` (ms)."""

    name: str
    labels: Mapping[str, str]
    hold_ms: int


def hold_of(rules: Sequence[AlertRule], labels: Mapping[str, str]) -> int | None:
    """The ``for`` of the rule an alert comes from (None: no rule, or rules that differ)."""
    holds = {
        rule.hold_ms
        for rule in rules
        if rule.name == labels.get("alertname")
        and all(labels.get(k) == v for k, v in rule.labels.items() if "{{" not in v)
    }
    return holds.pop() if len(holds) == 1 else None


def _end(last_ms: int, interval_ms: int, end_ms: int, latest: bool) -> int | None:
    """When an episode whose last firing sample is ``last_ms`` resolved (None: it fires)."""
    if latest and end_ms - last_ms <= _ONGOING_STEPS * interval_ms:
        return None
    return last_ms + interval_ms


def _split(times: Sequence[int], gap: float) -> Iterator[_Run]:
    run: _Run | None = None
    for ms in times:
        if run is not None and ms - run.last <= gap:
            run.last = ms
            continue
        if run is not None:
            yield run
        run = _Run(ms, ms)
    if run is not None:
        yield run
