"""Checks every batch before anything of it is stored; the error names sample, field and value."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gridwatt.timeutil import NS_PER_S, format_time_ns
from gridwatt.v1 import telemetry_pb2 as pb

#: A job share's alias: a Slurm array task "1234_7" or heterogeneous job component "1234+1".
SLURM_ALIAS = re.compile(r"\d{1,12}[_+]\d{1,12}")


class BatchRejected(Exception):
    """The batch is malformed or implausible; nothing of it is stored. Maps to INVALID_ARGUMENT."""


@dataclass(frozen=True)
class Limits:
    max_future_ns: int
    max_power_w: float
    max_interval_ns: int
    min_time_ns: int


def _where(i: int, s: pb.GpuSample) -> str:
    return f"gpu_samples[{i}] (gpu {s.gpu_index}, start {s.start_ns})"


def validate_batch(batch: pb.Batch, limits: Limits, now_ns: int) -> None:
    """Raise BatchRejected naming the first problem found."""
    if not batch.node:
        raise BatchRejected("field node: empty; every batch must name its node")
    if not batch.gpu_samples and not batch.host_samples and not batch.HasField("ledger"):
        raise BatchRejected("batch has no samples")
    latest_ns = now_ns + limits.max_future_ns
    for i, s in enumerate(batch.gpu_samples):
        e = s.energy_j
        if not math.isfinite(e):
            raise BatchRejected(f"{_where(i, s)}: field energy_j: value {e} is not a finite number")
        if e < 0:
            raise BatchRejected(f"{_where(i, s)}: field energy_j: value {e} is negative")
        duration_ns = s.end_ns - s.start_ns
        if duration_ns <= 0:
            raise BatchRejected(
                f"{_where(i, s)}: field end_ns: value {s.end_ns} is not after start_ns {s.start_ns}"
            )
        if duration_ns > limits.max_interval_ns:
            raise BatchRejected(
                f"{_where(i, s)}: interval of {duration_ns / NS_PER_S:g} s exceeds the "
                f"{limits.max_interval_ns / NS_PER_S:g} s limit"
            )
        if s.end_ns > latest_ns:
            raise BatchRejected(
                f"{_where(i, s)}: field end_ns: value {s.end_ns} ({format_time_ns(s.end_ns)}) is "
                f"{(s.end_ns - now_ns) / NS_PER_S:.0f} s in the future"
            )
        if s.start_ns < limits.min_time_ns:
            raise BatchRejected(
                f"{_where(i, s)}: field start_ns: value {s.start_ns} is before "
                f"{format_time_ns(limits.min_time_ns)}"
            )
        power_w = e / (duration_ns / NS_PER_S)
        if power_w > limits.max_power_w:
            raise BatchRejected(
                f"{_where(i, s)}: field energy_j: value {e} means {power_w:.0f} W, above the plausible "
                f"{limits.max_power_w:g} W for one GPU"
            )
        for name, v in (("util_pct", s.util_pct), ("mem_util_pct", s.mem_util_pct)):
            if not (0.0 <= v <= 100.0):  # also false for NaN
                raise BatchRejected(f"{_where(i, s)}: field {name}: value {v} is outside 0-100")
        if not (0.0 <= s.idle_s <= duration_ns / NS_PER_S + 1e-6):
            raise BatchRejected(f"{_where(i, s)}: field idle_s: value {s.idle_s} is outside the interval")
        total = 0.0
        for share in s.jobs:
            if not share.job_id:
                raise BatchRejected(f"{_where(i, s)}: field jobs.job_id: empty")
            if not (0.0 < share.fraction <= 1.0):
                raise BatchRejected(
                    f"{_where(i, s)}: field jobs.fraction: value {share.fraction} for job "
                    f"{share.job_id!r} is outside (0, 1]"
                )
            if share.alias and not SLURM_ALIAS.fullmatch(share.alias):
                raise BatchRejected(f"{_where(i, s)}: field jobs.alias: {share.alias[:40]!r} is not "
                                    "a Slurm array task (1234_7) or het component (1234+1) id")
            _check_who(i, s, share)
            total += share.fraction
        if total > 1.0 + 1e-6:
            raise BatchRejected(f"{_where(i, s)}: field jobs.fraction: shares sum to {total}, above 1")


#: Longest user, account, partition, namespace or job name a job share may carry.
MAX_WHO_CHARS = 256
_WHO_FIELDS = ("user", "account", "partition", "namespace", "job_name")


def _check_who(i: int, s: pb.GpuSample, share: pb.JobShare) -> None:
    """Who ran what: each at most MAX_WHO_CHARS printable characters."""
    for name in _WHO_FIELDS:
        value: str = getattr(share, name)
        if len(value) > MAX_WHO_CHARS or not value.isprintable():
            raise BatchRejected(
                f"{_where(i, s)}: field jobs.{name}: {value[:40]!r} for job {share.job_id[:80]!r} is longer "
                f"than {MAX_WHO_CHARS} characters or not printable"
            )


def validate_host_samples(batch: pb.Batch, limits: Limits, now_ns: int) -> None:
    """Raise BatchRejected naming the first bad host sample."""
    latest_ns = now_ns + limits.max_future_ns
    for i, h in enumerate(batch.host_samples):
        where = f"host_samples[{i}] (start {h.start_ns})"
        if h.end_ns <= h.start_ns:
            raise BatchRejected(f"{where}: field end_ns: value {h.end_ns} is not after start_ns {h.start_ns}")
        if h.end_ns > latest_ns or h.start_ns < limits.min_time_ns:
            raise BatchRejected(f"{where}: field end_ns: value {h.end_ns} is outside the accepted time range")
        if not (0.0 <= h.cpu_util_pct <= 100.0):
            raise BatchRejected(f"{where}: field cpu_util_pct: value {h.cpu_util_pct} is outside 0-100")
        if h.has_cpu_energy and not (math.isfinite(h.cpu_energy_j) and h.cpu_energy_j >= 0):
            raise BatchRejected(f"{where}: field cpu_energy_j: value {h.cpu_energy_j} is not a finite, "
                                "non-negative number")
