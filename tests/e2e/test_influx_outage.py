"""InfluxDB stops and restarts mid-stream: a real agent process, a real collector process, a real influxd.

Every sample arrives exactly once in InfluxDB (count and energy sum), none lost, none doubled,
and the rack windows add up to the same energy.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import CollectorProcess, new_collector_ports, start_agent, toml_str
from tests.collector.helpers import http_get, with_influx_settings
from tests.conftest import collector_toml, first_row, influx_query

GPUS = 4
HOURS = 36
INTERVAL_S = 60
POWER_W = 300.0


def metrics(collector: CollectorProcess) -> dict[str, float]:
    """The collector's metrics, label-less ones and sums over labels, by sample name."""
    status, text = http_get(f"{collector.http_url}/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def wait_for(what: str, cond: object, deadline_s: float = 120.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_influxdb_restart_mid_stream_loses_and_doubles_nothing(tmp_path: Path, database: str) -> None:
    db = LocalInfluxDB(tmp_path / "influxdb").start()
    agent: subprocess.Popen[bytes] | None = None
    grpc_port, http_port = new_collector_ports()
    cfg = tmp_path / "collector.toml"
    cfg.write_text(with_influx_settings(
        collector_toml(db.url, database, grpc_port, http_port),
        timeout_s=5.0, write_attempts=2, retry_base_s=0.05, health_probe_interval_s=0.2,
    ))
    collector = CollectorProcess(cfg, grpc_port, http_port).start()
    try:
        agent_cfg = tmp_path / "agent.toml"
        agent_cfg.write_text(
            f'node = "n1"\ninterval_s = {INTERVAL_S}\nspool_path = {toml_str(tmp_path / "spool.db")}\n'
            f'[source]\nkind = "sim"\nsim = {{ gpus = {GPUS}, power_w = {POWER_W}, util_pct = 90.0, '
            f'duration_s = {HOURS * 3600}, start = "2022-05-01T00:00:00Z", job_id = "outage-job" }}\n'
            f'[collector]\naddress = "127.0.0.1:{grpc_port}"\nbatch_max_samples = 40\nmax_in_flight = 1\n'
            "reconnect_max_s = 0.5\n"
        )
        total = GPUS * HOURS * 3600 // INTERVAL_S
        agent = start_agent(agent_cfg, log_level="WARNING", quiet=True)
        # some batches are stored, then InfluxDB goes away while the agent still streams
        wait_for("first stored batches", lambda: metrics(collector).get(
            "gridwatt_collector_samples_stored_total", 0) >= 200)
        db.stop()
        at_stop = metrics(collector)["gridwatt_collector_samples_stored_total"]
        assert agent.poll() is None and at_stop < total, "the replay ended before the outage: lengthen it"
        healthz = f"{collector.http_url}/healthz"
        wait_for("the collector to say NOT_SERVING", lambda: http_get(healthz)[0] == 503)
        wait_for("agents to be turned away a few times", lambda: metrics(collector).get(
            "gridwatt_collector_batches_deferred_total", 0) >= 3)
        during = metrics(collector)
        assert during["gridwatt_collector_influxdb_up"] == 0
        assert agent.poll() is None  # the agent keeps its samples and waits
        db.start()  # same data folder, same port
        wait_for("SERVING again", lambda: http_get(healthz)[0] == 200)
        assert agent.wait(timeout=300) == 0
        after = metrics(collector)
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        collector.stop()
    try:
        gpu, job, rack = influx_query(
            db.url, database,
            "SELECT count(energy_j), sum(energy_j) FROM gpu; SELECT count(energy_j), sum(energy_j) FROM job; "
            "SELECT sum(it_energy_kwh) FROM rack",
        )
    finally:
        db.close()
    expected_j = GPUS * POWER_W * HOURS * 3600
    assert first_row(gpu)["count"] == total
    assert first_row(job)["count"] == total
    assert first_row(gpu)["sum"] == pytest.approx(expected_j, rel=1e-9)
    assert first_row(job)["sum"] == pytest.approx(expected_j, rel=1e-9)
    assert first_row(rack)["sum"] == pytest.approx(expected_j / 3.6e6, rel=1e-9)
    # the collector's ledger: everything received was stored or deferred (and then resent)
    received = after["gridwatt_collector_samples_received_total"]
    stored = after["gridwatt_collector_samples_stored_total"]
    deferred = after["gridwatt_collector_samples_deferred_total"]
    assert after["gridwatt_collector_samples_in_flight"] == 0
    assert after.get("gridwatt_collector_samples_rejected_total", 0) == 0
    assert received == stored + deferred and stored >= total and deferred > 0
