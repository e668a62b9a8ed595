"""What the pages show: gathered from the library in as few round trips as may be, and shaped
for the templates (labels, charts with their numbers, verdicts in words)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from markupsafe import Markup

from ..counter import MAX_CHRONIC, AnomalyCounter
from ..episodes import EpisodeRules
from ..model import (
    DISPOSITION_TYPES,
    LEVEL_MEANINGS,
    AnomalyFrequency,
    EscalationLevel,
    RepairAttempt,
    TimelineEntry,
)
from ..outbox import DeadLetter
from ..policy import MIN_ATTEMPTS_TO_JUDGE, ActionRecommendation
from ..signature import fingerprint_fields
from ..timeline import describe, reporter
from ..windows import HISTORY
from . import charts

LEVELS = ("REPEAT", "ESCALATE", "PERMANENT_FIX")
LEVEL_FILTERS: dict[str, str] = {
    "REPEAT": "Chronic: REPEAT and above",
    "ESCALATE": "ESCALATE and above",
    "PERMANENT_FIX": "PERMANENT_FIX only",
    "all": "All anomalies",
}
WINDOW_NAMES = {"1h": "1 h", "24h": "24 h", "7d": "7 d", "30d": "30 d"}
DISPOSITION_NAMES = {
    "auto_repair": "auto repair",
    "human_approved": "human approved",
    "manual_resolved": "manual resolved",
    "cold_start_trust": "cold-start trust",
    "timeout_ignored": "timeout ignored",
}
MAX_ROWS = 500


def utc_text(moment: datetime, seconds: bool = False) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def labels_of(frequency: AnomalyFrequency) -> dict[str, str]:
    """The four fingerprint fields, as text (a missing one is empty)."""
    fields = fingerprint_fields(frequency.signature)
    return {name: "" if value is None else str(value) for name, value in fields.items()}


def title_of(frequency: AnomalyFrequency) -> str:
    return labels_of(frequency)["alert_name"] or frequency.anomaly_key


@dataclass
class Chart:
    """A bar chart and its numbers: the SVG, the axis, and the rows of its table."""

    svg: Markup
    peak: int
    total: int
    ticks: list[str]
    rows: list[tuple[str, int]]
    caption: str
    minor: set[int] = field(default_factory=set)  # ticks hidden on a phone
    marked: list[str] = field(default_factory=list)  # the kinds of the lines drawn across it


def history_chart(
    series: Sequence[tuple[datetime, int]],
    window: str,
    what: str,
    moments: Sequence[tuple[datetime, str, str]] = (),
) -> Chart:
    """Bars of a history (see AnomalyCounter.history), with ticks at day starts, and lines
    at ``moments`` (time, class, title) that fall in its span."""
    bucket_ms = HISTORY[window][0]
    span = bucket_ms * len(series)
    markers = []
    for moment, kind, title in moments:
        offset = (moment - series[0][0]).total_seconds() * 1000 if series else -1
        if 0 <= offset < span:
            markers.append((offset / bucket_ms, kind, title))
    daily = bucket_ms >= 86_400_000
    label = "%a %d %b" if daily else "%a %d %b %H:%M"
    titles = [f"{start.strftime(label)} UTC: {n}" for start, n in series]
    counts = [n for _, n in series]
    starts = [start for start, _ in series]
    if window == "1h":
        ticks = _ticks(starts, lambda s: s.minute % 15 == 0, "%H:%M")
    elif window == "24h":
        ticks = _ticks(starts, lambda s: s.hour % 6 == 0, "%H:00")
    elif window == "7d":
        ticks = _ticks(starts, lambda s: s.hour == 0, "%a %d")
    else:
        ticks = _ticks(starts, lambda s: (s.toordinal() - starts[0].toordinal()) % 5 == 0, "%d %b")
    # a label starts under the bar it names: none in the last eighth, where it would not fit
    ticks[len(ticks) - len(ticks) // 8 :] = [""] * (len(ticks) // 8)
    labelled = [i for i, tick in enumerate(ticks) if tick]
    minor = set(labelled[1::2])  # every other label: hidden on phones
    return Chart(
        svg=charts.bars(counts, titles, f"{what}: {sum(counts)} occurrences", markers=markers),
        peak=max(counts, default=0),
        total=sum(counts),
        ticks=ticks,
        minor=minor,
        marked=[kind for _, kind, _ in markers],
        rows=[(start.strftime(label), n) for start, n in series if n],
        caption=what,
    )


def _ticks(starts: Sequence[datetime], chosen: Callable[[datetime], bool], form: str) -> list[str]:
    """An axis label under each bar (empty for most): the page lays them out bar by bar."""
    return [start.strftime(form) if chosen(start) else "" for start in starts]


@dataclass
class Row:
    """One anomaly of a list: its figures, labels, sparkline and the repair to try next."""

    frequency: AnomalyFrequency
    labels: dict[str, str]
    spark: Markup
    spark_text: str
    next_action: ActionRecommendation | None


def _spark(frequency: AnomalyFrequency, week: Sequence[tuple[datetime, int]] | None) -> Row:
    counts = [n for _, n in week or []]
    thirds = [sum(counts[i : i + 3]) for i in range(0, len(counts), 3)]  # per 3 hours
    busiest = max(counts, default=0)
    text = f"last 7 days: {sum(counts)} occurrences, at most {busiest} in an hour"
    return Row(frequency, labels_of(frequency), charts.sparkline(thirds, text), text, None)


async def rows_for(counter: AnomalyCounter, found: Sequence[AnomalyFrequency]) -> list[Row]:
    """Rows with their sparklines and next repairs: two round trips for the whole list."""
    keys = [f.anomaly_key for f in found]
    if not keys:
        return []
    weeks, ranked = await asyncio.gather(
        counter.histories(keys, "7d"), counter.recommendations(keys)
    )
    rows = []
    for frequency, week, actions in zip(found, weeks, ranked, strict=True):
        row = _spark(frequency, week)
        row.next_action = next((a for a in actions if not a.skip), None)
        rows.append(row)
    return rows


@dataclass
class ProjectView:
    window: str
    level: str
    rows: list[Row]
    total: int
    truncated: bool
    tiles: dict[str, int]
    escalations: Chart
    escalation_days: list[tuple[date, dict[str, int]]]
    dispositions: dict[str, int]
    disposition_bar: Markup
    heading: str
    thresholds: dict[str, int] = field(default_factory=dict)
    notices: NoticesView | None = None  # (a project with channels)
    flapping: list[AnomalyFrequency] = field(default_factory=list)  # the top MAX_FLAPPING
    flapping_total: int = 0
    flap_rules: EpisodeRules = field(default_factory=EpisodeRules)


@dataclass
class DeadLetterRow:
    letter: DeadLetter
    name: str  # its anomaly's alert name ("" when forgotten since)
    channel: str  # its kind (telegram, slack, webhook)
    level: str | None
    dead: datetime


@dataclass
class NoticesView:
    """The project's notices outbox: what waits, what overflowed, and the dead letters."""

    depth: int
    oldest: datetime | None
    overflowed: int
    dead: int
    letters: list[DeadLetterRow]  # the newest first, at most MAX_LETTERS


