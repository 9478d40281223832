"""Issue 16, defects 3, 4, 7 and 8: the ``gridwatt`` CLI and demo as a new user meets them.

Real processes: the ``gridwatt`` CLI, ``gridwatt-collector serve``, Debian's influxd.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import CollectorProcess, new_collector_ports
from gridwatt.report import format_alerts
from tests.conftest import collector_toml

CLI = [sys.executable, "-m", "gridwatt.cli"]


def gridwatt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "GRIDWATT_COLLECTOR_URL"} | (env or {})
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=full)


@pytest.fixture
def collector(tmp_path: Path, influxdb: LocalInfluxDB, database: str) -> Iterator[CollectorProcess]:
    grpc_port, http_port = new_collector_ports()
    cfg = tmp_path / "collector.toml"
    cfg.write_text(collector_toml(influxdb.url, database, grpc_port, http_port))
    proc = CollectorProcess(cfg, grpc_port, http_port).start()
    yield proc
    proc.stop()


def test_collector_option_forms_and_the_grpc_port(collector: CollectorProcess) -> None:
    # after the subcommand, and without http://
    out = gridwatt("alerts", "--collector", f"127.0.0.1:{collector.http_port}")
    assert (out.returncode, out.stdout) == (0, "no alerts (the collector has no alert rules configured)\n")
    out = gridwatt("--collector", f"127.0.0.1:{collector.http_port}", "racks")
    assert (out.returncode, out.stdout) == (0, "no rack data in that range\n")
    # the gRPC port answers no HTTP: say so, no BadStatusLine traceback
    out = gridwatt("--collector", f"127.0.0.1:{collector.grpc_port}", "job", "j1")
    assert out.returncode == 1
    assert out.stderr.startswith(f"gridwatt: http://127.0.0.1:{collector.grpc_port} did not answer HTTP (")
    assert "is it the collector's gRPC port? The HTTP API is at [server] http_listen" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_closed_pipe_ends_quietly(collector: CollectorProcess) -> None:
    proc = subprocess.Popen([*CLI, "--collector", collector.http_url, "alerts"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()  # like `| head -0`: the reader is gone before anything is written
    err = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == 141
    assert err == ""


def test_racks_since_after_until_and_bad_times() -> None:
    out = gridwatt("racks", "--since", "2022-03-08T00:00:00Z", "--until", "2022-03-07T00:00:00Z")
    assert (out.returncode, out.stderr) == (
        1, "gridwatt: --since 2022-03-08T00:00:00Z is not before --until 2022-03-07T00:00:00Z\n")
    out = gridwatt("racks", "--since", "yesterday", "--until", "2022-03-07T00:00:00Z")
    assert (out.returncode, out.stderr) == (
        1, "gridwatt: --since 'yesterday': not an ISO 8601 time (e.g. 2022-03-07T00:00:00Z)\n")


@pytest.mark.parametrize("hours", ["0", "-1", "nan"])
def test_demo_hours_must_be_positive(hours: str) -> None:
    out = gridwatt("demo", "--hours", hours)
    assert out.returncode == 2
    assert "argument --hours" in out.stderr and "Traceback" not in out.stderr


def test_demo_without_influxd_says_what_to_install(tmp_path: Path) -> None:
    out = gridwatt("demo", "--hours", "1", env={"PATH": str(tmp_path)})
    assert out.returncode == 1
    assert out.stderr == (
        "gridwatt: demo: influxd (InfluxDB 1.x) not found on PATH; install it with `sudo apt-get install "
        "influxdb` (Debian/Ubuntu; from a source checkout scripts/setup.sh does it) or InfluxDB 1.x from "
        "influxdata.com\n")


def test_cluster_alert_line_names_the_scope_once() -> None:
    alert = {"state": "firing", "rule": "cluster-idle", "scope_kind": "cluster", "scope": "cluster",
             "started_at": "2022-03-07T10:00:00Z", "fired_at": "2022-03-07T10:30:00Z", "gpus": ["a/0"],
             "nodes": ["a"], "mean_util_pct": 2.0, "duration_s": 1800.0, "wasted_energy_kwh": 1.0,
             "wasted_co2e_kg": 0.5, "waste_rate_kwh_per_h": 2.0, "waste_rate_kg_per_h": 1.0}
    first = format_alerts({"alerts": [alert]}).splitlines()[0]
    assert first == "FIRING    cluster-idle  cluster  since 2022-03-07T10:00:00Z  (2022-03-07T10:30:00Z)"
    rack = format_alerts({"alerts": [alert | {"scope_kind": "rack", "scope": "rack-a"}]}).splitlines()[0]
    assert "  rack rack-a  since" in rack


def test_a_hung_influxdb_is_named_not_the_collector(tmp_path: Path) -> None:
    grpc_port, http_port = new_collector_ports()
    with LocalInfluxDB(data_dir=tmp_path / "influx") as db:
        cfg = tmp_path / "collector.toml"
        cfg.write_text(collector_toml(db.url, "hung", grpc_port, http_port).replace(
            "[influxdb]\n", "[influxdb]\ntimeout_s = 2\nhealth_check_interval_s = 0\n", 1))
        collector = CollectorProcess(cfg, grpc_port, http_port).start()
        try:
            assert db.proc is not None
            db.proc.send_signal(signal.SIGSTOP)  # InfluxDB hangs: its socket is open, nothing answers
            try:
                out = gridwatt("--collector", collector.http_url, "job", "j1")
            finally:
                db.proc.send_signal(signal.SIGCONT)
        finally:
            collector.stop()
    assert out.returncode == 1
    assert out.stderr == (f"gridwatt: InfluxDB at {db.url} did not answer within 2 s (timeout_s) "
                          f"(HTTP 503 from {collector.http_url}/v1/jobs/j1)\n")


def _refused(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError:
        return False
    except (urllib.error.URLError, OSError):
        return True
    return False


def test_sigterm_to_demo_serve_stops_everything_and_removes_its_folder() -> None:
    proc = subprocess.Popen([*CLI, "demo", "--hours", "1", "--serve"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "serving until Ctrl-C" in line:
                break
        else:
            pytest.fail("the demo ended before serving:\n" + "".join(seen))
        text = "".join(seen)
        folder = Path(re.search(r"\[demo\] working in (\S+)", text).group(1))  # type: ignore[union-attr]
        influx_url = re.search(r"InfluxDB 1\.x running at (\S+)", text).group(1)  # type: ignore[union-attr]
        http_url = re.search(r"HTTP on (\S+)", text).group(1)  # type: ignore[union-attr]
        assert folder.is_dir() and not _refused(f"{influx_url}/ping") and not _refused(f"{http_url}/healthz")
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest  # the normal end of --serve, as with Ctrl-C
    assert "[demo] stopping the collector and InfluxDB" in rest
    assert not folder.exists()
    deadline = time.monotonic() + 30  # the ports close as the processes exit
    while not (_refused(f"{influx_url}/ping") and _refused(f"{http_url}/healthz")):
        assert time.monotonic() < deadline, "influxd or the collector still answers after SIGTERM"
        time.sleep(0.2)
