"""The console's server-side SVG line charts (console/chart.py)."""

from __future__ import annotations

import math

from tinker_server.console.chart import MAX_MARKERS, line_chart, nice_ticks


def test_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(0.13, 0.87) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(102.0, 161.0) == [100.0, 120.0, 140.0, 160.0, 180.0]
    flat = nice_ticks(0.05, 0.05)
    assert flat[0] < 0.05 < flat[-1]
    assert nice_ticks(math.nan, 1.0) == []


def test_every_step_gets_a_marker_with_its_exact_value() -> None:
    values = [3.0, 0.1 + 0.2, 1.0000000000000002]
    chart = line_chart([1, 2, 3], values)
    assert [m.step for m in chart.markers] == [1, 2, 3]
    assert [float(m.value) for m in chart.markers] == values  # repr round-trips
    xs = [m.x for m in chart.markers]
    assert xs == sorted(xs) and xs[0] == chart.plot_left and xs[-1] == chart.plot_right
    ys = [m.y for m in chart.markers]
    assert ys[0] < ys[2] < ys[1]  # larger values higher up (smaller y)
    assert all(chart.plot_top <= y <= chart.plot_bottom for y in ys)
    assert len(chart.segments) == 1 and chart.last == values[-1]


def test_gaps_break_the_line_and_are_counted() -> None:
    chart = line_chart([1, 2, 3, 4, 5], [1.0, None, 2.0, math.inf, 3.0])
    assert chart.non_finite == 2 and len(chart.segments) == 3 and len(chart.markers) == 3
    assert line_chart([1], [None]).segments == [] and line_chart([], []).points == 0


def test_a_reduced_series_draws_means_and_a_band_of_extremes() -> None:
    steps = [5.5, 15.5, 25.5]
    means, lows, highs = [3.0, 2.0, 1.0], [2.5, 1.0, 0.5], [4.0, 9.0, 1.5]  # a spike in the middle bucket
    chart = line_chart(steps, means, lows, highs)
    assert chart.reduced and not chart.markers and len(chart.segments) == 1 and len(chart.bands) == 1
    band = [tuple(map(float, p.split(","))) for p in chart.bands[0].split()]
    assert len(band) == 6  # the highs left to right, then the lows back
    lo, hi = float(chart.y_ticks[0].label), float(chart.y_ticks[-1].label)
    spike_y = chart.plot_bottom - (9.0 - lo) / (hi - lo) * (chart.plot_bottom - chart.plot_top)
    assert min(y for _, y in band) == round(spike_y, 2)
    assert hi >= 9.0  # the axis covers the band, not only the means
    # Buckets without comparable extremes leave gaps in the band.
    gappy = line_chart(steps, means, [2.5, None, 0.5], [4.0, None, 1.5])
    assert len(gappy.bands) == 2 and len(gappy.segments) == 1


def test_markers_stop_at_a_limit() -> None:
    assert len(line_chart(list(range(MAX_MARKERS)), [1.0] * MAX_MARKERS).markers) == MAX_MARKERS
    assert line_chart(list(range(MAX_MARKERS + 1)), [1.0] * (MAX_MARKERS + 1)).markers == []
