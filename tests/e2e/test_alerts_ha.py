"""Two collector replicas, one elected alert evaluator, the leader SIGKILLed while an alert fires.

Real processes: two ``gridwatt-collector serve`` on one InfluxDB database, replaying agents split
over both, and a webhook receiver. Rack b idles 60-120 min: rack-b and the group partition-b
(combined from rack windows) fire at 90 min and resolve at 125 min, job-b1 fires at 80 and
resolves at 125, as in test_alerts_e2e.py. The leader (c0, the lowest
id) is SIGKILLed after the firing; c1 takes over from the shared state and sends the resolves.
Each change must reach the webhook exactly once and sit in the ``alert_event`` log exactly once.

With ``lose_state`` (as if c0 died before its snapshot reached InfluxDB), c1 starts only after c0
was killed and the shared state was dropped: it re-evaluates from the first window any replica
reported, re-derives the firings with the same identity, and the event log keeps it from notifying
them again.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gridwatt.collector.alerts.engine import AlertEngine
from gridwatt.collector.alerts.rules import AlertRule
from gridwatt.collector.alerts.shared import assemble_state
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import CollectorProcess, new_collector_ports, start_agent, toml_str
from tests.conftest import collector_toml, influx_query
from tests.e2e.test_alerts_e2e import MIN, T0, agent_config, write_trace

RULES = [
    AlertRule(name="rack-idle", scope="rack", util_below_pct=10, for_s=1800, resolve_above_pct=20,
              resolve_after_s=300),
    AlertRule(name="job-idle", scope="job", for_s=1200),
    AlertRule(name="partition-idle", scope="group", group="partition-b", racks=["rack-b"], for_s=1800),
]


def evaluator(collector: CollectorProcess) -> float | None:
    """The replica's ``gridwatt_alert_evaluator`` gauge (1 = it evaluates), None if unreadable."""
    try:
        with urllib.request.urlopen(f"{collector.http_url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    m = re.search(r'^gridwatt_alert_evaluator\{[^}]*mode="elected"[^}]*\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def replay(folder: Path, route: dict[str, CollectorProcess], lo_min: int, hi_min: int) -> None:
    agents = []
    for node, collector in route.items():
        trace = folder / f"trace-{node}-{lo_min}.csv"
        write_trace(trace, node, idle=node == "b1", lo_min=lo_min, hi_min=hi_min)
        cfg = agent_config(folder, node, collector.grpc_port, trace)
        agents.append(start_agent(cfg, log_level="WARNING"))
    assert [a.wait(timeout=120) for a in agents] == [0] * len(agents)


def alert_log(influx_url: str, database: str) -> list[tuple[str, str, str, int, str]]:
    """(kind, rule, scope, at_ns, replica) of every firing/resolved point in ``alert_event``."""
    (result,) = influx_query(influx_url, database,
                             "SELECT * FROM alert_event WHERE \"kind\" = 'firing' OR \"kind\" = 'resolved'")
    rows = []
    for s in result.get("series", []) or []:
        cols = s["columns"]
        for v in s["values"]:
            r = dict(zip(cols, v, strict=True))
            rows.append((r["kind"], r["rule"], r["scope"], int(r["at_ns"]), r["replica"]))
    return sorted(rows)


def shared_firing(influx_url: str, database: str) -> set[tuple[str, str]]:
    """(rule, scope) of the alerts firing in the newest shared state snapshot."""
    (result,) = influx_query(influx_url, database, "SELECT * FROM alert_state")
    rows = [dict(zip(s["columns"], v, strict=True))
            for s in result.get("series", []) or [] for v in s["values"]]
    if not rows:
        return set()
    newest = max(int(r["time"]) for r in rows)
    found = assemble_state([r for r in rows if int(r["time"]) == newest])
    if found is None:
        return set()
    engine = AlertEngine.from_dict(RULES, found[1]["engine"])
    return {(ev.rule, ev.scope_name) for ev in engine.active_alerts()}


def firing_seen_by(collector: CollectorProcess) -> set[str]:
    """Scopes firing in the replica's ``/v1/alerts`` (a follower's view of the leader's state)."""
    try:
        with urllib.request.urlopen(f"{collector.http_url}/v1/alerts", timeout=10) as resp:
            body = json.load(resp)
    except OSError:
        return set()
    return {a["scope"] for a in body["alerts"] if a["state"] == "firing"}


@pytest.mark.parametrize("lose_state", [False, True], ids=["handover", "state-lost"])
async def test_leader_sigkilled_mid_alert_successor_resolves_once(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, lose_state: bool
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

    racks = "".join(
        f'[[racks]]\nname = "{r}"\nzone = "Z"\npue = 1.3\nnodes = ["{n}"]\n'
        for r, n in (("rack-a", "a1"), ("rack-b", "b1"), ("rack-c", "c1"))
    )
    zones = '[[zones]]\nname = "Z"\nintensity = { kind = "constant", g_per_kwh = 300.0 }\n'
    collectors = []
    for name in ("c0", "c1"):
        grpc_port, http_port = new_collector_ports()
        cfg = tmp_path / f"collector-{name}.toml"
        cfg.write_text(
            collector_toml(influxdb.url, database, grpc_port, http_port, zones=zones, racks=racks,
                           extra_server=f'replica_id = "{name}"\n')
            + f"[alerts]\nevaluate = \"elected\"\nlease_s = 3\nheartbeat_s = 0.5\n"
            f"state_file = {toml_str(tmp_path / f'alerts-{name}.json')}\n"
            '[[alerts.rules]]\nname = "rack-idle"\nscope = "rack"\nutil_below_pct = 10\nfor_s = 1800\n'
            "resolve_above_pct = 20\nresolve_after_s = 300\n"
            '[[alerts.rules]]\nname = "job-idle"\nscope = "job"\nfor_s = 1200\n'
            '[[alerts.rules]]\nname = "partition-idle"\nscope = "group"\ngroup = "partition-b"\n'
            'racks = ["rack-b"]\nfor_s = 1800\n'
            f'[[alerts.sinks.webhooks]]\nurl = "http://127.0.0.1:{hook_port}/hook"\n'
        )
        collectors.append(CollectorProcess(cfg, grpc_port, http_port, log_path=tmp_path / f"{name}.log"))
    c0, c1 = collectors
    try:
        if not lose_state:
            for c in collectors:
                await asyncio.to_thread(c.start)
            await _until(lambda: evaluator(c0) == 1.0 and evaluator(c1) == 0.0, "c0 elected, c1 following")
            # phase 1: 00:00-01:40, b1 ships to the follower c1, so the leader needs the shared progress
            route = {"a1": c0, "b1": c1, "c1": c0}
        else:  # c1 starts only after c0 died and the state was lost: it has no view of the alerts
            await asyncio.to_thread(c0.start)
            await _until(lambda: evaluator(c0) == 1.0, "c0 elected")
            route = {"a1": c0, "b1": c0, "c1": c0}
        await asyncio.to_thread(replay, tmp_path, route, 0, 100)
        await _until(lambda: sorted((e["kind"], e["scope"]) for e in received)
                     == [("firing", "job-b1"), ("firing", "partition-b"), ("firing", "rack-b")],
                     "the three alerts firing")
        firing = {("rack-idle", "rack-b"), ("job-idle", "job-b1"), ("partition-idle", "partition-b")}
        await _until(lambda: shared_firing(influxdb.url, database) == firing, "all in the shared state")
        if not lose_state:
            await _until(lambda: firing_seen_by(c1) == {"rack-b", "job-b1", "partition-b"},
                         "the follower's view")
        await asyncio.to_thread(c0.stop, True)  # SIGKILL the leader while both alerts fire
        if lose_state:
            await asyncio.to_thread(influx_query, influxdb.url, database, "DROP MEASUREMENT alert_state")
            await asyncio.to_thread(c1.start)
        await _until(lambda: evaluator(c1) == 1.0, "c1 takes over", timeout_s=120)
        # phase 2: 01:40-03:00 to the survivor; b1 busy again from 02:00, resolved at 02:05
        await asyncio.to_thread(replay, tmp_path, {"a1": c1, "b1": c1, "c1": c1}, 100, 180)
        await _until(lambda: sum(e["kind"] == "resolved" for e in received) >= 3, "all resolved")
        await asyncio.to_thread(c1.stop)  # graceful: a last evaluation, so nothing is still on its way
    finally:
        for c in collectors:
            c.stop(kill=True)
        await runner.cleanup()

    webhook = sorted((e["kind"], e["rule"], e["scope"], e["at_ns"]) for e in received)
    assert webhook == [
        ("firing", "job-idle", "job-b1", T0 + 80 * MIN),
        ("firing", "partition-idle", "partition-b", T0 + 90 * MIN),
        ("firing", "rack-idle", "rack-b", T0 + 90 * MIN),
        ("resolved", "job-idle", "job-b1", T0 + 125 * MIN),
        ("resolved", "partition-idle", "partition-b", T0 + 125 * MIN),
        ("resolved", "rack-idle", "rack-b", T0 + 125 * MIN),
    ]
    assert alert_log(influxdb.url, database) == [
        ("firing", "job-idle", "job-b1", T0 + 80 * MIN, "c0"),
        ("firing", "partition-idle", "partition-b", T0 + 90 * MIN, "c0"),
        ("firing", "rack-idle", "rack-b", T0 + 90 * MIN, "c0"),
        ("resolved", "job-idle", "job-b1", T0 + 125 * MIN, "c1"),
        ("resolved", "partition-idle", "partition-b", T0 + 125 * MIN, "c1"),
        ("resolved", "rack-idle", "rack-b", T0 + 125 * MIN, "c1"),
    ]
    c1_log = c1.log_text()
    assert "replica c1 is now the leader" in c1_log
    assert "replica c1 is now the leader" not in c0.log_text()
    if not lose_state:
        assert "took over the shared alert state #" in c1_log
        assert "was delivered before" not in c1_log
    else:  # re-evaluated from the start: the log shows the event log stopping each re-derived firing
        assert "took over with no shared alert state yet" in c1_log
        assert "firing rack-idle rack-b was delivered before (event log); not sent again" in c1_log
        assert "firing job-idle job-b1 was delivered before (event log); not sent again" in c1_log


async def _until(cond: Any, what: str, timeout_s: float = 90.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await asyncio.to_thread(cond):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting: {what}"
        await asyncio.sleep(0.2)
