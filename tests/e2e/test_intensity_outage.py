"""Acceptance of issue #15 end to end: a 6-hour intensity outage with a 3-hour hold.

Real processes (gridwatt-agent replaying a simulated job → gRPC → gridwatt-collector → InfluxDB →
``gridwatt job``), and a real HTTP server on 127.0.0.1 playing Electricity Maps' past-range
endpoint with the hourly values of a real recorded answer (tests/fixtures/grid/
electricitymaps_history_US-MIDW-MISO.json, see its PROVENANCE). During the outage the six hours
10:00-16:00 of 2024-11-30 come back as ``carbonIntensity: null`` (how the API answers an hour it
has no value for). The zone's chain is Electricity Maps (hold 3 h) then a constant 250 g/kWh.

A job on 2 GPUs at 300 W from 08:00 to 18:00 under PUE 1.2 uses 0.72 kWh of facility energy per
hour, so by hand:

* outage: 08, 09, 16, 17 h measured (416, 419, 427, 429 g/kWh); 10-13 h the 09:00 value 419 held
  (estimated); 13-16 h the chain's next provider, 250 (estimated).
  Emissions 0.72 × (416 + 419 + 427 + 429 + 3 × 419 + 3 × 250) = 2662.56 g, of which
  0.72 × (3 × 419 + 3 × 250) = 1445.04 g rest on estimates: estimated_share 0.542726...
* after recovery (the API serves the six hours) the estimates are replaced: 0.72 × 4335 =
  3121.2 g, estimated_share 0, the same totals as a run that never saw the outage.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import CollectorProcess, new_collector_ports, start_agent, toml_str
from gridwatt.timeutil import NS_PER_S, parse_time_ns
from tests.conftest import collector_toml, first_row, influx_query

H_NS = 3600 * NS_PER_S
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "grid"
RECORDING = FIXTURES / "electricitymaps_history_US-MIDW-MISO.json"
OUTAGE_FROM = parse_time_ns("2024-11-30T10:00:00Z")
OUTAGE_TO = OUTAGE_FROM + 6 * H_NS
JOB_START = "2024-11-30T08:00:00Z"
FACILITY_KWH_PER_H = 2 * 0.300 * 1.2
FALLBACK_G_PER_KWH = 250.0


def recorded_hours() -> dict[int, dict[str, Any]]:
    """The real recording's value objects by hour start (ns)."""
    body = json.loads(RECORDING.read_text())
    return {parse_time_ns(v["datetime"]): v for v in body["history"]}


class PastRange:
    """Electricity Maps ``/v3/carbon-intensity/past-range`` on 127.0.0.1, with an outage switch."""

    def __init__(self) -> None:
        self.hours = recorded_hours()
        self.outage = False
        self.requests = 0
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                recorder.requests += 1
                if url.path != "/v3/carbon-intensity/past-range" or self.headers.get("auth-token") != "k-e2e":
                    self.send_response(404)
                    self.end_headers()
                    return
                lo, hi = parse_time_ns(q["start"]), parse_time_ns(q["end"])
                data = []
                for t, v in sorted(recorder.hours.items()):
                    if lo <= t < hi:
                        if recorder.outage and OUTAGE_FROM <= t < OUTAGE_TO:
                            v = {**v, "carbonIntensity": None}
                        data.append(v)
                body = json.dumps({"zone": q["zone"], "data": data}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @contextmanager
    def serving(self) -> Iterator[PastRange]:
        thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()
            thread.join()


def _config(tmp: Path, influx_url: str, database: str, api_url: str) -> tuple[Path, int, int]:
    key = tmp / "em.key"
    key.write_text("k-e2e\n")
    key.chmod(0o600)
    zones = (
        '[[zones]]\nname = "MISO"\n[zones.intensity]\nkind = "chain"\ncooldown_s = 0\n'
        '[[zones.intensity.providers]]\nkind = "electricitymaps"\nzone = "US-MIDW-MISO"\n'
        f"base_url = {toml_str(api_url)}\napi_key_file = {toml_str(key)}\n"
        "max_hold_s = 10800\nmin_refetch_s = 0\nmax_attempts = 1\n"
        f'[[zones.intensity.providers]]\nkind = "constant"\ng_per_kwh = {FALLBACK_G_PER_KWH}\n'
    )
    racks = '[[racks]]\nname = "r1"\nzone = "MISO"\npue = 1.2\nnodes = ["n1"]\n'
    grpc_port, http_port = new_collector_ports()
    cfg = tmp / "collector.toml"
    cfg.write_text(collector_toml(
        influx_url, database, grpc_port, http_port, zones=zones, racks=racks,
        extra_server="\n[accounting]\nestimate_revisit_s = 0.5\nreplica_settle_s = 0.2\n",
    ))
    return cfg, grpc_port, http_port


def _replay_job(tmp: Path, grpc_port: int) -> None:
    agent = tmp / "agent.toml"
    agent.write_text(
        f'node = "n1"\ninterval_s = 60\nspool_path = {toml_str(tmp / "spool.db")}\n'
        '[source]\nkind = "sim"\n'
        f'sim = {{ gpus = 2, power_w = 300.0, util_pct = 90.0, duration_s = 36000, start = "{JOB_START}", '
        'job_id = "outage-job" }\n'
        f'[collector]\naddress = "127.0.0.1:{grpc_port}"\nbatch_max_samples = 2000\n'
    )
    proc = start_agent(agent, log_level="WARNING")
    assert proc.wait(timeout=300) == 0


def _gridwatt(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gridwatt.cli", "--collector", url, *args],
                          capture_output=True, text=True, timeout=60)


def _job(url: str) -> dict[str, Any]:
    proc = _gridwatt(url, "job", "outage-job", "--json")
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def _rack(url: str) -> dict[str, Any]:
    proc = _gridwatt(url, "racks", "--json")
    assert proc.returncode == 0, proc.stderr
    (rack,) = json.loads(proc.stdout)["racks"]
    return dict(rack)


def _wait_for(what: str, check: Any, deadline_s: float = 120.0) -> Any:
    """Poll ``check()`` until it returns a truthy value (a condition, not a timed assertion)."""
    end = time.monotonic() + deadline_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"{what}: never happened")
        time.sleep(0.2)


