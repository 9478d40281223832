from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnergyMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENERGY_METHOD_UNSPECIFIED: _ClassVar[EnergyMethod]
    ENERGY_METHOD_COUNTER: _ClassVar[EnergyMethod]
    ENERGY_METHOD_POWER_AVERAGE: _ClassVar[EnergyMethod]
    ENERGY_METHOD_POWER_INSTANT: _ClassVar[EnergyMethod]

class AttributionMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTRIBUTION_METHOD_UNSPECIFIED: _ClassVar[AttributionMethod]
    ATTRIBUTION_METHOD_STATIC: _ClassVar[AttributionMethod]
    ATTRIBUTION_METHOD_SLURM: _ClassVar[AttributionMethod]
    ATTRIBUTION_METHOD_TRACE: _ClassVar[AttributionMethod]
    ATTRIBUTION_METHOD_JOB_MAPPING: _ClassVar[AttributionMethod]
    ATTRIBUTION_METHOD_KUBERNETES: _ClassVar[AttributionMethod]
ENERGY_METHOD_UNSPECIFIED: EnergyMethod
ENERGY_METHOD_COUNTER: EnergyMethod
ENERGY_METHOD_POWER_AVERAGE: EnergyMethod
ENERGY_METHOD_POWER_INSTANT: EnergyMethod
ATTRIBUTION_METHOD_UNSPECIFIED: AttributionMethod
ATTRIBUTION_METHOD_STATIC: AttributionMethod
ATTRIBUTION_METHOD_SLURM: AttributionMethod
ATTRIBUTION_METHOD_TRACE: AttributionMethod
ATTRIBUTION_METHOD_JOB_MAPPING: AttributionMethod
ATTRIBUTION_METHOD_KUBERNETES: AttributionMethod

class JobShare(_message.Message):
    __slots__ = ("job_id", "fraction", "method", "user", "split_estimated", "account", "alias", "partition", "namespace", "job_name")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    SPLIT_ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    fraction: float
    method: AttributionMethod
    user: str
    split_estimated: bool
    account: str
    alias: str
    partition: str
    namespace: str
    job_name: str
    def __init__(self, job_id: _Optional[str] = ..., fraction: _Optional[float] = ..., method: _Optional[_Union[AttributionMethod, str]] = ..., user: _Optional[str] = ..., split_estimated: _Optional[bool] = ..., account: _Optional[str] = ..., alias: _Optional[str] = ..., partition: _Optional[str] = ..., namespace: _Optional[str] = ..., job_name: _Optional[str] = ...) -> None: ...

class GpuSample(_message.Message):
    __slots__ = ("gpu_index", "gpu_uuid", "gpu_name", "start_ns", "end_ns", "energy_j", "mean_power_w", "util_pct", "mem_util_pct", "mem_used_bytes", "temp_c", "idle_s", "energy_method", "jobs", "power_limit_w", "sm_clock_mhz", "unsupported_fields")
    GPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    GPU_UUID_FIELD_NUMBER: _ClassVar[int]
    GPU_NAME_FIELD_NUMBER: _ClassVar[int]
    START_NS_FIELD_NUMBER: _ClassVar[int]
    END_NS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    MEAN_POWER_W_FIELD_NUMBER: _ClassVar[int]
    UTIL_PCT_FIELD_NUMBER: _ClassVar[int]
    MEM_UTIL_PCT_FIELD_NUMBER: _ClassVar[int]
    MEM_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEMP_C_FIELD_NUMBER: _ClassVar[int]
    IDLE_S_FIELD_NUMBER: _ClassVar[int]
    ENERGY_METHOD_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    SM_CLOCK_MHZ_FIELD_NUMBER: _ClassVar[int]
    UNSUPPORTED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    gpu_index: int
    gpu_uuid: str
    gpu_name: str
    start_ns: int
    end_ns: int
    energy_j: float
    mean_power_w: float
    util_pct: float
    mem_util_pct: float
    mem_used_bytes: int
    temp_c: float
    idle_s: float
    energy_method: EnergyMethod
    jobs: _containers.RepeatedCompositeFieldContainer[JobShare]
    power_limit_w: float
    sm_clock_mhz: int
    unsupported_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, gpu_index: _Optional[int] = ..., gpu_uuid: _Optional[str] = ..., gpu_name: _Optional[str] = ..., start_ns: _Optional[int] = ..., end_ns: _Optional[int] = ..., energy_j: _Optional[float] = ..., mean_power_w: _Optional[float] = ..., util_pct: _Optional[float] = ..., mem_util_pct: _Optional[float] = ..., mem_used_bytes: _Optional[int] = ..., temp_c: _Optional[float] = ..., idle_s: _Optional[float] = ..., energy_method: _Optional[_Union[EnergyMethod, str]] = ..., jobs: _Optional[_Iterable[_Union[JobShare, _Mapping]]] = ..., power_limit_w: _Optional[float] = ..., sm_clock_mhz: _Optional[int] = ..., unsupported_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class HostSample(_message.Message):
    __slots__ = ("start_ns", "end_ns", "cpu_util_pct", "mem_used_bytes", "mem_total_bytes", "cpu_energy_j", "has_cpu_energy")
    START_NS_FIELD_NUMBER: _ClassVar[int]
    END_NS_FIELD_NUMBER: _ClassVar[int]
    CPU_UTIL_PCT_FIELD_NUMBER: _ClassVar[int]
    MEM_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    HAS_CPU_ENERGY_FIELD_NUMBER: _ClassVar[int]
    start_ns: int
    end_ns: int
    cpu_util_pct: float
    mem_used_bytes: int
    mem_total_bytes: int
    cpu_energy_j: float
    has_cpu_energy: bool
    def __init__(self, start_ns: _Optional[int] = ..., end_ns: _Optional[int] = ..., cpu_util_pct: _Optional[float] = ..., mem_used_bytes: _Optional[int] = ..., mem_total_bytes: _Optional[int] = ..., cpu_energy_j: _Optional[float] = ..., has_cpu_energy: _Optional[bool] = ...) -> None: ...

