"""Accounts a validated batch and renders its InfluxDB points (pure; no I/O).

Measurements (all timestamps are the interval's start, so a resent sample
overwrites itself; tags are deterministic):

* ``gpu``  tags node, gpu, rack, zone, uuid: one point per GPU interval.
* ``job``  tags job_id, node, gpu, rack: one point per job share of a GPU
  interval; unattributed time goes to job_id ``unattributed``.

Rack-level windows are derived from ``gpu`` afterwards (collector/rollup.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from gridwatt.collector.accounting import J_PER_KWH, emissions_with_estimated
from gridwatt.collector.intensity.base import IntensitySeries
from gridwatt.collector.schema import (
    WHO_FIELDS,
    gpu_key_head,
    host_key,
    job_key_head,
    job_key_tail,
    string_field,
    tag,
)
from gridwatt.collector.stepseries import StepSeries
from gridwatt.collector.topology import Placement
from gridwatt.timeutil import NS_PER_S
from gridwatt.v1 import telemetry_pb2 as pb

UNATTRIBUTED = "unattributed"

ENERGY_METHOD_NAMES = {
    pb.ENERGY_METHOD_UNSPECIFIED: "unspecified",
    pb.ENERGY_METHOD_COUNTER: "counter",
    pb.ENERGY_METHOD_POWER_AVERAGE: "power_average",
    pb.ENERGY_METHOD_POWER_INSTANT: "power_instant",
}


ATTRIBUTION_NAMES: dict[int, str] = {
    pb.ATTRIBUTION_METHOD_UNSPECIFIED: "none",
    pb.ATTRIBUTION_METHOD_STATIC: "static",
    pb.ATTRIBUTION_METHOD_SLURM: "slurm",
    pb.ATTRIBUTION_METHOD_TRACE: "trace",
    pb.ATTRIBUTION_METHOD_JOB_MAPPING: "job_mapping",
    pb.ATTRIBUTION_METHOD_KUBERNETES: "kubernetes",
}


def sample_digest(s: pb.GpuSample) -> str:
    """128-bit hex digest of a sample's values (its deterministic serialization): stored as the ``gpu``
    point's ``digest`` field, so an exact resend is told from a rewrite (collector/intervals.py)."""
    return hashlib.sha256(s.SerializeToString(deterministic=True)).hexdigest()[:32]


def _attribution_fields(method: int, user: str, split_estimated: bool, *who: str) -> str:
    """How a job share was attributed: method, who ran it where known (user, account, partition,
    namespace, job name: string fields, never tags), and an estimated split."""
    out = f",attribution=\"{ATTRIBUTION_NAMES.get(method, 'none')}\""
    if user:
        out += f",user={string_field(user)}"
    for name, value in zip(WHO_FIELDS[1:], who, strict=False):
        if value:
            out += f",{name}={string_field(value)}"
    if split_estimated:
        out += ",split_estimated=true"
    return out



@dataclass(slots=True)
class JobPoint:
    """One ``job`` point as written: gpu tag, job id, start, and values (collector/node_state.py)."""

    gpu: str
    job_id: str
    start_ns: int
    end_ns: int
    sums: tuple[float, ...]  # e, f, c, ce, d, u, i, ie (node_state.SUM_KEYS)
    who: dict[str, str]  # non-empty who-fields only


@dataclass
class PreparedBatch:
    """The lines to write, and the rack windows (start ns) the batch touched."""

    lines: list[str]
    windows: set[int] = field(default_factory=set)
    samples: int = 0
    it_energy_j: float = 0.0
    co2e_g: float = 0.0
    #: emissions resting on estimated or held intensity (gCO2e)
    estimated_co2e_g: float = 0.0
    #: Index in ``lines`` of each sample's first line (its gpu point; its job points follow).
    first_line: list[int] = field(default_factory=list)
    #: The job points as values, for held node state (collector/node_state.py).
    job_points: list[JobPoint] = field(default_factory=list)


