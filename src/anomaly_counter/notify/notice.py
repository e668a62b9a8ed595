"""What a notice says: everything a person needs to act on a chronic or returning alert."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..model import LEVEL_MEANINGS, WINDOWS, AnomalyFrequency
from ..policy import ActionRecommendation
from ..signature import fingerprint_fields

ESCALATION, REGRESSION = "escalation", "regression"


@dataclass(frozen=True, slots=True)
class Notice:
    kind: str  # ESCALATION (crossed into a higher level) or REGRESSION (back after a fix)
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

    @classmethod
    def of(
        cls,
        kind: str,
        project: str,
        frequency: AnomalyFrequency,
        repairs: Mapping[str, Mapping[str, Any]],
        recommendations: list[ActionRecommendation],
        base_url: str,
    ) -> Notice:
        labels = {k: str(v) for k, v in fingerprint_fields(frequency.signature).items()}
        return cls(
            kind=kind,
            project=project,
            anomaly_key=frequency.anomaly_key,
            labels=labels,
            level=frequency.escalated_to or frequency.escalation_level,
            counts={window: frequency.count_in(window) for window in WINDOWS},
            first_seen=frequency.first_seen,
            last_seen=frequency.last_seen,
            repairs={action: dict(stats) for action, stats in repairs.items()},
            recommended=recommendations[0] if recommendations else None,
            link=f"{base_url}/projects/{project}/anomalies/{frequency.anomaly_key}",
            api_link=f"{base_url}/v1/projects/{project}/anomalies/{frequency.anomaly_key}",
        )

    @property
    def meaning(self) -> str:
        if self.kind == REGRESSION:
            return "came back after its permanent fix: the fix did not hold"
        return LEVEL_MEANINGS.get(self.level or "", "")

    @property
    def title(self) -> str:
        name = self.labels["alert_name"] or self.anomaly_key
        if self.kind == REGRESSION:
            return f"REGRESSED: {name}"
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
                f"{text(a)} {s['success']}/{s['total']} ({s['success_rate']:.0%})"
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
            "kind": self.kind,
            "project": self.project,
            "anomaly_key": self.anomaly_key,
            **self.labels,
            "level": self.level,
            "meaning": self.meaning,
            "counts": self.counts,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "repairs": self.repairs,
            "recommended": recommended,
            "link": self.link,
            "api_link": self.api_link,
            "text": "\n".join(self._lines(lambda s: s, lambda s: s)),
        }