class SpoolLedger(_message.Message):
    __slots__ = ("sampled", "acknowledged", "rejected", "evicted", "evicted_energy_j", "lost", "pending", "at_ns", "quarantines")
    SAMPLED_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    EVICTED_ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    AT_NS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINES_FIELD_NUMBER: _ClassVar[int]
    sampled: int
    acknowledged: int
    rejected: int
    evicted: int
    evicted_energy_j: float
    lost: int
    pending: int
    at_ns: int
    quarantines: int
    def __init__(self, sampled: _Optional[int] = ..., acknowledged: _Optional[int] = ..., rejected: _Optional[int] = ..., evicted: _Optional[int] = ..., evicted_energy_j: _Optional[float] = ..., lost: _Optional[int] = ..., pending: _Optional[int] = ..., at_ns: _Optional[int] = ..., quarantines: _Optional[int] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("batch_id", "node", "agent_version", "gpu_samples", "host_samples", "ledger")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    GPU_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    HOST_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    node: str
    agent_version: str
    gpu_samples: _containers.RepeatedCompositeFieldContainer[GpuSample]
    host_samples: _containers.RepeatedCompositeFieldContainer[HostSample]
    ledger: SpoolLedger
    def __init__(self, batch_id: _Optional[int] = ..., node: _Optional[str] = ..., agent_version: _Optional[str] = ..., gpu_samples: _Optional[_Iterable[_Union[GpuSample, _Mapping]]] = ..., host_samples: _Optional[_Iterable[_Union[HostSample, _Mapping]]] = ..., ledger: _Optional[_Union[SpoolLedger, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("batch_id", "code", "message", "stored_samples", "retry_after_ms")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STORED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    code: int
    message: str
    stored_samples: int
    retry_after_ms: int
    def __init__(self, batch_id: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., stored_samples: _Optional[int] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("node", "agent_version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    agent_version: str
    def __init__(self, node: _Optional[str] = ..., agent_version: _Optional[str] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("node", "rack", "zone", "authenticated", "auth_required", "collector_version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    RACK_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    AUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    rack: str
    zone: str
    authenticated: bool
    auth_required: bool
    collector_version: str
    def __init__(self, node: _Optional[str] = ..., rack: _Optional[str] = ..., zone: _Optional[str] = ..., authenticated: _Optional[bool] = ..., auth_required: _Optional[bool] = ..., collector_version: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobReport(_message.Message):
    __slots__ = ("job_id", "start_ns", "end_ns", "nodes", "gpus", "gpu_hours", "mean_util_pct", "idle_share", "it_energy_kwh", "facility_energy_kwh", "co2e_kg", "mean_pue", "mean_intensity_g_per_kwh", "idle_energy_kwh", "emission_factor", "estimated_share")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    START_NS_FIELD_NUMBER: _ClassVar[int]
    END_NS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    GPU_HOURS_FIELD_NUMBER: _ClassVar[int]
    MEAN_UTIL_PCT_FIELD_NUMBER: _ClassVar[int]
    IDLE_SHARE_FIELD_NUMBER: _ClassVar[int]
    IT_ENERGY_KWH_FIELD_NUMBER: _ClassVar[int]
    FACILITY_ENERGY_KWH_FIELD_NUMBER: _ClassVar[int]
    CO2E_KG_FIELD_NUMBER: _ClassVar[int]
    MEAN_PUE_FIELD_NUMBER: _ClassVar[int]
    MEAN_INTENSITY_G_PER_KWH_FIELD_NUMBER: _ClassVar[int]
    IDLE_ENERGY_KWH_FIELD_NUMBER: _ClassVar[int]
    EMISSION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_SHARE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    start_ns: int
    end_ns: int
    nodes: _containers.RepeatedScalarFieldContainer[str]
    gpus: _containers.RepeatedScalarFieldContainer[str]
    gpu_hours: float
    mean_util_pct: float
    idle_share: float
    it_energy_kwh: float
    facility_energy_kwh: float
    co2e_kg: float
    mean_pue: float
    mean_intensity_g_per_kwh: float
    idle_energy_kwh: float
    emission_factor: str
    estimated_share: float
    def __init__(self, job_id: _Optional[str] = ..., start_ns: _Optional[int] = ..., end_ns: _Optional[int] = ..., nodes: _Optional[_Iterable[str]] = ..., gpus: _Optional[_Iterable[str]] = ..., gpu_hours: _Optional[float] = ..., mean_util_pct: _Optional[float] = ..., idle_share: _Optional[float] = ..., it_energy_kwh: _Optional[float] = ..., facility_energy_kwh: _Optional[float] = ..., co2e_kg: _Optional[float] = ..., mean_pue: _Optional[float] = ..., mean_intensity_g_per_kwh: _Optional[float] = ..., idle_energy_kwh: _Optional[float] = ..., emission_factor: _Optional[str] = ..., estimated_share: _Optional[float] = ...) -> None: ...
