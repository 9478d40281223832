"""Sustainability reports: Scope 2 (location- and market-based), SCI, per user, account or rack.

Names follow the GHG Protocol Scope 2 Guidance (2015):

* **Scope 2, location-based**: the grid's average emission factor at the time and place of use:
  the stored emissions (facility energy × the zone's intensity at the sample's time).
* **Scope 2, market-based**: the factor of the contractual instruments covering that energy
  (supplier-specific factor, PPA, certificates: ``[[reports.market]] contracts`` by period), else
  the zone's residual mix; where neither is configured, the location-based factor is used and the
  report says so (the Guidance's last resort).

**SCI** (Green Software Foundation, ISO/IEC 21031): ``(E × I + M) per R``: E the facility energy, I
the location-based intensity (SCI excludes market-based instruments), M the embodied emissions
(``embodied_g_per_gpu_hour`` × GPU-hours; 0 when not configured, and reported separately), R one
GPU-hour (or one job).

Everything is read from the ``job_window`` points whose window start lies in [since, until), summed
per hour, job and rack, in one InfluxQL request; market factors apply per hour (a contract's period
should begin on the hour). The arithmetic (``build_report``) is pure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from gridwatt.collector import queries
from gridwatt.collector.accounting import J_PER_KWH
from gridwatt.collector.config import CollectorConfig, RackConfig
from gridwatt.collector.listings import WHO, ListingError
from gridwatt.collector.read_auth import Principal
from gridwatt.collector.report_config import MarketZone, ReportsConfig
from gridwatt.collector.store import InfluxStore, series_rows
from gridwatt.timeutil import format_time_ns, parse_time_ns

BY = ("account", "user", "rack")
HOUR_NS = 3600 * 1_000_000_000
_SUMS = ("e", "f", "c", "ce", "g", "u", "i", "ie")
LOCATION_LABEL = "Scope 2, location-based (GHG Protocol Scope 2 Guidance)"
MARKET_LABEL = "Scope 2, market-based (GHG Protocol Scope 2 Guidance)"
#: Most hourly rows one report may sum (a month of 10 000 jobs on one rack each is 7.2 M).
MAX_ROWS = 20_000_000


@dataclass(frozen=True)
class HourRow:
    """One job's sums on one rack in one hour (J, g, GPU-s)."""

    hour_ns: int
    job_id: str
    rack: str
    sums: Mapping[str, float]


def describe_provider(cfg: Any) -> str:
    """A person's description of a zone's intensity source from its config."""
    kind = getattr(cfg, "kind", "?")
    if kind == "constant":
        return f"constant {cfg.g_per_kwh:g} gCO2e/kWh (configured)"
    if kind == "csv":
        return f"CSV file {str(cfg.path).rsplit('/', 1)[-1]}"
    if kind == "electricitymaps":
        return f"Electricity Maps API (zone {getattr(cfg, 'zone', '')})"
    if kind == "watttime":
        return "WattTime API"
    if kind == "uk_carbon_intensity":
        return "GB Carbon Intensity API (National Grid ESO)"
    if kind == "chain":
        return " then ".join(describe_provider(p) for p in cfg.providers)
    return str(kind)


def _emission_factor(cfg: Any) -> str:
    if getattr(cfg, "kind", "") == "chain":
        return "/".join(sorted({_emission_factor(p) for p in cfg.providers}))
    return str(getattr(cfg, "emission_factor", "") or "lifecycle")


def pue_source(rack: RackConfig) -> str:
    if rack.pue is not None:
        return f"constant {rack.pue:g} (configured)"
    if rack.pue_schedule is not None:
        return f"schedule of {len(rack.pue_schedule)} step(s) (configured)"
    if rack.pue_csv is not None:
        return f"CSV file {rack.pue_csv.name}"
    return f"measured: facility power feed of site {rack.site!r} / IT energy"


def market_factor(market: MarketZone | None, hour_ns: int) -> tuple[float | None, str]:
    """(g/kWh, source) of the market-based factor at ``hour_ns``; (None, ...) = use location-based."""
    if market is not None:
        for c in market.contracts:
            if parse_time_ns(c.start) <= hour_ns < parse_time_ns(c.end):
                return c.g_per_kwh, f"contract: {c.source}"
        if market.residual_mix_g_per_kwh is not None:
            return market.residual_mix_g_per_kwh, f"residual mix: {market.residual_mix_source}"
    return None, "location-based factor (no contractual instrument or residual mix configured)"


async def read_hours(
    store: InfluxStore, since_ns: int, until_ns: int
) -> tuple[list[HourRow], dict[str, dict[str, str]]]:
    """The hourly sums per job and rack in [since, until), and who ran each job."""
    sums_res, who_res, _first, _nodes = await store.query(
        queries.job_hours_in_range(store.measurement, since_ns, until_ns))
    rows = []
    for tags, row in series_rows(sums_res):
        rows.append(HourRow(int(row["time"]), tags.get("job_id", ""), tags.get("rack", ""),
                            {k: float(row.get(k) or 0.0) for k in _SUMS}))
        if len(rows) > MAX_ROWS:
            raise ListingError(f"the range holds more than {MAX_ROWS} job-hours: ask for a shorter one")
    people = {tags.get("job_id", ""): {n: str(row.get(n) or "") for n in WHO}
              for tags, row in series_rows(who_res)}
    return rows, people


