"""accounting.steady_over: the fast path of a batch with no PUE or intensity step inside it."""

from __future__ import annotations

import random

from gridwatt.collector.accounting import (
    J_PER_KWH,
    emissions_with_estimated,
    facility_and_emissions,
    steady_over,
)
from gridwatt.collector.stepseries import StepSeries

H = 3600 * 10**9


def test_steady_only_without_a_step_strictly_inside_the_span() -> None:
    pue = StepSeries((0, 2 * H), (1.2, 1.4))
    ci = StepSeries((0, H, 3 * H), (100.0, 300.0, 50.0), (False, True, False))
    assert steady_over(pue, ci, 0, H) == (1.2, 100.0)  # a step at the span's end is outside
    assert steady_over(pue, ci, H, 2 * H) == (1.2, 300.0)  # a step at its start holds over it
    assert steady_over(pue, ci, H // 2, H + 1) is None  # intensity steps inside
    assert steady_over(pue, ci, H + 1, 2 * H + 1) is None  # PUE steps inside
    assert steady_over(pue, ci, 5 * H, 6 * H) == (1.4, 50.0)  # after the last steps


def test_steady_path_equals_the_general_functions_to_the_bit() -> None:
    rng = random.Random(9)
    pue = StepSeries((0, 10 * H), (1.3125, 1.17))
    ci = StepSeries((0, H), (412.34, 377.7), (False, True))
    lo, hi = H, 2 * H
    steady = steady_over(pue, ci, lo, hi)
    assert steady is not None
    p, c = steady
    for _ in range(500):
        start = rng.randrange(lo, hi - 1)
        end = rng.randrange(start + 1, hi + 1)
        e = rng.random() * 1e4
        fac = e * p
        co2 = fac / J_PER_KWH * c
        assert facility_and_emissions(e, start, end, pue, ci) == (fac, co2)
        assert emissions_with_estimated(e, start, end, pue, ci) == (fac, co2, co2)  # step at H: estimated
