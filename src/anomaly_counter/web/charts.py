"""Charts drawn on the server as SVG: no script, no library, readable without colour.

Bars only (no text inside the SVG, which stretches to its box): the numbers are in each bar's
``<title>`` (shown on hover, read by screen readers) and, on the pages, in a table beside the
chart. Colours come from the page's CSS classes, so light and dark themes hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

_HEIGHT = 100.0  # the viewBox's height; the CSS gives the real one


def _svg(width: float, label: str, body: str, css: str) -> Markup:
    return Markup(
        f'<svg class="{css}" viewBox="0 0 {width:g} {_HEIGHT:g}" preserveAspectRatio="none"'
        f' role="img" aria-label="{escape(label)}" focusable="false">{body}</svg>'
    )


Marker = tuple[float, str, str]
"""A vertical line across a chart: its place (in bars from the left), class and title."""


def bars(
    values: Sequence[int],
    titles: Sequence[str],
    label: str,
    css: str = "bars",
    markers: Sequence[Marker] = (),
) -> Markup:
    """One bar per value, as tall as it is against the highest; each with its title; and
    markers (a fix, a regression) where they fall."""
    peak = max(values, default=0) or 1
    parts = []
    for place, kind, title in markers:
        parts.append(
            f'<line class="marker {kind}" x1="{place:.3f}" x2="{place:.3f}" y1="0"'
            f' y2="{_HEIGHT:g}"><title>{escape(title)}</title></line>'
        )
    for i, (value, title) in enumerate(zip(values, titles, strict=True)):
        height = value / peak * (_HEIGHT - 2)
        parts.append(
            f'<rect class="bar{" zero" if not value else ""}" x="{i + 0.1:g}"'
            f' y="{_HEIGHT - max(height, 0.8):.2f}" width="0.8" height="{max(height, 0.8):.2f}">'
            f"<title>{escape(title)}</title></rect>"
        )
    lines = parts[: len(markers)]
    return _svg(len(values), label, "".join(parts[len(markers) :] + lines), css)


def sparkline(values: Sequence[int], label: str) -> Markup:
    """A small line of the values (an anomaly's last 7 days), in whole viewBox units: it is
    drawn a hundred times on a page, so every byte counts."""
    peak = max(values, default=0) or 1
    if len(values) < 2:
        return _svg(1, label, "", "spark")
    points = " ".join(
        f"{i},{round(_HEIGHT - 4 - v / peak * (_HEIGHT - 8))}" for i, v in enumerate(values)
    )
    body = f'<polyline class="spark-line" points="{points}" vector-effect="non-scaling-stroke"/>'
    return _svg(len(values) - 1, label, body, "spark")


def stacked(
    columns: Sequence[Sequence[int]], classes: Sequence[str], titles: Sequence[str], label: str
) -> Markup:
    """One column per entry, its parts stacked bottom up, each part its class's colour."""
    peak = max((sum(column) for column in columns), default=0) or 1
    parts = []
    for i, (column, title) in enumerate(zip(columns, titles, strict=True)):
        parts.append(f"<g><title>{escape(title)}</title>")
        bottom = _HEIGHT
        for value, css in zip(column, classes, strict=True):
            if value:
                height = value / peak * (_HEIGHT - 2)
                bottom -= height
                parts.append(
                    f'<rect class="{css}" x="{i + 0.15:g}" y="{bottom:.2f}" width="0.7"'
                    f' height="{height:.2f}"/>'
                )
        if not sum(column):
            parts.append(
                f'<rect class="bar zero" x="{i + 0.15:g}" y="{_HEIGHT - 0.8:g}" width="0.7"'
                ' height="0.8"/>'
            )
        parts.append("</g>")
    return _svg(len(columns), label, "".join(parts), "stacked")


def proportion(
    values: Sequence[int], classes: Sequence[str], titles: Sequence[str], label: str
) -> Markup:
    """A horizontal bar split in proportion to the values (a mix: dispositions)."""
    total = sum(values)
    parts, left = [], 0.0
    for value, css, title in zip(values, classes, titles, strict=True):
        if value:
            width = value / total * 100
            parts.append(
                f'<rect class="{css}" x="{left:.3f}" y="0" width="{width:.3f}"'
                f' height="{_HEIGHT:g}"><title>{escape(title)}</title></rect>'
            )
            left += width
    if not total:
        parts.append(f'<rect class="bar zero" x="0" y="0" width="100" height="{_HEIGHT:g}"/>')
    return _svg(100, label, "".join(parts), "proportion")
