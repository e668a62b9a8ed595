"""Backfill from Prometheus: the alert history Prometheus already holds, counted as the
Alertmanager receiver would have counted it, so that "30d" means something on the first day.

At every rule evaluation Prometheus writes, for each active alert, a sample of ``ALERTS``
(``alertstate`` pending or firing) and one of ``ALERTS_FOR_STATE``, whose value is the alert's
``activeAt`` in whole seconds: when its condition began to hold. An *episode* here is one
``activeAt`` of one alert series that reached firing: an alert that resolves and fires again
gets a new ``activeAt``, so the value splits episodes as Alertmanager's ``startsAt`` does,
whatever gaps (missed evaluations) lie inside one.

The receiver names an episode ``am:<fingerprint>:<startsAt in ms>`` (service/alertmanager.py).
The fingerprint is Alertmanager's (``fingerprint`` below). ``startsAt`` is not ``activeAt``:
Prometheus sends when the alert began to *fire* (its ``FiredAt``: ``activeAt`` plus the rule's
``for``, at an evaluation), with milliseconds, which is the timestamp of the episode's first
firing ALERTS sample (seen with Prometheus 2.42 and Alertmanager 0.25: the startsAt of the
webhook was that sample's time to the millisecond). Each episode then goes through the
receiver's own ``episodes`` function, so that its signature, id, time, resolution and the
30-day cut are the receiver's, not a copy of them.

Raw samples are read (an instant query of a range selector) rather than ``query_range``: a
range query resamples onto its step's grid, which hides the samples' timestamps (startsAt),
misses an episode shorter than the step, and stretches an episode by the lookback wherever no
staleness marker ends it (data imported with promtool has none).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from .counter import AnomalyCounter
from .errors import ConfigurationError, InvalidInputError, SourceUnavailableError
from .model import RETENTION_SECONDS, Occurrence
from .redact import redacted
from .settings import AlertLabels, Settings

if TYPE_CHECKING:
    import httpx

    from .service.alertmanager import Episode

CHUNK_STEPS = 10_000
"""Steps of ``--step`` per query: a series evaluated every step returns at most this many
samples per answer (the same bound as Prometheus's 11,000 points per series of a range query)."""
MAX_SINCE = timedelta(seconds=RETENTION_SECONDS)
DEFAULT_STEP = timedelta(minutes=1)  # Prometheus's default evaluation_interval
DEFAULT_BATCH = 500
_MS = timedelta(milliseconds=1)
_LOOK_BACK_PAST = timedelta(days=1)  # how far past 30 days a look back for a start goes
_MARGIN = timedelta(minutes=1)  # an episode this close to 30 days old is taken as too old,
# so that none turns too old between the cut and its write (the store would refuse the batch)
_ONGOING_STEPS = 2  # a series with a sample this few intervals before the end still fires
_SPLIT_STEPS = 1.5  # without ALERTS_FOR_STATE: a gap longer than this ends an episode
_NEEDS = "backfill needs the service extra: pip install 'anomaly-counter[service]'"

SeriesKey = tuple[tuple[str, str], ...]
"""An alert's labels (those of its ALERTS series but ``__name__`` and ``alertstate``), sorted."""


# -- arguments --------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_STRING = r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'|`[^`]*`"
_MATCHER = re.compile(rf"\s*({_LABEL_NAME.pattern})\s*(=~|!~|!=|=)\s*({_STRING})\s*")


def parse_duration(text: str) -> timedelta:
    """A duration as Prometheus writes one: ``30d``, ``12h``, ``90m``, ``1d12h``, ``45s``."""
    parts = _DURATION_PART.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration: {text!r} (such as 30d, 12h, 90m)")
    return timedelta(milliseconds=sum(int(n) * _UNIT_MS[unit] for n, unit in parts))


def since_argument(text: str) -> timedelta:
    try:
        since = parse_duration(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not timedelta(0) < since <= MAX_SINCE:
        raise argparse.ArgumentTypeError(
            f"{text!r}: at most 30d (the store refuses occurrences older than 30 days), above 0"
        )
    return since


def step_argument(text: str) -> timedelta:
    try:
        step = parse_duration(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not timedelta(seconds=1) <= step <= timedelta(days=1):
        raise argparse.ArgumentTypeError(f"{text!r}: the step must be 1s to 1d")
    return step


def parse_matchers(text: str) -> tuple[str, ...]:
    """The matchers of a label matcher set (``{severity="page",team=~"a|b"}``, braces
    optional), each as PromQL text; ``__name__`` and ``alertstate`` are the backfill's own."""
    body = text.strip()
    if body.startswith("{") or body.endswith("}"):
        if not (body.startswith("{") and body.endswith("}")):
            raise ValueError(f"unbalanced braces in {text!r}")
        body = body[1:-1]
    found: list[str] = []
    position = 0
    while body[position:].strip():
        match = _MATCHER.match(body, position)
        if match is None:
            raise ValueError(f'not a label matcher (name="value") at {body[position:]!r}')
        name, operator, value = match.groups()
        if name in ("__name__", "alertstate"):
            raise ValueError(f"{name} cannot be matched: the backfill reads ALERTS, firing")
        found.append(f"{name}{operator}{value}")
        position = match.end()
        if position < len(body):
            if body[position] != ",":
                raise ValueError(f"expected ',' between matchers at {body[position:]!r}")
            position += 1
    return tuple(found)


def match_argument(text: str) -> tuple[str, ...]:
    try:
        return parse_matchers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def external_label_argument(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not _LABEL_NAME.fullmatch(name) or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE (a label name, a value)")
    return name, value


def url_argument(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{redacted(text)!r} is not an http(s) URL")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``backfill prometheus``."""
    parser.add_argument(
        "--url", required=True, type=url_argument, help="Prometheus's base URL (http://host:9090)"
    )
    parser.add_argument(
        "--since", type=since_argument, default=MAX_SINCE, metavar="DURATION",
        help="how far back: 30d (the default and the most), 12h, 90m",
    )  # fmt: skip
    parser.add_argument(
        "--match", type=match_argument, default=(), metavar="MATCHERS",
        help="""only the alerts these label matchers select, e.g. '{severity="page"}'""",
    )  # fmt: skip
    parser.add_argument(
        "--step", type=step_argument, default=DEFAULT_STEP, metavar="DURATION",
        help="the rules' evaluation interval (default 60s): the size of the queries, and an"
        " episode's end where the samples cannot tell it",
    )  # fmt: skip
    parser.add_argument(
        "--external-label", type=external_label_argument, action="append", default=[],
        metavar="NAME=VALUE",
        help="a label of Prometheus's external_labels (it adds them to the alerts it sends,"
        " not to ALERTS): needed for Alertmanager's fingerprints; repeat for each",
    )  # fmt: skip
    parser.add_argument(
        "--dry-run", action="store_true", help="print the episodes it would record; store nothing"
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH, metavar="N",
        help=f"episodes per write (default {DEFAULT_BATCH})",
    )  # fmt: skip


def selector(metric: str, matchers: Sequence[str], *own: str) -> str:
    return f"{metric}{{{','.join((*own, *matchers))}}}"


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


# -- Prometheus's HTTP API -------------------------------------------------------------------


class Prometheus:
    """The query API of a Prometheus (or of anything that answers as one)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        import httpx

        self.shown = redacted(url)
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/") + "/",
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            follow_redirects=True,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def samples(
        self, series: str, at_ms: int, length_ms: int
    ) -> dict[SeriesKey, list[tuple[int, float]]]:
        """The raw samples of a selector's series over ``length_ms`` up to ``at_ms``."""
        query = f"{series}[{length_ms}ms]"
        data = await self._query({"query": query, "time": f"{at_ms // 1000}.{at_ms % 1000:03d}"})
        try:
            if data["resultType"] != "matrix":
                raise TypeError(data["resultType"])
            found: dict[SeriesKey, list[tuple[int, float]]] = {}
            for item in data["result"]:
                metric: dict[str, str] = item["metric"]
                key = tuple(
                    sorted((k, v) for k, v in metric.items() if k not in ("__name__", "alertstate"))
                )
                found[key] = [(round(float(t) * 1000), float(v)) for t, v in item["values"]]
            return found
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInputError(
                f"{self.shown} answered {query!r} with something Prometheus does not send ({exc!r})"
            ) from None

    async def alert_rules(self) -> list[AlertRule]:
        """The alerting rules it evaluates now ([] when it does not say: not every server
        that answers queries serves rules)."""
        import httpx

        try:
            response = await self._http.get("api/v1/rules", params={"type": "alert"})
            groups = response.json()["data"]["groups"]
            return [
                AlertRule(rule["name"], rule.get("labels") or {}, round(rule["duration"] * 1000))
                for group in groups
                for rule in group["rules"]
                if rule.get("type") == "alerting"
            ]
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            # (no rules API, or an odd one: the samples alone tell the starts)
            return []

    async def _query(self, form: dict[str, str]) -> Any:
        import httpx

        try:
            response = await self._http.post("api/v1/query", data=form)
        except httpx.TimeoutException:
            raise SourceUnavailableError(
                f"Prometheus at {self.shown} did not answer within {self.timeout:g} s"
            ) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise InvalidInputError(f"cannot use {self.shown}: {exc}") from None
        except httpx.TransportError as exc:
            raise SourceUnavailableError(
                f"cannot reach Prometheus at {self.shown}: {exc or type(exc).__name__}"
            ) from None
        return self._data(response, form["query"])

    def _data(self, response: httpx.Response, query: str) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("status") not in ("success", "error"):
            if response.status_code >= 500:
                raise SourceUnavailableError(
                    f"{self.shown} answered HTTP {response.status_code} to a query"
                )
            raise InvalidInputError(
                f"{self.shown} is not a Prometheus API: HTTP {response.status_code} to"
                " /api/v1/query, without Prometheus's JSON"
            )
        if body["status"] == "error":
            what = f"{body.get('errorType', 'error')}: {body.get('error', '')}"
            if response.status_code >= 500:  # (not ready, overloaded, timed out)
                raise SourceUnavailableError(f"Prometheus at {self.shown} failed {query!r}: {what}")
            raise InvalidInputError(f"Prometheus at {self.shown} refused {query!r}: {what}")
        if "data" not in body:
            raise InvalidInputError(f"{self.shown} is not a Prometheus API: no data in its answer")
        return body["data"]


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
        earliest = max(earliest, end_ms - (MAX_SINCE + _LOOK_BACK_PAST) // _MS)
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
    dry_run: bool = False

    def text(self) -> str:
        head = f"{self.episodes} episodes in {self.series} series"
        old = f", {self.too_old} too old (over 30 days)" if self.too_old else ""
        refused = f", {self.refused} refused" if self.refused else ""
        if self.dry_run:
            return f"dry run: {head}; {self.recorded} to record{old}{refused}; nothing stored"
        return (
            f"backfill: {head}; {self.recorded} recorded ({self.counted} counted,"
            f" {self.joined} joined an incident), {self.already_there} already there{old}{refused}"
        )


def _time(ms: int) -> datetime:
    # integer arithmetic: exactly the datetime the receiver parses from "...:54.151Z"
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def as_received(episode: FiringEpisode, mapping: AlertLabels, now: datetime) -> Episode | None:
    """The episode as the receiver makes it of Alertmanager's message about it (None: too old
    for the store)."""
    from .service.alertmanager import AlertmanagerAlert, AlertmanagerPayload, episodes

    ended = episode.ends_ms is not None
    alert = AlertmanagerAlert(
        status="resolved" if ended else "firing",
        labels=episode.labels,
        startsAt=_time(episode.starts_ms),
        endsAt=_time(episode.ends_ms) if episode.ends_ms is not None else None,
        fingerprint=episode.fingerprint,
    )
    found, _ = episodes(
        AlertmanagerPayload(version="4", status="firing", alerts=[alert]), mapping, now
    )
    return found[0] if found else None


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
        now = datetime.now(UTC) + _MARGIN
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
                    warn.write(f"skipped {_describe(episode)}: {exc}\n")
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


# -- the command ----------------------------------------------------------------------------


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


def _describe(episode: FiringEpisode) -> str:
    return f"{episode.alert_name or '?'} {_labels_text(episode.labels)}"


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _require_extra() -> None:
    try:
        import httpx  # noqa: F401
        import pydantic  # noqa: F401
    except ImportError:
        raise ConfigurationError(_NEEDS) from None


async def command(settings: Settings, args: argparse.Namespace) -> None:
    """``anomaly-counter backfill prometheus``: read, then record (or print, with --dry-run)."""
    _require_extra()
    if not 1 <= args.batch_size <= 10_000:
        raise InvalidInputError(f"--batch-size must be 1 to 10000, got {args.batch_size}")
    progress = Progress(sys.stderr)
    end_ms = (datetime.now(UTC) - _time(0)) // _MS
    step_ms = args.step // _MS
    prometheus = Prometheus(args.url)
    try:
        history = await read_history(
            prometheus, args.match, end_ms - args.since // _MS, end_ms, step_ms, progress
        )  # fmt: skip
    finally:
        await prometheus.aclose()
        progress.clear()
    found = history.episodes(end_ms, dict(args.external_label))
    if args.dry_run:
        _print_dry_run(found, settings.alert_labels, args.json)
        return
    summary = Summary()
    if found:  # (nothing found: no store to open, let alone to make)
        # History tells no one: notices of crossings long past would only be noise.
        quiet = replace(settings, project_channels={}, spool_dir="", strict=True)
        counter = AnomalyCounter.from_url(args.store, args.project, settings=quiet)
        try:
            summary = await record(
                counter, found, settings.alert_labels, args.batch_size, progress, sys.stderr
            )
        finally:
            progress.clear()
            await counter.aclose()
    print(json.dumps(asdict(summary)) if args.json else summary.text())


def _print_dry_run(found: Sequence[FiringEpisode], mapping: AlertLabels, as_json: bool) -> None:
    summary = Summary(series=len({e.fingerprint for e in found}), episodes=len(found), dry_run=True)
    now = datetime.now(UTC) + _MARGIN
    rows: list[dict[str, Any]] = []
    for episode in found:
        received = as_received(episode, mapping, now)
        if received is None:
            summary.too_old += 1
            continue
        summary.recorded += 1
        row = {
            "at": _iso(received.at), "alertname": episode.alert_name, "labels": episode.labels,
            "resolved_at": _iso(received.resolved_at), "occurrence_id": received.occurrence_id,
        }  # fmt: skip
        rows.append(row)
        if not as_json:
            state = f"resolved {row['resolved_at']}" if received.resolved_at else "firing"
            print(f"{row['at']}  {_describe(episode)}  {state}")
    if as_json:
        print(json.dumps({"summary": asdict(summary), "episodes": rows}, ensure_ascii=False))
    else:
        print(summary.text())