def _blank() -> dict[str, float]:
    return {**dict.fromkeys(_SUMS, 0.0), "market_g": 0.0}


def _figures(s: Mapping[str, float], jobs: int, reports: ReportsConfig) -> dict[str, Any]:
    e, f, c, g = s["e"], s["f"], s["c"], s["g"]
    embodied_g = reports.embodied_g_per_gpu_hour * g / 3600.0
    units = g / 3600.0 if reports.sci_functional_unit == "gpu_hour" else float(jobs)
    return {
        "jobs": jobs,
        "gpu_hours": g / 3600.0,
        "it_energy_kwh": e / J_PER_KWH,
        "facility_energy_kwh": f / J_PER_KWH,
        "location_based_co2e_kg": c / 1000.0,
        "market_based_co2e_kg": s["market_g"] / 1000.0,
        "embodied_co2e_kg": embodied_g / 1000.0,
        "sci_g_per_unit": (c + embodied_g) / units if units else 0.0,
        "estimated_share": min(max(s["ce"] / c, 0.0), 1.0) if c > 0 else 0.0,
        "idle_energy_kwh": s["ie"] / J_PER_KWH,
        "idle_share": s["i"] / g if g else 0.0,
        "mean_util_pct": s["u"] / g if g else 0.0,
        "mean_pue": f / e if e else 0.0,
    }


def build_report(
    rows: list[HourRow], people: Mapping[str, Mapping[str, str]], principal: Principal, by: str,
    config: CollectorConfig, since_ns: int, until_ns: int, time_zone: str | None = None,
) -> dict[str, Any]:
    """Pure: the report of the rows the principal may see, grouped ``by`` account, user or rack."""
    if by not in BY:
        raise ListingError(f"by: {by!r} is not one of {', '.join(BY)}")
    reports = config.reports
    tz_name = time_zone or reports.time_zone
    try:
        tz = ZoneInfo(tz_name)
    except (ValueError, KeyError):
        raise ListingError(f"tz: {tz_name!r} is not an IANA time zone") from None
    zone_of_rack = {r.name: r.zone for r in config.racks}
    zone_of_rack.setdefault(config.accounting.default_rack, config.accounting.default_zone or "")
    markets = {m.zone: m for m in reports.market}
    groups: dict[str, dict[str, float]] = {}
    members: dict[str, set[str]] = {}
    daily: dict[str, dict[str, float]] = {}
    total = _blank()
    used_market: dict[str, set[str]] = {}
    seen_racks: set[str] = set()
    for row in rows:
        who = people.get(row.job_id, {})
        if not principal.may_see_job(who.get("user", ""), who.get("account", "")):
            continue
        zone = zone_of_rack.get(row.rack, "")
        seen_racks.add(row.rack)
        factor, source = market_factor(markets.get(zone), row.hour_ns)
        used_market.setdefault(zone, set()).add(source)
        location_g = row.sums["c"]
        market_g = location_g if factor is None else row.sums["f"] / J_PER_KWH * factor
        key = row.rack if by == "rack" else who.get(by, "")
        day = dt.datetime.fromtimestamp(row.hour_ns / 1e9, tz).date().isoformat()
        for target in (groups.setdefault(key, _blank()), total):
            for k in _SUMS:
                target[k] += row.sums[k]
            target["market_g"] += market_g
        d = daily.setdefault(day, _blank())
        d["f"] += row.sums["f"]
        d["c"] += location_g
        d["market_g"] += market_g
        members.setdefault(key, set()).add(row.job_id)
    all_jobs = set().union(*members.values()) if members else set()
    zone_cfg = {z.name: z for z in config.zones}
    return {
        "title": "gridwatt sustainability report",
        "since": format_time_ns(since_ns),
        "until": format_time_ns(until_ns),
        "time_zone": tz_name,
        "by": by,
        "sci_unit": "GPU-hour" if reports.sci_functional_unit == "gpu_hour" else "job",
        "generated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "labels": {"location_based": LOCATION_LABEL, "market_based": MARKET_LABEL,
                   "sci": f"SCI (Green Software Foundation): (E x I + M) per "
                          f"{'GPU-hour' if reports.sci_functional_unit == 'gpu_hour' else 'job'}"},
        "totals": _figures(total, len(all_jobs), reports),
        "groups": [{by: key, **_figures(groups[key], len(members[key]), reports)} for key in sorted(groups)],
        "daily": [{"date": day, "facility_energy_kwh": d["f"] / J_PER_KWH,
                   "location_based_co2e_kg": d["c"] / 1000.0, "market_based_co2e_kg": d["market_g"] / 1000.0}
                  for day, d in sorted(daily.items())],
        "zones": [
            {"zone": z,
             "location_factor_source": describe_provider(zone_cfg[z].intensity) if z in zone_cfg else "",
             "emission_factor": _emission_factor(zone_cfg[z].intensity) if z in zone_cfg else "",
             "market_factor_sources": sorted(used_market[z])}
            for z in sorted(used_market)
        ],
        "racks": [{"rack": r.name, "zone": r.zone, "pue_source": pue_source(r)}
                  for r in config.racks if r.name in seen_racks],
        "embodied": {"g_per_gpu_hour": reports.embodied_g_per_gpu_hour,
                     "source": reports.embodied_source or "not configured (M = 0)"},
    }
