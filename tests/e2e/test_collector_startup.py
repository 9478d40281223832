"""Issue 16, defects 10, 7 and 3: the collector process when InfluxDB is down or a port is taken.

Real processes: ``gridwatt-collector serve`` and Debian's influxd.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from gridwatt.demo_harness.influxdb import LocalInfluxDB, free_port
from tests.collector.helpers import http_get
from tests.conftest import collector_toml, influx_query

#: Generous bound for a condition that the collector reaches within a few probe intervals.
DEADLINE_S = 60


def healthz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
    except (urllib.error.URLError, OSError):
        return 0, {}


def wait_for(what: str, cond: Callable[[], bool], proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not cond():
        if proc is not None:
            assert proc.poll() is None, f"the collector exited ({proc.returncode}) waiting for {what}"
        assert time.monotonic() < deadline, f"not reached: {what}"
        time.sleep(0.2)


def start(config: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "gridwatt.collector.cli", "serve", "--config", str(config)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.terminate()
    out = proc.communicate(timeout=30)[0].decode()
    return out


def test_starts_while_influxdb_is_down_and_creates_the_database_once_it_answers(tmp_path: Path) -> None:
    influx_port, grpc_port, http_port = free_port(), free_port(), free_port()
    config = tmp_path / "collector.toml"
    config.write_text(collector_toml(f"http://127.0.0.1:{influx_port}", "late_db", grpc_port, http_port))
    proc = start(config)
    try:
        wait_for("/healthz 503", lambda: healthz(http_port)[0] == 503, proc)
        body = healthz(http_port)[1]
        unreachable = f"InfluxDB unreachable at http://127.0.0.1:{influx_port}: Cannot connect"
        assert body["status"] == "unavailable" and unreachable in str(body["reason"])
        # the query API answers with the reason too (not an empty one)
        code, text = http_get(f"http://127.0.0.1:{http_port}/v1/jobs/j1")
        assert code == 503 and json.loads(text)["error"].startswith(unreachable)
        with LocalInfluxDB(data_dir=tmp_path / "influx", port=influx_port) as db:
            wait_for("/healthz 200", lambda: healthz(http_port)[0] == 200, proc)
            (res,) = influx_query(db.url, "", "SHOW DATABASES")
            assert ["late_db"] in res["series"][0]["values"]
            out = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "cannot create database late_db yet" in out
    assert "database late_db created" in out
    assert "Traceback" not in out


def test_healthz_turns_503_in_an_outage_without_writes(tmp_path: Path) -> None:
    grpc_port, http_port = free_port(), free_port()
    config = tmp_path / "collector.toml"
    with LocalInfluxDB(data_dir=tmp_path / "influx") as db:
        config.write_text(collector_toml(db.url, "quiet", grpc_port, http_port).replace(
            "[influxdb]\n", "[influxdb]\nhealth_check_interval_s = 0.5\n", 1))
        proc = start(config)
        try:
            wait_for("/healthz 200", lambda: healthz(http_port)[0] == 200, proc)
            db.stop()
            wait_for("/healthz 503 with no write", lambda: healthz(http_port)[0] == 503, proc)
            db.start()
            wait_for("/healthz 200 again", lambda: healthz(http_port)[0] == 200, proc)
        finally:
            out = stop(proc)
    assert "Traceback" not in out


def test_a_taken_port_is_one_line_and_no_noise(tmp_path: Path) -> None:
    for which in ("grpc", "http"):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            grpc_port, http_port = (port, free_port()) if which == "grpc" else (free_port(), port)
            config = tmp_path / f"collector-{which}.toml"
            config.write_text(collector_toml("http://127.0.0.1:9", "d", grpc_port, http_port).replace(
                "[influxdb]\n", "[influxdb]\nhealth_probe_interval_s = 30\n", 1))
            proc = start(config)
            out = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode == 1, out
        last = out.strip().splitlines()[-1]
        assert last.startswith("gridwatt-collector: cannot start: "), out
        assert str(port) in last, out
        for noise in ("Traceback", "Event loop is closed", "Unclosed", "unclosed"):
            assert noise not in out, out
