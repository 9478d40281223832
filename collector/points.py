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

from gridwatt.collector.accounting import J_PER_KWH, emissions_with_estimated, steady_over
from gridwatt.collector.batch_scan import UNATTRIBUTED, UNATTRIBUTED_INFO, BatchScan, ShareInfo, scan_batch
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

__all__ = ["UNATTRIBUTED", "JobPoint", "PreparedBatch", "host_lines", "prepare_batch", "sample_digest",
           "sample_digests"]

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


def _has_map_field(desc: Any, seen: set[str] | None = None) -> bool:
    """Whether a message type (its descriptor) has a map field, itself or in any message type it contains."""
    seen = set() if seen is None else seen
    if desc.full_name in seen:
        return False
    seen.add(desc.full_name)
    for f in desc.fields:
        if f.message_type is not None and (f.message_type.GetOptions().map_entry
                                           or _has_map_field(f.message_type, seen)):
            return True
    return False


#: ``deterministic=True`` orders map entries and changes nothing else: without a map field in
#: GpuSample, the plain serialization is the same bytes (tests/collector/test_batch_scan.py), cheaper.
_DIGEST_DETERMINISTIC = _has_map_field(pb.GpuSample.DESCRIPTOR)
_sha256 = hashlib.sha256


def sample_digest(s: pb.GpuSample) -> str:
    """128-bit hex digest of a sample's values (its deterministic serialization): stored as the ``gpu``
    point's ``digest`` field, so an exact resend is told from a rewrite (collector/intervals.py)."""
    if _DIGEST_DETERMINISTIC:
        return _sha256(s.SerializeToString(deterministic=True)).digest()[:16].hex()
    return _sha256(s.SerializeToString()).digest()[:16].hex()


def sample_digests(samples: list[pb.GpuSample]) -> list[str]:
    """``[sample_digest(s) for s in samples]`` (the same values: the first 16 bytes of the digest in
    hex are the first 32 characters of the hex digest)."""
    sha256 = _sha256
    if _DIGEST_DETERMINISTIC:
        return [sha256(s.SerializeToString(deterministic=True)).hexdigest()[:32] for s in samples]
    return [sha256(s.SerializeToString()).hexdigest()[:32] for s in samples]


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


#: ``energy_method="…"`` as rendered, per enum value
_ENERGY_METHOD_FIELDS: dict[int, str] = {k: f'energy_method="{v}"' for k, v in ENERGY_METHOD_NAMES.items()}
_ENERGY_METHOD_OTHER = 'energy_method="unspecified"'
#: The fields of a gpu point with ``[influxdb] gpu_point_fields = "accounting"``: what gridwatt itself
#: reads back (interval check, re-accounting, alerts) plus facility energy and the emission factor.
#: "all" adds duration, power, utilisation, memory, temperature, idle time, PUE, intensity, energy
#: method, jobs, intensity source and flag (README "Data model in InfluxDB").
ACCOUNTING_GPU_FIELDS = ("energy_j", "facility_energy_j", "co2e_g", "estimated_co2e_g", "end_ns", "ef",
                         "digest")
#: Series at least this long keep whether they have an estimated step (scanned once, not per batch).
_LONG_SERIES = 64
_any_estimated_memo: dict[int, tuple[object, bool]] = {}
#: Rendered pieces that repeat from batch to batch (escaped GPU UUIDs, job series keys and
#: attribution fields, the ``jobs`` field): pure functions of their keys, remembered up to
#: ``_MEMO_MAX`` entries each (then emptied).
_MEMO_MAX = 100_000
_tag_memo: dict[str, str] = {}
_share_memo: dict[tuple[str, ShareInfo], tuple[str, str, str, dict[str, str]]] = {}
_jobs_field_memo: dict[str, str] = {}


def _memo_room(memo: dict[Any, Any]) -> None:
    if len(memo) >= _MEMO_MAX:
        memo.clear()


def _any_estimated(series: StepSeries) -> bool:
    """``any(series.estimated)``, remembered for long series (e.g. a year of hourly CSV steps)."""
    flags = series.estimated
    if len(flags) < _LONG_SERIES or not isinstance(flags, tuple):  # a tuple cannot change meanwhile
        return any(flags)
    memo = _any_estimated_memo.get(id(flags))
    if memo is not None and memo[0] is flags:
        return memo[1]
    if len(_any_estimated_memo) >= 64:
        _any_estimated_memo.clear()
    found = any(flags)
    _any_estimated_memo[id(flags)] = (flags, found)  # holds ``flags``: its id is not reused meanwhile
    return found


