"""The pages of /ui/: overview (racks, zones), jobs, one job (report and hourly charts), alerts.

Numbers come from the same functions as the HTTP API (``rack_totals``, ``job_report``, the alert
monitor), so the page and ``/v1/...`` always agree. Every shown number also carries its exact
value in a ``data-value`` attribute. Pages are served by the collector's HTTP app, so whatever
authenticates the HTTP API authenticates them too.
"""

from __future__ import annotations

import urllib.parse
from html import escape
from typing import Any

from aiohttp import web

from gridwatt.collector import queries
from gridwatt.collector.accounting import J_PER_KWH
from gridwatt.collector.alerts.monitor import AlertMonitor
from gridwatt.collector.jobs import JobNotFound, JobReport, job_report
from gridwatt.collector.racks import rack_totals
from gridwatt.collector.store import InfluxStore, QueryError, series_rows
from gridwatt.collector.web.svg import chart

HOUR_NS = 3600 * 1_000_000_000
#: At most this many jobs on the jobs page (the most recent first).
MAX_JOBS_LISTED = 500

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1100px}
nav a{margin-right:1em}table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border-bottom:1px solid #ddd;padding:.25em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}h1{font-size:1.4em}h2{font-size:1.1em}
.charts{display:grid;grid-template-columns:repeat(2,max-content);gap:.8em}
.chart{border:1px solid #eee}.chart text{font-size:11px;fill:#444}
.chart .ct{font-size:13px;font-weight:600;fill:#222}.grid{stroke:#eee}.axis{stroke:#888}
.line{fill:none;stroke:#2a6fb0;stroke-width:2}.pt{fill:#2a6fb0}.bar{fill:#3b8f5a}
.firing{color:#b00;font-weight:600}.pending{color:#b60}.muted{color:#777}
"""


def _page(title: str, body: str) -> web.Response:
    html = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<title>{escape(title)} · gridwatt</title><link rel="icon" href="data:,">'
        f"<style>{STYLE}</style></head><body>"
        '<nav><a href="/ui/">overview</a><a href="/ui/jobs">jobs</a><a href="/ui/alerts">alerts</a>'
        '<a href="/metrics">metrics</a></nav>'
        f"<h1>{escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(text=html, content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                 "img-src 'self' data:", "X-Content-Type-Options": "nosniff"})


def _error(status: int, message: str) -> web.Response:
    resp = _page("error", f"<p id=\"error\">{escape(message)}</p>")
    resp.set_status(status)
    return resp


def num(value: float, fmt: str, key: str = "") -> str:
    """A table cell showing ``value`` with ``fmt``, its exact value in ``data-value``."""
    key_attr = f' data-key="{escape(key)}"' if key else ""
    return f'<td{key_attr} data-value="{float(value)!r}">{format(value, fmt)}</td>'


def _job_link(job_id: str) -> str:
    return f'<a href="/ui/jobs/{urllib.parse.quote(job_id, safe="")}">{escape(job_id)}</a>'


RACK_COLUMNS = (
    ("it_energy_kwh", "IT kWh", ".3f"), ("facility_energy_kwh", "facility kWh", ".3f"),
    ("co2e_kg", "kg CO2e", ".3f"), ("mean_pue", "PUE", ".3f"),
    ("mean_intensity_g_per_kwh", "g/kWh", ".1f"), ("gpu_hours", "GPU-h", ".2f"),
    ("mean_util_pct", "util %", ".1f"), ("idle_energy_kwh", "idle kWh", ".3f"),
)


def zone_totals(racks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-zone sums of the racks' totals, with energy- and GPU-time-weighted means (pure)."""
    zones: dict[str, dict[str, float]] = {}
    for r in racks:
        z = zones.setdefault(r["zone"], dict.fromkeys(("it", "fac", "co2", "gh", "us", "idle"), 0.0))
        z["it"] += r["it_energy_kwh"]
        z["fac"] += r["facility_energy_kwh"]
        z["co2"] += r["co2e_kg"]
        z["gh"] += r["gpu_hours"]
        z["us"] += r["mean_util_pct"] * r["gpu_hours"]
        z["idle"] += r["idle_energy_kwh"]
    return [
        {"zone": name, "it_energy_kwh": z["it"], "facility_energy_kwh": z["fac"], "co2e_kg": z["co2"],
         "mean_pue": z["fac"] / z["it"] if z["it"] else 0.0,
         "mean_intensity_g_per_kwh": z["co2"] * 1000 / z["fac"] if z["fac"] else 0.0,
         "gpu_hours": z["gh"], "mean_util_pct": z["us"] / z["gh"] if z["gh"] else 0.0,
         "idle_energy_kwh": z["idle"]}
        for name, z in sorted(zones.items())
    ]


def _table(rows: list[dict[str, Any]], first: str, table_id: str) -> str:
    head = f"<th>{first}</th>" + "".join(f"<th>{escape(label)}</th>" for _, label, _ in RACK_COLUMNS)
    body = "".join(
        f'<tr data-name="{escape(r[first])}"><td>{escape(r[first])}</td>'
        + "".join(num(r[k], fmt, k) for k, _, fmt in RACK_COLUMNS) + "</tr>"
        for r in rows
    )
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


async def hourly(store: InfluxStore, report: JobReport) -> list[dict[str, float]]:
    """The job's hours: time, mean IT power (W), utilisation (%), intensity (g/kWh), emissions (kg)."""
    lo = report.start_ns - report.start_ns % HOUR_NS
    q = queries.job_hourly(store.measurement, report.job_id, lo, report.end_ns)
    (result,) = await store.query(q)
    out = []
    for _, row in series_rows(result):
        e, f, c, g, u = (float(row.get(k) or 0.0) for k in ("e", "f", "c", "g", "u"))
        out.append({"time_ns": int(row["time"]), "power_w": e / 3600.0, "util_pct": u / g if g else 0.0,
                    "intensity_g_per_kwh": c * J_PER_KWH / f if f else 0.0, "co2e_kg": c / 1000.0})
    return out


REPORT_ROWS = (
    ("gpu_count", "GPUs", "d"), ("gpu_hours", "GPU-hours", ".2f"), ("mean_util_pct", "mean util %", ".1f"),
    ("idle_share", "idle share", ".3f"), ("it_energy_kwh", "IT energy kWh", ".3f"),
    ("facility_energy_kwh", "facility energy kWh", ".3f"), ("mean_pue", "mean PUE", ".3f"),
    ("co2e_kg", "emissions kg CO2e", ".3f"), ("mean_intensity_g_per_kwh", "mean intensity g/kWh", ".1f"),
    ("idle_energy_kwh", "idle energy kWh", ".3f"),
)


class Pages:
    """The request handlers of /ui/."""

    def __init__(self, store: InfluxStore, monitor: AlertMonitor | None) -> None:
        self.store = store
        self.monitor = monitor

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ui", self.redirect)
        app.router.add_get("/ui/", self.overview)
        app.router.add_get("/ui/jobs", self.jobs)
        app.router.add_get("/ui/jobs/{job_id}", self.job)
        app.router.add_get("/ui/alerts", self.alerts)

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    async def overview(self, request: web.Request) -> web.Response:
        try:
            racks = await rack_totals(self.store)
        except QueryError as exc:
            return _error(503, f"InfluxDB: {exc}")
        firing = [a for a in (self.monitor.recent() if self.monitor else []) if a["state"] == "firing"]
        alerts = (f'<p><a href="/ui/alerts" class="firing">{len(firing)} firing alert(s)</a></p>'
                  if firing else '<p class="muted">no firing alerts</p>')
        body = (f"{alerts}<h2>Racks</h2>{_table(racks, 'rack', 'racks')}"
                f"<h2>Zones</h2>{_table(zone_totals(racks), 'zone', 'zones')}"
                '<p class="muted">Totals over everything stored (InfluxDB is the record).</p>')
        return _page("gridwatt: racks and zones", body)

    async def jobs(self, request: web.Request) -> web.Response:
        q = queries.jobs_list(self.store.measurement)
        try:
            (result,) = await self.store.query(q)
        except QueryError as exc:
            return _error(503, f"InfluxDB: {exc}")
        rows = sorted(series_rows(result), key=lambda tr: -int(tr[1].get("end_ns") or 0))[:MAX_JOBS_LISTED]
        body = "".join(
            f'<tr data-name="{escape(tags.get("job_id", ""))}"><td>{_job_link(tags.get("job_id", ""))}</td>'
            + num(float(row.get("g") or 0.0) / 3600, ".2f", "gpu_hours")
            + num(float(row.get("e") or 0.0) / J_PER_KWH, ".3f", "it_energy_kwh")
            + num(float(row.get("c") or 0.0) / 1000, ".3f", "co2e_kg") + "</tr>"
            for tags, row in rows
        )
        table = ('<table id="jobs"><tr><th>job</th><th>GPU-h</th><th>IT kWh</th><th>kg CO2e</th></tr>'
                 f"{body}</table>")
        return _page("gridwatt: jobs", table if rows else '<p class="muted">no jobs stored yet</p>')

    async def job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        try:
            report = await job_report(self.store, job_id)
            hours = await hourly(self.store, report)
        except JobNotFound as exc:
            return _error(404, str(exc))
        except QueryError as exc:
            return _error(503, f"InfluxDB: {exc}")
        r = report.to_json()
        rows = "".join(f"<tr><th>{escape(label)}</th>{num(r[k], fmt, k)}</tr>"
                       for k, label, fmt in REPORT_ROWS)
        nodes = escape(", ".join(report.nodes))
        info = (f"<p>{escape(report.start)} → {escape(report.end)}; nodes: {nodes}; "
                f"emission factors: {escape(report.emission_factor)}</p>")
        times = [int(h["time_ns"]) for h in hours]
        charts = "".join(
            chart(title, unit, times, [h[key] for h in hours], HOUR_NS, kind, cid)
            for title, unit, key, kind, cid in (
                ("IT power", "W, mean per hour", "power_w", "line", "chart-power"),
                ("GPU utilisation", "%", "util_pct", "line", "chart-util"),
                ("Grid intensity", "gCO2e/kWh", "intensity_g_per_kwh", "line", "chart-intensity"),
                ("Emissions by hour", "kg CO2e", "co2e_kg", "bar", "chart-emissions"),
            )
        )
        body = (f'{info}<table id="report">{rows}</table><h2>By hour (UTC)</h2>'
                f'<div class="charts">{charts}</div>')
        return _page(f"Job {job_id}", body)

    async def alerts(self, request: web.Request) -> web.Response:
        alerts: list[dict[str, Any]] = self.monitor.recent() if self.monitor else []
        if not alerts:
            return _page("gridwatt: alerts", '<p class="muted" id="no-alerts">no alerts</p>')
        rows = []
        for a in alerts:
            scope = _job_link(a["scope"]) if a["scope_kind"] == "job" else escape(a["scope"])
            rows.append(
                f'<tr><td>{escape(a["rule"])}</td><td class="{escape(a["state"])}">{escape(a["state"])}</td>'
                f'<td>{escape(a["scope_kind"])}: {scope}</td><td>{escape(str(a["started_at"]))}</td>'
                f'<td>{escape(str(a["fired_at"] or ""))}</td><td>{escape(str(a["resolved_at"] or ""))}</td>'
                + num(a["duration_s"] / 60, ".0f", "idle_min")
                + num(a["mean_util_pct"], ".1f", "mean_util_pct")
                + num(a["wasted_energy_kwh"], ".3f", "wasted_energy_kwh")
                + num(a["wasted_co2e_kg"], ".3f", "wasted_co2e_kg") + "</tr>"
            )
        table = ('<table id="alerts"><tr><th>rule</th><th>state</th><th>scope</th><th>idle since</th>'
                 "<th>fired</th><th>resolved</th><th>idle min</th><th>util %</th><th>wasted kWh</th>"
                 f"<th>wasted kg CO2e</th></tr>{''.join(rows)}</table>")
        return _page("gridwatt: alerts", table)
