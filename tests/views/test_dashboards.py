"""Every query of every Grafana dashboard panel, run against the real stores after a replay.

InfluxQL panels run against the replay's InfluxDB with Grafana's macros filled in as Grafana
does ($timeFilter as a millisecond range over the replay, $__interval 1h); PromQL panels against
a real Prometheus that scraped the replay's collector. Panels with figures are checked against
the job and rack reports of the HTTP API (what `gridwatt job` and `gridwatt racks` print).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gridwatt.collector.accounting import J_PER_KWH
from gridwatt.demo import EVAL_JOB, JOB, START
from gridwatt.timeutil import parse_time_ns
from tests.conftest import REPO, influx_query
from tests.views.servers import LocalPrometheus, Replay

DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
INTERVAL_S = 3600


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def panels() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        out += [(board["uid"], p) for p in board["panels"] if p.get("type") != "row"]
    return out


def test_dashboards_are_the_generators_output() -> None:
    pytest.importorskip("grafana_foundation_sdk")
    done = subprocess.run([sys.executable, str(REPO / "deploy" / "grafana" / "generate.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    uids = {json.loads(p.read_text())["uid"] for p in DASHBOARDS.glob("*.json")}
    assert uids == {"gridwatt-overview", "gridwatt-job", "gridwatt-usage", "gridwatt-waste"}
    job_board = json.loads((DASHBOARDS / "gridwatt-job.json").read_text())
    assert [v["name"] for v in job_board["templating"]["list"]] == ["job"]


def influx_rows(replay: Replay, q: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """Run a panel's InfluxQL with Grafana's macros filled in; (tags, row) pairs."""
    start_ms = parse_time_ns(START) // 1_000_000
    end_ms = start_ms + int(replay.hours * 3600 * 1000)
    q = (q.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
         .replace("$__interval_ms", str(INTERVAL_S * 1000)).replace("$__interval", f"{INTERVAL_S}s")
         .replace("$job", JOB))
    (result,) = influx_query(replay.influx.url, replay.database, q)
    rows = []
    for s in result.get("series") or []:
        for values in s["values"]:
            rows.append((s.get("tags") or {}, dict(zip(s["columns"], values, strict=True))))
    return rows


def values(rows: list[tuple[dict[str, str], dict[str, Any]]]) -> list[float]:
    """The value column of time-series rows."""
    return [float(next(v for k, v in row.items() if k != "time")) for _, row in rows]


def test_every_influxql_panel_returns_the_reports_figures(replay: Replay) -> None:
    racks = {r["rack"]: r for r in replay.get("/v1/racks")["racks"]}
    reports = {j: replay.get("/v1/jobs/" + urllib.parse.quote(j)) for j in (JOB, EVAL_JOB, "unattributed")}
    job = reports[JOB]
    all_it = sum(r["it_energy_kwh"] for r in racks.values())

    def by_tag(rows: list[tuple[dict[str, str], dict[str, Any]]], tag: str) -> dict[str, dict[str, Any]]:
        return {t[tag]: row for t, row in rows}

    def rack_table(rows: Any) -> None:
        got = by_tag(rows, "rack")
        assert set(got) == set(racks)
        for name, r in racks.items():
            assert close(got[name]["IT kWh"], r["it_energy_kwh"])
            assert close(got[name]["facility kWh"], r["facility_energy_kwh"])
            assert close(got[name]["kg CO2e"], r["co2e_kg"])
            assert close(got[name]["idle kWh"], r["idle_energy_kwh"])

    def zone_table(rows: Any) -> None:
        assert close(by_tag(rows, "zone")["DE"]["kg CO2e"], sum(r["co2e_kg"] for r in racks.values()))

    def rack_power(rows: Any) -> None:
        assert close(sum(values(rows)) * INTERVAL_S / J_PER_KWH, all_it)

    def zone_emissions(rows: Any) -> None:
        assert close(sum(values(rows)), sum(r["co2e_kg"] for r in racks.values()))

    def between(lo: float, hi: float) -> Callable[[Any], None]:
        def check(rows: Any) -> None:
            bad = [v for v in values(rows) if not lo - 1e-9 <= v <= hi + 1e-9]
            assert not bad, bad
        return check

    def pue_by_rack(rows: Any) -> None:
        half = int(replay.hours / 2)  # rack-b's schedule steps from 1.35 to 1.18 half way
        want = {"rack-a": [1.2] * int(replay.hours), "rack-b": [1.35] * half + [1.18] * half}
        got: dict[str, list[float]] = {}
        for tags, row in rows:
            got.setdefault(tags["rack"], []).append(float(row["sum_sum"]))
        assert set(got) == set(want)
        for rack, vals in want.items():
            assert all(close(a, b) for a, b in zip(got[rack], vals, strict=True)), (rack, got[rack])

    def job_totals(rows: Any) -> None:
        ((_, row),) = rows
        assert close(row["IT kWh"], job["it_energy_kwh"])
        assert close(row["facility kWh"], job["facility_energy_kwh"])
        assert close(row["kg CO2e"], job["co2e_kg"])
        assert close(row["GPU-hours"], job["gpu_hours"])
        assert close(row["idle kWh"], job["idle_energy_kwh"])
        assert close(row["mean util %"], job["mean_util_pct"])
        assert close(row["mean PUE"], job["mean_pue"])

    def job_power(rows: Any) -> None:
        assert len(rows) == int(replay.hours)
        assert close(sum(values(rows)) * INTERVAL_S / J_PER_KWH, job["it_energy_kwh"])

    def cumulative(rows: Any) -> None:
        vals = values(rows)
        assert vals == sorted(vals) and close(vals[-1], job["co2e_kg"])

    def usage_by_job(rows: Any) -> None:
        got = by_tag(rows, "job_id")
        assert set(got) == set(reports)
        for j, rep in reports.items():
            assert close(got[j]["IT kWh"], rep["it_energy_kwh"]) and close(got[j]["kg CO2e"], rep["co2e_kg"])
            assert close(got[j]["GPU-hours"], rep["gpu_hours"])

    def idle_by_rack(rows: Any) -> None:
        assert close(sum(values(rows)), sum(r["idle_energy_kwh"] for r in racks.values()))

    def idle_by_job(rows: Any) -> None:
        got = by_tag(rows, "job_id")
        for j, rep in reports.items():
            assert close(got[j]["idle kWh"], rep["idle_energy_kwh"], 1e-9) or rep["idle_energy_kwh"] == 0
            assert close(got[j]["idle share"], rep["idle_share"]) or rep["idle_share"] == 0

    checks: dict[str, Callable[[Any], None]] = {
        "Energy and emissions by rack": rack_table,
        "Energy and emissions by zone": zone_table,
        "IT power by rack (mean per interval)": rack_power,
        "Emissions by zone": zone_emissions,
        "Grid intensity by zone (energy-weighted)": between(100.0, 1000.0),
        "PUE by rack (energy-weighted)": pue_by_rack,
        "GPU utilisation by rack": between(0.0, 100.0),
        "Idle share of IT energy by rack": between(0.0, 1.0),
        "Job totals (whole job)": job_totals,
        "IT power (mean per interval)": job_power,
        "GPU utilisation": between(0.0, 100.0),
        "Grid intensity seen by the job": between(100.0, 1000.0),
        "Cumulative emissions": cumulative,
        "Usage by job": usage_by_job,
        "Idle energy by rack": idle_by_rack,
        "Idle energy by job": idle_by_job,
    }
    ran = set()
    for uid, panel in panels():
        for target in panel["targets"]:
            if target.get("datasource", {}).get("type") != "influxdb":
                continue
            rows = influx_rows(replay, target["query"])
            assert rows, f"{uid}: {panel['title']!r} returned nothing"
            checks[panel["title"]](rows)
            ran.add(panel["title"])
    assert ran == set(checks)


def test_every_promql_panel_returns_the_reports_figures(replay: Replay, prometheus: LocalPrometheus) -> None:
    racks = replay.get("/v1/racks")["racks"]
    job = replay.get("/v1/jobs/" + JOB)
    jobs_kg = sum(replay.get("/v1/jobs/" + urllib.parse.quote(j))["co2e_kg"]
                  for j in (JOB, EVAL_JOB, "unattributed"))
    fired = [a for a in replay.get("/v1/alerts")["alerts"] if a["fired_at"]]
    now = time.time()

    def one(result: list[dict[str, Any]]) -> float:
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    checks: dict[str, Callable[[list[dict[str, Any]]], None]] = {
        "IT power now (live)": lambda r: None,
        "Emissions since collectors started (live)":
            lambda r: assert_close(one(r) / 1000, sum(x["co2e_kg"] for x in racks), 1e-3),
        "GPU utilisation now (live)": lambda r: None,
        "Intensity in force (live)": lambda r: None,
        "Power by rack (live)": lambda r: None,
        "PUE in force by rack (live)": lambda r: None,
        "Emissions so far (live, running job)": lambda r: assert_close(one(r) / 1000, job["co2e_kg"], 1e-3),
        "GPUs (live, running job)": lambda r: assert_close(one(r), job["gpu_count"], 0),
        "Emissions and energy by user and account (live)": lambda r: assert_close(one(r), jobs_kg, 1e-3),
        "IT energy by user (live)": lambda r: None,
        "Alerts firing or pending (live)": lambda r: None,
        "Wasted energy of alerts (live)": lambda r: assert_close(
            sum(float(s["values"][-1][1]) for s in r) / J_PER_KWH,
            sum(a["wasted_energy_kwh"] for a in fired), 1e-3),
        "Wasted emissions of alerts (live)": lambda r: assert_close(
            sum(float(s["values"][-1][1]) for s in r) / 1000, sum(a["wasted_co2e_kg"] for a in fired), 1e-3),
    }
    ran = set()
    for uid, panel in panels():
        for target in panel["targets"]:
            if "expr" not in target:
                continue
            expr = target["expr"].replace("$job", JOB)
            if target.get("instant"):
                result = prometheus.query(expr)
            else:
                result = prometheus.query_range(expr, now - 30, now, 5)
            title = panel["title"]
            alerts = replay.get("/v1/alerts")["alerts"]
            still_open = [a for a in alerts if a["state"] in ("firing", "pending")]
            if title == "Alerts firing or pending (live)":
                # one row per open alert (none open at the end of the replay: an empty table is right)
                assert len(result) == len(still_open), (result, still_open)
            else:
                assert result, f"{uid}: {title!r} returned nothing"
            checks[title](result)
            ran.add(title)
    assert ran == set(checks)


def assert_close(a: float, b: float, rel: float) -> None:
    assert abs(a - b) <= rel * max(abs(a), abs(b)), (a, b)


def test_provisioning_files_name_the_dashboards_datasources() -> None:
    text = (REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "gridwatt.yaml").read_text()
    used = {(t["datasource"]["type"], t["datasource"]["uid"]) for _, p in panels() for t in [p]}
    for kind, uid in used:
        assert f"uid: {uid}\n    type: {kind}\n" in text
    assert Path(REPO / "deploy" / "grafana" / "provisioning" / "dashboards" / "gridwatt.yaml").exists()
