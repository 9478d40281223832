#!/usr/bin/env python3
"""Build gridwatt's Grafana dashboards with grafana-foundation-sdk and write them as JSON.

    .venv/bin/python deploy/grafana/generate.py          # writes deploy/grafana/dashboards/*.json
    .venv/bin/python deploy/grafana/generate.py --check  # exits 1 when the committed JSON differs

Panels over time read the record (InfluxQL on the ``rack``, ``job_window`` measurements);
panels named "live" read Prometheus scraping the collectors (gridwatt_* families on /metrics).
The datasource uids match provisioning/datasources/gridwatt.yaml. The test
tests/views/test_dashboards.py runs every query of every panel against a real InfluxDB and a real
Prometheus after a replay.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

OUT = Path(__file__).resolve().parent / "dashboards"
INFLUX = DataSourceRef(type_val="influxdb", uid="gridwatt-influxdb")
PROM = DataSourceRef(type_val="prometheus", uid="gridwatt-prometheus")
JOB_DASHBOARD_UID = "gridwatt-job"


class InfluxQL(cogvariants.Dataquery):
    """A raw InfluxQL target of Grafana's InfluxDB datasource (the SDK has no builder for it)."""

    def __init__(self, query: str, ref_id: str, result_format: str) -> None:
        self.query = query
        self.ref_id = ref_id
        self.result_format = result_format

    def to_json(self) -> dict[str, object]:
        return {"datasource": {"type": INFLUX.type_val, "uid": INFLUX.uid}, "query": self.query,
                "rawQuery": True, "refId": self.ref_id, "resultFormat": self.result_format}


class InfluxQLBuilder(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, query: str, ref_id: str = "A", result_format: str = "time_series") -> None:
        self._q = InfluxQL(query, ref_id, result_format)

    def build(self) -> cogvariants.Dataquery:
        return self._q


def influx(query: str, ref_id: str = "A", fmt: str = "time_series") -> InfluxQLBuilder:
    return InfluxQLBuilder(query, ref_id, fmt)


def promql(expr: str, legend: str, ref_id: str = "A", instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id)
    return q.instant() if instant else q.range()


def ts(title: str, unit: str, target: Any, ds: DataSourceRef = INFLUX, w: int = 12) -> timeseries.Panel:
    legend = (common.VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.TABLE)
              .placement(LegendPlacement.BOTTOM).calcs(["mean", "max", "lastNotNull"]))
    return (timeseries.Panel().title(title).datasource(ds).unit(unit).with_target(target)
            .legend(legend).span(w).height(8))


def tab(title: str, target: Any, ds: DataSourceRef = INFLUX, w: int = 12) -> table.Panel:
    return table.Panel().title(title).datasource(ds).with_target(target).show_header(True).span(w).height(8)


def st(title: str, unit: str, target: Any, ds: DataSourceRef = INFLUX, w: int = 6) -> stat.Panel:
    reduce = common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)
    return (stat.Panel().title(title).datasource(ds).unit(unit).with_target(target)
            .reduce_options(reduce).span(w).height(4))


def base(uid: str, title: str, description: str) -> dash.Dashboard:
    return (dash.Dashboard(title).uid(uid).description(description).tags(["gridwatt"])
            .time("now-24h", "now").timezone("utc").refresh("1m").editable())


