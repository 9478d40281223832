"""A small fake of the ``pynvml`` module (nvidia-ml-py) for tests without a GPU.

It mirrors what the real module exposes and how NVML behaves, as far as gridwatt uses it:

* units: power in mW, energy in mJ (cumulative since driver load), memory in bytes,
  utilisation in percent, temperature in °C, clocks in MHz;
* errors: ``NVMLError(code)`` becomes the subclass pynvml generates for that code
  (``NVMLError_NotSupported``, ``NVMLError_GpuIsLost``, ``NVMLError_LibraryNotFound``, ...),
  each carrying ``.value``; the constants have pynvml's values;
* ``nvmlDeviceGetFieldValues`` returns one record per requested field with its own
  ``nvmlReturn``, the call itself succeeding (as NVML does).

Build one with ``FakeNvml([FakeGpu(...), ...])`` and pass it as ``nvml_module``. Faults are
switched on the FakeGpu objects (``lose()``, ``recover()``, ``reset_energy()``,
``unsupported.add("temperature")``) or on the FakeNvml (``init_error``). ``calls`` counts every
NVML function called, by name.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from gridwatt.agent.sources.nvml.source import FIELD_NAMES

# ---- constants (values as in pynvml) ----
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1
NVML_FI_DEV_POWER_AVERAGE = 185
NVML_FI_DEV_POWER_INSTANT = 186
NVML_POWER_SCOPE_GPU = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1

NVML_DEVICE_ARCH_KEPLER = 2
NVML_DEVICE_ARCH_MAXWELL = 3
NVML_DEVICE_ARCH_PASCAL = 4
NVML_DEVICE_ARCH_VOLTA = 5
NVML_DEVICE_ARCH_TURING = 6
NVML_DEVICE_ARCH_AMPERE = 7
NVML_DEVICE_ARCH_ADA = 8
NVML_DEVICE_ARCH_HOPPER = 9

_ERROR_CLASS_NAMES = {
    NVML_ERROR_UNINITIALIZED: "NVMLError_Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "NVMLError_InvalidArgument",
    NVML_ERROR_NOT_SUPPORTED: "NVMLError_NotSupported",
    NVML_ERROR_NO_PERMISSION: "NVMLError_NoPermission",
    NVML_ERROR_NOT_FOUND: "NVMLError_NotFound",
    NVML_ERROR_DRIVER_NOT_LOADED: "NVMLError_DriverNotLoaded",
    NVML_ERROR_TIMEOUT: "NVMLError_Timeout",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVMLError_LibraryNotFound",
    NVML_ERROR_FUNCTION_NOT_FOUND: "NVMLError_FunctionNotFound",
    NVML_ERROR_GPU_IS_LOST: "NVMLError_GpuIsLost",
    NVML_ERROR_RESET_REQUIRED: "NVMLError_ResetRequired",
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: "NVMLError_LibRmVersionMismatch",
    NVML_ERROR_GPU_NOT_FOUND: "NVMLError_GpuNotFound",
    NVML_ERROR_UNKNOWN: "NVMLError_Unknown",
}
_ERROR_STRINGS = {
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """Like pynvml.NVMLError: ``NVMLError(code)`` returns the subclass for that code."""

    _classes: dict[int, type[NVMLError]] = {}  # noqa: RUF012 - filled below, as pynvml does
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._classes.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value: int) -> None:
        super().__init__(value)

    def __str__(self) -> str:
        return _ERROR_STRINGS.get(self.value, f"NVML Error with code {self.value}")


def _make_error_class(code: int, name: str) -> type[NVMLError]:
    def new(cls: type[NVMLError], *args: Any) -> NVMLError:
        return NVMLError.__new__(cls, code)

    def init(self: NVMLError, *args: Any) -> None:
        Exception.__init__(self, code)

    return type(name, (NVMLError,), {"__new__": new, "__init__": init})


for _code, _name in _ERROR_CLASS_NAMES.items():
    NVMLError._classes[_code] = _make_error_class(_code, _name)
    globals()[_name] = NVMLError._classes[_code]

NVMLError_NotSupported = NVMLError._classes[NVML_ERROR_NOT_SUPPORTED]
NVMLError_GpuIsLost = NVMLError._classes[NVML_ERROR_GPU_IS_LOST]
NVMLError_LibraryNotFound = NVMLError._classes[NVML_ERROR_LIBRARY_NOT_FOUND]
NVMLError_DriverNotLoaded = NVMLError._classes[NVML_ERROR_DRIVER_NOT_LOADED]
NVMLError_Unknown = NVMLError._classes[NVML_ERROR_UNKNOWN]
NVMLError_NoPermission = NVMLError._classes[NVML_ERROR_NO_PERMISSION]

#: Field names a FakeGpu can be told not to support: the source's own stable names.
FIELDS = FIELD_NAMES


@dataclass
class FakeProcess:
    """What nvmlDeviceGet*RunningProcesses returns per process. usedGpuMemory in bytes."""

    pid: int
    usedGpuMemory: int | None
    gpuInstanceId: int = 0xFFFFFFFF
    computeInstanceId: int = 0xFFFFFFFF


@dataclass
class FakeGpu:
    """One fake GPU. Units: power_mw mW, energy_mj mJ, memory bytes, util %, temp °C, clock MHz."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    power_mw: int = 300_000
    energy_mj: int = 0
    supports_energy: bool = True
    #: Architecture code (pynvml NVML_DEVICE_ARCH_*) and CUDA compute capability.
    arch: int = NVML_DEVICE_ARCH_HOPPER
    cuda_cc: tuple[int, int] = (9, 0)
    #: Whether nvmlDeviceGetFieldValues answers NVML_FI_DEV_POWER_AVERAGE (newer drivers).
    supports_power_fields: bool = True
    power_limit_mw: int = 700_000
    util_gpu_pct: int = 50
    util_mem_pct: int = 20
    mem_used_bytes: int = 10 * 2**30
    mem_total_bytes: int = 80 * 2**30
    temp_c: int = 60
    sm_clock_mhz: int = 1980
    mig_enabled: bool | None = False  # None: GPU without MIG support (NotSupported)
    compute_procs: list[FakeProcess] = field(default_factory=list)
    graphics_procs: list[FakeProcess] = field(default_factory=list)
    #: Per-process utilisation samples: (pid, smUtil %, timestamp µs), as nvmlDeviceGetProcessUtilization
    #: returns those newer than the timestamp it is given.
    proc_util_samples: list[tuple[int, int, int]] = field(default_factory=list)
    #: Field names (see FIELDS, the source's FIELD_NAMES) that raise NVMLError_NotSupported.
    unsupported: set[str] = field(default_factory=set)
    lost: bool = False
    #: Error code raised while lost: GPU_IS_LOST (fallen off the bus) or UNKNOWN.
    lost_code: int = NVML_ERROR_GPU_IS_LOST

    def lose(self, code: int = NVML_ERROR_GPU_IS_LOST) -> None:
        """The GPU falls off the bus: every call on it (and getting its handle) fails with code."""
        self.lost, self.lost_code = True, code

    def recover(self) -> None:
        """The GPU is back (after a reset): calls succeed again."""
        self.lost = False

    def reset_energy(self, to_mj: int = 0) -> None:
        """The energy counter restarts (driver reload, GPU reset)."""
        self.energy_mj = to_mj

    def run(self, seconds: float) -> None:
        """Let time pass at the current power: the energy counter grows by power × time."""
        self.energy_mj += round(self.power_mw * seconds)

    def check(self, field_name: str | None = None) -> None:
        if self.lost:
            raise NVMLError(self.lost_code)
        if field_name is not None and field_name in self.unsupported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)


