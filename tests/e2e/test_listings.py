"""Who ran what, job listings and usage (issue #10, points 2 and 3), with real processes: two agent
processes replay a multi-user trace (users, accounts, partitions, job names) into a collector process
on a real InfluxDB; users, an account manager and an operator list jobs and usage with `gridwatt`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridwatt.collector.auth import hash_token
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import CollectorProcess, new_collector_ports, start_agent, toml_str
from tests.conftest import influx_query

TOKENS = {
    "alice": "alice-read-token-0123456789abcdef",
    "bob": "bob-read-token-fedcba9876543210",
    "mgr": "mgr-read-token-aabbccddeeff0011",
    "ops": "ops-read-token-00112233445566778899",
}
ROLES = {"alice": ("user", []), "bob": ("user", []), "mgr": ("account-manager", ["physics"]),
         "ops": ("operator", [])}
H = 3600
#: rack of each node, its PUE and its zone's intensity (g/kWh)
RACK = {"n1": ("r1", 1.2, 300.0, "Z1"), "n2": ("r2", 1.5, 500.0, "Z2")}
#: (node, gpu, start h, end h, power W, util %, job, user, account, partition, job name); gaps: idle 40 W
SEGMENTS = [
    ("n1", 0, 0.0, 2.0, 300.0, 90, "a1", "alice", "physics", "gpu", "train-a"),
    ("n1", 0, 2.0, 3.0, 250.0, 80, "a2", "alice", "physics", "gpu", "eval-a"),
    ("n1", 1, 0.0, 3.0, 200.0, 70, "b1", "bob", "chem", "gpu", "md-run"),
    ("n2", 0, 0.5, 2.5, 350.0, 95, "c1", "carol", "physics", "big", "sweep"),
    ("n2", 1, 1.0, 3.0, 400.0, 99, "b2", "bob", "chem", "big", "md-run-2"),
]
IDLE_W = 40.0
#: Market-based factors: zone Z1 has a PPA for the first hour, then its residual mix; Z2 has neither.
PPA_G, RESIDUAL_G, EMBODIED_G = 20.0, 450.0, 25.0
REPORTS = f"""[reports]
time_zone = "Etc/GMT+2"
embodied_g_per_gpu_hour = {EMBODIED_G}
embodied_source = "test factor"
[[reports.market]]
zone = "Z1"
residual_mix_g_per_kwh = {RESIDUAL_G}
residual_mix_source = "test residual mix 2022"
[[reports.market.contracts]]
start = "2022-06-01T00:00:00Z"
end = "2022-06-01T01:00:00Z"
g_per_kwh = {PPA_G}
source = "test PPA"
"""
START = "2022-06-01T00:00:00Z"


def _ts(hours: float) -> str:
    total_s = int(hours * H)
    return f"2022-06-01T{total_s // H:02d}:{total_s % H // 60:02d}:00Z"


def _trace(path: Path) -> None:
    rows = ["time,node,gpu,power_w,util_pct,job_id,user,account,partition,job_name"]
    for node in ("n1", "n2"):
        for gpu in (0, 1):
            segs = sorted((s for s in SEGMENTS if s[0] == node and s[1] == gpu), key=lambda s: s[2])
            t = 0.0
            for s in segs:
                if s[2] > t:
                    rows.append(f"{_ts(t)},{node},{gpu},{IDLE_W},0,,,,,")
                rows.append(f"{_ts(s[2])},{node},{gpu},{s[4]},{s[5]},{s[6]},{s[7]},{s[8]},{s[9]},{s[10]}")
                t = s[3]
            if t < 3.0:
                rows.append(f"{_ts(t)},{node},{gpu},{IDLE_W},0,,,,,")
            rows.append(f"{_ts(3.0)},{node},{gpu},0,0,,,,,")
    path.write_text("\n".join(rows) + "\n")


def hand_totals(select: Any) -> dict[str, float]:
    """IT kWh, facility kWh, kg CO2e and GPU-hours of the segments ``select`` keeps, by hand."""
    it = fac = co2 = gpu_h = 0.0
    for s in SEGMENTS:
        if not select(s):
            continue
        _rack, pue, ci, _zone = RACK[s[0]]
        kwh = s[4] * (s[3] - s[2]) * H / 3.6e6
        it += kwh
        fac += kwh * pue
        co2 += kwh * pue * ci / 1000
        gpu_h += s[3] - s[2]
    return {"it_energy_kwh": it, "facility_energy_kwh": fac, "co2e_kg": co2, "gpu_hours": gpu_h}


@pytest.fixture(scope="module")
def collector(
    tmp_path_factory: pytest.TempPathFactory, influxdb: LocalInfluxDB
) -> Iterator[CollectorProcess]:
    tmp = tmp_path_factory.mktemp("listings")
    principals = ""
    for name, (role, accounts) in ROLES.items():
        principals += (f'[[principals]]\nname = "{name}"\nrole = "{role}"\n'
                       f'accounts = {json.dumps(accounts)}\n'
                       f'token = "{hash_token(TOKENS[name])}"\n\n')
    (tmp / "principals.toml").write_text(principals)
    (tmp / "principals.toml").chmod(0o600)
    _trace(tmp / "trace.csv")
    grpc_port, http_port = new_collector_ports()
    zones = "".join(f'[[zones]]\nname = "{z}"\nintensity = {{ kind = "constant", g_per_kwh = {ci} }}\n'
                    for (_r, _p, ci, z) in RACK.values())
    racks = "".join(f'[[racks]]\nname = "{r}"\nzone = "{z}"\npue = {pue}\nnodes = ["{node}"]\n'
                    for node, (r, pue, _ci, z) in RACK.items())
    cfg = tmp / "collector.toml"
    cfg.write_text(
        f'[server]\ngrpc_listen = "127.0.0.1:{grpc_port}"\nhttp_listen = "127.0.0.1:{http_port}"\n'
        f'[influxdb]\nurl = {toml_str(influxdb.url)}\ndatabase = "listings_e2e"\n'
        f"[reads]\nprincipals_file = {toml_str(tmp / 'principals.toml')}\n{REPORTS}{zones}{racks}"
    )
    proc = CollectorProcess(cfg, grpc_port, http_port).start()
    try:
        agents = []
        for node in RACK:
            agent_cfg = tmp / f"agent-{node}.toml"
            agent_cfg.write_text(
                f'node = "{node}"\ninterval_s = 60\nspool_path = {toml_str(tmp / f"spool-{node}.db")}\n'
                f'[source]\nkind = "sim"\nsim = {{ trace = {toml_str(tmp / "trace.csv")} }}\n'
                f'[collector]\naddress = "127.0.0.1:{grpc_port}"\n'
            )
            agents.append(start_agent(agent_cfg, quiet=True))
        assert [a.wait(timeout=300) for a in agents] == [0, 0]
        yield proc
    finally:
        proc.stop()


def gridwatt(collector: CollectorProcess, who: str, *args: str) -> Any:
    proc = subprocess.run(
        [sys.executable, "-m", "gridwatt.cli", "--collector", collector.http_url, *args, "--json"],
        capture_output=True, text=True, timeout=60, env={"GRIDWATT_TOKEN": TOKENS[who]},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_who_ran_what_is_stored_on_job_windows(collector: CollectorProcess, influxdb: LocalInfluxDB) -> None:
    (res,) = influx_query(
        influxdb.url, "listings_e2e",
        'SELECT last("user"), last("account"), last("partition"), last("job_name") FROM "job_window" '
        'GROUP BY "job_id"',
    )
    got = {s["tags"]["job_id"]: tuple(s["values"][0][1:]) for s in res["series"]}
    for seg in SEGMENTS:
        assert got[seg[6]] == (seg[7], seg[8], seg[9], seg[10])
    # who ran what are fields: the job_window series are job x node x rack only
    (series,) = influx_query(influxdb.url, "listings_e2e", 'SHOW TAG KEYS FROM "job_window"')
    assert sorted(v[0] for v in series["series"][0]["values"]) == ["job_id", "node", "rack"]


def test_usage_by_account_equals_the_sum_of_its_job_reports(collector: CollectorProcess) -> None:
    usage = gridwatt(collector, "ops", "usage", "--group-by", "account")
    groups = {g["account"]: g for g in usage["groups"]}
    assert sorted(groups) == ["", "chem", "physics"]  # "": time no job claimed
    for account in ("physics", "chem"):
        jobs = {s[6] for s in SEGMENTS if s[8] == account}
        reports = [gridwatt(collector, "ops", "job", job) for job in sorted(jobs)]
        for key in ("it_energy_kwh", "facility_energy_kwh", "co2e_kg", "gpu_hours", "idle_energy_kwh"):
            assert groups[account][key] == pytest.approx(sum(r[key] for r in reports), rel=1e-9, abs=1e-12)
        hand = hand_totals(lambda s, a=account: s[8] == a)
        for key, value in hand.items():
            assert groups[account][key] == pytest.approx(value, rel=1e-9)
        assert groups[account]["jobs"] == len(jobs)
    # rack and zone groups cover everything, idle time included
    everything = sum(g["it_energy_kwh"] for g in groups.values())
    for group_by in ("rack", "zone", "user"):
        other = gridwatt(collector, "ops", "usage", "--group-by", group_by)["groups"]
        assert sum(g["it_energy_kwh"] for g in other) == pytest.approx(everything, rel=1e-12)
    idle_kwh = IDLE_W * (0.5 + 0.5 + 1.0) * H / 3.6e6
    assert everything == pytest.approx(hand_totals(lambda s: True)["it_energy_kwh"] + idle_kwh, rel=1e-9)
    zones = {g["zone"]: g for g in gridwatt(collector, "ops", "usage", "--group-by", "zone")["groups"]}
    assert zones["Z1"]["co2e_kg"] == pytest.approx(hand_totals(lambda s: s[0] == "n1")["co2e_kg"], rel=1e-9)


def test_each_role_sees_its_own_usage_and_jobs(collector: CollectorProcess) -> None:
    alice = gridwatt(collector, "alice", "usage", "--group-by", "account")["groups"]
    assert [g["account"] for g in alice] == ["physics"]
    assert alice[0]["jobs"] == 2
    assert alice[0]["it_energy_kwh"] == pytest.approx(hand_totals(lambda s: s[7] == "alice")["it_energy_kwh"],
                                                      rel=1e-9)
    mgr = gridwatt(collector, "mgr", "usage", "--group-by", "user")["groups"]
    assert [g["user"] for g in mgr] == ["alice", "carol"]
    assert gridwatt(collector, "bob", "usage", "--group-by", "zone")["groups"][1]["co2e_kg"] == pytest.approx(
        hand_totals(lambda s: s[6] == "b2")["co2e_kg"], rel=1e-9)
    listed = {role: [j["job_id"] for j in gridwatt(collector, role, "jobs")["jobs"]] for role in TOKENS}
    # newest (latest end) first, ties by job id
    assert listed == {"alice": ["a2", "a1"], "bob": ["b1", "b2"], "mgr": ["a2", "c1", "a1"],
                      "ops": ["a2", "b1", "b2", "unattributed", "c1", "a1"]}
    # the account manager reads the reports of its account's jobs, and no other
    assert gridwatt(collector, "mgr", "job", "c1")["job_id"] == "c1"
    hidden = subprocess.run([sys.executable, "-m", "gridwatt.cli", "--collector", collector.http_url,
                             "job", "b1"], capture_output=True, text=True, timeout=60,
                            env={"GRIDWATT_TOKEN": TOKENS["mgr"]})
    assert hidden.returncode == 1 and "no samples stored for job 'b1' (HTTP 404" in hidden.stderr
    # asking for someone else's jobs gives none; an operator filters by user or account
    assert gridwatt(collector, "alice", "jobs", "--user", "bob")["jobs"] == []
    chem = gridwatt(collector, "ops", "jobs", "--account", "chem")["jobs"]
    assert [j["job_id"] for j in chem] == ["b1", "b2"]


def test_listing_rows_are_job_summaries_and_pages_walk_the_list(collector: CollectorProcess) -> None:
    rows = gridwatt(collector, "ops", "jobs", "--user", "carol")["jobs"]
    assert len(rows) == 1
    c1 = rows[0]
    who = (c1["user"], c1["account"], c1["partition"], c1["job_name"])
    assert who == ("carol", "physics", "big", "sweep")
    assert c1["nodes"] == ["n2"] and c1["end"] == "2022-06-01T02:30:00Z"
    report = gridwatt(collector, "ops", "job", "c1")
    for key in ("it_energy_kwh", "co2e_kg", "gpu_hours", "mean_util_pct"):
        assert c1[key] == pytest.approx(report[key], rel=1e-12)
    seen: list[str] = []
    cursor: list[str] = []
    while True:
        page = gridwatt(collector, "ops", "jobs", "--limit", "2", *cursor)
        seen += [j["job_id"] for j in page["jobs"]]
        assert len(page["jobs"]) <= 2
        if not page["next_cursor"]:
            break
        cursor = ["--cursor", page["next_cursor"]]
    assert seen == ["a2", "b1", "b2", "unattributed", "c1", "a1"]
    # a time range: only the windows inside it
    early = gridwatt(collector, "ops", "jobs", "--since", START, "--until", "2022-06-01T01:00:00Z")["jobs"]
    assert sorted(j["job_id"] for j in early) == ["a1", "b1", "c1", "unattributed"]
    a1 = next(j for j in early if j["job_id"] == "a1")
    assert a1["it_energy_kwh"] == pytest.approx(300.0 * H / 3.6e6, rel=1e-9)


def test_bad_listing_requests_are_one_line_errors(collector: CollectorProcess) -> None:
    cases = {
        ("jobs", "--limit", "0"): "limit: 0 is outside 1..1000",
        ("jobs", "--cursor", "!!"): "cursor: '!!' is not a cursor",
        ("jobs", "--since", "yesterday"): "since/until:",
        ("usage", "--since", "2022-06-02T00:00:00Z", "--until", START): "until must be after",
    }
    for args, expected in cases.items():
        proc = subprocess.run(
            [sys.executable, "-m", "gridwatt.cli", "--collector", collector.http_url, *args],
            capture_output=True, text=True, timeout=60, env={"GRIDWATT_TOKEN": TOKENS["ops"]},
        )
        assert proc.returncode == 1 and expected in proc.stderr and "(HTTP 400" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def hand_market_kg(select: Any) -> float:
    """Market-based kg CO2e of the selected segments, hour by hour, by hand."""
    total_g = 0.0
    for s in SEGMENTS:
        if not select(s):
            continue
        _rack, pue, ci, zone = RACK[s[0]]
        for hour in range(3):
            overlap_h = max(0.0, min(s[3], hour + 1) - max(s[2], hour))
            facility_kwh = s[4] * overlap_h * H / 3.6e6 * pue
            factor = ci if zone == "Z2" else (PPA_G if hour == 0 else RESIDUAL_G)
            total_g += facility_kwh * factor
    return total_g / 1000


def _report(collector: CollectorProcess, who: str, fmt: str, out: Path | None = None) -> str:
    args = [sys.executable, "-m", "gridwatt.cli", "--collector", collector.http_url, "report",
            "--since", START, "--until", "2022-06-02T00:00:00Z", "--by", "account", "--format", fmt]
    proc = subprocess.run(args + (["--output", str(out)] if out else []), capture_output=True, text=True,
                          timeout=120, env={"GRIDWATT_TOKEN": TOKENS[who]})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_report_location_and_market_based_by_hand(collector: CollectorProcess) -> None:
    body = json.loads(_report(collector, "ops", "json"))
    groups = {g["account"]: g for g in body["groups"]}
    for account in ("physics", "chem"):
        def mine(s: Any, a: str = account) -> bool:
            return bool(s[8] == a)
        hand = hand_totals(mine)
        g = groups[account]
        assert g["location_based_co2e_kg"] == pytest.approx(hand["co2e_kg"], rel=1e-9)
        assert g["market_based_co2e_kg"] == pytest.approx(hand_market_kg(mine), rel=1e-9)
        assert g["embodied_co2e_kg"] == pytest.approx(EMBODIED_G * hand["gpu_hours"] / 1000, rel=1e-9)
        sci = (hand["co2e_kg"] * 1000 + EMBODIED_G * hand["gpu_hours"]) / hand["gpu_hours"]
        assert g["sci_g_per_unit"] == pytest.approx(sci, rel=1e-9)
    assert body["labels"]["location_based"] == "Scope 2, location-based (GHG Protocol Scope 2 Guidance)"
    assert body["labels"]["market_based"] == "Scope 2, market-based (GHG Protocol Scope 2 Guidance)"
    zones = {z["zone"]: z for z in body["zones"]}
    assert zones["Z1"]["market_factor_sources"] == [
        "contract: test PPA", "residual mix: test residual mix 2022"]
    assert zones["Z2"]["market_factor_sources"] == [
        "location-based factor (no contractual instrument or residual mix configured)"]
    assert zones["Z1"]["location_factor_source"] == "constant 300 gCO2e/kWh (configured)"
    assert zones["Z1"]["emission_factor"] == "lifecycle"
    assert {r["rack"]: r["pue_source"] for r in body["racks"]} == {
        "r1": "constant 1.2 (configured)", "r2": "constant 1.5 (configured)"}
    # days in Etc/GMT+2 (UTC-2): the hours from 00:00Z and 01:00Z are on May 31, 02:00Z on June 1
    assert [d["date"] for d in body["daily"]] == ["2022-05-31", "2022-06-01"]
    total_fac = sum(d["facility_energy_kwh"] for d in body["daily"])
    assert total_fac == pytest.approx(body["totals"]["facility_energy_kwh"], rel=1e-12)
    # a user's report holds their jobs only
    alice = json.loads(_report(collector, "alice", "json"))
    assert [g["account"] for g in alice["groups"]] == ["physics"]
    assert alice["totals"]["jobs"] == 2
    alice_market = hand_market_kg(lambda s: s[7] == "alice")
    assert alice["totals"]["market_based_co2e_kg"] == pytest.approx(alice_market, rel=1e-9)


def test_pdf_report_holds_the_csv_totals(collector: CollectorProcess, tmp_path: Path) -> None:
    text = _report(collector, "ops", "csv")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    header, *rows = list(csv.reader(lines))
    assert header[:3] == ["account", "jobs", "gpu_hours"]
    assert [r[0] for r in rows] == ["(none)", "chem", "physics", "TOTAL"]
    total = dict(zip(header, rows[-1], strict=True))
    assert float(total["location_based_co2e_kg"]) == pytest.approx(
        float(json.loads(_report(collector, "ops", "json"))["totals"]["location_based_co2e_kg"]), abs=5e-4)
    assert "# zone Z2: location-based factor constant 500 gCO2e/kWh (configured), emission factor type " \
           "lifecycle" in text
    assert "days in time zone Etc/GMT+2" in text
    pdf = tmp_path / "report.pdf"
    _report(collector, "ops", "pdf", pdf)
    assert pdf.read_bytes().startswith(b"%PDF-")
    pdf_text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                              check=True, timeout=60).stdout
    for key in header[1:]:
        assert total[key] in pdf_text, (key, total[key])
    for row in rows[:-1]:  # every group's figures
        for value in row[1:]:
            assert value in pdf_text
    for statement in ("Scope 2, location-based (GHG Protocol Scope 2 Guidance)", "contract: test PPA",
                      "Etc/GMT+2", "PUE constant 1.5 (configured)", "25 g CO2e per GPU-hour (test factor)",
                      "SCI (g CO2e per GPU-hour)"):
        assert statement in pdf_text
    subprocess.run(["pdftoppm", "-r", "30", "-png", str(pdf), str(tmp_path / "page")], check=True,
                   timeout=60)
    pages = sorted(tmp_path.glob("page*.png"))
    # the title page, the groups' tables, the daily chart
    assert len(pages) >= 3 and all(p.stat().st_size > 1000 for p in pages)
    last_page = subprocess.run(["pdftotext", "-f", str(len(pages)), str(pdf), "-"], capture_output=True,
                               text=True, check=True, timeout=60).stdout
    assert "Daily energy and emissions (Etc/GMT+2)" in last_page and "2022-05-31" in last_page