MAX_LETTERS = 20
MAX_FLAPPING = 10  # the project page's "flapping now" (Alerta's top 10 flapping)
MAX_ATTEMPTS = 10  # repair attempts the anomaly page lists


async def notices_view(counter: AnomalyCounter) -> NoticesView | None:
    if not counter.settings.project_channels.get(counter.project_id):
        return None
    stats, letters = await asyncio.gather(counter.outbox_stats(), counter.dead_letters())
    shown = list(reversed(letters[-MAX_LETTERS:]))
    found = await asyncio.gather(*(counter.get_frequency(d.entry.anomaly_key) for d in shown))
    rows = [
        DeadLetterRow(
            letter=d,
            name=str(fingerprint_fields(f.signature)["alert_name"] or "") if f else "",
            channel=d.channel.split(":", 1)[0],
            level=(
                EscalationLevel(d.entry.level).name
                if d.entry.kind == "escalation" and d.entry.level
                else None
            ),
            dead=_when(d.dead_ms),
        )
        for d, f in zip(shown, found, strict=True)
    ]
    oldest = None if stats.oldest_ms is None else _when(stats.oldest_ms)
    return NoticesView(stats.depth, oldest, stats.overflowed, stats.dead, rows)


def _when(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


async def project_view(
    counter: AnomalyCounter, *, window: str, level: str, query: str, limit: int
) -> ProjectView:
    """The project page: its chronic anomalies (or a search, or every anomaly), the level
    tiles, escalations per day and the disposition mix."""
    chronic_all, days, summary, notices, flapping = await asyncio.gather(
        counter.chronic_anomalies("REPEAT", window, MAX_CHRONIC),  # all: the tiles count them
        counter.escalations_by_day(30),
        counter.disposition_summary(),
        notices_view(counter),
        counter.flapping_anomalies(MAX_FLAPPING),
    )
    tiles = {name: 0 for name in (*LEVELS, "regressed")}
    for f in chronic_all.anomalies:
        tiles[f.escalation_level or ""] = tiles.get(f.escalation_level or "", 0) + 1
        tiles["regressed"] += f.regressed
    truncated = chronic_all.truncated
    if query:
        found = await counter.search(query, limit=limit)
        listed, total, truncated = found.anomalies, found.total, found.truncated
        heading = (
            f"{found.total} anomalies match “{query}”"
            if found.total != 1
            else (f"1 anomaly matches “{query}”")
        )
    elif level == "all":
        top = await counter.top(limit, window)
        listed, total = top.anomalies, top.total
        heading = f"The busiest anomalies of the last {WINDOW_NAMES[window]}"
    else:
        floor = counter.THRESHOLDS[level]
        chosen = [f for f in chronic_all.anomalies if f.count_24h >= floor]
        listed, total = chosen[:limit], len(chosen)
        heading = f"Chronic anomalies: {LEVEL_FILTERS[level].split(': ')[-1]}"
    columns = [[counts[name] for name in LEVELS] for _, counts in days]
    titles = [
        f"{day.strftime('%a %d %b')}: " + ", ".join(f"{counts[n]} {n}" for n in LEVELS)
        for day, counts in days
    ]
    classes = [f"lv-{n}" for n in LEVELS]
    escalations = Chart(
        svg=charts.stacked(columns, classes, titles, "escalations per day, last 30 days"),
        peak=max((sum(c) for c in columns), default=0),
        total=sum(sum(c) for c in columns),
        ticks=[
            day.strftime("%d %b") if i % 5 == 0 and i < 26 else ""
            for i, (day, _) in enumerate(days)
        ],
        minor={i for i in range(len(days)) if i % 10 == 5},
        rows=[(day.strftime("%a %d %b"), sum(c.values())) for day, c in days if sum(c.values())],
        caption="Crossings into each level per day (UTC), last 30 days",
    )
    mix = _disposition_bar(summary)
    return ProjectView(
        window=window,
        level=level,
        rows=await rows_for(counter, listed),
        total=total,
        truncated=truncated,
        tiles=tiles,
        escalations=escalations,
        escalation_days=days,
        dispositions=summary,
        disposition_bar=mix,
        heading=heading,
        thresholds=counter.THRESHOLDS,
        notices=notices,
        flapping=flapping.anomalies,
        flapping_total=flapping.total,
        flap_rules=counter.settings.episodes_for(counter.project_id),
    )


@dataclass
class Story:
    """One timeline entry as the page tells it."""

    entry: TimelineEntry
    text: str
    by: str


@dataclass
class RepairRow:
    action: ActionRecommendation
    verdict: str  # skip, try, unknown
    verdict_text: str
    rate_svg: Markup


@dataclass
class AnomalyView:
    frequency: AnomalyFrequency
    title: str
    labels: dict[str, str]
    other_labels: dict[str, str]
    meaning: str
    week: Chart | None
    month: Chart | None
    series: dict[str, list[tuple[datetime, int]]]
    story: list[Story]
    fixed_by: str
    repairs: list[RepairRow]
    attempts: list[RepairAttempt]  # the latest, newest first, with their verdicts
    dispositions: list[tuple[str, str, int]]
    disposition_bar: Markup


async def anomaly_view(
    counter: AnomalyCounter, frequency: AnomalyFrequency, who: Mapping[str, str]
) -> AnomalyView:
    """The anomaly page: figures, history, story, repairs (``who``: token id -> label)."""
    key = frequency.anomaly_key
    week, month, entries, (ranked,), attempts = await asyncio.gather(
        counter.history(key, "7d"),
        counter.history(key, "30d"),
        counter.timeline(key),
        counter.recommendations([key]),
        counter.repair_history(key),
    )
    labels = labels_of(frequency)
    shown = set(fingerprint_fields({})) | {"alertname", "job", "reason"}
    other = {k: str(v) for k, v in frequency.signature.items() if k not in shown}
    moments = []
    if frequency.permanent_fix is not None:
        fix = frequency.permanent_fix
        moments.append((fix.at, "fix", f"permanent fix marked {utc_text(fix.at)}"))
    if frequency.regressed_at is not None:
        moments.append(
            (frequency.regressed_at, "regressed", f"came back {utc_text(frequency.regressed_at)}")
        )
    kinds = list(DISPOSITION_TYPES)
    counts = {
        "auto_repair": frequency.auto_repair_disposition_count,
        "human_approved": frequency.human_approved_count,
        "manual_resolved": frequency.manual_resolved_count,
        "cold_start_trust": frequency.cold_start_trust_count,
        "timeout_ignored": frequency.timeout_ignored_count,
    }
    return AnomalyView(
        frequency=frequency,
        title=title_of(frequency),
        labels=labels,
        other_labels=other,
        meaning=LEVEL_MEANINGS.get(frequency.escalation_level or "", "below every level"),
        week=history_chart(week, "7d", "Last 7 days, hourly (UTC)", moments) if week else None,
        month=history_chart(month, "30d", "Last 30 days, daily (UTC)", moments) if month else None,
        series={"7d": week or [], "30d": month or []},
        story=[Story(e, describe(e), reporter(e.by, who)) for e in entries],
        fixed_by=reporter(frequency.permanent_fix.by if frequency.permanent_fix else None, who),
        repairs=[_repair_row(r) for r in ranked],
        attempts=attempts[:MAX_ATTEMPTS],
        dispositions=[(k, DISPOSITION_NAMES[k], counts[k]) for k in kinds],
        disposition_bar=_disposition_bar(counts),
    )


def _disposition_bar(counts: Mapping[str, int]) -> Markup:
    """How alerts were disposed of, as one bar of the five types' shares."""
    kinds = DISPOSITION_TYPES
    return charts.proportion(
        [counts[k] for k in kinds],
        [f"d-{k}" for k in kinds],
        [f"{DISPOSITION_NAMES[k]}: {counts[k]}" for k in kinds],
        f"dispositions of the last 30 days: {sum(counts[k] for k in kinds)}",
    )


def _repair_row(action: ActionRecommendation) -> RepairRow:
    if action.skip:
        verdict, text = "skip", "skip: fails too often"
    elif action.total < MIN_ATTEMPTS_TO_JUDGE:
        verdict, text = "unknown", "untried" if action.total == 0 else "too few to judge"
    else:
        verdict, text = "try", "worth trying"
    if action.basis == "verified" and action.total:
        text += ", by outcome"  # (judged by whether the anomaly came back, not by reports)
    ok = action.success_rate * 100
    svg = Markup(
        '<svg viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true">'
        f'<rect class="ko" x="0" y="0" width="100" height="10"/>'
        f'<rect class="ok" x="0" y="0" width="{ok:.1f}" height="10"/></svg>'
    )
    return RepairRow(action, verdict, text, svg)


def anomaly_json(view: AnomalyView) -> dict[str, Any]:
    """The anomaly page's data as JSON (its link on the page)."""
    return {
        "anomaly": view.frequency.to_dict(),
        "history": {
            window: [{"start": start.isoformat(), "count": n} for start, n in series]
            for window, series in view.series.items()
        },
        "timeline": [s.entry.to_dict() for s in view.story],
        "repairs": [r.action.to_dict() for r in view.repairs],
        "dispositions": {k: n for k, _, n in view.dispositions},
    }
