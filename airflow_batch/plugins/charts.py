"""The job view's charts as plain geometry: bars and lines placed in an SVG's coordinates.

Pure functions over numbers: no Airflow, no markup. The template ``templates/charts.html`` draws
each :class:`Chart` as an ``<svg>`` (server-side, no JavaScript); every value a chart shows is
also its label (``Mark.label``), so what a reader sees is what the manifests say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

#: The plot area inside a chart, in SVG units: room on the left for the axis, below for labels.
WIDTH, HEIGHT = 420, 240
LEFT, TOP, BOTTOM, RIGHT = 56, 28, 44, 12


@dataclass(frozen=True)
class Mark:
    """One bar (or one point of a line): where it is drawn, its kind (its colour) and its label."""

    x: float
    y: float
    width: float
    height: float
    kind: str
    label: str  # the value as the reader reads it: "12", "$0.0042", "8.5%"
    title: str  # the tooltip: what the mark is


@dataclass(frozen=True)
class Tick:
    """A label on an axis at a position."""

    at: float
    text: str


@dataclass(frozen=True)
class Chart:
    """A drawn chart: its marks, axis labels, and for a trend the line through its points."""

    name: str  # the chart's id in the page (``data-chart``)
    title: str
    marks: list[Mark]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    legend: list[str] = field(default_factory=list)
    line: str = ""  # SVG polyline points of a trend, "" for bars
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def empty(self) -> bool:
        """Return whether there is nothing to draw."""
        return not self.marks


def _plot_height() -> float:
    return HEIGHT - TOP - BOTTOM


def _y_ticks(top: float, fmt: str) -> list[Tick]:
    """Return three labels on the value axis: 0, half and the top, formatted with ``fmt``."""
    base = TOP + _plot_height()
    return [Tick(base - share * _plot_height(), fmt.format(top * share)) for share in (0.0, 0.5, 1.0)]


def bar_chart(
    name: str,
    title: str,
    groups: Sequence[tuple[str, Sequence[tuple[str, float, str]]]],
    *,
    value_format: str = "{:,.0f}",
) -> Chart:
    """Return a grouped bar chart: per group (its x label), bars of (kind, value, label)."""
    top = max((value for _, bars in groups for _, value, _ in bars), default=0.0)
    if not groups or top <= 0:
        return Chart(name, title, [], [], [])
    slot = (WIDTH - LEFT - RIGHT) / len(groups)
    marks, ticks, kinds = [], [], []
    for index, (group, bars) in enumerate(groups):
        width = min(slot * 0.8 / max(len(bars), 1), 40.0)
        start = LEFT + index * slot + (slot - width * len(bars)) / 2
        for offset, (kind, value, label) in enumerate(bars):
            height = _plot_height() * value / top
            marks.append(
                Mark(
                    start + offset * width,
                    TOP + _plot_height() - height,
                    width - 2,
                    height,
                    kind,
                    label,
                    f"{group}: {kind} {label}",
                )
            )
            if kind not in kinds:
                kinds.append(kind)
        ticks.append(Tick(LEFT + index * slot + slot / 2, group))
    return Chart(name, title, marks, ticks, _y_ticks(top, value_format), legend=kinds)


def line_chart(
    name: str, title: str, points: Sequence[tuple[str, float, str]], *, kind: str, value_format: str
) -> Chart:
    """Return a trend: one point per (x label, value, label), joined by a line, oldest first."""
    top = max((value for _, value, _ in points), default=0.0)
    if not points:
        return Chart(name, title, [], [], [])
    top = top or 1.0
    step = (WIDTH - LEFT - RIGHT) / max(len(points), 1)
    marks, ticks = [], []
    for index, (x_label, value, label) in enumerate(points):
        x = LEFT + index * step + step / 2
        y = TOP + _plot_height() * (1 - value / top)
        marks.append(Mark(x, y, 0.0, 0.0, kind, label, f"{x_label}: {label}"))
        ticks.append(Tick(x, x_label))
    # Label every point when few, else about eight of them, so labels never overlap at 1400 px.
    every = max(1, round(len(points) / 8))
    ticks = [t for i, t in enumerate(ticks) if i % every == 0 or i == len(ticks) - 1]
    line = " ".join(f"{m.x:.1f},{m.y:.1f}" for m in marks)
    return Chart(name, title, marks, ticks, _y_ticks(top, value_format), line=line)


def bin_minutes(span_seconds: float, most: int = 60) -> int:
    """Return the width in minutes of the bins of a progress chart spanning ``span_seconds``.

    One minute while that gives at most ``most`` bins; else 5, 15, 60 minutes... so a day-long
    wait is still a readable chart.
    """
    for minutes in (1, 5, 15, 60, 240):
        if span_seconds / 60 / minutes <= most:
            return minutes
    return 1440
