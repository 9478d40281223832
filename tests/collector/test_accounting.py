"""The pure accounting core, against numbers computed by hand."""

from __future__ import annotations

import pytest

from gridwatt.collector.accounting import J_PER_KWH, emissions_with_estimated, facility_and_emissions
from gridwatt.collector.stepseries import StepSeries

H = 3600 * 10**9  # one hour in ns


def test_seed_worked_example() -> None:
    # 8 GPUs x 0.4 kW x 120 h = 384 kWh; x PUE 1.2 = 460.8 kWh; x 0.350 kg/kWh = 161.28 kg.
    energy_j = 8 * 400.0 * 120 * 3600
    facility_j, co2e_g = facility_and_emissions(
        energy_j, 0, 120 * H, StepSeries.constant(1.2), StepSeries.constant(350.0)
    )
    assert energy_j / J_PER_KWH == pytest.approx(384.0, rel=1e-12)
    assert facility_j / J_PER_KWH == pytest.approx(460.8, rel=1e-12)
    assert co2e_g / 1000 == pytest.approx(161.28, rel=1e-12)


def test_interval_split_at_intensity_step() -> None:
    # 1 kWh over 2 h at constant power; intensity 100 in hour 0, 300 in hour 1; PUE 1.5.
    # facility 1.5 kWh, split 0.75 + 0.75 kWh -> 75 + 225 = 300 g.
    ci = StepSeries((0, H), (100.0, 300.0))
    facility_j, co2e_g = facility_and_emissions(J_PER_KWH, 0, 2 * H, StepSeries.constant(1.5), ci)
    assert facility_j == pytest.approx(1.5 * J_PER_KWH)
    assert co2e_g == pytest.approx(300.0)


def test_interval_split_at_both_pue_and_intensity_steps() -> None:
    # 3 kWh over [0, 3h): PUE 1.2 until 1.5h then 1.4; intensity 200 until 2h then 50.
    # pieces (hours): [0,1.5) pue1.2 ci200: 1.5 kWh*1.2=1.8 kWh -> 360 g
    #                 [1.5,2) pue1.4 ci200: 0.5*1.4=0.7 kWh -> 140 g
    #                 [2,3)   pue1.4 ci50 : 1.0*1.4=1.4 kWh -> 70 g
    pue = StepSeries((0, H * 3 // 2), (1.2, 1.4))
    ci = StepSeries((0, 2 * H), (200.0, 50.0))
    facility_j, co2e_g = facility_and_emissions(3 * J_PER_KWH, 0, 3 * H, pue, ci)
    assert facility_j / J_PER_KWH == pytest.approx(1.8 + 0.7 + 1.4)
    assert co2e_g == pytest.approx(360 + 140 + 70)


def test_values_before_first_step_use_first_value() -> None:
    ci = StepSeries((10 * H, 11 * H), (100.0, 200.0))
    assert ci.value_at(0) == 100.0
    assert ci.value_at(10 * H + 1) == 100.0
    assert ci.value_at(11 * H) == 200.0
    assert ci.value_at(99 * H) == 200.0


def test_pieces_cover_interval_exactly() -> None:
    ci = StepSeries((0, 5, 9), (1.0, 2.0, 3.0))
    assert list(ci.pieces(3, 12)) == [(3, 5, 1.0), (5, 9, 2.0), (9, 12, 3.0)]
    assert list(ci.pieces(6, 8)) == [(6, 8, 2.0)]


def test_estimated_part_of_the_emissions_by_hand() -> None:
    # 1 kWh over 3 h at constant power; PUE 1.5 in hour 0, 1.0 after; intensity 100 measured in
    # hour 0, 200 held (estimated) in hour 1, 300 measured in hour 2.
    # pieces: 1/3 kWh × 1.5 × 100 = 50 g; 1/3 × 1.0 × 200 = 66.67 g (estimated); 1/3 × 1.0 × 300 = 100 g
    ci = StepSeries((0, H, 2 * H), (100.0, 200.0, 300.0), (False, True, False))
    pue = StepSeries((0, H), (1.5, 1.0))
    facility_j, co2e_g, est_g = emissions_with_estimated(J_PER_KWH, 0, 3 * H, pue, ci)
    assert facility_j == pytest.approx((0.5 + 1 / 3 + 1 / 3) * J_PER_KWH)
    assert co2e_g == pytest.approx(50 + 200 / 3 + 100)
    assert est_g == pytest.approx(200 / 3)
    # inside one step: all or nothing
    assert emissions_with_estimated(J_PER_KWH, H, 2 * H, pue, ci)[2] == pytest.approx(200.0)
    assert emissions_with_estimated(J_PER_KWH, 0, H, pue, ci)[2] == 0.0
    # a series with no estimated step: nothing estimated, same totals as facility_and_emissions
    plain = StepSeries((0, H, 2 * H), (100.0, 200.0, 300.0))
    assert emissions_with_estimated(J_PER_KWH, 0, 3 * H, pue, plain) == (
        *facility_and_emissions(J_PER_KWH, 0, 3 * H, pue, plain), 0.0)
