"""A SYNTHETIC NVML session: the fake pynvml, recorded through the same recorder as a real capture.

It writes tests/fixtures/nvml/synthetic-4gpu-mixed.jsonl, labelled ``"synthetic": true`` in its
header: no real driver produced it. It exists so that the capture format, the recorder and the
replaying fake are exercised today; real captures (``gridwatt-agent capture`` on a GPU node) go
beside it. Regenerate with ``.venv/bin/python -m tests.fakes.synthetic_session``; a test checks
the committed file equals what this module makes.

Four GPUs over 6 polls, 1 s apart:

* GPU0 "H100": energy counter, power from NVML_FI_DEV_POWER_AVERAGE, shared by two processes
  with per-process utilisation samples;
* GPU1 "A100" with MIG on: whole-GPU energy and power (GA100: nvmlDeviceGetPowerUsage is
  instantaneous), utilisation NotSupported;
* GPU2 "P100" (Pascal): no energy counter, instantaneous power, SM clock NotSupported,
  processes not readable (NoPermission);
* GPU3 "L4": its counter restarts at poll 3 (driver reload), it falls off the bus at poll 4 and
  is back at poll 5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gridwatt.agent.sources.nvml.capture import record_session, write_capture
from tests.fakes import fake_pynvml as fk
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, FakeProcess

PATH = Path(__file__).resolve().parent.parent / "fixtures" / "nvml" / "synthetic-4gpu-mixed.jsonl"
START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
INTERVAL_S = 1.0
SECONDS = 5.0
#: Power of each GPU at each poll (mW); energy grows by the power held over the second before it.
POWER_MW = [
    [612_000, 655_500, 690_250, 701_000, 640_125, 598_000],
    [250_000, 262_000, 275_500, 280_000, 281_250, 240_000],
    [180_000, 181_000, 240_000, 239_500, 120_000, 119_000],
    [70_000, 71_500, 72_000, 60_000, 0, 65_000],
]


def gpus() -> list[FakeGpu]:
    return [
        FakeGpu("GPU-5ab0c1d2-0000-4000-8000-000000000000", "NVIDIA H100 80GB HBM3", energy_mj=9_876_543_210,
                compute_procs=[FakeProcess(4242, 30 * 2**30), FakeProcess(4343, 12 * 2**30)],
                graphics_procs=[FakeProcess(4242, 30 * 2**30)]),
        FakeGpu("GPU-5ab0c1d2-0001-4000-8000-000000000000", "NVIDIA A100-SXM4-80GB", energy_mj=1_234_567_890,
                arch=fk.NVML_DEVICE_ARCH_AMPERE, cuda_cc=(8, 0), supports_power_fields=False,
                mig_enabled=True,
                compute_procs=[FakeProcess(5151, None)]),
        FakeGpu("GPU-5ab0c1d2-0002-4000-8000-000000000000", "Tesla P100-PCIE-16GB", supports_energy=False,
                arch=fk.NVML_DEVICE_ARCH_PASCAL, cuda_cc=(6, 0), supports_power_fields=False,
                mig_enabled=None,
                mem_total_bytes=16 * 2**30, unsupported={"sm_clock"}),
        FakeGpu("GPU-5ab0c1d2-0003-4000-8000-000000000000", "NVIDIA L4", energy_mj=55_000_000,
                arch=fk.NVML_DEVICE_ARCH_ADA, cuda_cc=(8, 9), mig_enabled=None, mem_total_bytes=24 * 2**30),
    ]


class _NoPermissionProcesses(FakeNvml):
    """GPU2's process lists answer NoPermission (a container without the host pid namespace)."""

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeGpu) -> list[FakeProcess]:
        if h is self.gpus[2]:
            self._count("nvmlDeviceGetComputeRunningProcesses")
            raise fk.NVMLError(fk.NVML_ERROR_NO_PERMISSION)
        return super().nvmlDeviceGetComputeRunningProcesses(h)


def make_session() -> list[dict[str, Any]]:
    """The synthetic capture's lines (deterministic)."""
    now = [START_NS]

    def clock() -> int:
        now[0] += 50_000  # every clock reading is 50 µs after the last
        return now[0]

    def sleep(s: float) -> None:
        now[0] += round(s * 1e9)

    fakes = gpus()
    nvml = _NoPermissionProcesses(fakes)

    def before_poll(k: int) -> None:
        for i, gpu in enumerate(fakes):
            if k:
                gpu.run(INTERVAL_S)  # the second before this poll, at the power held since the last one
            gpu.power_mw = POWER_MW[i][k]
        fakes[0].util_gpu_pct = [97, 98, 99, 95, 96, 12][k]
        fakes[0].proc_util_samples.append((4242, 70, (k + 1) * 1_000_000))
        fakes[0].proc_util_samples.append((4343, 20, (k + 1) * 1_000_000 + 1))
        if k == 3:
            fakes[3].reset_energy(1_500)
        if k == 4:
            fakes[3].lose()
        if k == 5:
            fakes[3].recover()

    lines = record_session(nvml, seconds=SECONDS, interval_s=INTERVAL_S, synthetic=True,
                           description="SYNTHETIC: made by tests/fakes/synthetic_session.py from the "
                           "fake pynvml; no real driver produced it",
                           clock_ns=clock, sleep=sleep, before_poll=before_poll)
    head = lines[0]
    head.update(created="2026-01-01T00:00:00Z", driver_version="synthetic", nvml_version="synthetic",
                cuda_driver_version="synthetic", gridwatt_version="synthetic")
    return lines


if __name__ == "__main__":
    write_capture(PATH, make_session())
    print(f"wrote {PATH}")
