"""Per-job reports, read from the ``job`` measurement with InfluxQL."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from gridwatt.collector.accounting import J_PER_KWH
from gridwatt.collector.store import InfluxStore, quote_string, series_rows
from gridwatt.timeutil import format_time_ns
from gridwatt.v1 import telemetry_pb2 as pb


class JobNotFound(Exception):
    """No samples are stored for the job."""


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_proto(self) -> pb.JobReport:
        return pb.JobReport(
            job_id=self.job_id, start_ns=self.start_ns, end_ns=self.end_ns, nodes=self.nodes,
            gpus=self.gpus, gpu_hours=self.gpu_hours, mean_util_pct=self.mean_util_pct,
            idle_share=self.idle_share, it_energy_kwh=self.it_energy_kwh,
            facility_energy_kwh=self.facility_energy_kwh, co2e_kg=self.co2e_kg, mean_pue=self.mean_pue,
            mean_intensity_g_per_kwh=self.mean_intensity_g_per_kwh, idle_energy_kwh=self.idle_energy_kwh,
            emission_factor=self.emission_factor,
        )


async def job_report(store: InfluxStore, job_id: str) -> JobReport:
    """Sum the job's points per GPU; raise JobNotFound when there are none."""
    where = f'WHERE "job_id" = {quote_string(job_id)}'
    q = (
        'SELECT sum("energy_j") AS e, sum("facility_energy_j") AS f, sum("co2e_g") AS c, '
        'sum("gpu_s") AS g, sum("util_pct_s") AS u, sum("idle_s") AS i, sum("idle_energy_j") AS ie, '
        f'max("end_ns") AS end_ns FROM "job" {where} GROUP BY "node", "gpu"; '
        f'SELECT first("gpu_s") FROM "job" {where}; '
        f'SELECT last("ef") FROM "job" {where}'
    )
    per_gpu, first, ef = await store.query(q)
    rows = series_rows(per_gpu)
    if not rows:
        raise JobNotFound(f"no samples stored for job {job_id!r}")
    totals = dict.fromkeys(("e", "f", "c", "g", "u", "i", "ie"), 0.0)
    nodes: set[str] = set()
    gpus: set[tuple[str, int]] = set()
    end_ns = 0
    for tags, row in rows:
        for key in totals:
            totals[key] += row[key] or 0.0
        end_ns = max(end_ns, int(row["end_ns"] or 0))
        nodes.add(tags.get("node", ""))
        gpus.add((tags.get("node", ""), int(tags.get("gpu", "0") or 0)))
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
    )
