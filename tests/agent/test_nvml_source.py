"""NvmlSource against the fake pynvml: units pass through, faults are contained, calls are cached."""

from __future__ import annotations

import itertools
import logging

import pytest

from gridwatt.agent.sources.base import SourceError
from gridwatt.agent.sources.nvml import NvmlSource
from tests.fakes import fake_pynvml as fk
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, FakeProcess

UUID0 = "GPU-00000000-1111-2222-3333-444444444444"
UUID1 = "GPU-11111111-1111-2222-3333-444444444444"


def make(*gpus: FakeGpu, **kw: object) -> tuple[NvmlSource, FakeNvml]:
    nvml = FakeNvml(list(gpus), **kw)  # type: ignore[arg-type]
    clock = itertools.count(1_700_000_000_000_000_000, 1_000_000_000)
    return NvmlSource(nvml_module=nvml, clock_ns=lambda: next(clock)), nvml


def test_h100_reading_passes_units_through_unchanged() -> None:
    gpu = FakeGpu(
        UUID0,
        power_mw=312_456,
        energy_mj=987_654_321,
        power_limit_mw=700_000,
        util_gpu_pct=87,
        util_mem_pct=41,
        mem_used_bytes=12_345_678_901,
        mem_total_bytes=85_520_809_984,
        temp_c=63,
        sm_clock_mhz=1980,
    )
    src, _ = make(gpu)
    (r,) = src.read()
    assert (r.index, r.uuid, r.name) == (0, UUID0, "NVIDIA H100 80GB HBM3")
    assert r.t_ns == 1_700_000_000_000_000_000
    assert r.energy_mj == 987_654_321
    assert r.power_mw == 312_456
    assert r.power_is_average is True  # Hopper: NVML_FI_DEV_POWER_AVERAGE answered
    assert r.power_limit_mw == 700_000
    assert (r.util_pct, r.mem_util_pct) == (87.0, 41.0)
    assert (r.mem_used_bytes, r.mem_total_bytes) == (12_345_678_901, 85_520_809_984)
    assert (r.temp_c, r.sm_clock_mhz) == (63.0, 1980)
    assert r.unsupported == () and r.fault == "" and r.pids == ()

    gpu.run(2.5)  # 312_456 mW × 2.5 s = 781_140 mJ
    (r2,) = src.read()
    assert r2.energy_mj == 987_654_321 + 781_140
    assert r2.t_ns == 1_700_000_001_000_000_000


def test_counter_reset_is_reported_raw() -> None:
    gpu = FakeGpu(UUID0, energy_mj=5_000_000)
    src, _ = make(gpu)
    assert src.read()[0].energy_mj == 5_000_000
    gpu.reset_energy(1_234)
    assert src.read()[0].energy_mj == 1_234  # the meter, not the source, starts a new baseline


def test_not_supported_fields_are_none_named_and_not_asked_again() -> None:
    gpu = FakeGpu(UUID0, unsupported={"temperature", "sm_clock", "power_limit"})
    src, nvml = make(gpu)
    for _ in range(3):
        (r,) = src.read()
        assert r.temp_c is None and r.sm_clock_mhz is None and r.power_limit_mw is None
        assert r.unsupported == ("power_limit", "temperature", "sm_clock")
        assert r.power_mw == 300_000 and r.energy_mj == 0
    assert nvml.calls["nvmlDeviceGetTemperature"] == 1
    assert nvml.calls["nvmlDeviceGetClockInfo"] == 1
    assert nvml.calls["nvmlDeviceGetEnforcedPowerLimit"] == 1
    assert nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == 3


def test_static_facts_are_cached() -> None:
    src, nvml = make(FakeGpu(UUID0), FakeGpu(UUID1))
    for _ in range(4):
        src.read()
    assert nvml.calls["nvmlDeviceGetUUID"] == 2
    assert nvml.calls["nvmlDeviceGetName"] == 2
    assert nvml.calls["nvmlDeviceGetMigMode"] == 2
    assert nvml.calls["nvmlDeviceGetHandleByIndex"] == 2
    # first poll probes the field once more than the 4 polls that read it
    assert nvml.calls["nvmlDeviceGetFieldValues"] == 2 * (4 + 1)
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 0


