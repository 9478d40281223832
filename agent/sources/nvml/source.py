"""NvmlSource: reads every GPU of the node through NVML and returns one GpuReading per GPU.

Static facts (UUID, name, MIG mode, how power is read, which fields are NotSupported) are
found once per GPU handle and cached, so a poll makes only the calls that can change.
See README.md in this folder for the NVML calls, their units and how each fault is handled.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

from gridwatt.agent.sources.base import GpuReading, GpuSource, SourceContext, SourceError
from gridwatt.agent.sources.registry import SOURCES

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Stable names of the fields a GPU may not support (GpuReading.unsupported uses them).
FIELD_NAMES = (
    "energy_counter",
    "power",
    "power_limit",
    "utilization",
    "memory",
    "temperature",
    "sm_clock",
    "processes",
    "process_utilization",
)

FAULT_GPU_LOST = "gpu_lost"

# pynvml error codes (same values in every nvidia-ml-py release).
_NOT_SUPPORTED = 3
_FUNCTION_NOT_FOUND = 13
_GPU_IS_LOST = 15
_RESET_REQUIRED = 16
_GPU_NOT_FOUND = 28
_UNKNOWN = 999
#: Codes that mean the GPU is gone until it is reset or comes back on the bus.
_LOST_CODES = frozenset({_GPU_IS_LOST, _RESET_REQUIRED, _GPU_NOT_FOUND, _UNKNOWN})
#: Codes that mean "this GPU/driver cannot give this field": cached, never asked again.
_UNSUPPORTED_CODES = frozenset({_NOT_SUPPORTED, _FUNCTION_NOT_FOUND})

_SIM_HINT = 'The simulated source still works: set [source] kind = "sim".'


class _GpuLost(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class NvmlDeviceInfo:
    """Static facts about one GPU, found when its handle is acquired."""

    index: int
    uuid: str
    name: str
    #: MIG mode is on: the GPU is still reported once, with whole-GPU power and energy.
    mig_enabled: bool
    #: "field_average" (nvmlDeviceGetFieldValues, NVML_FI_DEV_POWER_AVERAGE) or "power_usage".
    power_method: str
    #: True when power_mw is the driver's 1-second average, False when instantaneous.
    power_is_average: bool


@dataclass
class _Gpu:
    """What the source keeps about one GPU index between polls."""

    index: int
    handle: Any = None
    uuid: str = ""
    name: str = ""
    mig_enabled: bool = False
    power_method: str = ""  # "" = not decided yet
    power_is_average: bool = False
    unsupported: set[str] = field(default_factory=set)
    lost: bool = False
    #: (field, error code) pairs already logged, so a persistent error logs once.
    logged: set[tuple[str, int]] = field(default_factory=set)
    #: pid -> GPU memory in bytes (None where NVML cannot tell), from the last poll.
    proc_mem_bytes: dict[int, int | None] = field(default_factory=dict)
    #: Newest per-process utilisation sample seen (NVML timestamp, µs), to ask only for newer ones.
    proc_util_ts: int = 0


class NvmlSource:
    """GPU source for real nodes: NVML through pynvml (nvidia-ml-py).

    ``nvml_module`` replaces ``pynvml`` (tests pass a fake); ``clock_ns`` gives the reading
    times (ns since the epoch). Raises SourceError when NVML cannot be loaded.
    """

    def __init__(self, nvml_module: Any = None, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._nvml = nvml_module if nvml_module is not None else _import_pynvml()
        self._clock_ns = clock_ns
        self._closed = False
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as e:
            raise SourceError(_init_message(e)) from e
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
        except self._nvml.NVMLError as e:
            self._shutdown()
            raise SourceError(f"NVML loaded but cannot count GPUs ({e}). {_SIM_HINT}") from e
        if count == 0:
            self._shutdown()
            raise SourceError(f"NVML loaded but found no GPU on this node. {_SIM_HINT}")
        self._gpus = [_Gpu(index=i) for i in range(count)]
        for gpu in self._gpus:
            self._acquire(gpu)

    # ---- GpuSource protocol ----
    def read(self) -> list[GpuReading]:
        """Read every GPU now; a lost GPU gives a reading with fault="gpu_lost"."""
        if self._closed:
            raise SourceError("NvmlSource.read() after close()")
        return [self._read_gpu(gpu) for gpu in self._gpus]

    @property
    def finished(self) -> bool:
        """A live source never finishes."""
        return False

    def progress(self) -> float:
        """A live source is always at 1.0."""
        return 1.0

    def close(self) -> None:
        """Shut NVML down (nvmlShutdown). Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._shutdown()

    # ---- extras ----
    def devices(self) -> list[NvmlDeviceInfo]:
        """Static facts of the GPUs whose handle is held (lost GPUs are left out)."""
        return [
            NvmlDeviceInfo(g.index, g.uuid, g.name, g.mig_enabled, g.power_method, g.power_is_average)
            for g in self._gpus
            if g.handle is not None
        ]

    def process_mem_bytes(self, index: int) -> dict[int, int | None]:
        """GPU memory per pid on GPU ``index`` at the last read. Units: bytes (None: unknown)."""
        return dict(self._gpus[index].proc_mem_bytes)

    # ---- internals ----
    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as e:
            log.warning("nvmlShutdown failed: %s", e)

    def _acquire(self, gpu: _Gpu) -> bool:
        """Get the GPU's handle and static facts. False (GPU marked lost) when it fails."""
        nvml = self._nvml
        try:
            if gpu.uuid:  # a known GPU coming back: find it by UUID, indices can move
                handle = nvml.nvmlDeviceGetHandleByUUID(gpu.uuid)
            else:
                handle = nvml.nvmlDeviceGetHandleByIndex(gpu.index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            name = _text(nvml.nvmlDeviceGetName(handle))
        except nvml.NVMLError as e:
            self._mark_lost(gpu, e)
            return False
        if gpu.lost:  # back after a reset: the driver may have changed, so ask everything anew
            gpu.unsupported.clear()
            gpu.logged.clear()
        gpu.handle, gpu.uuid, gpu.name = handle, uuid, name
        gpu.power_method = ""
        try:
            gpu.mig_enabled = self._mig_enabled(handle)
        except _GpuLost as e:
            self._mark_lost(gpu, nvml.NVMLError(e.code))
            return False
        if gpu.mig_enabled:
            log.info(
                "GPU %d (%s) has MIG enabled: reported once, with whole-GPU power and energy",
                gpu.index,
                gpu.uuid,
            )
        if gpu.lost:
            gpu.lost = False
            log.warning("GPU %d (%s, %s) is back; reading it again", gpu.index, gpu.uuid, gpu.name)
        return True

    def _mark_lost(self, gpu: _Gpu, err: BaseException) -> None:
        gpu.handle = None
        if not gpu.lost:
            gpu.lost = True
            log.error(
                "GPU %d (%s) is lost (%s); reporting it as %r and retrying every poll",
                gpu.index,
                gpu.uuid or "uuid unknown",
                err,
                FAULT_GPU_LOST,
            )

    def _mig_enabled(self, handle: Any) -> bool:
        nvml = self._nvml
        try:
            current = nvml.nvmlDeviceGetMigMode(handle)[0]
        except nvml.NVMLError as e:
            if _code(e) in _LOST_CODES:
                raise _GpuLost(_code(e)) from e
            return False  # NotSupported: a GPU without MIG
        return bool(current == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1))

    def _read_gpu(self, gpu: _Gpu) -> GpuReading:
        if gpu.handle is None and not self._acquire(gpu):
            return self._lost_reading(gpu)
        try:
            return self._read_values(gpu)
        except _GpuLost as e:
            self._mark_lost(gpu, self._nvml.NVMLError(e.code))
            return self._lost_reading(gpu)

    def _lost_reading(self, gpu: _Gpu) -> GpuReading:
        gpu.proc_mem_bytes = {}
        return GpuReading(
            index=gpu.index,
            uuid=gpu.uuid,
            name=gpu.name,
            t_ns=self._clock_ns(),
            energy_mj=None,
            power_mw=None,
            power_is_average=gpu.power_is_average,
            fault=FAULT_GPU_LOST,
        )

    def _read_values(self, gpu: _Gpu) -> GpuReading:
        nvml, h = self._nvml, gpu.handle
        t_ns = self._clock_ns()  # taken next to the energy counter, which matters most
        energy_mj = self._field(gpu, "energy_counter", lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(h))
        power_mw = self._power_mw(gpu)
        power_limit_mw = self._field(gpu, "power_limit", lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(h))
        util = self._field(gpu, "utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(h))
        mem = self._field(gpu, "memory", lambda: nvml.nvmlDeviceGetMemoryInfo(h))
        temp_c = self._field(
            gpu, "temperature", lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)
        )
        sm_clock = self._field(gpu, "sm_clock", lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM))
        procs = self._field(gpu, "processes", lambda: self._processes(h))
        gpu.proc_mem_bytes = procs if procs is not None else {}
        proc_util: dict[int, float] | None = None
        if len(gpu.proc_mem_bytes) > 1:  # only a shared GPU needs the split
            proc_util = self._field(gpu, "process_utilization", lambda: self._process_util(gpu))
        return GpuReading(
            index=gpu.index,
            uuid=gpu.uuid,
            name=gpu.name,
            t_ns=t_ns,
            energy_mj=_int_or_none(energy_mj),
            power_mw=power_mw,
            power_is_average=gpu.power_is_average,
            util_pct=float(util.gpu) if util is not None else None,
            mem_util_pct=float(util.memory) if util is not None else None,
            mem_used_bytes=int(mem.used) if mem is not None else None,
            mem_total_bytes=int(mem.total) if mem is not None else None,
            temp_c=float(temp_c) if temp_c is not None else None,
            power_limit_mw=_int_or_none(power_limit_mw),
            sm_clock_mhz=_int_or_none(sm_clock),
            pids=tuple(sorted(gpu.proc_mem_bytes)),
            process_util_pct=tuple(sorted((proc_util or {}).items())),
            unsupported=tuple(n for n in FIELD_NAMES if n in gpu.unsupported),
        )

    def _field(self, gpu: _Gpu, name: str, fn: Callable[[], T]) -> T | None:
        """fn() or None. NotSupported is cached; a lost GPU raises _GpuLost; others log once."""
        if name in gpu.unsupported:
            return None
        nvml = self._nvml
        try:
            return fn()
        except nvml.NVMLError as e:
            code = _code(e)
            if code in _LOST_CODES:
                raise _GpuLost(code) from e
            if code in _UNSUPPORTED_CODES:
                gpu.unsupported.add(name)
                log.info("GPU %d (%s): %s not supported (%s); not asked again", gpu.index, gpu.uuid, name, e)
            else:
                _log_once(gpu, name, e)
            return None

    def _power_mw(self, gpu: _Gpu) -> int | None:
        """Board power in mW, the 1-s average where NVML can say so (see README)."""
        if "power" in gpu.unsupported:
            return None
        if not gpu.power_method:
            self._choose_power_method(gpu)
        nvml, h = self._nvml, gpu.handle
        if gpu.power_method == "field_average":
            try:
                return self._power_field_mw(h)
            except nvml.NVMLError as e:
                if _code(e) not in _UNSUPPORTED_CODES:
                    _log_once(gpu, "power", e)
                    return None
                # The field stopped answering (driver changed under us): fall back for good.
                gpu.power_method = "power_usage"
                gpu.power_is_average = self._usage_is_average(gpu)
        return _int_or_none(self._field(gpu, "power", lambda: nvml.nvmlDeviceGetPowerUsage(h)))

    def _choose_power_method(self, gpu: _Gpu) -> None:
        try:
            self._power_field_mw(gpu.handle)
        except self._nvml.NVMLError:  # no such field on this driver / GPU
            gpu.power_method = "power_usage"
            gpu.power_is_average = self._usage_is_average(gpu)
        else:
            gpu.power_method, gpu.power_is_average = "field_average", True
        log.info(
            "GPU %d (%s): power from %s, %s",
            gpu.index,
            gpu.uuid,
            gpu.power_method,
            "1-s average" if gpu.power_is_average else "instantaneous",
        )

    def _power_field_mw(self, handle: Any) -> int:
        """NVML_FI_DEV_POWER_AVERAGE (GPU scope) through nvmlDeviceGetFieldValues. Units: mW."""
        nvml = self._nvml
        scope = getattr(nvml, "NVML_POWER_SCOPE_GPU", 0)
        try:
            value = nvml.nvmlDeviceGetFieldValues(handle, [(nvml.NVML_FI_DEV_POWER_AVERAGE, scope)])[0]
        except AttributeError as e:  # pynvml too old to know the field
            raise nvml.NVMLError(_FUNCTION_NOT_FOUND) from e
        except nvml.NVMLError as e:
            if _code(e) in _LOST_CODES:
                raise _GpuLost(_code(e)) from e
            raise
        if value.nvmlReturn != 0:
            if value.nvmlReturn in _LOST_CODES:
                raise _GpuLost(value.nvmlReturn)
            raise nvml.NVMLError(value.nvmlReturn)
        return int(value.value.uiVal)

    def _usage_is_average(self, gpu: _Gpu) -> bool:
        """Whether nvmlDeviceGetPowerUsage is a 1-s average on this GPU.

        NVML documents it as averaged over 1 s on Ampere except GA100 (compute capability 8.0)
        and newer, instantaneous on GA100 and older. Unknown architecture: instantaneous.
        """
        nvml, h = self._nvml, gpu.handle
        try:
            arch = int(nvml.nvmlDeviceGetArchitecture(h))
        except AttributeError:
            return False
        except nvml.NVMLError as e:
            if _code(e) in _LOST_CODES:
                raise _GpuLost(_code(e)) from e
            return False
        ampere = getattr(nvml, "NVML_DEVICE_ARCH_AMPERE", 7)
        if arch < ampere or arch == getattr(nvml, "NVML_DEVICE_ARCH_UNKNOWN", 0xFFFFFFFF):
            return False
        if arch > ampere:
            return True
        try:
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(h)
        except nvml.NVMLError as e:
            if _code(e) in _LOST_CODES:
                raise _GpuLost(_code(e)) from e
            return False  # cannot tell GA100 from the rest: do not claim an average
        return (int(major), int(minor)) != (8, 0)

    def _process_util(self, gpu: _Gpu) -> dict[int, float]:
        """pid -> mean SM utilisation (%) over NVML's samples newer than the last poll's."""
        nvml = self._nvml
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(gpu.handle, gpu.proc_util_ts)
        except nvml.NVMLError as e:
            if _code(e) == getattr(nvml, "NVML_ERROR_NOT_FOUND", 6):  # no new samples: all idle
                return {}
            raise
        sums: dict[int, list[float]] = {}
        for s in samples:
            acc = sums.setdefault(int(s.pid), [0.0, 0.0])
            acc[0] += float(s.smUtil)
            acc[1] += 1
            gpu.proc_util_ts = max(gpu.proc_util_ts, int(s.timeStamp))
        return {pid: total / n for pid, (total, n) in sums.items()}

    def _processes(self, handle: Any) -> dict[int, int | None]:
        """pid -> GPU memory (bytes) over compute and graphics processes, each pid once."""
        nvml = self._nvml
        merged: dict[int, int | None] = {}
        for proc in [
            *nvml.nvmlDeviceGetComputeRunningProcesses(handle),
            *nvml.nvmlDeviceGetGraphicsRunningProcesses(handle),
        ]:
            pid, mem = int(proc.pid), proc.usedGpuMemory
            prev = merged.get(pid)
            mem_int = int(mem) if mem is not None else None
            merged[pid] = mem_int if prev is None else max(prev, mem_int or 0)
        return merged


