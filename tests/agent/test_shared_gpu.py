"""A GPU shared by several jobs: NVML per-process utilisation splits its energy, end to end in the agent."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from gridwatt.agent.attribution import Attributor
from gridwatt.agent.sampler import Sampler
from gridwatt.agent.sources.nvml import NvmlSource
from gridwatt.v1 import telemetry_pb2 as pb
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, FakeProcess

UUID = "GPU-00000000-1111-2222-3333-444444444444"


def slurm_proc(root: Path, pid: int, job: str) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "environ").write_bytes(f"SLURM_JOB_ID={job}\0SLURM_JOB_USER=alice\0".encode())
    (d / "cgroup").write_text(f"0::/system.slice/slurmstepd.scope/job_{job}/step_0/user/task_0\n")


def make(gpu: FakeGpu) -> tuple[NvmlSource, FakeNvml]:
    nvml = FakeNvml([gpu])
    clock = itertools.count(1_700_000_000_000_000_000, 1_000_000_000)
    return NvmlSource(nvml_module=nvml, clock_ns=lambda: next(clock)), nvml


def test_nvml_process_utilisation_is_read_for_shared_gpus_only() -> None:
    gpu = FakeGpu(
        UUID,
        compute_procs=[FakeProcess(101, 2**30), FakeProcess(202, 2**30)],
        proc_util_samples=[(101, 30, 10), (202, 10, 10), (101, 50, 20)],
    )
    src, nvml = make(gpu)
    (reading,) = src.read()
    assert reading.process_util_pct == ((101, 40.0), (202, 10.0))  # mean of 30 and 50 for pid 101
    (reading,) = src.read()  # no samples newer than the last seen: NVML says NOT_FOUND
    assert reading.process_util_pct == ()
    assert "process_utilization" not in reading.unsupported
    gpu.compute_procs = [FakeProcess(101, 2**30)]
    before = nvml.calls["nvmlDeviceGetProcessUtilization"]
    src.read()  # one process: no split to make, not asked
    assert nvml.calls["nvmlDeviceGetProcessUtilization"] == before
    gpu.compute_procs.append(FakeProcess(303, 2**30))
    gpu.unsupported.add("process_utilization")
    (reading,) = src.read()
    assert "process_utilization" in reading.unsupported and reading.process_util_pct == ()


def test_shared_gpu_energy_split_by_process_utilisation(tmp_path: Path) -> None:
    slurm_proc(tmp_path, 101, "1001")
    slurm_proc(tmp_path, 202, "2002")
    gpu = FakeGpu(UUID, energy_mj=5_000_000, compute_procs=[FakeProcess(101, 2**30), FakeProcess(202, 2**30)])
    src, _ = make(gpu)
    sampler = Sampler(Attributor(None, proc_root=tmp_path), idle_below_pct=5)
    assert sampler.take(src.read()) == []  # the first reading only sets the baseline
    gpu.energy_mj += 400_000  # 400 J in the interval
    gpu.proc_util_samples = [(101, 30, 10), (202, 10, 10)]
    (sample,) = sampler.take(src.read())
    assert sample.energy_j == 400.0
    shares = [(j.job_id, j.fraction, j.method, j.user, j.split_estimated) for j in sample.jobs]
    assert shares == [
        ("1001", pytest.approx(0.75), pb.ATTRIBUTION_METHOD_SLURM, "alice", False),
        ("2002", pytest.approx(0.25), pb.ATTRIBUTION_METHOD_SLURM, "alice", False),
    ]
    # no utilisation samples in the next interval: an even split, flagged as estimated
    gpu.energy_mj += 100_000
    (sample,) = sampler.take(src.read())
    assert [(j.fraction, j.split_estimated) for j in sample.jobs] == [(0.5, True), (0.5, True)]
