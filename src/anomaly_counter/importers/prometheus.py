"""Backfill from Prometheus: the alert history Prometheus already holds, counted as the
Alertmanager receiver would have counted it, so that "30d" means something on the first day.

At every rule evaluation Prometheus writes, for each active alert, a sample of ``ALERTS``
(``alertstate`` pending or firing) and one of ``ALERTS_FOR_STATE``, whose value is the alert's
``activeAt`` in whole seconds: when its condition began to hold. An *episode* here is one
``activeAt`` of one alert series that reached firing: an alert that resolves and fires again
gets a new ``activeAt``, so the value splits episodes as Alertmanager's ``startsAt`` does,
whatever gaps (missed evaluations) lie inside one.

The receiver names an episode ``am:<fingerprint>:<startsAt in ms>`` (service/alertmanager.py).
The fingerprint is Alertmanager's (``fingerprint`` in prometheus_episodes.py). ``startsAt`` is
not ``activeAt``: Prometheus sends when the alert began to *fire* (its ``FiredAt``:
``activeAt`` plus the rule's ``for``, at an evaluation), with milliseconds, which is the
timestamp of the episode's first firing ALERTS sample (seen with Prometheus 2.42 and
Alertmanager 0.25: the startsAt of the webhook was that sample's time to the millisecond).
Each episode then goes through the receiver's own ``episodes`` function, so that its
signature, id, time, resolution and the 30-day cut are the receiver's, not a copy of them.

Raw samples are read (an instant query of a range selector) rather than ``query_range``: a
range query resamples onto its step's grid, which hides the samples' timestamps (startsAt),
misses an episode shorter than the step, and stretches an episode by the lookback wherever no
staleness marker ends it (data imported with promtool has none).

This module reads and records; beside it, ``prometheus_api`` (the HTTP client),
``prometheus_episodes`` (episodes from samples, pure), ``prometheus_syntax`` (durations,
matchers) and ``prometheus_cli`` (the command).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TextIO

from ..counter import AnomalyCounter
from ..errors import InvalidInputError
from ..model import RETENTION_SECONDS, Occurrence
from ..settings import AlertLabels
from ..validation import MAX_FUTURE
from .prometheus_api import Prometheus
from .prometheus_episodes import FiringEpisode, History
from .prometheus_syntax import selector

if TYPE_CHECKING:
    from ..service.alertmanager import Episode

CHUNK_STEPS = 10_000
"""Steps of ``--step`` per query: a series evaluated every step returns at most this many
samples per answer (the same bound as Prometheus's 11,000 points per series of a range query)."""
MAX_SINCE = timedelta(seconds=RETENTION_SECONDS)
DEFAULT_BATCH = 500
MS = timedelta(milliseconds=1)
_LOOK_BACK_PAST = timedelta(days=1)  # how far past 30 days a look back for a start goes
# An episode this close to 30 days old is taken as too old, so that none turns too old between
# the cut and its write (the store would refuse the batch).
TOO_OLD_MARGIN = timedelta(minutes=1)


# -- reading ----------------------------------------------------------------------------------


async def read_history(
    prometheus: Prometheus,
    matchers: Sequence[str],
    start_ms: int,
    end_ms: int,
    step_ms: int,
    progress: Progress | None = None,
) -> History:
    """Every sample of the alerts ``matchers`` select between the two times, in chunks of
    ``CHUNK_STEPS`` steps, oldest first; then, for the episodes firing at ``start_ms``, as far
    back as their start (a day past the 30 days at most: then they are too old anyway)."""
    history = History(step_ms)
    history.rules = await prometheus.alert_rules()
    await _read(prometheus, matchers, start_ms, end_ms, history, progress)
    earliest = history.look_back_to(start_ms)
    if earliest is not None:
        earliest = max(earliest, end_ms - (MAX_SINCE + _LOOK_BACK_PAST) // MS)
        if earliest < start_ms:
            await _read(prometheus, matchers, earliest, start_ms, history, progress, back=True)
    return history


async def _read(
    prometheus: Prometheus,
    matchers: Sequence[str],
    start_ms: int,
    end_ms: int,
    history: History,
    progress: Progress | None,
    back: bool = False,
) -> None:
    length = CHUNK_STEPS * history.step_ms
    chunks = max(1, -(-(end_ms - start_ms) // length))
    for n in range(chunks):
        upper = min(end_ms, start_ms + (n + 1) * length)
        span = upper - (start_ms + n * length)
        active = await prometheus.samples(selector("ALERTS_FOR_STATE", matchers), upper, span)
        firing = await prometheus.samples(
            selector("ALERTS", matchers, 'alertstate="firing"'), upper, span
        )
        history.add(active, firing, known_only=back)
        if progress:
            what = "looking back for the starts" if back else "reading Prometheus"
            progress.show(f"{what}: {n + 1}/{chunks} chunks, {len(history.series)} series")


# -- recording ------------------------------------------------------------------------------


@dataclass(slots=True)
class Summary:
    """What a backfill found and did."""

    series: int = 0
    episodes: int = 0
    recorded: int = 0  # new episodes: counted, or joined an incident
    counted: int = 0
    joined: int = 0
    already_there: int = 0  # an episode the store had (an earlier run, or the receiver)
    too_old: int = 0
    refused: int = 0  # the store's checks refused it (a label value it cannot keep)
    resolutions: int = 0
    skipped_series: int = 0  # in Prometheus's answers, malformed (a label not a string)
    skipped_samples: int = 0  # malformed (a NaN or infinite time or activeAt)
    dry_run: bool = False

    def text(self) -> str:
        head = f"{self.episodes} episodes in {self.series} series"
        old = f", {self.too_old} too old (over 30 days)" if self.too_old else ""
        refused = f", {self.refused} refused" if self.refused else ""
        if self.skipped_series or self.skipped_samples:
            refused += (
                f"; skipped as malformed: {self.skipped_series} series,"
                f" {self.skipped_samples} samples"
            )
        if self.dry_run:
            return f"dry run: {head}; {self.recorded} to record{old}{refused}; nothing stored"
        return (
            f"backfill: {head}; {self.recorded} recorded ({self.counted} counted,"
            f" {self.joined} joined an incident), {self.already_there} already there{old}{refused}"
        )


def utc_from_ms(ms: int) -> datetime:
    # integer arithmetic: exactly the datetime the receiver parses from "...:54.151Z"
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def as_received(episode: FiringEpisode, mapping: AlertLabels, now: datetime) -> Episode | None:
    """The episode as the receiver makes it of Alertmanager's message about it at ``now``
    (one starting later than 5 minutes from now at 5 minutes from now, as the receiver takes a
    sender's clock ahead of ours); None: too old for the store, or about to be (within
    ``TOO_OLD_MARGIN`` of 30 days)."""
    from ..service.alertmanager import AlertmanagerAlert, AlertmanagerPayload, episodes

    ended = episode.ends_ms is not None
    alert = AlertmanagerAlert(
        status="resolved" if ended else "firing",
        labels=episode.labels,
        startsAt=utc_from_ms(episode.starts_ms),
        endsAt=utc_from_ms(episode.ends_ms) if episode.ends_ms is not None else None,
        fingerprint=episode.fingerprint,
    )
    found, _ = episodes(
        AlertmanagerPayload(version="4", status="firing", alerts=[alert]), mapping, now
    )
    # (the margin only here: the receiver's clamp of a time ahead is `now`'s, not the margin's)
    if not found or found[0].at < now + TOO_OLD_MARGIN - MAX_SINCE:
        return None
    return found[0]


def ahead_of(found: Sequence[FiringEpisode], now: datetime) -> str | None:
    """What to say of episodes that start after 5 minutes from now (Prometheus's clock ahead
    of ours): each is recorded as the receiver records it, but their real start is told."""
    late = [e for e in found if utc_from_ms(e.starts_ms) > now + MAX_FUTURE]
    if not late:
        return None
    first = utc_from_ms(late[0].starts_ms).isoformat(timespec="milliseconds")
    return (
        f"note: {len(late)} episodes start more than 5 minutes after this machine's clock"
        f" ({now.isoformat(timespec='seconds')}; Prometheus's clock ahead of it?), the first"
        f" {describe(late[0])} at {first}: as the receiver does, each is recorded at 5 minutes"
        " from now, its id keeping its real start"
    )


async def record(
    counter: AnomalyCounter,
    found: Sequence[FiringEpisode],
    mapping: AlertLabels,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
    warn: TextIO | None = None,
) -> Summary:
    """Record the episodes, oldest first, in batches: each as the receiver records it (its
    id, at its start, with its end), then their resolutions in the order they happened.
    Every write is idempotent: a run again (after an interruption too) counts nothing twice."""
    summary = Summary(series=len({e.fingerprint for e in found}), episodes=len(found))
    left = Counter(e.fingerprint for e in found)
    ended: list[tuple[str, Episode]] = []
    for start in range(0, len(found), batch_size):
        batch = found[start : start + batch_size]
        now = datetime.now(UTC)
        occurrences: list[tuple[Occurrence, Episode]] = []
        for episode in batch:
            left[episode.fingerprint] -= 1
            received = as_received(episode, mapping, now)
            if received is None:
                summary.too_old += 1
                continue
            occurrence = Occurrence(
                received.signature, received.at, received.occurrence_id, received.fingerprint,
                received.resolved_at,
            )  # fmt: skip
            try:
                counter.validate([occurrence])
            except InvalidInputError as exc:  # (the receiver would refuse its whole message)
                summary.refused += 1
                if warn is not None:
                    warn.write(f"skipped {describe(episode)}: {exc}\n")
                continue
            occurrences.append((occurrence, received))
        frequencies = await counter.record_many([o for o, _ in occurrences])
        for (_, received), f in zip(occurrences, frequencies, strict=True):
            if f.duplicate:
                summary.already_there += 1
            elif f.joined:
                summary.joined += 1
            else:
                summary.counted += 1
            if received.resolved_at is not None:
                ended.append((f.anomaly_key, received))
        summary.recorded = summary.counted + summary.joined
        if progress:
            done = sum(1 for n in left.values() if n == 0)
            progress.show(
                f"series {done}/{summary.series}, {summary.episodes} episodes,"
                f" {summary.recorded} recorded, {summary.already_there} already there"
            )
    # An episode the store had as firing (an earlier run, the receiver) is closed here too.
    # In the order they happened, each is told once: a store keeps an anomaly's latest.
    ended.sort(key=lambda pair: (pair[1].resolved_at or pair[1].at, pair[1].at))
    for n, (key, received) in enumerate(ended, start=1):
        await counter.record_resolution(
            key, at=received.resolved_at, by="backfill", episode=received.fingerprint,
            started=received.at,
        )  # fmt: skip
        if progress and (n % 100 == 0 or n == len(ended)):
            progress.show(f"resolutions {n}/{len(ended)}")
    summary.resolutions = len(ended)
    return summary


# -- what is shown -----------------------------------------------------------------------


class Progress:
    """One line on a terminal, written over (nothing when the stream is not a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.on = stream.isatty()
        self._shown = False

    def show(self, text: str) -> None:
        if self.on:
            self.stream.write(f"\r\x1b[K{text}")
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


def _labels_text(labels: Mapping[str, str]) -> str:
    shown = ",".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(labels.items())
                     if k != "alertname")  # fmt: skip
    return f"{{{shown}}}"


def describe(episode: FiringEpisode) -> str:
    return f"{episode.alert_name or '?'} {_labels_text(episode.labels)}"
