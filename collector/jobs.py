"""Per-job reports, read from the ``job`` measurement with InfluxQL."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from gridwatt.collector import queries
from gridwatt.collector.accounting import J_PER_KWH
from gridwatt.collector.schema import series_tags
from gridwatt.collector.store import InfluxStore, series_rows
from gridwatt.timeutil import format_time_ns
from gridwatt.v1 import telemetry_pb2 as pb


class JobNotFound(Exception):
    """No samples are stored for the job."""


#: A job id as Slurm users write it: raw ``1234``, array task ``1234_7``, het component ``1234+1``,
#: each optionally with a step (``.0``, ``.batch``, ``.extern``, ``.interactive``), summed into its job.
SLURM_ID = re.compile(r"(?P<job>\d{1,12}(?P<alias>[_+]\d{1,12})?)(?:\.(?:\d{1,9}|batch|extern|interactive))?")


async def resolve_job_id(store: InfluxStore, text: str) -> tuple[str, str]:
    """(stored job id, alias) of a job id as written. A step's id means its job (gridwatt meters
    jobs, not steps); an array task or het component id is looked up by the ``alias`` tag its
    samples carry (written when a gridwatt prolog mapped the job). Other ids are taken as they are.
    """
    m = SLURM_ID.fullmatch(text)
    if m is None:
        return text, ""
    if not m.group("alias"):
        return m.group("job"), ""
    alias = m.group("job")
    (result,) = await store.query(queries.job_ids_of_alias(store.measurement, alias))
    ids = sorted({str(row.get("value", "")) for _tags, row in series_rows(result)} - {""})
    if not ids:
        asked = f" (asked as {text!r})" if text != alias else ""
        raise JobNotFound(f"no samples stored for Slurm job {alias!r}{asked}: no job carries that alias")
    return ids[-1], alias


@dataclass(frozen=True)
class JobReport:
    """What a job used and emitted; energy-weighted means of the PUE and intensity it saw."""

    job_id: str
    start: str
    end: str
    start_ns: int
    end_ns: int
    nodes: list[str]
    gpus: list[str]
    gpu_count: int
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
    #: the share (0..1) of co2e_kg that rests on estimated or held grid intensity (a held value,
    #: a fallback provider, or a value its provider marked estimated); 0 when all was measured
    estimated_share: float = 0.0
    #: Slurm's details where the agent knew them (a gridwatt prolog): the id users write
    #: (array task, het component), the user and the account; "" otherwise.
    alias: str = ""
    user: str = ""
    account: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_proto(self) -> pb.JobReport:
        return pb.JobReport(
            job_id=self.job_id, start_ns=self.start_ns, end_ns=self.end_ns, nodes=self.nodes,
            gpus=self.gpus, gpu_hours=self.gpu_hours, mean_util_pct=self.mean_util_pct,
            idle_share=self.idle_share, it_energy_kwh=self.it_energy_kwh,
            facility_energy_kwh=self.facility_energy_kwh, co2e_kg=self.co2e_kg, mean_pue=self.mean_pue,
            mean_intensity_g_per_kwh=self.mean_intensity_g_per_kwh, idle_energy_kwh=self.idle_energy_kwh,
            emission_factor=self.emission_factor, estimated_share=self.estimated_share,
        )


async def job_report(store: InfluxStore, job_id: str) -> JobReport:
    """The job's totals from its ``job_window`` points (one per node and window), its GPUs from the
    series index, its start and emission factor from its first and last ``job`` points.

    ``job_id`` may be written as Slurm users write it (``1234_7``, ``1234+1``, ``1234.0``): see
    ``resolve_job_id``. Raises JobNotFound when there are none.
    """
    job_id, alias = await resolve_job_id(store, job_id)
    sums, series, first, ef, who = await store.query(queries.job_report(store.measurement, job_id))
    rows = series_rows(sums)
    if not rows or not rows[0][1].get("g"):
        raise JobNotFound(f"no samples stored for job {job_id!r}")
    totals = {k: float(rows[0][1].get(k) or 0.0) for k in ("e", "f", "c", "ce", "g", "u", "i", "ie")}
    end_ns = int(rows[0][1].get("end_ns") or 0)
    gpus: set[tuple[str, int]] = set()
    for _tags, row in series_rows(series):
        tags = series_tags(str(row.get("key", "")))
        gpus.add((tags.get("node", ""), int(tags.get("gpu", "0") or 0)))
        alias = alias or tags.get("alias", "")
    who_rows = series_rows(who)
    user = str(who_rows[0][1].get("job_user") or "") if who_rows else ""
    account = str(who_rows[0][1].get("job_account") or "") if who_rows else ""
    nodes = {n for n, _ in gpus}
    first_rows = series_rows(first)
    start_ns = int(first_rows[0][1]["time"]) if first_rows else 0
    ef_rows = series_rows(ef)
    emission_factor = str(ef_rows[0][1].get("last", "")) if ef_rows else ""
    e, f, c, g = totals["e"], totals["f"], totals["c"], totals["g"]
    return JobReport(
        job_id=job_id,
        start=format_time_ns(start_ns),
        end=format_time_ns(end_ns),
        start_ns=start_ns,
        end_ns=end_ns,
        nodes=sorted(nodes),
        gpus=[f"{n}/{i}" for n, i in sorted(gpus)],
        gpu_count=len(gpus),
        gpu_hours=g / 3600.0,
        mean_util_pct=totals["u"] / g if g else 0.0,
        idle_share=totals["i"] / g if g else 0.0,
        it_energy_kwh=e / J_PER_KWH,
        facility_energy_kwh=f / J_PER_KWH,
        co2e_kg=c / 1000.0,
        mean_pue=f / e if e else 0.0,
        mean_intensity_g_per_kwh=c * J_PER_KWH / f if f else 0.0,
        idle_energy_kwh=totals["ie"] / J_PER_KWH,
        emission_factor=emission_factor,
        estimated_share=min(max(totals["ce"] / c, 0.0), 1.0) if c > 0 else 0.0,
        alias=alias,
        user=user,
        account=account,
    )
