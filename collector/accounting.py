"""Pure accounting: IT energy → facility energy (× PUE) → emissions (× grid intensity).

PUE and intensity are step functions of time. An interval that spans a step
of either is split at it, and its energy is shared between the pieces in
proportion to their duration (the GPU's mean power over the interval is the
best the sample tells). No I/O here.
"""

from __future__ import annotations

from gridwatt.collector.stepseries import StepSeries

J_PER_KWH = 3_600_000.0


def steady_over(pue: StepSeries, intensity: StepSeries, lo_ns: int, hi_ns: int) -> tuple[float, float] | None:
    """(PUE, intensity) when neither series has a step inside (lo_ns, hi_ns), else None.

    Then every interval [start, end) with lo_ns <= start < end <= hi_ns is one piece:
    :func:`facility_and_emissions` gives it ``facility = energy × PUE`` and
    ``emissions = facility / J_PER_KWH × intensity``, and :func:`emissions_with_estimated` the
    estimated part ``emissions if intensity.is_estimated_at(lo_ns) else 0``. A batch whose samples
    all fall in such a span is accounted with two multiplications per sample (the same floating-point
    operations in the same order, so the same results to the last bit).
    """
    for series in (pue, intensity):
        nxt = series.next_step_after(lo_ns)
        if nxt is not None and nxt < hi_ns:
            return None
    return pue.value_at(lo_ns), intensity.value_at(lo_ns)


def emissions_with_estimated(
    energy_j: float, start_ns: int, end_ns: int, pue: StepSeries, intensity: StepSeries,
    has_estimates: bool | None = None,
) -> tuple[float, float, float]:
    """(facility energy in J, emissions in gCO2e, the part of those emissions in gCO2e that rests on
    estimated or held intensity steps) of ``energy_j`` IT energy used over [start_ns, end_ns).

    ``has_estimates``: whether ``intensity`` has any estimated step, when the caller knows (saves
    a scan of the series per interval)."""
    facility_j, co2e_g = facility_and_emissions(energy_j, start_ns, end_ns, pue, intensity)
    if not (any(intensity.estimated) if has_estimates is None else has_estimates):
        return facility_j, co2e_g, 0.0
    nxt_i = intensity.next_step_after(start_ns)
    if end_ns <= start_ns or nxt_i is None or nxt_i >= end_ns:  # one intensity step
        return facility_j, co2e_g, co2e_g if intensity.is_estimated_at(start_ns) else 0.0
    duration_ns = end_ns - start_ns
    estimated_g = 0.0
    for p0, p1, p in pue.pieces(start_ns, end_ns):
        for i0, i1, ci in intensity.pieces(p0, p1):
            if intensity.is_estimated_at(i0):
                estimated_g += energy_j * (i1 - i0) / duration_ns * p / J_PER_KWH * ci
    return facility_j, co2e_g, min(estimated_g, co2e_g)


def facility_and_emissions(
    energy_j: float, start_ns: int, end_ns: int, pue: StepSeries, intensity: StepSeries
) -> tuple[float, float]:
    """(facility energy in J, emissions in gCO2e) of ``energy_j`` IT energy used over [start_ns, end_ns)."""
    duration_ns = end_ns - start_ns
    if duration_ns <= 0:
        p = pue.value_at(start_ns)
        return energy_j * p, energy_j * p / J_PER_KWH * intensity.value_at(start_ns)
    nxt_p = pue.next_step_after(start_ns)
    nxt_i = intensity.next_step_after(start_ns)
    if (nxt_p is None or nxt_p >= end_ns) and (nxt_i is None or nxt_i >= end_ns):
        facility_j = energy_j * pue.value_at(start_ns)
        return facility_j, facility_j / J_PER_KWH * intensity.value_at(start_ns)
    facility_j = co2e_g = 0.0
    for p0, p1, p in pue.pieces(start_ns, end_ns):
        for i0, i1, ci in intensity.pieces(p0, p1):
            piece_facility_j = energy_j * (i1 - i0) / duration_ns * p
            facility_j += piece_facility_j
            co2e_g += piece_facility_j / J_PER_KWH * ci
    return facility_j, co2e_g
