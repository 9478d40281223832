"""The one interface every GPU source implements, and the reading it returns.

A source is polled; each poll returns one GpuReading per GPU, an instantaneous
snapshot taken at ``t_ns``. The meter (agent/meter.py) turns two consecutive
readings of a GPU into one interval sample, the same way for every source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol


class SourceError(Exception):
    """A source cannot be used at all (e.g. NVML cannot be loaded); the message says why."""


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What a source's factory knows besides its own settings: the node and how it is sampled."""

    node: str
    #: Seconds between polls.
    interval_s: float
    #: True when the agent replays (a simulated source plays its samples' own times).
    replay: bool


@dataclass(frozen=True, slots=True)
class JobHint:
    """A job a source itself knows is on the GPU, with its share of the interval."""

    job_id: str
    fraction: float
    user: str = ""
    #: Who ran what, where the source knows it (Slurm account and partition, k8s namespace, job name).
    account: str = ""
    partition: str = ""
    namespace: str = ""
    job_name: str = ""


class GpuReading(NamedTuple):
    """One GPU at one instant. None means the GPU does not support that field.

    Immutable; a NamedTuple because every GPU makes one per interval (a frozen dataclass of this
    many fields costs three times as much to make)."""

    index: int  # type: ignore[assignment]  # the GPU index; shadows tuple.index (unused here)
    uuid: str
    name: str
    t_ns: int
    #: Cumulative energy counter. Units: mJ. None where unsupported (pre-Volta).
    energy_mj: int | None
    #: Board power. Units: mW.
    power_mw: int | None
    #: True when power_mw is the driver's 1-second average, False when instantaneous.
    power_is_average: bool = True
    #: GPU (SM) utilisation over the driver's last sample period. Units: percent 0-100.
    util_pct: float | None = None
    #: Memory controller utilisation. Units: percent 0-100.
    mem_util_pct: float | None = None
    mem_used_bytes: int | None = None
    mem_total_bytes: int | None = None
    temp_c: float | None = None
    #: Enforced power limit. Units: mW.
    power_limit_mw: int | None = None
    sm_clock_mhz: int | None = None
    #: PIDs of the processes using the GPU (compute and graphics).
    pids: tuple[int, ...] = ()
    #: SM utilisation of each process on the GPU since the previous poll, as (pid, percent) pairs
    #: (NVML's nvmlDeviceGetProcessUtilization); used to split a shared GPU between jobs.
    process_util_pct: tuple[tuple[int, float], ...] = ()
    #: Jobs the source itself names for the interval ending now (the simulated trace does).
    jobs: tuple[JobHint, ...] = ()
    #: Names of fields the GPU did not support in this reading, e.g. ("energy_counter",).
    unsupported: tuple[str, ...] = ()
    #: A fault seen on this GPU (e.g. "gpu_lost"); the reading carries no values then.
    fault: str = ""


class GpuSource(Protocol):
    """A source of GPU readings: NVML on real nodes, a simulation everywhere else."""

    def read(self) -> list[GpuReading]:
        """Read every GPU now (the source's own clock) and return one reading per GPU."""
        ...

    @property
    def finished(self) -> bool:
        """True once a finite source (a replayed trace) has nothing more to give."""
        ...

    def progress(self) -> float:
        """Share of a finite source played so far, 0..1 (1.0 for live sources)."""
        ...

    def close(self) -> None:
        """Release the source (nvmlShutdown and the like)."""
        ...
