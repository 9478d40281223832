"""README "Deploying a cluster", run as written: real InfluxDB, collector and agent processes.

The README's ``deploy-test`` blocks are extracted and run with bash. What differs from a real
cluster is substituted, and only that:

* ``/etc/gridwatt`` and ``/var/lib/gridwatt`` are those of a ``--root`` folder per machine, and
  ``install`` gets ``--root``; the service user's group lives in that image, so ``install -g`` and
  ``chgrp`` are left out;
* ``/opt/gridwatt/bin/`` is this test's virtual environment (the ``python3 -m venv`` / ``pip``
  and ``apt-get`` lines are skipped); ports are free ones and the collector's name is ``localhost``;
* ``systemctl start`` is replaced by starting the installed unit's ``ExecStart`` command;
* no GPU here: the agents' ``check`` runs with ``GRIDWATT_SOURCE__KIND=sim`` and its spool in the image.

Then the two agents replay an hour of simulated GPUs through mutual TLS with their tokens, and the
job's report is checked against numbers computed by hand.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridwatt.demo_harness.influxdb import LocalInfluxDB, free_port, wait_until_answering

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NODES = ("gpu-a01", "gpu-a02")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(t) is None for t in ("useradd", "systemctl", "openssl", "curl")),
    reason="needs root, useradd, systemctl, openssl and curl",
)


def readme_block(name: str) -> str:
    """The bash block after ``<!-- deploy-test: NAME -->`` in README.md."""
    text = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- deploy-test: {re.escape(name)} -->\n```bash\n(.*?)\n```\n", text, re.S)
    assert found, f"README.md has no deploy-test block {name!r}"
    return found.group(1)


def adapt(block: str, subs: list[tuple[str, str]]) -> str:
    """Skip package installs; apply the substitutions (each must be used, so none goes stale)."""
    lines = [line for line in block.splitlines() if not line.startswith(("python3 -m venv", "apt-get"))]
    text = "\n".join(lines) + "\n"
    for old, new in subs:
        assert old in text, f"substitution {old!r} no longer matches the README block"
        text = text.replace(old, new)
    return text


def bash(script: str, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"script failed ({proc.returncode}):\n{script}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def influxdb() -> Iterator[LocalInfluxDB]:
    with LocalInfluxDB(auth_enabled=True) as db:
        yield db


def test_readme_deployment_with_tls_and_tokens_checks_green(tmp_path: Path, influxdb: LocalInfluxDB) -> None:
    grpc_port, http_port = free_port(), free_port()
    croot = tmp_path / "collector-root"
    aroots = {node: tmp_path / f"{node}-root" for node in NODES}
    for r in (croot, *aroots.values()):
        r.mkdir()
    pki = tmp_path / "pki"
    pki.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("GRIDWATT_INFLUX_ADMIN_PASSWORD", None)
    common = [("/opt/gridwatt/bin/", f"{BIN}/")]
    influx_url = influxdb.url

    # 1-3: InfluxDB's admin, the PKI and tokens, the collector (one shell: the admin password is exported)
    script = (
        adapt(readme_block("influx-admin"), [("http://127.0.0.1:8086", influx_url)])
        + adapt(readme_block("pki"), [*common, ("COLLECTOR=collector.example.org", "COLLECTOR=localhost")])
        + adapt(readme_block("collector"), [
            *common,
            ("collector install --no-start", f"collector install --root {croot} --no-start"),
            ("/etc/gridwatt/", f"{croot}/etc/gridwatt/"),
            ("/var/lib/gridwatt/", f"{croot}/var/lib/gridwatt/"),
            (" -g gridwatt", ""),
            ("chgrp gridwatt ", "true "),
            ("http://127.0.0.1:8086", influx_url),
            ("0.0.0.0:50051", f"0.0.0.0:{grpc_port}"),
            ("127.0.0.1:8080", f"127.0.0.1:{http_port}"),
        ])
    )
    out = bash(script, pki, env)
    assert "database gridwatt: created\n" in out
    assert "retention policy job_90d (job): created, duration 90d\n" in out
    assert ("retention policy keep_2y (gpu, job_window, node, rack, host, agent_ledger): created, "
            "duration 104w\n") in out
    assert "user gridwatt: created\nuser gridwatt: may read and write gridwatt\n" in out
    assert re.search(r"collector\.toml: OK \(1 zones, 1 racks, 2 node tokens\)\n", out), out
    assert (pki / "node-tokens").read_text().count(" sha256:") == 2

    # the service: the installed unit's ExecStart, as systemd would run it
    unit = (croot / "etc/systemd/system/gridwatt-collector.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    argv = [a.replace("/etc/gridwatt/", f"{croot}/etc/gridwatt/") for a in shlex.split(exec_start)]
    assert argv[0] == str(BIN / "gridwatt-collector")
    log = (tmp_path / "collector.log").open("wb")
    collector = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_until_answering(collector, f"http://127.0.0.1:{http_port}/healthz", 200, 60, "collector")

        # 4: each GPU node, into its own image
        for node, aroot in aroots.items():
            node_env = {**env, "GRIDWATT_SOURCE__KIND": "sim",
                        "GRIDWATT_SPOOL_PATH": str(aroot / "var/lib/gridwatt/spool.db")}
            script = adapt(readme_block("agent"), [
                *common,
                ("NODE=$(hostname)", f"NODE={node}"),
                ("gridwatt-agent install --node", f"gridwatt-agent install --root {aroot} --node"),
                ("collector.example.org:50051", f"localhost:{grpc_port}"),
                ("/etc/gridwatt/", f"{aroot}/etc/gridwatt/"),
                (" -g gridwatt", ""),
            ])
            out = bash(script, pki, node_env)
            assert out.rstrip().endswith("all checks passed"), out
            assert f"✓ collector localhost:{grpc_port}: reachable over TLS" in out
            assert f"✓ auth: accepted for node '{node}'" in out
            assert f"✓ node '{node}': known to the collector (rack rack-a, zone DE)" in out
            assert "✗" not in out and "!" not in out.replace("all checks passed", ""), out

        # and they deliver: an hour of 2 simulated GPUs at 300 W each, recent (inside the policies)
        start_s = (int(time.time()) // 3600 - 2) * 3600
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start_s))
        agents = []
        for aroot in aroots.values():
            sim = {"GRIDWATT_SOURCE__KIND": "sim", "GRIDWATT_SOURCE__SIM__GPUS": "2",
                   "GRIDWATT_SOURCE__SIM__POWER_W": "300", "GRIDWATT_SOURCE__SIM__DURATION_S": "3600",
                   "GRIDWATT_SOURCE__SIM__START": f'"{start}"', "GRIDWATT_SOURCE__SIM__JOB_ID": "deploy-job",
                   "GRIDWATT_INTERVAL_S": "60",
                   "GRIDWATT_SPOOL_PATH": str(aroot / "var/lib/gridwatt/spool.db")}
            agents.append(subprocess.Popen(
                [str(BIN / "gridwatt-agent"), "run", "--replay", "--log-level", "WARNING",
                 "--config", str(aroot / "etc/gridwatt/agent.toml")],
                env={**env, **sim}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        for a in agents:
            output = a.communicate(timeout=120)[0].decode()
            assert a.returncode == 0, output
        report = json.loads(subprocess.run(
            [str(BIN / "gridwatt"), "--collector", f"http://127.0.0.1:{http_port}", "job", "deploy-job",
             "--json"],
            capture_output=True, text=True, timeout=60, check=True).stdout)
        # 2 nodes x 2 GPUs x 300 W x 1 h = 1.2 kWh; x PUE 1.2 = 1.44 kWh
        assert report["nodes"] == list(NODES) and report["gpu_count"] == 4
        assert report["it_energy_kwh"] == pytest.approx(1.2, rel=1e-9)
        assert report["facility_energy_kwh"] == pytest.approx(1.44, rel=1e-9)
    finally:
        collector.terminate()
        try:
            collector.wait(timeout=20)
        except subprocess.TimeoutExpired:
            collector.kill()
            collector.wait()
        log.close()
    assert "Traceback" not in (tmp_path / "collector.log").read_text()