def prepare_batch(
    batch: pb.Batch,
    placement: Placement,
    intensity: IntensitySeries,
    resolution_ns: int,
    pue: StepSeries | None = None,
) -> PreparedBatch:
    """Account every GPU sample of the batch and render its gpu and job lines.

    ``pue``: the rack's PUE over the batch (from ``placement.pue_series``); default ``placement.pue``.
    """
    node_t = tag(batch.node)
    rack_t = tag(placement.rack)
    gpu_prefix = gpu_key_head(node_t, rack_t, tag(placement.zone))
    job_suffix = job_key_tail(node_t, rack_t)
    mixed = bool(intensity.step_sources)
    ef = string_field(intensity.emission_factor)
    src = string_field(intensity.source)
    if pue is None:
        pue = placement.pue
    ci = intensity.series
    any_estimated = any(ci.estimated)
    lines: list[str] = []
    append = lines.append
    windows: set[int] = set()
    total_e = total_c = total_est = 0.0
    tag_cache: dict[str, str] = {}
    how_cache: dict[tuple[Any, ...], str] = {}
    first_line: list[int] = []
    job_points: list[JobPoint] = []
    held_point = job_points.append
    for s in batch.gpu_samples:
        first_line.append(len(lines))
        start = s.start_ns
        end = s.end_ns
        e = s.energy_j
        fac, co2, est_co2 = emissions_with_estimated(e, start, end, pue, ci, any_estimated)
        if mixed:  # steps from several providers: each sample names the one at its start
            ef = string_field(intensity.factor_at(start))
            src = string_field(intensity.source_at(start))
        total_e += e
        total_c += co2
        total_est += est_co2
        dur_s = (end - start) / NS_PER_S
        util = s.util_pct
        idle_s = s.idle_s
        idle_e = e * idle_s / dur_s if idle_s else 0.0
        eff_pue = fac / e if e > 0 else pue.value_at(start)
        eff_ci = co2 * J_PER_KWH / fac if fac > 0 else ci.value_at(start)
        gpu = str(s.gpu_index)
        uuid = tag_cache.get(s.gpu_uuid)
        if uuid is None:
            uuid = tag_cache[s.gpu_uuid] = tag(s.gpu_uuid)
        jobs = ",".join(j.job_id for j in s.jobs)
        append(
            f"{gpu_prefix}{gpu},uuid={uuid} energy_j={e!r},facility_energy_j={fac!r},co2e_g={co2!r},"
            f"duration_s={dur_s!r},power_w={s.mean_power_w!r},util_pct={util!r},"
            f"util_pct_s={util * dur_s!r},mem_util_pct={s.mem_util_pct!r},"
            f"mem_used_bytes={s.mem_used_bytes}i,temp_c={s.temp_c!r},idle_s={idle_s!r},"
            f"idle_energy_j={idle_e!r},pue={eff_pue!r},intensity_g_per_kwh={eff_ci!r},end_ns={end}i,"
            f"energy_method=\"{ENERGY_METHOD_NAMES.get(s.energy_method, 'unspecified')}\","
            f"jobs={string_field(jobs)},ef={ef},intensity_source={src},"
            f"intensity_estimated="
            f"{'true' if any_estimated and (est_co2 > 0 or ci.is_estimated_at(start)) else 'false'}"
            f",estimated_co2e_g={est_co2!r},digest=\"{sample_digest(s)}\" {start}"
        )
        shares: list[tuple[Any, ...]] = [
            (j.job_id, j.fraction, j.method, j.user, j.split_estimated, j.alias, j.account, j.partition,
             j.namespace, j.job_name) for j in s.jobs
        ]
        remaining = 1.0 - sum(sh[1] for sh in shares)
        if remaining > 1e-9:
            shares.append((UNATTRIBUTED, remaining, pb.ATTRIBUTION_METHOD_UNSPECIFIED, "", False, *[""] * 5))
        for job_id, frac, method, user, estimated, alias, *who in shares:
            job_t = tag_cache.get(job_id)
            if job_t is None:
                job_t = tag_cache[job_id] = tag(job_id)
            # alias: a tag, so a job is found by its Slurm id through the index (one value per job)
            head = job_key_head(job_t, tag(alias)) if alias else job_key_head(job_t)
            key = (method, user, estimated, *who)
            how = how_cache.get(key)
            if how is None:
                how = how_cache[key] = _attribution_fields(method, user, estimated, *who)
            gpu_s = dur_s * frac
            sums = (e * frac, fac * frac, co2 * frac, est_co2 * frac, gpu_s, util * gpu_s, idle_s * frac,
                    idle_e * frac)
            append(
                f"{head}{job_suffix}{gpu} energy_j={sums[0]!r},"
                f"facility_energy_j={sums[1]!r},co2e_g={sums[2]!r},estimated_co2e_g={sums[3]!r},"
                f"gpu_s={gpu_s!r},"
                f"util_pct_s={sums[5]!r},idle_s={sums[6]!r},idle_energy_j={sums[7]!r},"
                f"fraction={frac!r},end_ns={end}i,ef={ef}{how} {start}"
            )
            who_values = {name: v for name, v in zip(WHO_FIELDS, (user, *who), strict=False) if v}
            held_point(JobPoint(gpu, job_id, start, end, sums, who_values))
        windows.add(start - start % resolution_ns)
    return PreparedBatch(lines, windows, len(batch.gpu_samples), total_e, total_c, total_est, first_line,
                         job_points)


def host_lines(batch: pb.Batch, placement: Placement) -> list[str]:
    """``host`` points (tags node, rack): CPU utilisation, memory and RAPL CPU energy per interval."""
    prefix = host_key(batch.node, placement.rack) + " "
    lines = []
    for h in batch.host_samples:
        dur_s = (h.end_ns - h.start_ns) / NS_PER_S
        energy = f",cpu_energy_j={h.cpu_energy_j!r}" if h.has_cpu_energy else ""
        lines.append(
            f"{prefix}duration_s={dur_s!r},cpu_util_pct={h.cpu_util_pct!r},mem_used_bytes={h.mem_used_bytes}i,"
            f"mem_total_bytes={h.mem_total_bytes}i{energy} {h.start_ns}"
        )
    return lines
