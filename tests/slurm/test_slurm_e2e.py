"""gridwatt in a real Slurm: prolog/epilog job mapping, the job's figures at its end, idle jobs.

One Slurm 22.05 node (``tests/slurm_cluster.py``: munged, slurmctld, slurmd, MariaDB + slurmdbd)
with 4 fake GPUs runs ``deploy/slurm/gridwatt_slurm.py`` as its Prolog and Epilog. A real
``gridwatt-agent`` plays a trace on 4 simulated GPUs in real time and attributes them only
through the prolog's job-mapping files (the trace names no jobs); a real collector stores into
a real InfluxDB and raises alerts. Jobs run as ``nobody`` in account ``physics``, except the
idle job, which ``root`` runs in account ``ops`` (so that user's GPUs are all idle).

The trace: GPUs 0 and 1 busy (85-90 %), GPUs 2 and 3 idle (1-2 %), the power of each GPU
changing every second. Slurm gives a job the lowest free GPUs, so the first of two side-by-side
``--gres=gpu:2`` jobs is busy and the second one idle.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import AgentProcess, CollectorProcess, new_collector_ports, toml_str
from gridwatt.timeutil import NS_PER_S, format_time_ns, parse_time_ns
from tests.conftest import REPO, collector_toml, influx_query
from tests.slurm_cluster import SlurmCluster, available

# real Slurm daemons, agents and collectors as processes
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(available(accounting=True)), reason=available(accounting=True)),
]

SCRIPT = REPO / "deploy" / "slurm" / "gridwatt_slurm.py"
NODE = "gw1"
T0 = parse_time_ns("2024-01-01T00:00:00Z")
TRACE_S = 3600
PUE, CI = 1.2, 350.0
INTERVAL_S = 0.5
REPORT_TIMEOUT_S = 20.0


def power_w(gpu: int, second: int) -> float:
    return (300.0, 250.0, 80.0, 70.0)[gpu] + 10.0 * ((second * 7 + gpu * 3) % 5)


def util_pct(gpu: int, second: int) -> float:
    return 90.0 - second % 6 if gpu < 2 else 1.0 + second % 2


def write_trace(path: Path) -> None:
    rows = ["time,gpu,power_w,util_pct"]
    for gpu in range(4):
        rows += [f"{format_time_ns(T0 + s * NS_PER_S)},{gpu},{power_w(gpu, s)},{util_pct(gpu, s)}"
                 for s in range(TRACE_S)]
        rows.append(f"{format_time_ns(T0 + TRACE_S * NS_PER_S)},{gpu},0,0")
    path.write_text("\n".join(rows) + "\n")


def trace_energy_j(gpu: int, start_ns: int, end_ns: int) -> float:
    """∫ power over [start, end) of the trace (in trace time): the 1-second steps, summed by hand."""
    total = 0.0
    t = start_ns
    while t < end_ns:
        second = (t - T0) // NS_PER_S
        step_end = min(T0 + (second + 1) * NS_PER_S, end_ns)
        total += power_w(gpu, int(second)) * (step_end - t) / NS_PER_S
        t = step_end
    return total


@dataclass
class Stack:
    cluster: SlurmCluster
    collector: CollectorProcess
    agent: AgentProcess
    influx_url: str
    database: str
    mapping_dir: Path
    epilog_log: Path

    def q(self, query: str) -> list[dict[str, Any]]:
        rows = []
        for result in influx_query(self.influx_url, self.database, query):
            for series in result.get("series") or []:
                tags = series.get("tags") or {}
                rows += [{**tags, **dict(zip(series["columns"], v, strict=True))} for v in series["values"]]
        return rows

    def report(self, job: str) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "gridwatt.cli", "--collector", self.collector.http_url,
             "job", job, "--json"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert out.returncode == 0, f"gridwatt job {job}: {out.stderr}"
        import json

        report: dict[str, Any] = json.loads(out.stdout)
        return report

    def submit(self, seconds: float, *args: str, name: str = "job", user: str = "nobody") -> str:
        script = (
            "#!/bin/sh\n"
            'echo "slurm_job_gpus $SLURM_JOB_GPUS"\n'
            f'for f in {self.mapping_dir}/[0-9]*; do [ -e "$f" ] || continue; '
            'echo "map $(basename $f) $(tr "\\n" " " < $f)"; done\n'
            f"sleep {seconds}\n"
            "echo done\n"
        )
        return self.cluster.sbatch(script, *args, user=user, name=name)

    def output(self, job_id: str, name: str = "job") -> list[str]:
        return (self.cluster.base / "jobs" / f"{name}-{job_id}.out").read_text().splitlines()


@pytest.fixture(scope="module")
def stack(influxdb: LocalInfluxDB, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("slurm")
    database = "slurm_e2e"
    cluster = SlurmCluster(accounting=True, accounts={"root": "ops", "nobody": "physics"})
    # installed as a site would: the script, with its config beside it
    script = cluster.base / "gridwatt_slurm.py"
    shutil.copy2(SCRIPT, script)
    cluster.prolog = cluster.epilog = script
    mapping_dir = cluster.base / "job-mapping"
    epilog_log = cluster.base / "gridwatt-slurm.log"
    grpc_port, http_port = new_collector_ports()
    slurm_cfg = cluster.base / "gridwatt-slurm.toml"
    slurm_cfg.write_text(
        f"mapping_dir = {toml_str(mapping_dir)}\ncollector_url = \"http://127.0.0.1:{http_port}\"\n"
        f"report_timeout_s = {REPORT_TIMEOUT_S}\nagent_interval_s = {INTERVAL_S}\n"
        f"agent_acked_file = {toml_str(tmp / 'spool.acked')}\nlog_file = {toml_str(epilog_log)}\n"
    )
    alerts = (
        "[accounting]\nrack_resolution_s = 1\n"
        "[alerts]\n"
        '[[alerts.rules]]\nname = "slurm-job-idle"\nscope = "slurm_job"\nutil_below_pct = 10\n'
        "for_s = 3\nresolve_after_s = 2\n"
        '[[alerts.rules]]\nname = "slurm-user-idle"\nscope = "slurm_user"\nutil_below_pct = 10\n'
        "for_s = 3\nresolve_after_s = 2\n"
    )
    cfg = tmp / "collector.toml"
    racks = f'[[racks]]\nname = "r1"\nzone = "Z"\npue = {PUE}\nnodes = ["{NODE}"]\n'
    zones = f'[[zones]]\nname = "Z"\nintensity = {{ kind = "constant", g_per_kwh = {CI} }}\n'
    cfg.write_text(collector_toml(influxdb.url, database, grpc_port, http_port, zones=zones, racks=racks)
                   + alerts)
    trace = tmp / "trace.csv"
    write_trace(trace)
    agent_cfg = tmp / "agent.toml"
    agent_cfg.write_text(
        f'node = "{NODE}"\ninterval_s = {INTERVAL_S}\nspool_path = {toml_str(tmp / "spool.db")}\n'
        f"[attribution]\njob_mapping_dir = {toml_str(mapping_dir)}\nslurm = false\nkubernetes = false\n"
        f'[source]\nkind = "sim"\nsim = {{ trace = {toml_str(trace)} }}\n'
        f'[collector]\naddress = "127.0.0.1:{grpc_port}"\n'
    )
    collector = CollectorProcess(cfg, grpc_port, http_port)
    agent = AgentProcess(agent_cfg, replay=False, log_path=tmp / "agent.log")
    try:
        cluster.start()
        collector.start()
        agent.start()
        yield Stack(cluster, collector, agent, influxdb.url, database, mapping_dir, epilog_log)
    finally:
        agent.cleanup()
        collector.stop()
        cluster.stop()


SUMMARY = re.compile(
    r"gridwatt: (?P<e>[\d.]+) (?P<eu>Wh|kWh), (?P<c>[\d.]+) (?P<cu>g|kg) CO2e, (?P<n>\d+) GPUs?, "
    r"mean util (?P<u>\d+) %"
)


def parse_summary(line: str) -> tuple[float, float, int, float]:
    """(facility kWh, kg CO2e, GPUs, mean util %) of a summary line."""
    m = SUMMARY.fullmatch(line)
    assert m, f"not a gridwatt summary: {line!r}"
    kwh = float(m["e"]) / (1000.0 if m["eu"] == "Wh" else 1.0)
    kg = float(m["c"]) / (1000.0 if m["cu"] == "g" else 1.0)
    return kwh, kg, int(m["n"]), float(m["u"])


def allocated_gpus(stack: Stack, job_id: str, name: str) -> set[int]:
    """The GPU indices Slurm gave the job: its SLURM_JOB_GPUS, which the job printed first."""
    first = stack.output(job_id, name)[0]
    assert first.startswith("slurm_job_gpus "), first
    out: set[int] = set()
    for part in first.split()[1].split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def check_job(
    stack: Stack, job_id: str, gpus: set[int], name: str = "job", alias: str = "",
    owner: tuple[str, str] = ("nobody", "physics"),
) -> dict[str, Any]:
    """Everything a finished job must show; returns its report."""
    points = stack.q(f"SELECT energy_j, gpu_s, end_ns, attribution, \"user\", account FROM job "
                     f"WHERE job_id = '{job_id}' GROUP BY gpu")
    assert points, f"no job points for {job_id}"
    # attributed through the prolog's files only, on exactly the job's GPUs
    assert {int(p["gpu"]) for p in points} == gpus
    assert {p["attribution"] for p in points} == {"job_mapping"}
    assert {(p["user"], p["account"]) for p in points} == {owner}
    # the report against the trace: every attributed interval integrated over the trace by hand
    shift = int(stack.q("SELECT first(energy_j) FROM gpu")[0]["time"]) - T0
    expected_it_j = sum(trace_energy_j(int(p["gpu"]), int(p["time"]) - shift, int(p["end_ns"]) - shift)
                        for p in points)
    report = stack.report(job_id)
    assert report["gpu_count"] == len(gpus)
    assert (report["user"], report["account"]) == owner
    assert report["it_energy_kwh"] * 3.6e6 == pytest.approx(expected_it_j, rel=1e-3)
    assert report["facility_energy_kwh"] == pytest.approx(report["it_energy_kwh"] * PUE, rel=1e-9)
    assert report["co2e_kg"] == pytest.approx(report["facility_energy_kwh"] * CI / 1000, rel=1e-9)
    # the job saw its own id, and only its own, in the mapping files of its GPUs
    seen = {int(m.group(1)) for line in stack.output(job_id, name)
            if (m := re.fullmatch(r"map (\d+) (.*)", line)) and job_id in m.group(2).split()}
    assert seen == gpus
    # its output ends with the summary line, which matches the report at the printed precision (3
    # significant digits): the epilog waited on the agent's acked file, so it saw every interval
    last = stack.output(job_id, name)[-1]
    kwh, kg, n, util = parse_summary(last)
    assert n == len(gpus)
    assert kwh == pytest.approx(report["facility_energy_kwh"], rel=0.006)
    assert kg == pytest.approx(report["co2e_kg"], rel=0.006)
    assert kg * 1000 / kwh == pytest.approx(CI, rel=0.02)
    assert util == pytest.approx(report["mean_util_pct"], abs=0.51)  # printed as a whole number
    who = re.escape(alias or job_id)
    epilog_said = stack.epilog_log.read_text()
    assert re.search(rf"epilog: job {who}: gridwatt: .* \(waited on .*spool\.acked\) report", epilog_said)
    # ... and Slurm's accounting shows the same line as the job's AdminComment (lower-cased: Slurm
    # 22.05's sacctmgr lower-cases every value it sets on a job)
    # (an array task by its array id: "sacct -j <raw id of the array's own record>" lists every task)
    sacct = stack.cluster.run("sacct", "-j", alias or job_id, "-X", "-n", "-P", "-o", "AdminComment").stdout
    assert sacct.strip() == last.lower()
    # no mapping file names the job any more
    for f in stack.mapping_dir.glob("[0-9]*"):
        assert job_id not in f.read_text().split()
    assert not (stack.mapping_dir / ".jobs" / f"{job_id}.json").exists()
    return report


def wait_alert(stack: Stack, rule: str, scope: str, timeout_s: float = 60.0) -> dict[str, Any]:
    import json
    import urllib.request

    deadline = time.monotonic() + timeout_s
    alerts: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{stack.collector.http_url}/v1/alerts", timeout=10) as resp:
            alerts = json.load(resp)["alerts"]
        for a in alerts:
            if a["rule"] == rule and a["scope"] == scope and a["fired_at"]:
                return a
        time.sleep(0.3)
    raise AssertionError(f"no firing {rule} for {scope}: {alerts}")


@pytest.fixture(scope="module")
def side_by_side(stack: Stack) -> tuple[str, str]:
    busy = stack.submit(8, "--gres=gpu:2", name="busy")
    stack.cluster.wait_state(busy, {"RUNNING"})
    idle = stack.submit(8, "--gres=gpu:2", name="idle", user="root")
    stack.cluster.wait_state(idle, {"RUNNING"})
    for job in (busy, idle):
        info = stack.cluster.wait_done(job, timeout_s=120)
        assert info["JobState"] == "COMPLETED", info
    return busy, idle


def test_two_jobs_side_by_side_are_attributed_reported_and_summarised(
    stack: Stack, side_by_side: tuple[str, str]
) -> None:
    busy, idle = side_by_side
    gpus = {busy: allocated_gpus(stack, busy, "busy"), idle: allocated_gpus(stack, idle, "idle")}
    assert gpus[busy] == {0, 1} and gpus[idle] == {2, 3}
    reports = {busy: check_job(stack, busy, gpus[busy], "busy"),
               idle: check_job(stack, idle, gpus[idle], "idle", owner=("root", "ops"))}
    assert reports[busy]["mean_util_pct"] > 80 and reports[idle]["mean_util_pct"] < 3


def test_idle_job_raises_an_alert_naming_user_and_account(
    stack: Stack, side_by_side: tuple[str, str]
) -> None:
    busy, idle = side_by_side
    job_alert = wait_alert(stack, "slurm-job-idle", idle)
    assert job_alert["labels"] == {"user": "root", "account": "ops", "job_id": idle}
    assert job_alert["gpus"] == [f"{NODE}/2", f"{NODE}/3"]
    user_alert = wait_alert(stack, "slurm-user-idle", "root")
    assert user_alert["labels"] == {"user": "root", "account": "ops", "jobs": idle}
    import json
    import urllib.request

    with urllib.request.urlopen(f"{stack.collector.http_url}/v1/alerts", timeout=10) as resp:
        body = json.load(resp)
    assert not [a for a in body["alerts"] if a["scope"] in (busy, "nobody")]


def test_array_job_tasks_are_found_by_their_slurm_ids(stack: Stack) -> None:
    array = stack.submit(3, "--gres=gpu:1", "--array=1-2", name="array")
    tasks = stack.cluster.wait_done(array, timeout_s=120)
    records = stack.cluster.show_jobs(array)
    assert sorted(r["ArrayTaskId"] for r in records) == ["1", "2"] and tasks
    for r in records:
        raw, alias = r["JobId"], f"{array}_{r['ArrayTaskId']}"
        assert r["JobState"] == "COMPLETED"
        report = stack.report(alias)  # as users write it
        assert report["job_id"] == raw and report["alias"] == alias
        assert stack.report(raw)["it_energy_kwh"] == report["it_energy_kwh"]
        assert stack.report(f"{alias}.batch")["job_id"] == raw  # a step: its job's report
        human = subprocess.run(
            [sys.executable, "-m", "gridwatt.cli", "--collector", stack.collector.http_url, "job", alias],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        assert human.splitlines()[0] == f"Job {raw} ({alias}), user nobody, account physics"
        gpus = allocated_gpus(stack, raw, "array")
        check_job(stack, raw, gpus, "array", alias)
        sacct = stack.cluster.run("sacct", "-j", alias, "-X", "-n", "-P", "-o",
                                  "JobID,JobIDRaw,AdminComment").stdout.strip()
        assert sacct == f"{alias}|{raw}|" + stack.output(raw, "array")[-1].lower()


def test_collector_hung_epilog_gives_up_within_its_bound_and_the_job_completes(stack: Stack) -> None:
    """A frozen collector (SIGSTOP: connections accepted, never answered) must not hold Slurm."""
    cfg = stack.cluster.base / "gridwatt-slurm.toml"
    text = cfg.read_text()
    cfg.write_text(text.replace(f"report_timeout_s = {REPORT_TIMEOUT_S}", "report_timeout_s = 3.0"))
    stack.collector.freeze()
    try:
        job = stack.submit(1, "--gres=gpu:2", name="down")
        info = stack.cluster.wait_done(job, timeout_s=120)
    finally:
        stack.collector.thaw()
        cfg.write_text(text)
    assert info["JobState"] == "COMPLETED"
    node = stack.cluster.run("scontrol", "show", "node", NODE, "-o").stdout
    assert "DRAIN" not in node and "FAIL" not in node  # PrologEpilogTimeout was never hit
    last = stack.output(job, "down")[-1]
    assert last.startswith("gridwatt: no report yet (collector http://127.0.0.1:")
    assert last.endswith(f"; gave up after 3 s); later: gridwatt job {job}")
    log = stack.epilog_log.read_text()
    assert re.search(rf"epilog: job {job}: collector .*; gave up after 3 s", log)
    assert not [f for f in stack.mapping_dir.glob("[0-9]*") if job in f.read_text().split()]



def test_failed_and_cancelled_jobs_leave_no_mapping_behind(stack: Stack) -> None:
    failed = stack.cluster.sbatch("#!/bin/sh\nsleep 2\nexit 3\n", "--gres=gpu:2", user="nobody",
                                  name="failed")
    cancelled = stack.submit(300, "--gres=gpu:2", name="cancelled")
    stack.cluster.wait_state(cancelled, {"RUNNING"})
    out = stack.cluster.base / "jobs" / f"cancelled-{cancelled}.out"
    deadline = time.monotonic() + 60
    while not (out.exists() and "done" not in out.read_text() and out.read_text().count("\n") >= 2):
        assert time.monotonic() < deadline, "the job's script did not start"  # (its prolog ran before)
        time.sleep(0.1)
    assert any(cancelled in f.read_text().split() for f in stack.mapping_dir.glob("[0-9]*"))
    stack.cluster.run("scancel", cancelled)
    states = {job: stack.cluster.wait_done(job, timeout_s=120)["JobState"] for job in (failed, cancelled)}
    assert states == {failed: "FAILED", cancelled: "CANCELLED"}
    for job, name in ((failed, "failed"), (cancelled, "cancelled")):
        assert not [f for f in stack.mapping_dir.glob("[0-9]*") if job in f.read_text().split()]
        assert not (stack.mapping_dir / ".jobs" / f"{job}.json").exists()
        assert parse_summary(stack.output(job, name)[-1])[2] == 2  # a failed job gets its figures too
