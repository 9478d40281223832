"""The InfluxDB 2.x write path (``version = 2``, influxdb-client) against a real server.

VictoriaMetrics (Debian's ``victoria-metrics``) accepts line protocol on ``/api/v2/write`` and
names each series ``<measurement>_<field>`` with the tags as labels; what arrived is read back
through its export API. It serves no InfluxQL, so the rack windows (read back with InfluxQL)
are turned off here, and only the write path is tested.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gridwatt.collector.accounting import J_PER_KWH
from gridwatt.demo_harness.influxdb import free_port
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.collector.helpers import batches, http_get, running_collector, sim_samples
from tests.conftest import collector_toml

VM = "/usr/bin/victoria-metrics"
T0 = 1_650_000_000 * 10**9


@pytest.fixture
def victoriametrics(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("victoria-metrics") or (VM if Path(VM).exists() else None)
    if binary is None:
        pytest.skip("victoria-metrics not installed (apt-get install victoria-metrics); "
                    "it is the real server for the InfluxDB 2.x write path test")
    port = free_port()
    log = (tmp_path / "vm.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"-storageDataPath={tmp_path / 'vm-data'}", f"-httpListenAddr=127.0.0.1:{port}",
         "-retentionPeriod=100y", "-loggerLevel=ERROR"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while http_get_safe(f"{url}/health") != 200:
            assert proc.poll() is None, (tmp_path / "vm.log").read_text()
            assert time.monotonic() < deadline, "victoria-metrics did not start"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def http_get_safe(url: str) -> int:
    try:
        return http_get(url)[0]
    except OSError:
        return 0


def export(url: str, match: str) -> list[dict[str, Any]]:
    """VictoriaMetrics' raw samples of the series matching ``match``, one dict per series."""
    with urllib.request.urlopen(f"{url}/internal/force_flush", timeout=30):
        pass
    q = urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(f"{url}/api/v1/export?{q}", timeout=30) as resp:
        return [json.loads(line) for line in resp.read().decode().splitlines() if line.strip()]


async def test_v2_write_path_delivers_exact_values(tmp_path: Path, victoriametrics: str) -> None:
    toml = collector_toml(victoriametrics, "gridwatt").replace(
        "[influxdb]\n",
        '[influxdb]\nversion = 2\ntoken = "dummy-token"\norg = "dummy-org"\nbucket = "gridwatt"\n', 1,
    ) + "[accounting]\nrack_windows = false\n"
    samples = sim_samples("n1", 2, T0, 600, 250.0, 60.0, job_id="vm-job")  # 2 GPUs x 10 minutes
    async with running_collector(tmp_path, toml) as c:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as ch:
            stream = pb_grpc.IngestStub(ch).Stream()
            for b in batches("n1", samples, 7):
                await stream.write(b)
                ack = await stream.read()
                assert (ack.code, ack.stored_samples) == (0, len(b.gpu_samples)), ack.message
            await stream.done_writing()
        assert c.store.serving and c.ingestor.stats.samples_stored == 20
        probe = await c.store.probe()  # the health probe works against a v2 endpoint too
        assert probe == (True, "", None)

    deadline = time.monotonic() + 60
    while True:
        energy = export(victoriametrics, "gpu_energy_j")
        if sum(len(s["values"]) for s in energy) == 20 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(s["metric"]["gpu"] for s in energy) == ["0", "1"]
    for series in energy:
        labels = series["metric"]
        assert set(labels) == {"__name__", "node", "rack", "zone", "gpu", "uuid"}
        assert (labels["node"], labels["rack"], labels["zone"]) == ("n1", "r1", "Z")
        assert series["values"] == [250.0 * 60] * 10
        # VictoriaMetrics keeps milliseconds: the interval starts, T0 + k minutes
        assert sorted(series["timestamps"]) == [T0 // 10**6 + k * 60_000 for k in range(10)]
    co2e = export(victoriametrics, "gpu_co2e_g")
    expected_g = 250.0 * 60 / J_PER_KWH * 1.2 * 350.0
    assert sum(len(s["values"]) for s in co2e) == 20
    assert all(v == pytest.approx(expected_g, rel=1e-12) for s in co2e for v in s["values"])
    jobs = export(victoriametrics, "job_energy_j")
    assert {s["metric"]["job_id"] for s in jobs} == {"vm-job"}
    assert sum(sum(s["values"]) for s in jobs) == pytest.approx(20 * 250.0 * 60, rel=1e-12)
    # measurement_field naming for an integer field too
    ends = export(victoriametrics, "gpu_end_ns")
    assert sorted(v for s in ends for v in s["values"])[:2] == [float(T0 + 60 * 10**9)] * 2
