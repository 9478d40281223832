"""Turns consecutive source readings into wire samples: meter + idle time + attribution (no I/O)."""

from __future__ import annotations

import logging

from gridwatt.agent.attribution import (
    METHOD_JOB_MAPPING,
    METHOD_KUBERNETES,
    METHOD_SLURM,
    METHOD_STATIC,
    METHOD_TRACE,
    Attributor,
    JobShareInfo,
)
from gridwatt.agent.meter import idle_seconds, interval_energy
from gridwatt.agent.sources.base import GpuReading
from gridwatt.names import name_problem, shown, user_problem
from gridwatt.timeutil import NS_PER_S
from gridwatt.v1 import telemetry_pb2 as pb

log = logging.getLogger("gridwatt.agent.sampler")

#: Job shares per sample the collector accepts by default (server.max_job_shares_per_sample).
MAX_JOB_SHARES = 16

ATTRIBUTION_METHODS = {
    METHOD_STATIC: pb.ATTRIBUTION_METHOD_STATIC,
    METHOD_SLURM: pb.ATTRIBUTION_METHOD_SLURM,
    METHOD_TRACE: pb.ATTRIBUTION_METHOD_TRACE,
    METHOD_JOB_MAPPING: pb.ATTRIBUTION_METHOD_JOB_MAPPING,
    METHOD_KUBERNETES: pb.ATTRIBUTION_METHOD_KUBERNETES,
}


class _Template:
    """A GPU's fields that rarely change (identity, unsupported fields, job shares) as a GpuSample.

    Every interval's sample starts as a copy of it (``CopyFrom``, in C) and gets the interval's own
    values set; building the job shares once per change instead of once per interval is most of
    what a sample costs to make.
    """

    __slots__ = ("key", "over", "sample")

    def __init__(self, key: tuple[object, ...], sample: pb.GpuSample, over: int) -> None:
        #: (index, uuid, name, unsupported, shares as attributed) the template was built from.
        self.key = key
        self.sample = sample
        #: How many attributed jobs were left unattributed past MAX_JOB_SHARES (0: none).
        self.over = over


class Sampler:
    """Keeps each GPU's previous reading and makes one GpuSample per GPU per interval."""

    #: Job ids remembered as sendable or not; the memo is cleared when it grows past this.
    SENDABLE_MEMO_MAX = 4096

    def __init__(self, attributor: Attributor, idle_below_pct: float) -> None:
        self.attributor = attributor
        self.idle_below_pct = idle_below_pct
        self._prev: dict[str, GpuReading] = {}
        self._faulty: set[str] = set()
        self._bad_ids: set[str] = set()
        self._sendable_memo: dict[str, bool] = {}
        self._templates: dict[str, _Template] = {}

    def _sendable(self, job_id: str) -> bool:
        """False (logged once per id) for a job id the collector would refuse (gridwatt/names.py)."""
        known = self._sendable_memo.get(job_id)
        if known is not None:
            return known
        problem = name_problem(job_id)
        if len(self._sendable_memo) >= self.SENDABLE_MEMO_MAX:
            self._sendable_memo.clear()
        self._sendable_memo[job_id] = problem is None
        if problem is None:
            return True
        if job_id not in self._bad_ids and len(self._bad_ids) < 1000:
            self._bad_ids.add(job_id)
            log.warning("job id %s is not sendable (%s); its share is reported unattributed",
                        shown(job_id), problem)
        return False

    def _template(self, cur: GpuReading, attributed: list[JobShareInfo]) -> _Template:
        """The template for this reading's GPU and job shares (rebuilt when any of them changed)."""
        key = cur.uuid or str(cur.index)
        ident = (cur.index, cur.uuid, cur.name, cur.unsupported, tuple(attributed))
        tmpl = self._templates.get(key)
        if tmpl is not None and tmpl.key == ident:
            return tmpl
        shares = [sh for sh in attributed
                  if sh.fraction > 0.0 and self._sendable(sh.job_id)]  # idle jobs: nothing to attribute
        over = 0
        if len(shares) > MAX_JOB_SHARES:  # the collector's bound; the rest stays unattributed
            over = len(shares)
            shares = sorted(shares, key=lambda sh: -sh.fraction)[:MAX_JOB_SHARES]
        sample = pb.GpuSample(gpu_index=cur.index, gpu_uuid=cur.uuid, gpu_name=cur.name,
                              unsupported_fields=list(cur.unsupported))
        for share in shares:
            sample.jobs.add(
                job_id=share.job_id,
                fraction=share.fraction,
                method=ATTRIBUTION_METHODS.get(share.method, pb.ATTRIBUTION_METHOD_UNSPECIFIED),
                user=share.user if user_problem(share.user) is None else "",
                split_estimated=share.split_estimated,
                account=share.account,
                alias=share.alias,
                partition=share.partition,
                namespace=share.namespace,
                job_name=share.job_name,
            )
        tmpl = self._templates[key] = _Template(ident, sample, over)
        return tmpl

    def take(self, readings: list[GpuReading]) -> list[pb.GpuSample]:
        """Samples for the intervals ending at these readings (none for a GPU's first reading)."""
        samples = []
        prev_of = self._prev
        for cur in readings:
            key = cur.uuid or str(cur.index)
            prev = prev_of.get(key)
            if cur.fault:
                if key not in self._faulty:
                    log.warning("GPU %d (%s): %s; other GPUs continue", cur.index, cur.uuid, cur.fault)
                    self._faulty.add(key)
                prev_of.pop(key, None)
                continue
            if key in self._faulty:
                log.warning("GPU %d (%s) is back; measuring it again", cur.index, cur.uuid)
                self._faulty.discard(key)
            prev_of[key] = cur
            if prev is None:
                continue
            energy = interval_energy(prev, cur)
            if energy is None:
                continue
            if energy.counter_reset:
                log.warning("GPU %d: energy counter went backwards (reset); new baseline", cur.index)
            process_util = dict(cur.process_util_pct) if cur.process_util_pct else None
            tmpl = self._template(cur, self.attributor.attribute(cur, process_util))
            if tmpl.over:
                log.warning("GPU %d: %d jobs share it; the %d largest are attributed, the rest is "
                            "reported unattributed", cur.index, tmpl.over, MAX_JOB_SHARES)
            duration_s = (energy.end_ns - energy.start_ns) / NS_PER_S
            sample = pb.GpuSample()
            sample.CopyFrom(tmpl.sample)
            sample.start_ns = energy.start_ns
            sample.end_ns = energy.end_ns
            sample.energy_j = energy.energy_j
            sample.mean_power_w = energy.energy_j / duration_s
            sample.util_pct = cur.util_pct or 0.0
            sample.mem_util_pct = cur.mem_util_pct or 0.0
            sample.mem_used_bytes = cur.mem_used_bytes or 0
            sample.temp_c = cur.temp_c or 0.0
            sample.idle_s = idle_seconds(cur.util_pct, duration_s, self.idle_below_pct)
            sample.energy_method = energy.method  # type: ignore[assignment]
            sample.power_limit_w = (cur.power_limit_mw or 0) / 1000.0
            sample.sm_clock_mhz = cur.sm_clock_mhz or 0
            samples.append(sample)
        return samples
