"""Shares of one GPU interval, and how a GPU used by several jobs is split between them.

A split is by per-process SM utilisation where it is known (NVML's
``nvmlDeviceGetProcessUtilization``, summed per job), else even. Fractions are
listed in job-id order and always sum to exactly 1.0: the last one is set to
``1 - sum(others)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

METHOD_STATIC = "static"
METHOD_SLURM = "slurm"
METHOD_TRACE = "trace"
METHOD_JOB_MAPPING = "job_mapping"
METHOD_KUBERNETES = "kubernetes"


@dataclass(frozen=True, slots=True)
class JobShareInfo:
    """One job's share of one GPU interval."""

    job_id: str
    #: Share of the interval's energy, 0..1; the shares of one interval sum to 1.0.
    fraction: float
    #: How the job was found: one of the METHOD_* strings.
    method: str
    user: str = ""
    #: True when the GPU was shared and split evenly for want of per-process utilisation.
    split_estimated: bool = False
    #: Who ran what where known (Slurm account and partition, k8s namespace, the job's name).
    account: str = ""
    #: The id people write for the job (``1234_7``), where a prolog told it.
    alias: str = ""
    partition: str = ""
    namespace: str = ""
    job_name: str = ""


@dataclass(frozen=True, slots=True)
class JobOnGpu:
    """A job found on a GPU, with the GPU's processes that belong to it (maybe none)."""

    job_id: str
    method: str
    user: str = ""
    pids: tuple[int, ...] = ()
    account: str = ""
    alias: str = ""
    partition: str = ""
    namespace: str = ""
    job_name: str = ""


def split_gpu(
    jobs: Sequence[JobOnGpu], process_util_pct: Mapping[int, float] | None = None
) -> list[JobShareInfo]:
    """Shares of the jobs on one GPU, in job-id order; empty for no jobs.

    One job gets 1.0. Several jobs are split by the summed utilisation of their
    processes (``process_util_pct``: pid -> SM util, percent 0-100; a pid missing
    from it counts 0) when it names at least one of their processes and the sum
    is above 0, with ``split_estimated=False``; else evenly, with ``split_estimated=True``.
    """
    ordered = sorted(jobs, key=lambda j: j.job_id)
    if not ordered:
        return []
    if len(ordered) == 1:
        j = ordered[0]
        return [JobShareInfo(j.job_id, 1.0, j.method, j.user, False, alias=j.alias, **_who(j))]
    weights = _util_weights(ordered, process_util_pct)
    if weights is None:
        fractions = [1.0 / len(ordered)] * len(ordered)
        estimated = True
    else:
        total = sum(weights)
        fractions = [w / total for w in weights]
        estimated = False
    fractions[-1] = max(0.0, 1.0 - sum(fractions[:-1]))
    return [
        JobShareInfo(j.job_id, f, j.method, j.user, estimated, alias=j.alias, **_who(j))
        for j, f in zip(ordered, fractions, strict=True)
    ]


def _who(job: JobOnGpu) -> dict[str, str]:
    return {"account": job.account, "partition": job.partition, "namespace": job.namespace,
            "job_name": job.job_name}


def _util_weights(
    jobs: Sequence[JobOnGpu], process_util_pct: Mapping[int, float] | None
) -> list[float] | None:
    """Summed utilisation of each job's processes, or None when it cannot tell them apart."""
    if not process_util_pct:
        return None
    weights: list[float] = []
    named = False
    for job in jobs:
        total = 0.0
        for pid in job.pids:
            util = process_util_pct.get(pid)
            if util is not None and math.isfinite(util):
                named = True
                total += max(0.0, util)
        weights.append(total)
    if not named or sum(weights) <= 0.0:
        return None
    return weights
