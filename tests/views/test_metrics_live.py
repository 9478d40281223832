"""/metrics after a real replay: promtool is clean, and a real Prometheus gives the reports' totals."""

from __future__ import annotations

import subprocess
import urllib.parse
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from gridwatt.collector.accounting import J_PER_KWH
from gridwatt.demo import EVAL_JOB, JOB
from tests.views.servers import LocalPrometheus, Replay


def scrape(url: str, accept: str = "") -> tuple[str, str]:
    req = urllib.request.Request(url + "/metrics", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read().decode(), resp.headers["Content-Type"]


def test_promtool_check_metrics_is_clean(replay: Replay) -> None:
    text, ctype = scrape(replay.url)
    assert ctype.startswith("text/plain; version=0.0.4")
    assert "gridwatt_rack_it_energy_joules_total{" in text
    done = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout == b"" and done.stderr == b"", (done.stdout, done.stderr)


def test_openmetrics_exposition_has_units_and_parses(replay: Replay) -> None:
    text, ctype = scrape(replay.url, "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    assert ctype.startswith("application/openmetrics-text; version=1.0.0")
    assert text.endswith("# EOF\n")
    assert "# UNIT gridwatt_job_co2e_grams grams\n" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}  # the reference parser
    fam = families["gridwatt_job_it_energy_joules"]
    assert fam.type == "counter" and fam.unit == "joules"
    jobs = {s.labels["job_id"] for s in fam.samples}
    assert jobs == {JOB, EVAL_JOB, "unattributed"}


def _by(result: list[dict], label: str) -> dict[str, float]:
    return {r["metric"][label]: float(r["value"][1]) for r in result}


def test_prometheus_job_and_rack_totals_equal_reports(replay: Replay, prometheus: LocalPrometheus) -> None:
    checks = 0
    for job in (JOB, EVAL_JOB, "unattributed"):
        report = replay.get("/v1/jobs/" + urllib.parse.quote(job))
        sel = f'{{job_id="{job}"}}'
        it_j = _by(prometheus.query("gridwatt_job_it_energy_joules_total" + sel), "job_id")[job]
        fac_j = _by(prometheus.query("gridwatt_job_facility_energy_joules_total" + sel), "job_id")[job]
        co2_g = _by(prometheus.query("gridwatt_job_co2e_grams_total" + sel), "job_id")[job]
        idle_j = _by(prometheus.query("gridwatt_job_idle_energy_joules_total" + sel), "job_id")[job]
        gpu_s = _by(prometheus.query("gridwatt_job_gpu_seconds_total" + sel), "job_id")[job]
        gpus = _by(prometheus.query("gridwatt_job_gpus" + sel), "job_id")[job]
        assert abs(it_j / J_PER_KWH - report["it_energy_kwh"]) <= 1e-3 * report["it_energy_kwh"]
        assert abs(fac_j / J_PER_KWH - report["facility_energy_kwh"]) <= 1e-3 * report["facility_energy_kwh"]
        assert abs(co2_g / 1000 - report["co2e_kg"]) <= 1e-3 * report["co2e_kg"]
        idle_kwh = report["idle_energy_kwh"]
        assert abs(idle_j / J_PER_KWH - idle_kwh) <= 1e-3 * max(idle_kwh, 1e-9)
        assert abs(gpu_s / 3600 - report["gpu_hours"]) <= 1e-3 * report["gpu_hours"]
        assert gpus == report["gpu_count"]
        checks += 1
    racks = {r["rack"]: r for r in replay.get("/v1/racks")["racks"]}
    assert set(racks) == {"rack-a", "rack-b"}
    it = _by(prometheus.query("sum by (rack) (gridwatt_rack_it_energy_joules_total)"), "rack")
    fac = _by(prometheus.query("sum by (rack) (gridwatt_rack_facility_energy_joules_total)"), "rack")
    co2 = _by(prometheus.query("sum by (rack) (gridwatt_rack_co2e_grams_total)"), "rack")
    gpu_it = _by(prometheus.query("sum by (rack) (gridwatt_gpu_it_energy_joules_total)"), "rack")
    for rack, r in racks.items():
        assert abs(it[rack] / J_PER_KWH - r["it_energy_kwh"]) <= 1e-3 * r["it_energy_kwh"]
        assert abs(fac[rack] / J_PER_KWH - r["facility_energy_kwh"]) <= 1e-3 * r["facility_energy_kwh"]
        assert abs(co2[rack] / 1000 - r["co2e_kg"]) <= 1e-3 * r["co2e_kg"]
        assert abs(gpu_it[rack] - it[rack]) <= 1e-9 * it[rack]  # the levels agree exactly
        checks += 1
    # the job totals add up to the racks' (every GPU-second goes to a job or to unattributed)
    all_jobs = float(prometheus.query("sum(gridwatt_job_it_energy_joules_total)")[0]["value"][1])
    assert abs(all_jobs - sum(it.values())) <= 1e-6 * all_jobs
    # gauges: PUE in force (rack-b's schedule steps to 1.18 half way), intensity and its source
    pue = _by(prometheus.query("gridwatt_rack_pue_ratio"), "rack")
    assert pue == {"rack-a": 1.2, "rack-b": 1.18}
    (ci,) = prometheus.query("gridwatt_zone_carbon_intensity_grams_per_kilowatt_hour")
    assert ci["metric"]["zone"] == "DE" and ci["metric"]["emission_factor"] == "lifecycle"
    assert ci["metric"]["source"]
    assert checks == 5


def test_alert_state_and_waste_counters_equal_the_alerts_api(replay: Replay) -> None:
    alerts = replay.get("/v1/alerts")["alerts"]
    fired = [a for a in alerts if a["fired_at"] is not None]
    assert fired, alerts  # the replay's 40-minute data-loader stall fires job-idle
    text, _ = scrape(replay.url)
    for rule, kind in {(a["rule"], a["scope_kind"]) for a in fired}:
        want_j = sum(a["wasted_energy_kwh"] for a in fired if (a["rule"], a["scope_kind"]) == (rule, kind))
        labels = f'{{rule="{rule}",scope_kind="{kind}"}}'
        line = next(x for x in text.splitlines()
                    if x.startswith("gridwatt_alert_wasted_energy_joules_total" + labels + " "))
        assert abs(float(line.rsplit(" ", 1)[1]) - want_j * J_PER_KWH) <= 1e-6 * want_j * J_PER_KWH
    active = [x for x in text.splitlines() if x.startswith("gridwatt_alert_active{")]
    open_alerts = [a for a in alerts if a["state"] in ("firing", "pending")]
    assert len(active) == len(open_alerts)
