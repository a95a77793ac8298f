"""The status page's 15-minute ring: bounded whatever passes, rates and latencies per step."""

from __future__ import annotations

import math

import pytest

from syncd.history import HISTORY_SPAN, HISTORY_STEP, History

T0 = 1_800_000_000.0  # a multiple of the 5 s step


def test_the_window_is_fifteen_minutes_of_five_second_steps() -> None:
    history = History()
    series = history.series(T0)
    assert (series["span_seconds"], series["step_seconds"]) == (HISTORY_SPAN, HISTORY_STEP) == (900.0, 5.0)
    assert len(series["t"]) == 180
    assert series["t"][-1] == T0
    assert series["t"][0] == T0 - 895
    assert series["deliveries_per_second"] == [0.0] * 180
    assert series["latency_mean_ms"] == [None] * 180


def test_rates_are_per_second_and_the_current_step_counts_its_elapsed_part() -> None:
    history = History()
    history.deliveries(T0 - 10, 50)  # a full step, 10 s ago: 50 / 5 s
    history.deliveries(T0 + 2, 4)  # the current step, 2 s in: 4 / 2 s
    series = history.series(T0 + 2)
    assert series["deliveries_per_second"][-3] == 10.0
    assert series["deliveries_per_second"][-2] == 0.0
    assert series["deliveries_per_second"][-1] == 2.0


def test_latency_mean_and_max_in_milliseconds_and_bad_values_ignored() -> None:
    history = History()
    history.latencies(T0, [0.010, 0.030, math.nan, -1.0, math.inf])
    history.latencies(T0 + 1, [0.020])
    history.latencies(T0 + 2, [])
    series = history.series(T0 + 4)
    assert series["latency_mean_ms"][-1] == 20.0
    assert series["latency_max_ms"][-1] == 30.0
    assert series["latency_mean_ms"][-2] is None


def test_a_step_older_than_the_span_leaves_the_window_at_the_bound() -> None:
    history = History()
    history.deliveries(T0, 5)
    inside = history.series(T0 + 895)  # T0's step is the oldest of the window
    assert inside["t"][0] == T0
    assert inside["deliveries_per_second"][0] == 1.0
    outside = history.series(T0 + 900)
    assert outside["t"][0] == T0 + 5
    assert sum(outside["deliveries_per_second"]) == 0.0


def test_memory_is_bounded_however_long_it_runs() -> None:
    history = History()
    for second in range(0, 3 * 86_400, 3):
        history.deliveries(T0 + second, 1000)
        history.latencies(T0 + second, [0.001] * 10)
    assert len(history._buckets) == history.size + 1 == 181
    assert len(history.series(T0 + 3 * 86_400)["t"]) == 180


def test_a_clock_that_steps_back_counts_in_the_newest_step() -> None:
    history = History()
    history.deliveries(T0 + 20, 1)
    history.deliveries(T0 + 3, 1)  # the wall clock went back 17 s
    assert len(history._buckets) == 1
    assert history.series(T0 + 24)["deliveries_per_second"][-1] == 0.5  # 2 in the 4 s of the step


@pytest.mark.parametrize(("span", "step"), [(900, 0), (900, -5), (1, 5), (math.inf, 5)])
def test_a_window_that_makes_no_sense_is_refused(span: float, step: float) -> None:
    with pytest.raises(ValueError, match="need 0 < step <= span"):
        History(span, step)