def by_hand() -> tuple[float, float, float]:
    """(emissions during the outage g, of which on estimates g, emissions with all hours measured g)."""
    v = {t: float(o["carbonIntensity"]) for t, o in recorded_hours().items()}
    hours = [parse_time_ns(JOB_START) + k * H_NS for k in range(10)]
    measured = [v[t] for t in hours if not OUTAGE_FROM <= t < OUTAGE_TO]
    held = [v[OUTAGE_FROM - H_NS]] * 3
    fallback = [FALLBACK_G_PER_KWH] * 3
    estimated_g = FACILITY_KWH_PER_H * (sum(held) + sum(fallback))
    outage_g = FACILITY_KWH_PER_H * sum(measured) + estimated_g
    return outage_g, estimated_g, FACILITY_KWH_PER_H * sum(v[t] for t in hours)


def test_hand_computation_of_the_acceptance_numbers() -> None:
    outage_g, estimated_g, full_g = by_hand()
    assert outage_g == pytest.approx(2662.56)
    assert estimated_g == pytest.approx(1445.04)
    assert estimated_g / outage_g == pytest.approx(0.5427257)
    assert full_g == pytest.approx(3121.2)


def test_six_hour_outage_three_hour_hold_then_chain_then_estimates_replaced(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    outage_g, estimated_g, full_g = by_hand()
    api = PastRange()
    api.outage = True
    with api.serving():
        cfg, grpc_port, http_port = _config(tmp_path, influxdb.url, database, api.url)
        collector = CollectorProcess(cfg, grpc_port, http_port).start()
        try:
            _replay_job(tmp_path, grpc_port)
            during = _job(collector.http_url)
            rack_during = _rack(collector.http_url)
            text = _gridwatt(collector.http_url, "job", "outage-job").stdout
            held, fallback = influx_query(
                influxdb.url, database,
                "SELECT count(energy_j) FROM gpu WHERE intensity_estimated = true "
                "AND intensity_source = 'electricitymaps:US-MIDW-MISO'; "
                "SELECT count(energy_j) FROM gpu WHERE intensity_estimated = true "
                "AND intensity_source = 'constant'",
            )
            api.outage = False  # the provider recovers; the collector's revisit finds the measured hours
            after = _wait_for("estimates replaced",
                              lambda: (r := _job(collector.http_url))["estimated_share"] == 0 and r)
            rack_after = _wait_for("rack windows recomputed",
                                   lambda: (r := _rack(collector.http_url))["estimated_share"] == 0 and r)
        finally:
            collector.stop()

    # during the outage: hours 0-3 held, 3-6 from the next provider, all marked estimated
    assert during["it_energy_kwh"] == pytest.approx(6.0, rel=1e-6)
    assert during["co2e_kg"] * 1000 == pytest.approx(outage_g, rel=1e-6)
    assert during["estimated_share"] == pytest.approx(estimated_g / outage_g, rel=1e-6)
    assert rack_during["estimated_share"] == pytest.approx(estimated_g / outage_g, rel=1e-6)
    assert rack_during["co2e_kg"] * 1000 == pytest.approx(outage_g, rel=1e-6)
    assert "estimated       54.3 % of the emissions" in text
    # 2 GPUs × 60 one-minute samples per hour: 3 held hours, 3 fallback hours
    assert (first_row(held)["count"], first_row(fallback)["count"]) == (360, 360)

    # after recovery: estimates replaced by the measured hours
    assert after["co2e_kg"] * 1000 == pytest.approx(full_g, rel=1e-6)
    assert rack_after["co2e_kg"] * 1000 == pytest.approx(full_g, rel=1e-6)
    (left,) = influx_query(
        influxdb.url, database,
        "SELECT sum(estimated_co2e_g), count(energy_j) FROM gpu WHERE intensity_estimated = true",
    )
    assert first_row(left) == {}

    # and the same totals as a run that never saw the outage
    clean_db = database + "_clean"
    api2 = PastRange()
    with api2.serving():
        (tmp_path / "clean").mkdir()
        cfg, grpc_port, http_port = _config(tmp_path / "clean", influxdb.url, clean_db, api2.url)
        collector = CollectorProcess(cfg, grpc_port, http_port).start()
        try:
            _replay_job(tmp_path / "clean", grpc_port)
            clean = _job(collector.http_url)
            rack_clean = _rack(collector.http_url)
        finally:
            collector.stop()
    assert clean["estimated_share"] == 0
    for key in ("co2e_kg", "it_energy_kwh", "facility_energy_kwh", "mean_intensity_g_per_kwh", "gpu_hours"):
        assert after[key] == pytest.approx(clean[key], rel=1e-12), key
    for key in ("co2e_kg", "it_energy_kwh", "facility_energy_kwh", "mean_intensity_g_per_kwh"):
        assert rack_after[key] == pytest.approx(rack_clean[key], rel=1e-12), key
    (g1,) = influx_query(influxdb.url, database, "SELECT sum(co2e_g) FROM gpu")
    (g2,) = influx_query(influxdb.url, clean_db, "SELECT sum(co2e_g) FROM gpu")
    assert first_row(g1)["sum"] == pytest.approx(first_row(g2)["sum"], rel=1e-12)
