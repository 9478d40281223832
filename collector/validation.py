"""Checks every batch before anything of it is stored; the error names sample, field and value."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gridwatt.collector.batch_scan import (
    INFO_MEMO,
    MEMO_MAX,
    MEMO_SHARE_BYTES,
    UNATTRIBUTED,
    BatchScan,
    Row,
    Share,
    ShareInfo,
    share_info,
)
from gridwatt.names import name_problem, shown
from gridwatt.timeutil import NS_PER_S, format_time_ns
from gridwatt.v1 import telemetry_pb2 as pb

_INF = math.inf
#: InfluxDB integers are signed 64-bit; an unsigned field at or above this would be refused.
INT64_LIMIT = 2**63
#: Plausible GPU temperature range (degrees Celsius); 0 when the GPU did not report it.
TEMP_RANGE_C = (-100.0, 250.0)
#: A job share's alias: a Slurm array task "1234_7" or heterogeneous job component "1234+1".
SLURM_ALIAS = re.compile(r"\d{1,12}[_+]\d{1,12}")


class BatchRejected(Exception):
    """The batch is malformed or implausible; nothing of it is stored. Maps to INVALID_ARGUMENT.

    ``reason`` names the rule (the ``reason`` label of ``samples_rejected_total``; see
    collector/README.md, "Bounds").
    """

    def __init__(self, message: str, reason: str = "validation") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    max_future_ns: int
    max_power_w: float
    max_interval_ns: int
    min_time_ns: int
    #: Job shares one GPU sample may carry.
    max_job_shares: int = 16
    #: GPU plus host samples one batch may carry.
    max_batch_samples: int = 5000


def _finite_in(where: str, name: str, v: float, lo: float, hi: float) -> None:
    if not (math.isfinite(v) and lo <= v <= hi):
        raise BatchRejected(f"{where}: field {name}: value {v} is not a finite number in [{lo:g}, {hi:g}]")


def _below_int64(where: str, name: str, v: int) -> None:
    if v >= INT64_LIMIT:
        raise BatchRejected(f"{where}: field {name}: value {v} is not below 2^63")


def _where(i: int, s: pb.GpuSample) -> str:
    return f"gpu_samples[{i}] (gpu {s.gpu_index}, start {s.start_ns})"


#: Names (node, GPU UUID, job id) already found valid: ``name_problem`` is pure, so a name seen
#: before is not checked again (bounded; emptied when full).
_VALID_NAMES: set[str] = set()
_VALID_NAMES_MAX = 100_000


def _name_problem(value: str) -> str | None:
    """``name_problem(value)``, remembering valid names."""
    if value in _VALID_NAMES:
        return None
    problem = name_problem(value)
    if problem is None:
        if len(_VALID_NAMES) >= _VALID_NAMES_MAX:
            _VALID_NAMES.clear()
        _VALID_NAMES.add(value)
    return problem


#: Share infos (collector/batch_scan.py) whose alias and who-fields were found valid: those of at
#: most MEMO_SHARE_BYTES characters, at most MEMO_MAX of them (then emptied).
_VALID_SHARES: set[ShareInfo] = set()


def validate_batch(batch: pb.Batch, limits: Limits, now_ns: int) -> BatchScan:
    """Raise BatchRejected naming the first problem found; else the batch's scan (its samples and
    shares read once, for the stages after this one: collector/batch_scan.py).

    The hot path of ingest: each sample's fields are read once, and the messages (with the
    sample's place, ``_where``) are built only for a sample that fails.
    """
    node = batch.node
    if not node:
        raise BatchRejected("field node: empty; every batch must name its node")
    problem = _name_problem(node)
    if problem:
        raise BatchRejected(f"field node: {problem}")
    samples = batch.gpu_samples
    if not samples and not batch.host_samples and not batch.HasField("ledger"):
        raise BatchRejected("batch has no samples")
    n = len(samples) + len(batch.host_samples)
    if n > limits.max_batch_samples:
        raise BatchRejected(f"too_many_samples: {n} samples in one batch, above the "
                            f"{limits.max_batch_samples} allowed (server.max_samples_per_batch)",
                            "too_many_samples")
    latest_ns = now_ns + limits.max_future_ns
    max_interval_ns = limits.max_interval_ns
    min_time_ns = limits.min_time_ns
    max_power_w = limits.max_power_w
    # with finite bounds, lo <= v <= hi is false for NaN and ±inf: the full check runs on failure
    power_bound_finite = math.isfinite(max_power_w)
    temp_lo, temp_hi = TEMP_RANGE_C
    max_job_shares = limits.max_job_shares
    sample_list = list(samples)
    all_shares: list[Sequence[Share]] = []
    job_ids: list[str] = []
    rows: list[Row] = []
    add_row = rows.append
    add_shares = all_shares.append
    valid_names = _VALID_NAMES
    checked: set[int] = set()  # ids of the share infos of this batch found valid
    lo_ns = hi_ns = 0
    if sample_list:
        lo_ns, hi_ns = sample_list[0].start_ns, sample_list[0].end_ns
    for i, s in enumerate(sample_list):
        e = s.energy_j
        start_ns = s.start_ns
        end_ns = s.end_ns
        util_pct = s.util_pct
        mem_util_pct = s.mem_util_pct
        idle_s = s.idle_s
        mean_power_w = s.mean_power_w
        temp_c = s.temp_c
        mem_used_bytes = s.mem_used_bytes
        duration_ns = end_ns - start_ns
        # every check of _check_sample at once (the same comparisons; false for NaN and ±inf); where one
        # fails, _check_sample names the first, in its order
        if not (0.0 <= e < _INF and 0 < duration_ns <= max_interval_ns and end_ns <= latest_ns
                and start_ns >= min_time_ns and e / (duration_s := duration_ns / NS_PER_S) <= max_power_w
                and 0.0 <= util_pct <= 100.0 and 0.0 <= mem_util_pct <= 100.0
                and 0.0 <= idle_s <= duration_s + 1e-6 and power_bound_finite
                and 0.0 <= mean_power_w <= max_power_w and 0.0 <= s.power_limit_w <= max_power_w
                and temp_lo <= temp_c <= temp_hi and mem_used_bytes < INT64_LIMIT):
            _check_sample(i, s, now_ns, limits)
        if start_ns < lo_ns:
            lo_ns = start_ns
        if end_ns > hi_ns:
            hi_ns = end_ns
        uuid = s.gpu_uuid
        if uuid and uuid not in valid_names:
            problem = _name_problem(uuid)
            if problem:
                raise BatchRejected(f"{_where(i, s)}: field gpu_uuid: {problem}")
        add_row((start_ns, end_ns, e, s.gpu_index, uuid, util_pct, mem_util_pct, idle_s, mean_power_w,
                 mem_used_bytes, temp_c, s.energy_method))
        jobs = s.jobs
        n_jobs = len(jobs)
        if n_jobs == 1:  # the usual case: no list, repeat set or sum
            info, fraction = _checked_share(i, s, jobs[0], checked, None)
            add_shares(((info, fraction),))
            if info[0] != UNATTRIBUTED:
                job_ids.append(info[0])
            continue
        if not n_jobs:
            add_shares(())
            continue
        mine: list[Share] = []
        if n_jobs > max_job_shares:
            raise BatchRejected(
                f"too_many_job_shares: {_where(i, s)}: {n_jobs} job shares, above the "
                f"{max_job_shares} allowed (server.max_job_shares_per_sample)", "too_many_job_shares")
        total = 0.0
        seen: set[str] | None = set() if n_jobs > 1 else None  # one share cannot repeat a job
        for k in range(n_jobs):  # by index: cheaper than iterating the container
            info, fraction = _checked_share(i, s, jobs[k], checked, seen)
            total += fraction
            mine.append((info, fraction))
            if info[0] != UNATTRIBUTED:
                job_ids.append(info[0])
        if total > 1.0 + 1e-6:
            raise BatchRejected(f"{_where(i, s)}: field jobs.fraction: shares sum to {total}, above 1")
        add_shares(tuple(mine))
    return BatchScan(sample_list, all_shares, lo_ns, hi_ns, job_ids, rows)


def _checked_share(i: int, s: pb.GpuSample, share: pb.JobShare, checked: set[int],
                   seen: set[str] | None) -> tuple[ShareInfo, float]:
    """A job share of sample ``i``, checked: its memoized info and its fraction. In order: the job id's
    name, a job repeated in the sample (``seen``, None for a sample of one share), the fraction in
    (0, 1], the rest (``_check_share``). What an info found valid before had checked is not checked
    again: a remembered valid info had its job id found valid (name_problem is pure), and so did an info
    object checked earlier in this batch (its id in ``checked``; alive in the batch's shares meanwhile,
    so the id is its own)."""
    info = INFO_MEMO.get(share.SerializeToString())  # share_info's memo, inline
    if info is None:
        info = share_info(share)
    job_id = info[0]
    known = id(info) in checked or info in _VALID_SHARES
    if not known and job_id not in _VALID_NAMES:
        problem = _name_problem(job_id)
        if problem:
            raise BatchRejected(f"{_where(i, s)}: field jobs.job_id: {problem}")
    if seen is not None:
        if job_id in seen:
            raise BatchRejected(f"{_where(i, s)}: field jobs.job_id: job {shown(job_id)} appears "
                                "twice; give each job one share")
        seen.add(job_id)
    fraction = share.fraction
    if not (0.0 < fraction <= 1.0):
        raise BatchRejected(
            f"{_where(i, s)}: field jobs.fraction: value {fraction} for job "
            f"{shown(job_id)} is outside (0, 1]"
        )
    if not known:
        _check_share(i, s, share)
        _remember_valid(info)
        checked.add(id(info))
    return info, fraction


def _check_sample(i: int, s: pb.GpuSample, now_ns: int, limits: Limits) -> None:
    """Raise BatchRejected naming the first bad field of a GPU sample (see ``validate_batch``)."""
    max_interval_ns = limits.max_interval_ns
    max_power_w = limits.max_power_w
    e = s.energy_j
    if not math.isfinite(e):
        raise BatchRejected(f"{_where(i, s)}: field energy_j: value {e} is not a finite number")
    if e < 0:
        raise BatchRejected(f"{_where(i, s)}: field energy_j: value {e} is negative")
    start_ns = s.start_ns
    end_ns = s.end_ns
    duration_ns = end_ns - start_ns
    if duration_ns <= 0:
        raise BatchRejected(
            f"{_where(i, s)}: field end_ns: value {end_ns} is not after start_ns {start_ns}"
        )
    if duration_ns > max_interval_ns:
        raise BatchRejected(
            f"{_where(i, s)}: interval of {duration_ns / NS_PER_S:g} s exceeds the "
            f"{max_interval_ns / NS_PER_S:g} s limit"
        )
    if end_ns > now_ns + limits.max_future_ns:
        raise BatchRejected(
            f"{_where(i, s)}: field end_ns: value {end_ns} ({format_time_ns(end_ns)}) is "
            f"{(end_ns - now_ns) / NS_PER_S:.0f} s in the future"
        )
    if start_ns < limits.min_time_ns:
        raise BatchRejected(
            f"{_where(i, s)}: field start_ns: value {start_ns} is before "
            f"{format_time_ns(limits.min_time_ns)}"
        )
    duration_s = duration_ns / NS_PER_S
    power_w = e / duration_s
    if power_w > max_power_w:
        raise BatchRejected(
            f"{_where(i, s)}: field energy_j: value {e} means {power_w:.0f} W, above the plausible "
            f"{max_power_w:g} W for one GPU"
        )
    util_pct = s.util_pct
    if not (0.0 <= util_pct <= 100.0):  # also false for NaN
        raise BatchRejected(f"{_where(i, s)}: field util_pct: value {util_pct} is outside 0-100")
    mem_util_pct = s.mem_util_pct
    if not (0.0 <= mem_util_pct <= 100.0):
        raise BatchRejected(f"{_where(i, s)}: field mem_util_pct: value {mem_util_pct} is outside 0-100")
    idle_s = s.idle_s
    if not (0.0 <= idle_s <= duration_s + 1e-6):
        raise BatchRejected(f"{_where(i, s)}: field idle_s: value {idle_s} is outside the interval")
    _finite_in(_where(i, s), "mean_power_w", s.mean_power_w, 0.0, max_power_w)
    _finite_in(_where(i, s), "power_limit_w", s.power_limit_w, 0.0, max_power_w)
    temp_lo, temp_hi = TEMP_RANGE_C
    _finite_in(_where(i, s), "temp_c", s.temp_c, temp_lo, temp_hi)
    _below_int64(_where(i, s), "mem_used_bytes", s.mem_used_bytes)


def _remember_valid(info: ShareInfo) -> None:
    """Remember a share info found valid (one of at most MEMO_SHARE_BYTES characters)."""
    if sum(map(len, (info[0], *info[5:]))) + len(info[3]) <= MEMO_SHARE_BYTES:
        if len(_VALID_SHARES) >= MEMO_MAX:
            _VALID_SHARES.clear()
        _VALID_SHARES.add(info)


def _check_share(i: int, s: pb.GpuSample, share: pb.JobShare) -> None:
    """A share's alias and who-fields (pure in the share's info, so a valid info is remembered)."""
    alias = share.alias
    if alias and not SLURM_ALIAS.fullmatch(alias):
        raise BatchRejected(f"{_where(i, s)}: field jobs.alias: {alias[:40]!r} is not "
                            "a Slurm array task (1234_7) or het component (1234+1) id")
    for value in (share.user, share.account, share.partition, share.namespace, share.job_name):
        if len(value) > MAX_WHO_CHARS or not value.isprintable():
            _check_who(i, s, share)  # names the first bad field


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
        _below_int64(where, "mem_used_bytes", h.mem_used_bytes)
        _below_int64(where, "mem_total_bytes", h.mem_total_bytes)
        if h.has_cpu_energy and not (math.isfinite(h.cpu_energy_j) and h.cpu_energy_j >= 0):
            raise BatchRejected(f"{where}: field cpu_energy_j: value {h.cpu_energy_j} is not a finite, "
                                "non-negative number")
