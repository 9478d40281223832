"""The collector's Slurm parts: job ids as users write them (real InfluxDB, real gRPC), the alias
and account bounds, and the slurm_job / slurm_user alert windows and their labels."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from gridwatt.collector.alerts.engine import AlertEngine
from gridwatt.collector.alerts.model import ScopeWindow
from gridwatt.collector.alerts.monitor import slurm_windows
from gridwatt.collector.alerts.rules import AlertRule
from gridwatt.collector.alerts.sinks.alertmanager import alert_annotations, alert_labels
from gridwatt.collector.alerts.store import event_from_dict
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.collector import test_revisit as revisit
from tests.collector.helpers import batches, running_collector, sim_samples
from tests.collector.test_revisit import api  # noqa: F401  (the recorded intensity API fixture)
from tests.conftest import collector_toml, influx_query

T0 = 1_650_000_000 * 10**9
S = 10**9


def _with_job(samples: list[pb.GpuSample], job: str, alias: str = "", account: str = "") -> None:
    for s in samples:
        del s.jobs[:]
        s.jobs.add(job_id=job, fraction=1.0, method=pb.ATTRIBUTION_METHOD_JOB_MAPPING, user="alice",
                   account=account, alias=alias)


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


async def test_jobs_are_found_by_array_task_het_component_and_step_ids(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    # raw 1241 = array task 1234_7 (2 GPUs x 200 W x 60 s); raw 1235 = het component 1234+1;
    # raw 1234 = a plain job of its own (the array's id is also a raw id: Slurm's own record)
    task = sim_samples("n1", 2, T0, 60, 200.0, 10.0)
    _with_job(task, "1241", "1234_7", "physics")
    het = sim_samples("n2", 1, T0, 60, 100.0, 10.0)
    _with_job(het, "1235", "1234+1", "chem")
    plain = sim_samples("n2", 1, T0 + 600 * S, 30, 100.0, 10.0)
    _with_job(plain, "1234")
    toml = collector_toml(influxdb.url, database,
                          racks='[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.0\nnodes = ["n1", "n2"]\n')
    async with running_collector(tmp_path, toml) as c:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as ch:
            stub = pb_grpc.IngestStub(ch)
            for b in [*batches("n1", task, 6), *batches("n2", het + plain, 6, first_id=10)]:
                await stub.Write(b)
            # a bad alias or an oversized account is refused, naming the field
            bad = batches("n1", sim_samples("n1", 1, T0 + 3600 * S, 10, 100.0, 10.0), 6, first_id=50)[0]
            _with_job(list(bad.gpu_samples), "9", "../../x")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Write(bad)
            details = err.value.details() or ""
            assert "field jobs.alias: '../../x' is not a Slurm array task (1234_7)" in details
            _with_job(list(bad.gpu_samples), "9", "", "a" * 300)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Write(bad)
            assert "field jobs.account: " in (err.value.details() or "")
            assert "is longer than 256 characters or not printable" in (err.value.details() or "")
        base = f"http://127.0.0.1:{c.http_port}/v1/jobs/"
        reports = {}
        for asked in ("1234_7", "1234_7.batch", "1241", "1241.0", "1234+1", "1234+1.extern", "1234"):
            status, body = await asyncio.to_thread(_get, base + urllib.parse.quote(asked, safe=""))
            assert status == 200, (asked, body)
            reports[asked] = body
        status, body = await asyncio.to_thread(_get, base + "1234_8")
        assert status == 404 and "1234_8" in json.dumps(body)
    task_report = reports["1234_7"]
    assert (task_report["job_id"], task_report["alias"], task_report["gpu_count"]) == ("1241", "1234_7", 2)
    assert (task_report["user"], task_report["account"]) == ("alice", "physics")
    assert task_report["it_energy_kwh"] == pytest.approx(2 * 200 * 60 / 3.6e6, rel=1e-9)
    for asked in ("1234_7.batch", "1241", "1241.0"):
        assert reports[asked]["job_id"] == "1241"
        assert reports[asked]["it_energy_kwh"] == task_report["it_energy_kwh"]
    assert reports["1234+1"]["job_id"] == reports["1234+1.extern"]["job_id"] == "1235"
    assert reports["1234+1"]["account"] == "chem"
    assert reports["1234+1"]["it_energy_kwh"] == pytest.approx(100 * 60 / 3.6e6, rel=1e-9)
    assert (reports["1234"]["job_id"], reports["1234"]["alias"]) == ("1234", "")
    assert reports["1234"]["it_energy_kwh"] == pytest.approx(100 * 30 / 3.6e6, rel=1e-9)


def _acc(g_s: float, util: float, gpus: set[tuple[str, str]], **extra: str) -> dict[str, Any]:
    return {"e": 3.6e6 * g_s / 3600, "f": 3.6e6 * g_s / 3600 * 1.2, "c": 100.0, "g": g_s, "u": util * g_s,
            "gpus": gpus, **extra}


def test_slurm_windows_per_job_and_per_user() -> None:
    t = T0
    acc = {
        (t, "1241"): _acc(60, 2.0, {("n1", "0"), ("n1", "1")}, how="job_mapping", user="alice",
                          account="physics", alias="1234_7"),
        (t, "1300"): _acc(60, 80.0, {("n2", "0")}, how="slurm", user="alice", account="chem"),
        (t, "k8s-pod/x"): _acc(60, 0.0, {("n3", "0")}, how="kubernetes"),
        (t, "static"): _acc(60, 0.0, {("n3", "1")}, how="static", user="bob"),
    }
    windows = {(w.scope_kind, w.scope_name): w for w in slurm_windows(acc, 60 * S)}
    assert sorted(windows) == [("slurm_job", "1234_7"), ("slurm_job", "1300"), ("slurm_user", "alice")]
    job = windows[("slurm_job", "1234_7")]
    assert job.labels == (("account", "physics"), ("job_id", "1241"), ("user", "alice"))
    assert (job.gpu_count, job.mean_util_pct, job.gpus) == (2, 2.0, ("n1/0", "n1/1"))
    user = windows[("slurm_user", "alice")]
    assert user.labels == (("account", "chem,physics"), ("jobs", "1234_7,1300"), ("user", "alice"))
    assert user.gpu_count == 3 and user.mean_util_pct == pytest.approx((2.0 * 60 + 80.0 * 60) / 120)
    assert user.co2e_kg == pytest.approx(0.2)


def test_slurm_job_alert_carries_user_and_account_everywhere() -> None:
    rule = AlertRule(name="slurm-idle", scope="slurm_job", util_below_pct=10, for_s=120, resolve_after_s=60)
    engine = AlertEngine([rule])
    labels = (("account", "physics"), ("job_id", "1241"), ("user", "alice"))
    events = []
    for k in range(3):
        events += engine.observe(ScopeWindow("slurm_job", "1234_7", T0 + k * 60 * S, T0 + (k + 1) * 60 * S,
                                             2, ("n1",), ("n1/0", "n1/1"), 2.0, 0.1, 0.12, 0.05, labels))
    firing = [e for e in events if e.kind == "firing"]
    assert len(firing) == 1 and firing[0].labels == labels
    d = firing[0].to_dict()
    assert d["labels"] == {"account": "physics", "job_id": "1241", "user": "alice"}
    assert event_from_dict(d) == firing[0]
    am = alert_labels(firing[0])
    assert (am["job"], am["user"], am["account"]) == ("1234_7", "alice", "physics")
    assert am["scope_kind"] == "slurm_job"
    assert alert_annotations(firing[0])["job_id"] == "1241"
    # the engine's own state keeps the labels over a restart
    again = AlertEngine.from_dict([rule], engine.to_dict())
    assert again.active_alerts()[0].labels == labels


async def test_revisited_emissions_keep_a_slurm_jobs_alias(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, api: tuple[Any, Any]  # noqa: F811
) -> None:
    """Re-accounting estimated intensity rewrites job points: into the same series (alias tag kept),
    so the job's report neither splits nor counts twice (tests/collector/test_revisit.py's set-up)."""
    server, handler = api
    bs = revisit.samples()
    for b in bs:
        _with_job(list(b.gpu_samples), "1241", "1234_7", "physics")
    toml = revisit.toml(tmp_path, influxdb.url, database, server.base_url)
    async with running_collector(tmp_path, toml) as c:
        assert await revisit.send(c, bs) == [0] * 6
        handler.outage = False
        assert c.revisor is not None and await c.revisor.run_once() == 360
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{c.http_port}/v1/jobs/1234_7")
    assert status == 200 and body["job_id"] == "1241"
    assert body["co2e_kg"] * 1000 == pytest.approx(revisit.FULL_G, rel=1e-9)
    series = influx_query(influxdb.url, database, "SHOW SERIES FROM job")[0]["series"][0]["values"]
    assert [s[0] for s in series] == ["job,alias=1234_7,gpu=0,job_id=1241,node=n1,rack=r1"]