class FakeNvml:
    """The fake module: an object with pynvml's function and constant names."""

    def __init__(self, gpus: list[FakeGpu], init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.initialized = False
        self.calls: Counter[str] = Counter()
        # Constants and error classes are reachable as attributes, as on the real module.
        for name, value in globals().items():
            if name.startswith(("NVML_", "NVMLError")):
                setattr(self, name, value)

    def _count(self, name: str) -> None:
        self.calls[name] += 1
        if name not in ("nvmlInit", "nvmlShutdown") and not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: FakeGpu, field_name: str | None = None) -> FakeGpu:
        handle.check(field_name)
        return handle

    # ---- library ----
    def nvmlInit(self) -> None:
        self._count("nvmlInit")
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self._count("nvmlShutdown")
        self.initialized = False

    def nvmlDeviceGetCount(self) -> int:
        self._count("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._count("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu(self.gpus[index])

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        self._count("nvmlDeviceGetHandleByUUID")
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return self._gpu(gpu)
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    # ---- static ----
    def nvmlDeviceGetUUID(self, h: FakeGpu) -> str:
        self._count("nvmlDeviceGetUUID")
        return self._gpu(h).uuid

    def nvmlDeviceGetName(self, h: FakeGpu) -> str:
        self._count("nvmlDeviceGetName")
        return self._gpu(h).name

    def nvmlDeviceGetArchitecture(self, h: FakeGpu) -> int:
        self._count("nvmlDeviceGetArchitecture")
        return self._gpu(h).arch

    def nvmlDeviceGetCudaComputeCapability(self, h: FakeGpu) -> tuple[int, int]:
        self._count("nvmlDeviceGetCudaComputeCapability")
        return self._gpu(h).cuda_cc

    def nvmlDeviceGetMigMode(self, h: FakeGpu) -> list[int]:
        self._count("nvmlDeviceGetMigMode")
        gpu = self._gpu(h)
        if gpu.mig_enabled is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        mode = NVML_DEVICE_MIG_ENABLE if gpu.mig_enabled else NVML_DEVICE_MIG_DISABLE
        return [mode, mode]  # [current, pending]

    # ---- per poll ----
    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeGpu) -> int:
        self._count("nvmlDeviceGetTotalEnergyConsumption")
        gpu = self._gpu(h, "energy_counter")
        if not gpu.supports_energy:  # pre-Volta
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return gpu.energy_mj

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        self._count("nvmlDeviceGetPowerUsage")
        return self._gpu(h, "power").power_mw

    def nvmlDeviceGetFieldValues(self, h: FakeGpu, field_ids: list[Any]) -> list[SimpleNamespace]:
        self._count("nvmlDeviceGetFieldValues")
        gpu = self._gpu(h)
        out = []
        for fid in field_ids:
            field_id, scope_id = fid if isinstance(fid, tuple) else (fid, 0)
            power_field = field_id in (NVML_FI_DEV_POWER_AVERAGE, NVML_FI_DEV_POWER_INSTANT)
            ok = power_field and gpu.supports_power_fields and "power" not in gpu.unsupported
            out.append(
                SimpleNamespace(
                    fieldId=field_id,
                    scopeId=scope_id,
                    valueType=NVML_VALUE_TYPE_UNSIGNED_INT,
                    nvmlReturn=NVML_SUCCESS if ok else NVML_ERROR_NOT_SUPPORTED,
                    value=SimpleNamespace(uiVal=gpu.power_mw if ok else 0),
                )
            )
        return out

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeGpu) -> int:
        self._count("nvmlDeviceGetEnforcedPowerLimit")
        return self._gpu(h, "power_limit").power_limit_mw

    def nvmlDeviceGetUtilizationRates(self, h: FakeGpu) -> SimpleNamespace:
        self._count("nvmlDeviceGetUtilizationRates")
        gpu = self._gpu(h, "utilization")
        if gpu.mig_enabled:  # NVML does not report utilisation of a MIG-enabled GPU
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=gpu.util_gpu_pct, memory=gpu.util_mem_pct)

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu) -> SimpleNamespace:
        self._count("nvmlDeviceGetMemoryInfo")
        gpu = self._gpu(h, "memory")
        free = gpu.mem_total_bytes - gpu.mem_used_bytes
        return SimpleNamespace(total=gpu.mem_total_bytes, free=free, used=gpu.mem_used_bytes)

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        self._count("nvmlDeviceGetTemperature")
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu(h, "temperature").temp_c

    def nvmlDeviceGetClockInfo(self, h: FakeGpu, clock_type: int) -> int:
        self._count("nvmlDeviceGetClockInfo")
        if clock_type != NVML_CLOCK_SM:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu(h, "sm_clock").sm_clock_mhz

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeGpu) -> list[FakeProcess]:
        self._count("nvmlDeviceGetComputeRunningProcesses")
        return list(self._gpu(h, "processes").compute_procs)

    def nvmlDeviceGetProcessUtilization(self, h: FakeGpu, last_seen_us: int) -> list[SimpleNamespace]:
        self._count("nvmlDeviceGetProcessUtilization")
        gpu = self._gpu(h, "process_utilization")
        newer = [s for s in gpu.proc_util_samples if s[2] > last_seen_us]
        if not newer:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return [SimpleNamespace(pid=p, smUtil=u, memUtil=0, encUtil=0, decUtil=0, timeStamp=t)
                for p, u, t in newer]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: FakeGpu) -> list[FakeProcess]:
        self._count("nvmlDeviceGetGraphicsRunningProcesses")
        return list(self._gpu(h, "processes").graphics_procs)
