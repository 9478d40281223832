"""``gridwatt-collector install`` / ``init-db``, retention per measurement, package: paths, state file."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gridwatt.collector.cli import main as collector_main
from gridwatt.collector.config import CollectorConfig
from gridwatt.configfile import ConfigError, load_config, packaged_data, resolve_path
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import toml_str
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.collector.helpers import batches, http_get, influx_post, running_collector, sim_samples
from tests.conftest import collector_toml, first_row

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "gridwatt-collector.service"
EXAMPLE = REPO / "deploy" / "collector.example.toml"
H_NS = 3600 * 10**9
needs_root_tools = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("systemctl") is None,
    reason="needs root, useradd and systemctl (the real tools fill the --root folder)")


@pytest.mark.parametrize("parts", [("systemd", "gridwatt-collector.service"), ("collector.example.toml",)])
def test_installer_reads_the_deploy_files_themselves(parts: tuple[str, ...]) -> None:
    """One copy: the installer's package data is deploy/ itself (gridwatt.deploy), not a duplicate."""
    from gridwatt.collector.install import packaged_file

    assert packaged_file(*parts) == REPO.joinpath("deploy", *parts).read_text()


def test_unit_can_write_alert_state_and_is_hardened() -> None:
    unit = UNIT.read_text()
    assert "\nStateDirectory=gridwatt\n" in unit and "\nProtectSystem=strict\n" in unit
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for gridwatt-collector.service: (\d+\.\d)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= 2.0


