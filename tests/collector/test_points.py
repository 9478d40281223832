"""Rendering of gpu and job points: provenance of the intensity, and unattributed time."""

from __future__ import annotations

from gridwatt.collector.intensity.base import IntensitySeries
from gridwatt.collector.intensity.constant import ConstantIntensity
from gridwatt.collector.points import prepare_batch
from gridwatt.collector.stepseries import StepSeries
from gridwatt.collector.topology import Placement
from gridwatt.v1 import telemetry_pb2 as pb

H = 3600 * 10**9


def test_points_record_source_factor_and_estimated_and_unattributed_share() -> None:
    ci = IntensitySeries(StepSeries((0, H), (100.0, 200.0), (False, True)), "csv:x.csv", "direct")
    placement = Placement("r1", "DE", StepSeries.constant(1.5), ConstantIntensity(1.0))
    batch = pb.Batch(
        node="n1",
        gpu_samples=[
            pb.GpuSample(
                gpu_index=0,
                gpu_uuid="GPU-a",
                start_ns=0,
                end_ns=60 * 10**9,
                energy_j=6000.0,
                jobs=[
                    pb.JobShare(
                        job_id="j1",
                        fraction=0.25,
                        method=pb.ATTRIBUTION_METHOD_SLURM,
                        user="alice",
                        split_estimated=True,
                    )
                ],
            ),
            pb.GpuSample(gpu_index=0, gpu_uuid="GPU-a", start_ns=H, end_ns=H + 60 * 10**9, energy_j=6000.0),
        ],
    )
    out = prepare_batch(batch, placement, ci, 60 * 10**9)
    gpu_lines = [line for line in out.lines if line.startswith("gpu,")]
    job_lines = [line for line in out.lines if line.startswith("job,")]
    assert 'ef="direct"' in gpu_lines[0] and 'intensity_source="csv:x.csv"' in gpu_lines[0]
    assert "intensity_estimated=false" in gpu_lines[0]
    assert "intensity_estimated=true" in gpu_lines[1]
    # 6000 J x 1.5 = 9000 J facility; x 100 g/kWh = 0.25 g in hour 0
    assert "facility_energy_j=9000.0,co2e_g=0.25," in gpu_lines[0]
    # job j1 gets a quarter, the rest is unattributed; the second sample is all unattributed
    assert [line.split(",")[1] for line in job_lines] == [
        "job_id=j1",
        "job_id=unattributed",
        "job_id=unattributed",
    ]
    assert "energy_j=1500.0," in job_lines[0] and "energy_j=4500.0," in job_lines[1]
    assert 'attribution="slurm",user="alice",split_estimated=true ' in job_lines[0]
    assert 'attribution="none" ' in job_lines[1] and "split_estimated" not in job_lines[1]
    assert out.windows == {0, H}


def test_jobs_field_and_unattributed_rest_for_one_two_and_whole_gpu_shares() -> None:
    """The ``jobs`` field and the unattributed rest, by hand: one share of 0.75 (rest 0.25 = 1 - 0.75
    exactly), one share of the whole GPU (no rest), two shares (ids joined in order, rest 1 - 0.6)."""
    placement = Placement("r1", "Z", StepSeries.constant(1.0), ConstantIntensity(100.0))
    ci = IntensitySeries(StepSeries.constant(100.0), "constant", "lifecycle")

    def sample(k: int, *shares: tuple[str, float]) -> pb.GpuSample:
        return pb.GpuSample(gpu_index=k, start_ns=0, end_ns=10 * 10**9, energy_j=1000.0,
                            jobs=[pb.JobShare(job_id=j, fraction=f) for j, f in shares])

    batch = pb.Batch(node="n1", gpu_samples=[sample(0, ("a", 0.75)), sample(1, ("b", 1.0)),
                                             sample(2, ("c", 0.4), ("d", 0.2))])
    out = prepare_batch(batch, placement, ci, 60 * 10**9)
    gpu_lines = [line for line in out.lines if line.startswith("gpu,")]
    assert [line.split(',jobs="')[1].split('"')[0] for line in gpu_lines] == ["a", "b", "c,d"]
    job = [(line.split(",")[1], line.split(" ")[1].split(",")[0], line.split("fraction=")[1].split(",")[0])
           for line in out.lines if line.startswith("job,")]
    assert job == [
        ("job_id=a", "energy_j=750.0", "0.75"), ("job_id=unattributed", "energy_j=250.0", "0.25"),
        ("job_id=b", "energy_j=1000.0", "1.0"),
        ("job_id=c", "energy_j=400.0", "0.4"), ("job_id=d", "energy_j=200.0", "0.2"),
        ("job_id=unattributed", f"energy_j={1000.0 * (1.0 - (0.4 + 0.2))!r}", repr(1.0 - (0.4 + 0.2))),
    ]
    assert out.first_line == [0, 3, 5]
    assert [(p.gpu, p.job_id) for p in out.job_points] == [("0", "a"), ("0", "unattributed"), ("1", "b"),
                                                          ("2", "c"), ("2", "d"), ("2", "unattributed")]