def overview() -> dash.Dashboard:
    rack_w = ('SELECT sum("it_energy_kwh") * 3600000000 / $__interval_ms FROM "rack" WHERE $timeFilter '
              'GROUP BY time($__interval), "rack" fill(none)')
    return (
        base("gridwatt-overview", "gridwatt: cluster overview",
             "Power, energy and emissions by rack and zone; intensity, PUE, utilisation, idle share.")
        .with_row(dash.Row("Live (Prometheus, summed over collector replicas)"))
        .with_panel(st("IT power now (live)", "watt",
                       promql("sum(gridwatt_rack_power_watts)", "IT power", instant=True), PROM))
        .with_panel(st("Emissions since collectors started (live)", "massg",
                       promql("sum(gridwatt_zone_co2e_grams_total)", "gCO2e", instant=True), PROM))
        .with_panel(st("GPU utilisation now (live)", "percentunit",
                       promql("avg(gridwatt_gpu_gpu_utilization_ratio)", "util", instant=True), PROM))
        .with_panel(st("Intensity in force (live)", "none",
                       promql("max by (zone, source) "
                              "(gridwatt_zone_carbon_intensity_grams_per_kilowatt_hour)",
                              "{{zone}} {{source}}", instant=True), PROM))
        .with_panel(ts("Power by rack (live)", "watt",
                       promql("sum by (rack) (gridwatt_rack_power_watts)", "{{rack}}"), PROM))
        .with_panel(ts("PUE in force by rack (live)", "none",
                       promql("max by (rack) (gridwatt_rack_pue_ratio)", "{{rack}}"), PROM))
        .with_row(dash.Row("The record (InfluxDB)"))
        .with_panel(tab("Energy and emissions by rack", influx(
            'SELECT sum("it_energy_kwh") AS "IT kWh", sum("facility_energy_kwh") AS "facility kWh", '
            'sum("co2e_kg") AS "kg CO2e", sum("idle_energy_kwh") AS "idle kWh" FROM "rack" '
            'WHERE $timeFilter GROUP BY "rack"', fmt="table")))
        .with_panel(tab("Energy and emissions by zone", influx(
            'SELECT sum("it_energy_kwh") AS "IT kWh", sum("facility_energy_kwh") AS "facility kWh", '
            'sum("co2e_kg") AS "kg CO2e" FROM "rack" WHERE $timeFilter GROUP BY "zone"', fmt="table")))
        .with_panel(ts("IT power by rack (mean per interval)", "watt", influx(rack_w)))
        .with_panel(ts("Emissions by zone", "masskg", influx(
            'SELECT sum("co2e_kg") FROM "rack" WHERE $timeFilter GROUP BY time($__interval), "zone" '
            "fill(none)")))
        .with_panel(ts("Grid intensity by zone (energy-weighted)", "none", influx(
            'SELECT sum("co2e_kg") * 1000 / sum("facility_energy_kwh") FROM "rack" WHERE $timeFilter '
            'GROUP BY time($__interval), "zone" fill(none)')))
        .with_panel(ts("PUE by rack (energy-weighted)", "none", influx(
            'SELECT sum("facility_energy_kwh") / sum("it_energy_kwh") FROM "rack" WHERE $timeFilter '
            'GROUP BY time($__interval), "rack" fill(none)')))
        .with_panel(ts("GPU utilisation by rack", "percent", influx(
            'SELECT sum("util_pct_s") / sum("gpu_seconds") FROM "rack" WHERE $timeFilter '
            'GROUP BY time($__interval), "rack" fill(none)')))
        .with_panel(ts("Idle share of IT energy by rack", "percentunit", influx(
            'SELECT sum("idle_energy_kwh") / sum("it_energy_kwh") FROM "rack" WHERE $timeFilter '
            'GROUP BY time($__interval), "rack" fill(none)')))
    )


def job() -> dash.Dashboard:
    where = "WHERE \"job_id\" = '$job'"
    variable = (dash.QueryVariable("job").label("job").datasource(INFLUX)
                .query('SHOW TAG VALUES FROM "job_window" WITH KEY = "job_id"')
                .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED))
    return (
        base(JOB_DASHBOARD_UID, "gridwatt: job",
             "One job: its totals (as `gridwatt job` reports them), power, utilisation, intensity and "
             "cumulative emissions over time. Link: /d/gridwatt-job?var-job=<job id>.")
        .with_variable(variable)
        .with_panel(tab("Job totals (whole job)", influx(
            'SELECT sum("energy_j") / 3600000 AS "IT kWh", sum("facility_energy_j") / 3600000 AS '
            '"facility kWh", sum("co2e_g") / 1000 AS "kg CO2e", sum("gpu_s") / 3600 AS "GPU-hours", '
            'sum("idle_energy_j") / 3600000 AS "idle kWh", '
            'sum("util_pct_s") / sum("gpu_s") AS "mean util %", '
            f'sum("facility_energy_j") / sum("energy_j") AS "mean PUE" FROM "job_window" {where}',
            fmt="table"), w=24))
        .with_panel(ts("IT power (mean per interval)", "watt", influx(
            f'SELECT sum("energy_j") * 1000 / $__interval_ms FROM "job_window" {where} AND $timeFilter '
            "GROUP BY time($__interval) fill(none)")))
        .with_panel(ts("GPU utilisation", "percent", influx(
            f'SELECT sum("util_pct_s") / sum("gpu_s") FROM "job_window" {where} AND $timeFilter '
            "GROUP BY time($__interval) fill(none)")))
        .with_panel(ts("Grid intensity seen by the job", "none", influx(
            f'SELECT sum("co2e_g") * 3600000 / sum("facility_energy_j") FROM "job_window" {where} '
            "AND $timeFilter GROUP BY time($__interval) fill(none)")))
        .with_panel(ts("Cumulative emissions", "masskg", influx(
            f'SELECT cumulative_sum(sum("co2e_g")) / 1000 FROM "job_window" {where} AND $timeFilter '
            "GROUP BY time($__interval) fill(none)")))
        .with_panel(st("Emissions so far (live, running job)", "massg", promql(
            'sum(gridwatt_job_co2e_grams_total{job_id="$job"})', "gCO2e", instant=True), PROM))
        .with_panel(st("GPUs (live, running job)", "none", promql(
            'max(gridwatt_job_gpus{job_id="$job"})', "GPUs", instant=True), PROM))
    )