def test_pre_volta_gpu_has_power_but_no_energy_counter() -> None:
    p100 = FakeGpu(
        UUID0,
        name="Tesla P100-PCIE-16GB",
        power_mw=187_000,
        supports_energy=False,
        supports_power_fields=False,
        arch=fk.NVML_DEVICE_ARCH_PASCAL,
        cuda_cc=(6, 0),
    )
    src, nvml = make(p100)
    (r,) = src.read()
    assert r.energy_mj is None
    assert r.power_mw == 187_000
    assert r.power_is_average is False  # nvmlDeviceGetPowerUsage is instantaneous before Ampere
    assert r.unsupported == ("energy_counter",)
    src.read()
    assert nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 2
    assert nvml.calls["nvmlDeviceGetFieldValues"] == 1  # probed once, then not again


@pytest.mark.parametrize(
    ("arch", "cc", "average"),
    [
        (fk.NVML_DEVICE_ARCH_VOLTA, (7, 0), False),
        (fk.NVML_DEVICE_ARCH_AMPERE, (8, 0), False),  # GA100 (A100): instantaneous
        (fk.NVML_DEVICE_ARCH_AMPERE, (8, 6), True),  # GA10x: 1-s average
        (fk.NVML_DEVICE_ARCH_HOPPER, (9, 0), True),
    ],
)
def test_power_usage_average_flag_follows_nvml_docs(arch: int, cc: tuple[int, int], average: bool) -> None:
    src, _ = make(FakeGpu(UUID0, power_mw=250_000, supports_power_fields=False, arch=arch, cuda_cc=cc))
    (r,) = src.read()
    assert (r.power_mw, r.power_is_average) == (250_000, average)
    assert src.devices()[0].power_method == "power_usage"


def test_no_power_at_all() -> None:
    src, nvml = make(FakeGpu(UUID0, unsupported={"power"}))
    (r,) = src.read()
    assert r.power_mw is None and r.unsupported == ("power",)
    src.read()
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 1


def test_gpu_lost_mid_run_others_continue_and_it_comes_back(caplog: pytest.LogCaptureFixture) -> None:
    g0 = FakeGpu(UUID0, power_mw=100_000, energy_mj=1_000)
    g1 = FakeGpu(UUID1, power_mw=200_000, energy_mj=2_000)
    src, nvml = make(g0, g1)
    assert [r.energy_mj for r in src.read()] == [1_000, 2_000]

    caplog.set_level(logging.INFO, logger="gridwatt.agent.sources.nvml.source")
    g1.lose()
    g0.run(1.0)
    for _ in range(3):
        r0, r1 = src.read()
        assert (r0.energy_mj, r0.power_mw, r0.fault) == (101_000, 100_000, "")
        assert (r1.index, r1.uuid, r1.fault) == (1, UUID1, "gpu_lost")
        assert r1.energy_mj is None and r1.power_mw is None
    lost_lines = [r for r in caplog.records if "is lost" in r.getMessage()]
    assert len(lost_lines) == 1  # once, not once per poll
    assert nvml.calls["nvmlDeviceGetHandleByUUID"] == 2  # retried on the 2 later polls

    g1.recover()
    g1.run(1.0)
    r0, r1 = src.read()
    assert (r1.fault, r1.energy_mj, r1.power_mw) == ("", 202_000, 200_000)
    assert len([r for r in caplog.records if "is back" in r.getMessage()]) == 1
    src.read()
    assert nvml.calls["nvmlDeviceGetHandleByUUID"] == 3  # held again: no more lookups


def test_unknown_error_counts_as_lost() -> None:
    g0 = FakeGpu(UUID0)
    src, _ = make(g0)
    g0.lose(fk.NVML_ERROR_UNKNOWN)
    assert src.read()[0].fault == "gpu_lost"
    g0.recover()
    assert src.read()[0].fault == ""


def test_gpu_lost_at_start_is_picked_up_later() -> None:
    g0, g1 = FakeGpu(UUID0), FakeGpu(UUID1, energy_mj=42)
    g1.lose()
    src, _ = make(g0, g1)
    r0, r1 = src.read()
    assert r0.fault == "" and (r1.fault, r1.uuid) == ("gpu_lost", "")
    assert [d.uuid for d in src.devices()] == [UUID0]
    g1.recover()
    r0, r1 = src.read()
    assert (r1.fault, r1.uuid, r1.energy_mj) == ("", UUID1, 42)


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (fk.NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so.1"),
        (fk.NVML_ERROR_DRIVER_NOT_LOADED, "driver is not loaded"),
    ],
)
def test_nvml_not_loadable_is_a_source_error(code: int, words: str) -> None:
    with pytest.raises(SourceError) as exc:
        make(FakeGpu(UUID0), init_error=code)
    msg = str(exc.value)
    assert words in msg
    assert "simulated source still works" in msg
    assert 'kind = "sim"' in msg


