"""Idle-GPU alerts end to end: replayed traces → collector → alert on sample time → webhook and /v1/alerts."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import CollectorProcess, new_collector_ports, start_agent, toml_str
from gridwatt.timeutil import NS_PER_S, format_time_ns, parse_time_ns
from tests.conftest import collector_toml

T0 = parse_time_ns("2022-05-02T00:00:00Z")
MIN = 60 * NS_PER_S
GPUS = 4
IDLE_W, BUSY_W = 60.0, 350.0
PUE, CI = 1.3, 300.0


def write_trace(path: Path, node: str, idle: bool, lo_min: int, hi_min: int) -> None:
    """Minute rows from lo_min to hi_min; the idle node idles 60-120 min (util 2 %, 60 W)."""
    rows = ["time,gpu,power_w,util_pct,job_id"]
    for gpu in range(GPUS):
        for m in range(lo_min, hi_min):
            low = idle and 60 <= m < 120
            rows.append(
                f"{format_time_ns(T0 + m * MIN)},{gpu},{IDLE_W if low else BUSY_W},"
                f"{2 if low else 90},job-{node}"
            )
        rows.append(f"{format_time_ns(T0 + hi_min * MIN)},{gpu},0,0,")
    path.write_text("\n".join(rows) + "\n")


def agent_config(folder: Path, node: str, grpc_port: int, trace: Path) -> Path:
    cfg = folder / f"agent-{node}-{trace.stem}.toml"
    cfg.write_text(
        f'node = "{node}"\ninterval_s = 60\nspool_path = {toml_str(folder / f"spool-{node}.db")}\n'
        f'[source]\nkind = "sim"\nsim = {{ trace = {toml_str(trace)} }}\n'
        f'[collector]\naddress = "127.0.0.1:{grpc_port}"\n'
    )
    return cfg


def replay(folder: Path, grpc_port: int, lo_min: int, hi_min: int) -> None:
    agents = []
    for node in ("a1", "b1", "c1"):
        trace = folder / f"trace-{node}-{lo_min}.csv"
        write_trace(trace, node, idle=node == "b1", lo_min=lo_min, hi_min=hi_min)
        agents.append(start_agent(agent_config(folder, node, grpc_port, trace), log_level="WARNING"))
    assert [a.wait(timeout=120) for a in agents] == [0, 0, 0]


async def test_idle_rack_fires_once_survives_restart_and_resolves(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.json())["event"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    grpc_port, http_port = new_collector_ports()
    racks = "".join(
        f'[[racks]]\nname = "{r}"\nzone = "Z"\npue = {PUE}\nnodes = ["{n}"]\n'
        for r, n in (("rack-a", "a1"), ("rack-b", "b1"), ("rack-c", "c1"))
    )
    alerts = (
        f"[alerts]\nstate_file = {toml_str(tmp_path / 'alerts.json')}\n"
        '[[alerts.rules]]\nname = "rack-idle"\nscope = "rack"\nutil_below_pct = 10\nfor_s = 1800\n'
        "resolve_above_pct = 20\nresolve_after_s = 300\n"
        '[[alerts.rules]]\nname = "job-idle"\nscope = "job"\nfor_s = 1200\n'
        f'[[alerts.sinks.webhooks]]\nurl = "http://127.0.0.1:{hook_port}/hook"\n'
    )
    cfg = tmp_path / "collector.toml"
    zones = f'[[zones]]\nname = "Z"\nintensity = {{ kind = "constant", g_per_kwh = {CI} }}\n'
    cfg.write_text(
        collector_toml(influxdb.url, database, grpc_port, http_port, zones=zones, racks=racks) + alerts
    )
    try:
        collector = await asyncio.to_thread(CollectorProcess(cfg, grpc_port, http_port).start)
        # phase 1: 00:00-01:40; rack-b idles from 01:00 and fires at 01:30
        await asyncio.to_thread(replay, tmp_path, grpc_port, 0, 100)
        await _until(lambda: any(e["kind"] == "firing" for e in received))
        await asyncio.to_thread(collector.stop)  # restart while the alert fires
        collector = await asyncio.to_thread(CollectorProcess(cfg, grpc_port, http_port).start)
        # phase 2: 01:40-03:00; rack-b busy again from 02:00, resolved at 02:05
        await asyncio.to_thread(replay, tmp_path, grpc_port, 100, 180)
        await _until(lambda: sum(e["kind"] == "resolved" for e in received) == 2)
        body = await asyncio.to_thread(_get_json, f"{collector.http_url}/v1/alerts")
        cli = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gridwatt.cli", "--collector", collector.http_url, "alerts"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        await asyncio.to_thread(collector.stop)
    finally:
        await runner.cleanup()

    job_events = [(e["kind"], e["scope"], e["at_ns"]) for e in received if e["scope_kind"] == "job"]
    # the idle job fires after 20 min (01:20) and resolves 5 min after it is busy again (02:05)
    assert job_events == [("firing", "job-b1", T0 + 80 * MIN), ("resolved", "job-b1", T0 + 125 * MIN)]
    received = [e for e in received if e["scope_kind"] == "rack"]
    kinds = [(e["kind"], e["scope"]) for e in received]
    assert kinds == [("firing", "rack-b"), ("resolved", "rack-b")]  # once each; busy racks nothing
    firing, resolved = received
    assert firing["fired_at_ns"] == T0 + 90 * MIN
    assert firing["started_at_ns"] == T0 + 60 * MIN
    assert resolved["resolved_at_ns"] == T0 + 125 * MIN
    # independent computation: 4 GPUs x 60 W x the idle stretch, x PUE, x intensity
    at_fire_kwh = GPUS * IDLE_W * 0.5 / 1000 * PUE
    assert firing["wasted_energy_kwh"] == pytest.approx(at_fire_kwh, rel=0.01)
    assert firing["wasted_co2e_kg"] == pytest.approx(at_fire_kwh * CI / 1000, rel=0.01)
    assert firing["waste_rate_kwh_per_h"] == pytest.approx(GPUS * IDLE_W / 1000 * PUE, rel=0.01)
    whole_kwh = GPUS * IDLE_W * 1.0 / 1000 * PUE
    assert resolved["wasted_energy_kwh"] == pytest.approx(whole_kwh, rel=0.01)
    assert resolved["gpus"] == [f"b1/{g}" for g in range(GPUS)] and resolved["nodes"] == ["b1"]
    assert sorted((a["rule"], a["scope"], a["state"]) for a in body["alerts"]) == [
        ("job-idle", "job-b1", "resolved"),
        ("rack-idle", "rack-b", "resolved"),
    ]
    assert cli.returncode == 0 and "RESOLVED  rack-idle  rack rack-b" in cli.stdout


def _get_json(url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        data: dict[str, Any] = json.load(resp)
    return data


async def _until(cond: Any, timeout_s: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting for an alert event"
        await asyncio.sleep(0.2)