def prepare_batch(
    batch: pb.Batch,
    placement: Placement,
    intensity: IntensitySeries,
    resolution_ns: int,
    pue: StepSeries | None = None,
    gpu_fields: str = "all",
    scan: BatchScan | None = None,
) -> PreparedBatch:
    """Account every GPU sample of the batch and render its gpu and job lines.

    ``gpu_fields``: ``"all"`` (the default) or ``"accounting"``: gpu points then carry only
    :data:`ACCOUNTING_GPU_FIELDS` (``[influxdb] gpu_point_fields``), and a job point of a whole GPU
    leaves out ``fraction=1.0`` (an absent fraction is 1.0: collector/revisit.py); job points are
    otherwise the same either way.

    ``pue``: the rack's PUE over the batch (from ``placement.pue_series``); default ``placement.pue``.
    ``scan``: the batch's scan (collector/batch_scan.py, as ``validate_batch`` returns it), with the
    samples' digests where already computed; default: scanned here.

    The hot path of ingest: when neither PUE nor intensity steps within the batch's span (the
    real-time case) each sample is two multiplications (accounting.steady_over); a job share of the
    whole GPU reuses the GPU line's numbers (``x * 1.0 == x``); repeated values are formatted once.
    The text is exactly what the straightforward rendering gives (tests/collector/test_cpu_golden.py).
    """
    if scan is None:
        scan = scan_batch(batch)
    samples = scan.samples
    rows = scan.rows
    digests = scan.digests
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
    any_estimated = _any_estimated(ci)
    steady = None
    lo = scan.lo_ns
    if samples:
        steady = steady_over(pue, ci, lo, scan.hi_ns)
    steady_pue = steady_ci = 0.0
    steady_estimated = False
    if steady is not None:
        steady_pue, steady_ci = steady
        steady_estimated = any_estimated and ci.is_estimated_at(lo)
        if mixed:  # one intensity step over the batch: one provider
            ef = string_field(intensity.factor_at(lo))
            src = string_field(intensity.source_at(lo))
    steady_flag = "true" if steady_estimated else "false"
    lines: list[str] = []
    append = lines.append
    windows: set[int] = set()
    total_e = total_c = total_est = 0.0
    tag_cache = _tag_memo
    # (node/rack key tail, share info) → the job line's series key up to the GPU index, and its
    # attribution fields
    share_cache = _share_memo
    # the same, for this batch, by the identity of the share info (scan.shares holds every info while
    # this runs, so an id is not reused meanwhile): no hash of the info's nine fields per share
    batch_heads: dict[int, tuple[str, str, str, dict[str, str]]] = {}
    jobs_fields = _jobs_field_memo
    # repr of values that repeat within a batch (PUE, intensity, duration, utilisation, temperature,
    # ...); never 0.0 / -0.0, which are equal keys with different reprs
    reprs: dict[float, str] = {}
    # per GPU index: (its uuid, str(index), the gpu series key up to the fields) of the batch
    gpu_keys: dict[int, tuple[str, str, str]] = {}
    energy_fields = _ENERGY_METHOD_FIELDS

    accounting_only = gpu_fields == "accounting"
    # a job share of the whole GPU: ``fraction=1.0``, left out with "accounting" (absent means 1.0)
    whole = "" if accounting_only else "fraction=1.0,"
    first_line: list[int] = []
    job_points: list[JobPoint] = []
    held_point = job_points.append
    last_start = last_end = None
    s_start = s_end = ""
    all_shares = scan.shares
    for i, (start, end, e, gpu_index, uuid_raw, util, mem_util, idle_s, power_w, mem_used, temp_c,
            energy_method) in enumerate(rows):
        first_line.append(len(lines))
        if start != last_start:  # the GPUs of one interval share its start (and mostly its end)
            windows.add(start - start % resolution_ns)
            last_start = start
            s_start = str(start)
        if end != last_end:
            last_end = end
            s_end = str(end)
        if steady is not None and end > start:
            fac = e * steady_pue
            co2 = fac / J_PER_KWH * steady_ci
            if steady_estimated:
                est_co2 = co2
                r_est = repr(co2)
            else:
                est_co2 = 0.0
                r_est = "0.0"
            estimated_flag = steady_flag
            eff_pue = fac / e if e > 0 else steady_pue
            eff_ci = co2 * J_PER_KWH / fac if fac > 0 else steady_ci
        else:
            fac, co2, est_co2 = emissions_with_estimated(e, start, end, pue, ci, any_estimated)
            r_est = repr(est_co2)
            if mixed:  # steps from several providers: each sample names the one at its start
                ef = string_field(intensity.factor_at(start))
                src = string_field(intensity.source_at(start))
            estimated_flag = ("true" if any_estimated and (est_co2 > 0 or ci.is_estimated_at(start))
                              else "false")
            eff_pue = fac / e if e > 0 else pue.value_at(start)
            eff_ci = co2 * J_PER_KWH / fac if fac > 0 else ci.value_at(start)
        total_e += e
        total_c += co2
        total_est += est_co2
        dur_s = (end - start) / NS_PER_S
        if idle_s:
            idle_e = e * idle_s / dur_s
            r_idle_e = repr(idle_e)
        else:
            idle_e = 0.0
            r_idle_e = "0.0"
        util_s = util * dur_s
        keys = gpu_keys.get(gpu_index)
        if keys is None or keys[0] != uuid_raw:
            uuid = tag_cache.get(uuid_raw)
            if uuid is None:
                _memo_room(tag_cache)
                uuid = tag_cache[uuid_raw] = tag(uuid_raw)
            gpu_s_ = str(gpu_index)
            keys = gpu_keys[gpu_index] = (uuid_raw, gpu_s_, f"{gpu_prefix}{gpu_s_},uuid={uuid} ")
        gpu = keys[1]
        r_e = repr(e)
        r_fac = repr(fac)
        r_co2 = repr(co2)
        r_util_s = reprs.get(util_s)
        if r_util_s is None:
            r_util_s = repr(util_s)
            if util_s:
                reprs[util_s] = r_util_s
        # repr formatted once per batch for these (inline: a call per value costs more than a lookup)
        r_dur = reprs.get(dur_s)
        if r_dur is None:
            r_dur = repr(dur_s)
            if dur_s:
                reprs[dur_s] = r_dur
        r_idle = reprs.get(idle_s)
        if r_idle is None:
            r_idle = repr(idle_s)
            if idle_s:
                reprs[idle_s] = r_idle
        shares: list[tuple[tuple[str, str, str, dict[str, str]], float]] = []
        sample_shares = all_shares[i]
        # one job of the whole GPU (usual): its job line has the GPU line's numbers, nothing remains
        whole_job: tuple[str, str, str, dict[str, str]] | None = None
        if len(sample_shares) == 1:  # one job: its id is the jobs field, 1 - fraction the rest
            info, frac = sample_shares[0]
            head_how = batch_heads.get(id(info))
            if head_how is None:
                key = (job_suffix, info)
                head_how = share_cache.get(key)
                if head_how is None:
                    _memo_room(share_cache)
                    head_how = share_cache[key] = _job_head(job_suffix, info, tag_cache)
                batch_heads[id(info)] = head_how
            job_ids = head_how[2]
            if frac == 1.0:
                whole_job = head_how
                remaining = 0.0
            else:
                shares.append((head_how, frac))
                remaining = 1.0 - frac
        else:
            fractions: list[float] = []
            for info, frac in sample_shares:
                fractions.append(frac)
                head_how = batch_heads.get(id(info))
                if head_how is None:
                    key = (job_suffix, info)
                    head_how = share_cache.get(key)
                    if head_how is None:
                        _memo_room(share_cache)
                        head_how = share_cache[key] = _job_head(job_suffix, info, tag_cache)
                    batch_heads[id(info)] = head_how
                shares.append((head_how, frac))
            job_ids = ",".join([sh[0][2] for sh in shares])
            remaining = 1.0 - sum(fractions)
        digest = digests[i] if digests is not None else sample_digest(samples[i])
        # the first fields of the gpu line and of a whole GPU's job line
        energy = f"energy_j={r_e},facility_energy_j={r_fac},co2e_g={r_co2},"
        if accounting_only:
            append(
                f"{keys[2]}{energy}"
                f"estimated_co2e_g={r_est},end_ns={s_end}i,ef={ef},digest=\"{digest}\" {s_start}"
            )
        else:
            jobs_field = jobs_fields.get(job_ids)
            if jobs_field is None:
                _memo_room(jobs_fields)
                jobs_field = jobs_fields[job_ids] = string_field(job_ids)
            r_pue = reprs.get(eff_pue)
            if r_pue is None:
                r_pue = repr(eff_pue)
                if eff_pue:
                    reprs[eff_pue] = r_pue
            r_ci = reprs.get(eff_ci)
            if r_ci is None:
                r_ci = repr(eff_ci)
                if eff_ci:
                    reprs[eff_ci] = r_ci
            r_power = reprs.get(power_w)
            if r_power is None:
                r_power = repr(power_w)
                if power_w:
                    reprs[power_w] = r_power
            r_util = reprs.get(util)
            if r_util is None:
                r_util = repr(util)
                if util:
                    reprs[util] = r_util
            r_mem_util = reprs.get(mem_util)
            if r_mem_util is None:
                r_mem_util = repr(mem_util)
                if mem_util:
                    reprs[mem_util] = r_mem_util
            r_temp = reprs.get(temp_c)
            if r_temp is None:
                r_temp = repr(temp_c)
                if temp_c:
                    reprs[temp_c] = r_temp
            append(
                f"{keys[2]}{energy}"
                f"duration_s={r_dur},power_w={r_power},util_pct={r_util},"
                f"util_pct_s={r_util_s},mem_util_pct={r_mem_util},"
                f"mem_used_bytes={mem_used}i,temp_c={r_temp},idle_s={r_idle},"
                f"idle_energy_j={r_idle_e},pue={r_pue},intensity_g_per_kwh={r_ci},end_ns={s_end}i,"
                f"{energy_fields.get(energy_method, _ENERGY_METHOD_OTHER)},"
                f"jobs={jobs_field},ef={ef},intensity_source={src},"
                f"intensity_estimated={estimated_flag},estimated_co2e_g={r_est},"
                f"digest=\"{digest}\" {s_start}"
            )
        if whole_job is not None:  # x * 1.0 is x, bit for bit, so the GPU line's text holds
            head, how, job_id, who_values = whole_job
            append(
                f"{head}{gpu} {energy}"
                f"estimated_co2e_g={r_est},gpu_s={r_dur},util_pct_s={r_util_s},idle_s={r_idle},"
                f"idle_energy_j={r_idle_e},{whole}end_ns={s_end}i,ef={ef}{how} {s_start}"
            )
            held_point(JobPoint(gpu, job_id, start, end,
                                (e, fac, co2, est_co2, dur_s, util_s, idle_s, idle_e), who_values))
            continue
        if remaining > 1e-9:
            key = (job_suffix, UNATTRIBUTED_INFO)
            head_how = share_cache.get(key)
            if head_how is None:
                _memo_room(share_cache)
                head_how = share_cache[key] = _job_head(job_suffix, UNATTRIBUTED_INFO, tag_cache)
            shares.append((head_how, remaining))
        for (head, how, job_id, who_values), frac in shares:
            if frac == 1.0:  # the whole GPU: x * 1.0 is x, bit for bit, so the GPU line's text holds
                append(
                    f"{head}{gpu} {energy}"
                    f"estimated_co2e_g={r_est},gpu_s={r_dur},util_pct_s={r_util_s},idle_s={r_idle},"
                    f"idle_energy_j={r_idle_e},{whole}end_ns={s_end}i,ef={ef}{how} {s_start}"
                )
                held_point(JobPoint(gpu, job_id, start, end,
                                    (e, fac, co2, est_co2, dur_s, util_s, idle_s, idle_e), who_values))
                continue
            gpu_s = dur_s * frac
            sums = (e * frac, fac * frac, co2 * frac, est_co2 * frac, gpu_s, util * gpu_s, idle_s * frac,
                    idle_e * frac)
            append(
                f"{head}{gpu} energy_j={sums[0]!r},"
                f"facility_energy_j={sums[1]!r},co2e_g={sums[2]!r},estimated_co2e_g={sums[3]!r},"
                f"gpu_s={gpu_s!r},"
                f"util_pct_s={sums[5]!r},idle_s={sums[6]!r},idle_energy_j={sums[7]!r},"
                f"fraction={frac!r},end_ns={s_end}i,ef={ef}{how} {s_start}"
            )
            held_point(JobPoint(gpu, job_id, start, end, sums, who_values))
    return PreparedBatch(lines, windows, len(rows), total_e, total_c, total_est, first_line,
                         job_points)


def _job_head(job_suffix: str, info: ShareInfo,
              tag_cache: dict[str, str]) -> tuple[str, str, str, dict[str, str]]:
    """(series key up to the GPU index, attribution fields, job id, non-empty who-fields) of a job
    share (see ``prepare_batch``; the who dict is shared by the share's JobPoints: read only)."""
    job_id, alias, method, user, estimated, *who = info
    job_t = tag_cache.get(job_id)
    if job_t is None:
        _memo_room(tag_cache)
        job_t = tag_cache[job_id] = tag(job_id)
    # alias: a tag, so a job is found by its Slurm id through the index (one value per job)
    head = job_key_head(job_t, tag(alias)) if alias else job_key_head(job_t)
    who_values = {name: v for name, v in zip(WHO_FIELDS, (user, *who), strict=False) if v}
    return head + job_suffix, _attribution_fields(method, user, estimated, *who), job_id, who_values


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