def test_no_gpu_is_a_source_error_and_shuts_down() -> None:
    nvml = FakeNvml([])
    with pytest.raises(SourceError, match="found no GPU"):
        NvmlSource(nvml_module=nvml)
    assert nvml.calls["nvmlShutdown"] == 1


def test_mig_gpu_reported_once_with_whole_gpu_power() -> None:
    mig = FakeGpu(
        UUID0,
        name="NVIDIA A100-SXM4-80GB",
        arch=fk.NVML_DEVICE_ARCH_AMPERE,
        cuda_cc=(8, 0),
        mig_enabled=True,
        power_mw=280_000,
        energy_mj=7_777,
        compute_procs=[
            FakeProcess(11, 1_000, gpuInstanceId=1, computeInstanceId=0),
            FakeProcess(22, 2_000, gpuInstanceId=2, computeInstanceId=0),
        ],
    )
    src, _ = make(mig, FakeGpu(UUID1))
    readings = src.read()
    assert len(readings) == 2
    r = readings[0]
    assert (r.uuid, r.energy_mj, r.power_mw) == (UUID0, 7_777, 280_000)
    assert r.util_pct is None and "utilization" in r.unsupported  # NVML: no utilisation under MIG
    assert r.pids == (11, 22)
    assert src.devices()[0].mig_enabled is True and src.devices()[1].mig_enabled is False


def test_processes_merged_without_duplicates() -> None:
    gpu = FakeGpu(
        UUID0,
        compute_procs=[FakeProcess(300, 4_000), FakeProcess(100, 1_000)],
        graphics_procs=[FakeProcess(100, 1_000), FakeProcess(200, None)],
    )
    src, _ = make(gpu)
    (r,) = src.read()
    assert r.pids == (100, 200, 300)
    assert src.process_mem_bytes(0) == {100: 1_000, 200: None, 300: 4_000}


def test_no_permission_for_processes_is_not_fatal() -> None:
    src, nvml = make(FakeGpu(UUID0, compute_procs=[FakeProcess(1, 1)]))
    orig = nvml.nvmlDeviceGetComputeRunningProcesses

    def denied(h: FakeGpu) -> list[FakeProcess]:
        raise fk.NVMLError(fk.NVML_ERROR_NO_PERMISSION)

    nvml.nvmlDeviceGetComputeRunningProcesses = denied  # type: ignore[method-assign]
    (r,) = src.read()
    assert r.pids == () and r.unsupported == () and r.fault == "" and r.energy_mj == 0
    nvml.nvmlDeviceGetComputeRunningProcesses = orig  # type: ignore[method-assign]
    assert src.read()[0].pids == (1,)  # a passing error, so asked again


def test_close_shuts_nvml_down_once() -> None:
    src, nvml = make(FakeGpu(UUID0))
    src.close()
    src.close()
    assert nvml.calls["nvmlShutdown"] == 1 and not nvml.initialized
    assert src.finished is False and src.progress() == 1.0
    with pytest.raises(SourceError):
        src.read()


def test_fake_mirrors_real_pynvml() -> None:
    real = pytest.importorskip("pynvml")
    for name in dir(fk):
        if name.startswith("NVML_"):
            assert getattr(real, name) == getattr(fk, name), name
        elif name.startswith("NVMLError_"):
            cls = getattr(real, name)
            assert cls().value == getattr(fk, name)().value, name
    assert isinstance(real.NVMLError(fk.NVML_ERROR_GPU_IS_LOST), real.NVMLError_GpuIsLost)


def test_default_module_is_real_pynvml() -> None:
    pytest.importorskip("pynvml")
    try:
        src = NvmlSource()
    except SourceError as e:  # no NVIDIA driver here (the usual case in CI)
        assert "simulated source still works" in str(e)
    else:  # a real GPU node
        try:
            readings = src.read()
            assert readings and all(r.uuid.startswith("GPU-") or r.fault for r in readings)
        finally:
            src.close()
