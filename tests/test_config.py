"""Config files: validation errors name file, field and reason; environment overrides; CLIs exit 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gridwatt.agent.config import AgentConfig
from gridwatt.collector.config import CollectorConfig
from gridwatt.configfile import ConfigError, load_config


def test_wrong_field_names_file_field_and_reason(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('node = "n1"\ninterval_s = -5\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg, AgentConfig)
    assert str(err.value) == f"{cfg}: field interval_s: Input should be greater than 0 (got -5)"


def test_unknown_field_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('node = "n1"\n[collector]\nadress = "x:1"\n')
    with pytest.raises(ConfigError, match=r"field collector.adress: Extra inputs are not permitted"):
        load_config(cfg, AgentConfig)


def test_environment_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('node = "n1"\n[collector]\naddress = "a:1"\n')
    config = load_config(
        cfg,
        AgentConfig,
        environ={
            "GRIDWATT_COLLECTOR__ADDRESS": "collector.example:50051",
            "GRIDWATT_INTERVAL_S": "2.5",
            "GRIDWATT_INFLUXDB__URL": "ignored-by-the-agent",
        },
    )
    assert config.collector.address == "collector.example:50051"
    assert config.interval_s == 2.5


def test_collector_rack_in_unknown_zone(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[zones]]\nname = "DE"\nintensity = { kind = "constant", g_per_kwh = 300 }\n'
        '[[racks]]\nname = "r1"\nzone = "FR"\npue = 1.2\n'
    )
    with pytest.raises(ConfigError, match=r"rack 'r1': zone 'FR' is not among zones \['DE'\]"):
        load_config(cfg, CollectorConfig)


@pytest.mark.parametrize("program", ["gridwatt.agent.cli", "gridwatt.collector.cli"])
def test_cli_exits_2_before_starting(tmp_path: Path, program: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("interval_s = 'fast'\n" if "agent" in program else "[server]\nmax_power_w = -1\n")
    cmd = "run" if "agent" in program else "serve"
    proc = subprocess.run(
        [sys.executable, "-m", program, cmd, "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert str(cfg) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (
        ("field interval_s" in proc.stderr)
        if "agent" in program
        else ("field server.max_power_w" in proc.stderr)
    )


def test_example_configs_are_valid() -> None:
    deploy = Path(__file__).resolve().parent.parent / "deploy"
    agent = load_config(deploy / "agent.example.toml", AgentConfig, environ={})
    assert agent.node == socket.gethostname() and agent.source.kind == "nvml"  # node unset: the hostname
    collector = load_config(deploy / "collector.example.toml", CollectorConfig, environ={})
    assert [r.name for r in collector.racks] == ["rack-a", "rack-b", "paris-1"]
    from gridwatt.collector.topology import Topology

    topology = Topology(collector)  # loads the CSV intensity shipped in the package (package:...)
    placed = topology.locate("gpu-node-03")
    assert placed is not None and placed.pue.value_at(0) == 1.35
