"""Line charts as inline SVG geometry, computed on the server (no chart library).

:func:`line_chart` turns one metric series into pixel coordinates and axis ticks.
An exact series short enough to hover gets one marker per step carrying the exact
value (``repr`` of the float, so a reader can compare it with the API's number). A
reduced series (a long run read in buckets of steps) draws the buckets' means as the
line and their lowest and highest values as a band, so spikes stay visible. NaN and
infinite values break the line and are counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeGuard

__all__ = ["Chart", "Marker", "Tick", "line_chart", "nice_ticks"]

WIDTH = 560
HEIGHT = 200
MARGIN_LEFT = 64
MARGIN_RIGHT = 16
MARGIN_TOP = 12
MARGIN_BOTTOM = 28
MAX_MARKERS = 400  # markers (and their exact values) up to this many steps


@dataclass(frozen=True)
class Tick:
    position: float  # pixels along the axis
    label: str


@dataclass(frozen=True)
class Marker:
    x: float
    y: float
    step: int
    value: str  # repr(float): exact


@dataclass
class Chart:
    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    segments: list[str] = field(default_factory=list)  # SVG polyline ``points`` attributes
    bands: list[str] = field(default_factory=list)  # SVG polygon ``points``: low/high of reduced series
    markers: list[Marker] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    points: int = 0  # points in the series (steps, or buckets of steps)
    non_finite: int = 0  # NaN or infinite values (not drawn)
    reduced: bool = False
    last: float | None = None


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}"


def _finite(value: float | None) -> TypeGuard[float]:
    return value is not None and math.isfinite(value)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) covering
    ``[low, high]``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    value = math.floor(low / step) * step
    ticks = []
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _runs(xs: Sequence[float], ys: Sequence[float | None]) -> list[list[tuple[float, float]]]:
    """Consecutive finite points, split at every gap."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, ys, strict=True):
        if _finite(y):
            runs[-1].append((x, y))
        elif runs[-1]:
            runs.append([])
    return [run for run in runs if run]


def line_chart(
    steps: Sequence[float],
    values: Sequence[float | None],
    lows: Sequence[float | None] | None = None,
    highs: Sequence[float | None] | None = None,
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Chart:
    chart = Chart(
        width=width,
        height=height,
        plot_left=MARGIN_LEFT,
        plot_right=width - MARGIN_RIGHT,
        plot_top=MARGIN_TOP,
        plot_bottom=height - MARGIN_BOTTOM,
        points=len(steps),
        reduced=lows is not None,
    )
    chart.non_finite = sum(1 for v in values if not _finite(v))
    if values:
        chart.last = values[-1]
    visible = [v for v in [*values, *(lows or []), *(highs or [])] if _finite(v)]
    if not visible:
        return chart
    y_values = nice_ticks(min(visible), max(visible))
    y_lo, y_hi = y_values[0], y_values[-1]
    x_lo, x_hi = steps[0], steps[-1]
    inner_w = chart.plot_right - chart.plot_left
    inner_h = chart.plot_bottom - chart.plot_top

    def px(step: float) -> float:
        if x_hi == x_lo:
            return chart.plot_left + inner_w / 2
        return round(chart.plot_left + (step - x_lo) / (x_hi - x_lo) * inner_w, 2)

    def py(value: float) -> float:
        return round(chart.plot_bottom - (value - y_lo) / (y_hi - y_lo) * inner_h, 2)

    chart.y_ticks = [Tick(py(v), _fmt(v)) for v in y_values]
    x_values = [v for v in nice_ticks(x_lo, x_hi, 6) if x_lo <= v <= x_hi and float(v).is_integer()] or [x_lo]
    chart.x_ticks = [Tick(px(v), str(int(v))) for v in x_values]
    for run in _runs(steps, values):
        chart.segments.append(" ".join(f"{px(x)},{py(y)}" for x, y in run))
    if lows is not None and highs is not None:
        for top, bottom in zip(_runs(steps, highs), _runs(steps, lows), strict=False):
            outline = [*top, *reversed(bottom)]
            chart.bands.append(" ".join(f"{px(x)},{py(y)}" for x, y in outline))
    elif len(steps) <= MAX_MARKERS:
        chart.markers = [
            Marker(px(step), py(value), int(step), repr(value))
            for step, value in zip(steps, values, strict=True)
            if _finite(value)
        ]
    return chart
