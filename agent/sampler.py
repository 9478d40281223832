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
)
from gridwatt.agent.meter import idle_seconds, interval_energy
from gridwatt.agent.sources.base import GpuReading
from gridwatt.timeutil import NS_PER_S
from gridwatt.v1 import telemetry_pb2 as pb

log = logging.getLogger("gridwatt.agent.sampler")

ATTRIBUTION_METHODS = {
    METHOD_STATIC: pb.ATTRIBUTION_METHOD_STATIC,
    METHOD_SLURM: pb.ATTRIBUTION_METHOD_SLURM,
    METHOD_TRACE: pb.ATTRIBUTION_METHOD_TRACE,
    METHOD_JOB_MAPPING: pb.ATTRIBUTION_METHOD_JOB_MAPPING,
    METHOD_KUBERNETES: pb.ATTRIBUTION_METHOD_KUBERNETES,
}


class Sampler:
    """Keeps each GPU's previous reading and makes one GpuSample per GPU per interval."""

    def __init__(self, attributor: Attributor, idle_below_pct: float) -> None:
        self.attributor = attributor
        self.idle_below_pct = idle_below_pct
        self._prev: dict[str, GpuReading] = {}
        self._faulty: set[str] = set()

    def take(self, readings: list[GpuReading]) -> list[pb.GpuSample]:
        """Samples for the intervals ending at these readings (none for a GPU's first reading)."""
        samples = []
        for cur in readings:
            key = cur.uuid or str(cur.index)
            prev = self._prev.get(key)
            if cur.fault:
                if key not in self._faulty:
                    log.warning("GPU %d (%s): %s; other GPUs continue", cur.index, cur.uuid, cur.fault)
                    self._faulty.add(key)
                self._prev.pop(key, None)
                continue
            if key in self._faulty:
                log.warning("GPU %d (%s) is back; measuring it again", cur.index, cur.uuid)
                self._faulty.discard(key)
            self._prev[key] = cur
            if prev is None:
                continue
            energy = interval_energy(prev, cur)
            if energy is None:
                continue
            if energy.counter_reset:
                log.warning("GPU %d: energy counter went backwards (reset); new baseline", cur.index)
            duration_s = (energy.end_ns - energy.start_ns) / NS_PER_S
            sample = pb.GpuSample(
                gpu_index=cur.index,
                gpu_uuid=cur.uuid,
                gpu_name=cur.name,
                start_ns=energy.start_ns,
                end_ns=energy.end_ns,
                energy_j=energy.energy_j,
                mean_power_w=energy.energy_j / duration_s,
                util_pct=cur.util_pct or 0.0,
                mem_util_pct=cur.mem_util_pct or 0.0,
                mem_used_bytes=cur.mem_used_bytes or 0,
                temp_c=cur.temp_c or 0.0,
                idle_s=idle_seconds(cur.util_pct, duration_s, self.idle_below_pct),
                energy_method=energy.method,  # type: ignore[arg-type]
                power_limit_w=(cur.power_limit_mw or 0) / 1000.0,
                sm_clock_mhz=cur.sm_clock_mhz or 0,
                unsupported_fields=list(cur.unsupported),
            )
            process_util = dict(cur.process_util_pct) if cur.process_util_pct else None
            for share in self.attributor.attribute(cur, process_util):
                if share.fraction <= 0.0:
                    continue  # an idle job on a shared GPU: nothing to attribute
                sample.jobs.add(
                    job_id=share.job_id,
                    fraction=share.fraction,
                    method=ATTRIBUTION_METHODS.get(share.method, pb.ATTRIBUTION_METHOD_UNSPECIFIED),
                    user=share.user,
                    split_estimated=share.split_estimated,
                    account=share.account,
                    alias=share.alias,
                    partition=share.partition,
                    namespace=share.namespace,
                    job_name=share.job_name,
                )
            samples.append(sample)
        return samples