def _log_once(gpu: _Gpu, name: str, err: BaseException) -> None:
    key = (name, _code(err))
    if key not in gpu.logged:
        gpu.logged.add(key)
        log.warning("GPU %d (%s): cannot read %s: %s", gpu.index, gpu.uuid, name, err)


def _int_or_none(value: Any) -> int | None:
    return int(value) if value is not None else None


def _code(err: BaseException) -> int:
    return int(getattr(err, "value", -1))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _import_pynvml() -> ModuleType:
    try:
        return importlib.import_module("pynvml")
    except ImportError as e:
        raise SourceError(f"cannot import pynvml ({e}); install the nvidia-ml-py package. {_SIM_HINT}") from e


def _init_message(err: BaseException) -> str:
    code = _code(err)
    reasons = {
        12: "the NVML library (libnvidia-ml.so.1) was not found: is the NVIDIA driver installed?",
        9: "the NVIDIA kernel driver is not loaded",
        18: "the NVML library and the loaded kernel driver have different versions "
        "(driver upgraded without reboot?)",
        4: "no permission to open the GPU devices (/dev/nvidia*)",
    }
    reason = reasons.get(code, "nvmlInit failed")
    return f"NVML cannot be used: {reason} (NVML error {code}: {err}). {_SIM_HINT}"


@SOURCES.register("nvml")
def nvml_source(settings: None, ctx: SourceContext) -> GpuSource:
    """``source.kind = "nvml"``: the node's GPUs through NVML (no settings of its own)."""
    return NvmlSource()