def usage() -> dash.Dashboard:
    return (
        base("gridwatt-usage", "gridwatt: usage by user, account and job",
             "Energy and emissions by user and account (live: running jobs, from Prometheus) and by "
             "job (the record). The store keeps the user as a field of job points, not a tag, so "
             "per-user totals over time come from the job table or the API's scoped reads.")
        .with_panel(tab("Emissions and energy by user and account (live)", promql(
            "sum by (user, account) (gridwatt_job_co2e_grams_total) / 1000", "{{user}} {{account}}",
            instant=True), PROM))
        .with_panel(ts("IT energy by user (live)", "joule", promql(
            "sum by (user) (gridwatt_job_it_energy_joules_total)", "{{user}}"), PROM))
        .with_panel(tab("Usage by job", influx(
            'SELECT sum("energy_j") / 3600000 AS "IT kWh", sum("co2e_g") / 1000 AS "kg CO2e", '
            'sum("gpu_s") / 3600 AS "GPU-hours" FROM "job_window" WHERE $timeFilter GROUP BY "job_id"',
            fmt="table"), w=24))
    )


def waste() -> dash.Dashboard:
    link = (dash.DashboardLink("job dashboard")
            .url(f"/d/{JOB_DASHBOARD_UID}?var-job=${{__data.fields.scope}}").keep_time(True))
    alerts_table = (tab("Alerts firing or pending (live)", promql(
        "max by (rule, severity, scope_kind, scope, state) (gridwatt_alert_active)",
        "{{rule}} {{scope_kind}} {{scope}}", instant=True), PROM, w=24).data_links([link]))
    return (
        base("gridwatt-waste", "gridwatt: idle waste and alerts",
             "Energy and emissions of idle GPUs; alerts and what they wasted.")
        .with_panel(alerts_table)
        .with_panel(ts("Wasted energy of alerts (live)", "joule", promql(
            "sum by (rule, scope_kind) (gridwatt_alert_wasted_energy_joules_total)",
            "{{rule}} {{scope_kind}}"), PROM))
        .with_panel(ts("Wasted emissions of alerts (live)", "massg", promql(
            "sum by (rule, scope_kind) (gridwatt_alert_wasted_co2e_grams_total)",
            "{{rule}} {{scope_kind}}"), PROM))
        .with_panel(ts("Idle energy by rack", "kwatth", influx(
            'SELECT sum("idle_energy_kwh") FROM "rack" WHERE $timeFilter GROUP BY time($__interval), "rack" '
            "fill(none)")))
        .with_panel(tab("Idle energy by job", influx(
            'SELECT sum("idle_energy_j") / 3600000 AS "idle kWh", sum("idle_s") / sum("gpu_s") AS '
            '"idle share" FROM "job_window" WHERE $timeFilter GROUP BY "job_id"', fmt="table")))
    )


DASHBOARDS = {"overview": overview, "job": job, "usage": usage, "waste": waste}


def render() -> dict[str, str]:
    """File name → dashboard JSON text."""
    enc = JSONEncoder(sort_keys=True, indent=2)
    return {f"gridwatt-{name}.json": enc.encode(build().build()) + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files")
    args = parser.parse_args()
    stale = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run deploy/grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
