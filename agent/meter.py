"""Interval energy from two consecutive readings of one GPU (pure; no I/O).

Energy comes from NVML's cumulative counter where both readings have it and it
did not go backwards; otherwise from power integrated over the interval
(trapezoid rule). A counter that went backwards (driver reload, GPU reset)
starts a new baseline: that interval falls back to integrated power, and the
next one uses the counter again. Energy is never negative.
"""

from __future__ import annotations

from typing import NamedTuple

from gridwatt.agent.sources.base import GpuReading
from gridwatt.timeutil import NS_PER_S
from gridwatt.v1 import telemetry_pb2 as pb


class IntervalEnergy(NamedTuple):
    """Energy of one GPU over [start_ns, end_ns). Units: J; method is a pb.EnergyMethod.

    A NamedTuple (immutable, made once per GPU per interval: cheaper than a frozen dataclass)."""

    start_ns: int
    end_ns: int
    energy_j: float
    method: int
    counter_reset: bool = False


def interval_energy(prev: GpuReading, cur: GpuReading) -> IntervalEnergy | None:
    """Energy between two readings of the same GPU, or None if it cannot be measured."""
    if cur.t_ns <= prev.t_ns or prev.fault or cur.fault:
        return None
    reset = False
    if prev.energy_mj is not None and cur.energy_mj is not None:
        delta_mj = cur.energy_mj - prev.energy_mj
        if delta_mj >= 0:
            return IntervalEnergy(prev.t_ns, cur.t_ns, delta_mj / 1000.0, pb.ENERGY_METHOD_COUNTER)
        reset = True
    if prev.power_mw is None or cur.power_mw is None:
        return None
    dt_s = (cur.t_ns - prev.t_ns) / NS_PER_S
    energy_j = max(0.0, (prev.power_mw + cur.power_mw) / 2000.0 * dt_s)
    method = pb.ENERGY_METHOD_POWER_AVERAGE if cur.power_is_average else pb.ENERGY_METHOD_POWER_INSTANT
    return IntervalEnergy(prev.t_ns, cur.t_ns, energy_j, method, counter_reset=reset)


def idle_seconds(util_pct: float | None, duration_s: float, idle_below_pct: float) -> float:
    """The interval counts as idle when its utilisation is below the threshold."""
    if util_pct is None:
        return 0.0
    return duration_s if util_pct < idle_below_pct else 0.0
