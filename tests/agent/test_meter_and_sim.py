"""Interval energy from readings, and the simulated source's NVML-like readings."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridwatt.agent.attribution import Attributor
from gridwatt.agent.meter import interval_energy
from gridwatt.agent.sampler import Sampler
from gridwatt.agent.sources.base import GpuReading
from gridwatt.agent.sources.sim.source import SimSource
from gridwatt.agent.sources.sim.trace import TraceError, load_trace_csv, synthetic_trace
from gridwatt.v1 import telemetry_pb2 as pb

S = 10**9


def reading(t_s: float, energy_mj: int | None, power_mw: int | None) -> GpuReading:
    return GpuReading(
        index=0, uuid="GPU-x", name="x", t_ns=int(t_s * S), energy_mj=energy_mj, power_mw=power_mw
    )


def test_counter_difference() -> None:
    iv = interval_energy(reading(0, 1_000_000, 300_000), reading(2, 1_800_000, 500_000))
    assert iv is not None
    assert iv.energy_j == 800.0
    assert iv.method == pb.ENERGY_METHOD_COUNTER


def test_counter_reset_falls_back_to_power_never_negative() -> None:
    iv = interval_energy(reading(0, 9_000_000, 300_000), reading(2, 5_000, 500_000))
    assert iv is not None
    assert iv.counter_reset
    assert iv.energy_j == pytest.approx((300 + 500) / 2 * 2)  # trapezoid: 800 J
    assert iv.method == pb.ENERGY_METHOD_POWER_AVERAGE
    # and the next interval uses the counter again from the new baseline
    nxt = interval_energy(reading(2, 5_000, 500_000), reading(3, 405_000, 400_000))
    assert nxt is not None and nxt.method == pb.ENERGY_METHOD_COUNTER and nxt.energy_j == 400.0


def test_no_counter_integrates_power() -> None:
    iv = interval_energy(reading(0, None, 100_000), reading(10, None, 300_000))
    assert iv is not None and iv.energy_j == pytest.approx(2000.0)


def test_sim_counter_is_exact_integral_of_trace(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(
        "time,gpu,power_w,util_pct,job_id\n"
        "2022-01-01T00:00:00Z,0,300,90,jobA\n"
        "2022-01-01T00:00:30Z,0,100,2,\n"
        "2022-01-01T00:01:30Z,0,0,0,\n"
    )
    src = SimSource(load_trace_csv(trace), "n1", interval_s=20)
    sampler = Sampler(Attributor(None), idle_below_pct=5)
    samples = []
    while True:
        samples += sampler.take(src.read())
        if src.finished:
            break
    # intervals [0,20) [20,40) [40,60) [60,80) [80,90)
    assert [round((s.end_ns - s.start_ns) / S) for s in samples] == [20, 20, 20, 20, 10]
    assert [s.energy_j for s in samples] == pytest.approx([6000, 3000 + 1000, 2000, 2000, 1000])
    assert sum(s.energy_j for s in samples) == pytest.approx(300 * 30 + 100 * 60)
    # job jobA ran for 10 of the 20 s of the second interval
    assert [(j.job_id, j.fraction) for j in samples[1].jobs] == [("jobA", 0.5)]
    assert samples[1].jobs[0].method == pb.ATTRIBUTION_METHOD_TRACE
    assert list(samples[2].jobs) == []
    # idle: mean util 2% < 5% in the last three intervals
    assert [s.idle_s for s in samples] == [0, 0, 20, 20, 10]
    assert all(s.energy_method == pb.ENERGY_METHOD_COUNTER for s in samples)


def test_sim_without_counter_uses_power() -> None:
    trace = synthetic_trace(gpus=2, start_ns=0, duration_s=100, power_w=250, util_pct=50)
    src = SimSource(trace, "n1", interval_s=10, energy_counter=False)
    sampler = Sampler(Attributor("static-job"), idle_below_pct=5)
    samples = []
    while not src.finished:
        samples += sampler.take(src.read())
    assert len(samples) == 20
    assert sum(s.energy_j for s in samples) == pytest.approx(2 * 250 * 100)
    assert {s.energy_method for s in samples} == {pb.ENERGY_METHOD_POWER_AVERAGE}
    assert {(j.job_id, j.method) for s in samples for j in s.jobs} == {
        ("static-job", pb.ATTRIBUTION_METHOD_STATIC)
    }


def test_trace_errors_name_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("time,gpu,power_w,util_pct\n2022-01-01T00:00:00Z,0,abc,5\n")
    with pytest.raises(TraceError, match=r"bad.csv:2: field power_w: 'abc' is not a number"):
        load_trace_csv(bad)
    bad.write_text("time,gpu,power_w,util_pct\n2022-01-01T00:00:00Z,0,100,150\n")
    with pytest.raises(TraceError, match=r"field util_pct: '150' is outside \[0, 100\]"):
        load_trace_csv(bad)
    bad.write_text("time,gpu,power\n")
    with pytest.raises(TraceError, match="missing column"):
        load_trace_csv(bad)
