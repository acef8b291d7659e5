"""A report's rows as an SVG chart, drawn on the server (no build step, no script in the page).

`chart(columns, by, series, rows)`: a line chart when the report is grouped by one period only
(`day` or `month`: the figures over time), else horizontal bars, a group per row (its `by` values
joined) and a bar per series (a report's metrics, and its plan). Every label is escaped text
(markupsafe): a group named `<script>` is shown as those characters; colours are presentation
attributes, not inline styles, so the console's Content-Security-Policy needs no 'unsafe-inline'.
"""
from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape

PERIODS = ("day", "month")
COLOURS = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#c53030", "#319795")
WIDTH = 760
LABEL_WIDTH = 230       # the bars' group labels
LABEL_CHARS = 34        # a longer label is cut (its whole text in the bar's tooltip)
BAR = 16
GAP = 10
TOP = 34                # the legend's room


def number(value: Any) -> str:
    """1400 → "1400", 37.25 → "37.2", None → "—"."""
    if value is None:
        return "—"
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.1f}"


def label(row: dict[str, Any], by: list[str] | tuple[str, ...]) -> str:
    """A row's group: its `by` values joined ("2026-12 · solodka.mriya.kyiv"); "all" without `by`."""
    return " · ".join(str(row.get(b) if row.get(b) not in (None, "") else "(none)") for b in by) or "all"


def _cut(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"


def _legend(series: list[str]) -> list[str]:
    parts, x = [], 0
    for i, name in enumerate(series):
        parts.append(f'<rect x="{x}" y="8" width="12" height="12" fill="{COLOURS[i % len(COLOURS)]}"/>'
                     f'<text x="{x + 16}" y="19" font-size="12">{escape(name)}</text>')
        x += 28 + 7 * len(name)
    return parts


def chart(by: list[str] | tuple[str, ...], series: list[str], rows: list[dict[str, Any]], title: str) -> Markup:
    """The SVG element of these rows (empty rows: a chart saying there is nothing to draw)."""
    if not rows:
        return Markup(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{WIDTH}" height="40" '
                      f'viewBox="0 0 {WIDTH} 40"><title>{escape(title)}</title>'
                      '<text x="0" y="24" font-size="13">No facts in these days.</text></svg>')
    if len(by) == 1 and by[0] in PERIODS and len(rows) > 1:
        return _lines(by[0], series, rows, title)
    return _bars(by, series, rows, title)


def _bars(by, series: list[str], rows: list[dict[str, Any]], title: str) -> Markup:
    values = [float(row[s]) for row in rows for s in series if row.get(s) is not None]
    low, high = min([0.0, *values]), max([0.0, *values])
    span = (high - low) or 1.0
    area = WIDTH - LABEL_WIDTH - 70                         # room for the value after the bar
    zero = LABEL_WIDTH + area * (-low / span)
    group = BAR * len(series) + GAP
    height = TOP + group * len(rows)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif"><title>{escape(title)}</title>',
             *_legend(series)]
    for r, row in enumerate(rows):
        y = TOP + r * group
        name = label(row, by)
        parts.append(f'<text class="group" x="{LABEL_WIDTH - 8}" y="{y + BAR * len(series) / 2 + 4:.1f}" '
                     f'font-size="12" text-anchor="end">{escape(_cut(name))}</text>')
        for i, metric in enumerate(series):
            value = row.get(metric)
            length = 0.0 if value is None else area * abs(float(value)) / span
            x = zero - length if value is not None and float(value) < 0 else zero
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y + i * BAR}" width="{length:.1f}" height="{BAR - 2}" '
                         f'fill="{COLOURS[i % len(COLOURS)]}" data-series="{escape(metric)}" data-value="{number(value)}">'
                         f'<title>{escape(name)} · {escape(metric)}: {number(value)}</title></rect>'
                         f'<text class="value" x="{max(x + length, zero) + 4:.1f}" y="{y + i * BAR + BAR - 4}" '
                         f'font-size="11">{number(value)}</text>')
    parts.append(f'<line x1="{zero:.1f}" y1="{TOP - 4}" x2="{zero:.1f}" y2="{height}" stroke="#718096"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _lines(period: str, series: list[str], rows: list[dict[str, Any]], title: str) -> Markup:
    height, left, right, bottom = 300, 56, 20, 40
    values = [float(row[s]) for row in rows for s in series if row.get(s) is not None]
    low, high = min([0.0, *values]), max([0.0, *values])
    span = (high - low) or 1.0
    plot_h = height - TOP - bottom
    step = (WIDTH - left - right) / max(len(rows) - 1, 1)

    def y_of(value: float) -> float:
        return TOP + plot_h * (high - value) / span

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif"><title>{escape(title)}</title>',
             *_legend(series),
             f'<line x1="{left}" y1="{y_of(0):.1f}" x2="{WIDTH - right}" y2="{y_of(0):.1f}" stroke="#718096"/>',
             f'<text x="{left - 6}" y="{y_of(high) + 4:.1f}" font-size="11" text-anchor="end">{number(high)}</text>',
             f'<text x="{left - 6}" y="{y_of(0) + 4:.1f}" font-size="11" text-anchor="end">0</text>']
    every = max(1, len(rows) // 12)                         # at most about 12 period labels under the axis
    for r, row in enumerate(rows):
        if r % every == 0 or r == len(rows) - 1:
            parts.append(f'<text class="period" x="{left + r * step:.1f}" y="{height - bottom + 18}" font-size="11" '
                         f'text-anchor="middle">{escape(row.get(period))}</text>')
    for i, metric in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        points = [(left + r * step, y_of(float(row[metric])), row) for r, row in enumerate(rows)
                  if row.get(metric) is not None]
        if len(points) > 1:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" data-series="{escape(metric)}" '
                         f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points)}"/>')
        for x, y, row in points:
            parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}" '
                         f'data-series="{escape(metric)}" data-value="{number(row[metric])}">'
                         f'<title>{escape(row.get(period))} · {escape(metric)}: {number(row[metric])}</title></circle>')
    parts.append("</svg>")
    return Markup("".join(parts))