@needs_root_tools
def test_install_into_an_empty_root_then_again_then_uninstall(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "image"
    root.mkdir()
    exe = "/opt/venv/bin/gridwatt-collector"
    assert collector_main(["install", "--root", str(root), "--exec", exe]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"created {root / 'etc/passwd'}" in out
    passwd = (root / "etc/passwd").read_text().splitlines()
    assert passwd[0].startswith("root:x:0:0:")
    assert re.fullmatch(r"gridwatt:x:\d+:\d+:gridwatt collector:/var/lib/gridwatt:/usr/sbin/nologin",
                        passwd[1])
    unit = (root / "etc/systemd/system/gridwatt-collector.service").read_text()
    assert unit == UNIT.read_text().replace("/opt/gridwatt/bin/gridwatt-collector", exe)
    assert (root / "etc/systemd/system/multi-user.target.wants/gridwatt-collector.service").is_symlink()
    config = root / "etc/gridwatt/collector.toml"
    assert config.read_text() == EXAMPLE.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE((root / "var/lib/gridwatt").stat().st_mode) == 0o750
    # the example works from /etc/gridwatt: its grid CSV is package:DE_2022_hourly.csv
    loaded = load_config(config, CollectorConfig, environ={})
    from gridwatt.collector.wiring import build_topology

    build_topology(loaded)

    config.write_text(config.read_text().replace("rack_resolution_s = 60", "rack_resolution_s = 300"))
    assert collector_main(["install", "--root", str(root), "--exec", exe]) == 0
    assert f"keep the existing {config}" in capsys.readouterr().out
    assert "rack_resolution_s = 300" in config.read_text()
    assert sum(line.startswith("gridwatt:") for line in (root / "etc/passwd").read_text().splitlines()) == 1

    assert collector_main(["uninstall", "--root", str(root)]) == 0
    assert not (root / "etc/systemd/system/gridwatt-collector.service").exists()
    assert "gridwatt:" not in (root / "etc/passwd").read_text()
    assert config.exists()


def test_dry_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert collector_main(["install", "--dry-run", "--exec", "/opt/gridwatt/bin/gridwatt-collector"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3:] == ["would run: systemctl daemon-reload",
                        "would run: systemctl enable --now gridwatt-collector.service",
                        "would record what was done in /etc/gridwatt/.collector-install.json"]
    assert any(line.startswith("would write /etc/gridwatt/collector.toml from the example") for line in out)
    root = tmp_path / "r"
    root.mkdir()
    assert collector_main(["install", "--dry-run", "--root", str(root)]) == 0
    assert list(root.iterdir()) == []


def test_package_path_names_the_shipped_grid_data(tmp_path: Path) -> None:
    shipped = packaged_data("DE_2022_hourly.csv")
    assert shipped.read_bytes() == (REPO / "deploy/data/grid/DE_2022_hourly.csv").read_bytes()
    assert resolve_path("package:DE_2022_hourly.csv", tmp_path) == shipped
    assert resolve_path("grid.csv", tmp_path) == tmp_path / "grid.csv"  # relative: the config's folder


# ---- check-config and the alert state file (defect 2) -------------------------------------------

def _config_with_state(folder: Path, state_file: Path) -> Path:
    cfg = folder / "collector.toml"
    cfg.write_text(collector_toml("http://127.0.0.1:9", "gridwatt")
                   + f"[alerts]\nstate_file = {toml_str(state_file)}\n")
    cfg.chmod(0o644)
    return cfg


def test_check_config_refuses_a_state_file_in_a_missing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config_with_state(tmp_path, tmp_path / "var/lib/gridwatt/alerts-state.json")
    assert collector_main(["check-config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    state = tmp_path / "var/lib/gridwatt/alerts-state.json"
    assert err.startswith(f"gridwatt-collector: alerts.state_file {state}: cannot write alert state there "
                          "(No such file or directory)")
    assert len(err.strip().splitlines()) == 1
    (tmp_path / "var/lib/gridwatt").mkdir(parents=True)
    assert collector_main(["check-config", "--config", str(cfg)]) == 0


# ---- init-db and retention policies per measurement ---------------------------------------------

@pytest.fixture(scope="module")
def auth_influxdb() -> Iterator[LocalInfluxDB]:
    with LocalInfluxDB(auth_enabled=True) as db:
        influx_post(db.url, "CREATE USER admin WITH PASSWORD 'adminpw' WITH ALL PRIVILEGES")
        yield db


def _rp_config(folder: Path, url: str, database: str, job_duration: str = "30d") -> Path:
    (folder / "influx-password").write_text("collectorpw\n")
    cfg = folder / "collector.toml"
    cfg.write_text(
        collector_toml(url, database)
        .replace("[influxdb]\n", '[influxdb]\nusername = "gw"\npassword_file = "influx-password"\n'
                 "create_database = false\n", 1)
        + f'[[influxdb.retention_policies]]\nname = "short"\nduration = "{job_duration}"\n'
        'measurements = ["job"]\n'
        '[[influxdb.retention_policies]]\nname = "long"\nduration = "104w"\n'
        'measurements = ["gpu", "node", "rack", "job_window"]\n'
    )
    return cfg


def test_init_db_creates_database_policies_and_user_and_says_so(
    tmp_path: Path, auth_influxdb: LocalInfluxDB, database: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = _rp_config(tmp_path, auth_influxdb.url, database)
    assert collector_main(["init-db", "--config", str(cfg)]) == 1  # no admin given: refused, one line
    err = capsys.readouterr().err.strip()
    assert err.startswith("gridwatt-collector init-db: InfluxDB at ") and "HTTP 401" in err
    assert "\n" not in err
    monkeypatch.setenv("GRIDWATT_INFLUX_ADMIN_PASSWORD", "adminpw")
    assert collector_main(["init-db", "--config", str(cfg), "--admin-user", "admin"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"database {database}: created",
        "retention policy short (job): created, duration 30d",
        "retention policy long (gpu, node, rack, job_window): created, duration 104w",
        "retention policy autogen (the database's default): other measurements",
        "user gw: created",
        f"user gw: may read and write {database}",
    ]
    # again, with a longer job policy: only that changes
    cfg = _rp_config(tmp_path, auth_influxdb.url, database, job_duration="90d")
    assert collector_main(["init-db", "--config", str(cfg), "--admin-user", "admin"]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == [
        f"database {database}: exists",
        "retention policy short (job): duration changed from 720h0m0s to 90d",
        "retention policy long (gpu, node, rack, job_window): exists, duration 104w",
    ]


async def test_points_go_to_and_are_read_from_their_retention_policy(
    tmp_path: Path, auth_influxdb: LocalInfluxDB, database: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = _rp_config(tmp_path, auth_influxdb.url, database)
    monkeypatch.setenv("GRIDWATT_INFLUX_ADMIN_PASSWORD", "adminpw")
    assert collector_main(["init-db", "--config", str(cfg), "--admin-user", "admin"]) == 0
    influx_post(auth_influxdb.url, f'SHOW RETENTION POLICIES ON "{database}"', auth=("gw", "collectorpw"))
    # 2 GPUs x 300 W x 1 h at 60 s: 0.6 kWh
    # recent times: InfluxDB refuses points older than a policy's duration ("beyond retention policy")
    recent = (time.time_ns() // H_NS - 3) * H_NS
    samples = sim_samples("n1", 2, recent, 3600, 300.0, 60.0, job_id="j-rp")
    async with running_collector(tmp_path, cfg.read_text()) as c:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as ch:
            stub = pb_grpc.IngestStub(ch)
            for b in batches("n1", samples, 40):
                ack = await stub.Write(b)
                assert ack.code == 0, ack.message
        status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{c.http_port}/v1/jobs/j-rp")
    assert status == 200, body
    report = json.loads(body)
    assert report["gpu_count"] == 2 and report["gpu_hours"] == pytest.approx(2.0)
    assert report["it_energy_kwh"] == pytest.approx(0.6)
    counts = {}
    for rp, m in (("short", "job"), ("autogen", "job"), ("long", "gpu"), ("autogen", "gpu"),
                  ("long", "job_window"), ("autogen", "host"), ("long", "rack")):
        q = f'SELECT count("energy_j") FROM "{rp}"."{m}"' if m != "rack" else \
            f'SELECT count("it_energy_kwh") FROM "{rp}"."{m}"'
        (res,) = _admin_query(auth_influxdb.url, database, q)
        counts[(rp, m)] = first_row(res).get("count", 0)
    assert counts[("short", "job")] == 120 and counts[("autogen", "job")] == 0
    assert counts[("long", "gpu")] == 120 and counts[("autogen", "gpu")] == 0
    assert counts[("long", "job_window")] == 60
    assert counts[("long", "rack")] == 60


def _admin_query(url: str, database: str, q: str) -> list[dict[str, object]]:
    import urllib.parse
    import urllib.request

    params = urllib.parse.urlencode({"db": database, "q": q, "u": "admin", "p": "adminpw"})
    with urllib.request.urlopen(f"{url}/query?{params}", timeout=30) as resp:
        body = json.load(resp)
    return list(body["results"])


def test_retention_policy_config_errors_name_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    rp = '[[influxdb.retention_policies]]\nname = "a"\nduration = "{}"\nmeasurements = ["{}"]\n'
    cfg.write_text(collector_toml("http://127.0.0.1:8086", "d") + rp.format("30d", "jobs"))
    with pytest.raises(ConfigError) as err:
        load_config(cfg, CollectorConfig, environ={})
    assert ("field influxdb.retention_policies.0.measurements: Value error, unknown measurement(s) ['jobs']"
            in str(err.value))
    cfg.write_text(collector_toml("http://127.0.0.1:8086", "d") + rp.format("30 days", "job"))
    with pytest.raises(ConfigError) as err:
        load_config(cfg, CollectorConfig, environ={})
    assert "field influxdb.retention_policies.0.duration: String should match pattern" in str(err.value)
