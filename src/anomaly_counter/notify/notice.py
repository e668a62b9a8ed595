"""What a notice says: everything a person needs to act on a chronic or returning alert."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..model import LEVEL_MEANINGS, WINDOWS, AnomalyFrequency, EscalationLevel
from ..outbox import OutboxEntry
from ..policy import ActionRecommendation
from ..signature import FINGERPRINT_FIELDS, fingerprint_fields

ESCALATION, REGRESSION = "escalation", "regression"
FLAPPING, FLAPPING_STOPPED = "flapping", "flapping_stopped"


@dataclass(frozen=True, slots=True)
class Notice:
    kind: str  # ESCALATION (crossed into a higher level), REGRESSION (back after a fix),
    # FLAPPING or FLAPPING_STOPPED (see anomaly_counter.episodes)
    project: str
    anomaly_key: str
    labels: dict[str, str]  # alert_name, service, namespace, error_type
    level: str | None
    counts: dict[str, int]  # by window name
    first_seen: datetime
    last_seen: datetime
    repairs: dict[str, dict[str, Any]]  # by action: total, success, success_rate
    recommended: ActionRecommendation | None
    link: str  # the anomaly's page on the dashboard
    api_link: str  # the same as JSON
    notice_id: str = ""  # its idempotency key: the same on every try (OutboxEntry.key)
    flap_percent: float | None = None  # a flapping notice's percent of changes

    @classmethod
    def of_entry(
        cls,
        project: str,
        entry: OutboxEntry,
        frequency: AnomalyFrequency | None,
        repairs: Mapping[str, Mapping[str, Any]],
        recommendations: list[ActionRecommendation],
        base_url: str,
    ) -> Notice:
        """The notice of an outbox entry: its level and counts as they were when it was
        written, the anomaly's labels and repairs as they are now (``frequency`` None: an
        anomaly forgotten since, told by its key)."""
        key = entry.anomaly_key
        at = datetime.fromtimestamp(entry.at_ms / 1000, UTC)
        flapping = entry.kind in (FLAPPING, FLAPPING_STOPPED)
        level = EscalationLevel(entry.level).name if entry.level and not flapping else None
        if frequency is not None:
            labels = {k: str(v) for k, v in fingerprint_fields(frequency.signature).items()}
            level = level or frequency.escalation_level
        else:
            labels = dict.fromkeys(FINGERPRINT_FIELDS, "")
        return cls(
            kind=entry.kind,
            project=project,
            anomaly_key=key,
            labels=labels,
            level=level,
            counts=dict(zip(WINDOWS, entry.counts, strict=True)),
            first_seen=frequency.first_seen if frequency is not None else at,
            last_seen=at,
            repairs={action: dict(stats) for action, stats in repairs.items()},
            recommended=recommendations[0] if recommendations else None,
            link=f"{base_url}/projects/{project}/anomalies/{key}",
            api_link=f"{base_url}/v1/projects/{project}/anomalies/{key}",
            notice_id=entry.key(project),
            flap_percent=entry.level / 10 if flapping else None,
        )

    @property
    def meaning(self) -> str:
        if self.kind == REGRESSION:
            return "came back after its permanent fix: the fix did not hold"
        if self.kind == FLAPPING:
            return (
                f"fires and resolves again and again: {self.flap_percent:g} % of its last 21"
                " slots changed state"
            )
        if self.kind == FLAPPING_STOPPED:
            return f"stopped flapping: {self.flap_percent:g} % of its last 21 slots changed state"
        return LEVEL_MEANINGS.get(self.level or "", "")

    @property
    def title(self) -> str:
        name = self.labels["alert_name"] or self.anomaly_key
        if self.kind == REGRESSION:
            return f"REGRESSED: {name}"
        if self.kind == FLAPPING:
            return f"FLAPPING: {name}"
        if self.kind == FLAPPING_STOPPED:
            return f"STOPPED FLAPPING: {name}"
        return f"{self.level}: {name}"

    def _lines(self, bold: Callable[[str], str], text: Callable[[str], str]) -> list[str]:
        where = ", ".join(
            f"{k} {text(v)}" for k, v in self.labels.items() if k != "alert_name" and v
        )
        counts = ", ".join(f"{n} in {w}" for w, n in self.counts.items())
        lines = [
            bold(text(self.title)),
            text(self.meaning),
            f"{bold('Where')}: {where or 'no labels'} (project {text(self.project)})",
            f"{bold('Counts')}: {counts}",
            f"{bold('First seen')}: {self.first_seen:%Y-%m-%d %H:%M} UTC,"
            f" last {self.last_seen:%Y-%m-%d %H:%M} UTC",
        ]
        if self.repairs:
            tried = "; ".join(
                f"{text(a)} {s['success']}/{s['total']} ({s['success_rate']:.0%}){_held(s)}"
                for a, s in sorted(self.repairs.items())
            )
            lines.append(f"{bold('Repairs')}: {tried}")
        else:
            lines.append(f"{bold('Repairs')}: none recorded")
        if self.recommended is not None:
            lines.append(
                f"{bold('Next')}: {text(self.recommended.action)} ({text(self.recommended.reason)})"
            )
        lines.append(text(self.link))
        return lines

    def html(self) -> str:
        """For Telegram (parse_mode HTML)."""
        return "\n".join(self._lines(lambda s: f"<b>{s}</b>", html.escape))

    def markdown(self) -> str:
        """For Slack (mrkdwn: only & < > are escaped)."""

        def escape(s: str) -> str:
            return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

        return "\n".join(self._lines(lambda s: f"*{s}*", escape))

    def payload(self) -> dict[str, Any]:
        """For the generic webhook: the same facts as data."""
        recommended = None
        if self.recommended is not None:
            recommended = {"action": self.recommended.action, "reason": self.recommended.reason}
        return {
            "notice_id": self.notice_id,
            "kind": self.kind,
            "project": self.project,
            "anomaly_key": self.anomaly_key,
            **self.labels,
            "level": self.level,
            "meaning": self.meaning,
            "flap_percent": self.flap_percent,
            "counts": self.counts,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "repairs": self.repairs,
            "recommended": recommended,
            "link": self.link,
            "api_link": self.api_link,
            "text": "\n".join(self._lines(lambda s: s, lambda s: s)),
        }


def _held(stats: Mapping[str, Any]) -> str:
    """An action's verified outcomes, when it has settled attempts: how many held."""
    settled = stats.get("verified_succeeded", 0) + stats.get("verified_failed", 0)
    if not settled:
        return ""
    return f", held after {stats['verified_succeeded']} of {settled}"
