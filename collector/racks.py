"""Per-rack totals over a time range, read from the ``rack`` measurement with InfluxQL."""

from __future__ import annotations

from typing import Any

from gridwatt.collector import queries
from gridwatt.collector.store import InfluxStore, series_rows


def _share(part: float, whole: float) -> float:
    """part / whole within [0, 1]; 0 for no whole."""
    return min(max(part / whole, 0.0), 1.0) if whole > 0 else 0.0


async def rack_totals(
    store: InfluxStore, since_ns: int | None = None, until_ns: int | None = None
) -> list[dict[str, Any]]:
    """One dict per rack: energy, emissions, energy-weighted PUE and intensity, GPU-hours, mean util."""
    (result,) = await store.query(queries.rack_totals(store.measurement, since_ns, until_ns))
    out = []
    for tags, row in series_rows(result):
        it, fac, co2, gs = (float(row[k] or 0.0) for k in ("it", "fac", "co2", "gs"))
        out.append(
            {
                "rack": tags.get("rack", ""),
                "zone": tags.get("zone", ""),
                "it_energy_kwh": it,
                "facility_energy_kwh": fac,
                "co2e_kg": co2,
                # the share of co2e_kg resting on estimated or held grid intensity (0..1)
                "estimated_share": _share(float(row.get("est") or 0.0) / 1000, co2),
                "mean_pue": fac / it if it else 0.0,
                "mean_intensity_g_per_kwh": co2 * 1000 / fac if fac else 0.0,
                "gpu_hours": gs / 3600.0,
                "max_gpus": int(row["gpus"] or 0),
                "mean_util_pct": float(row["us"] or 0.0) / gs if gs else 0.0,
                "idle_energy_kwh": float(row["idle"] or 0.0),
            }
        )
    return sorted(out, key=lambda r: r["rack"])
