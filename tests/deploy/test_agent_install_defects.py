"""Defects 5 and 6 of issue 16: node names, flags over an existing config, an empty --root."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from gridwatt.agent.check import EXAMPLE_NODE, WARN, CheckReport, check_node_name
from gridwatt.agent.cli import main
from gridwatt.agent.config import AgentConfig
from gridwatt.configfile import load_config

needs_root_tools = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("systemctl") is None,
    reason="needs root, useradd and systemctl (the real tools fill the --root folder)")


@needs_root_tools
def test_install_into_an_empty_root_prepares_it_and_uses_the_hostname(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "image"
    root.mkdir()
    assert main(["install", "--root", str(root), "--exec", "/opt/gridwatt/bin/gridwatt-agent"]) == 0, (
        capsys.readouterr().err)
    out = capsys.readouterr().out
    assert f"created {root / 'etc/passwd'} (root only; useradd adds the service user)" in out
    assert any(line.startswith("gridwatt:x:") for line in (root / "etc/passwd").read_text().splitlines())
    config = load_config(root / "etc/gridwatt/agent.toml", AgentConfig, environ={})
    assert config.node == socket.gethostname()  # not gpu-node-01: node is left to the hostname


@needs_root_tools
def test_flags_over_an_existing_config_are_applied_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "image"
    root.mkdir()
    assert main(["install", "--root", str(root), "--exec", "/opt/gridwatt/bin/gridwatt-agent"]) == 0
    path = root / "etc/gridwatt/agent.toml"
    path.write_text(path.read_text().replace("interval_s = 1.0", "interval_s = 10.0"))
    capsys.readouterr()
    assert main(["install", "--root", str(root), "--node", "gpu-17", "--collector", "coll.example:50051",
                 "--exec", "/opt/gridwatt/bin/gridwatt-agent"]) == 0
    out = capsys.readouterr().out
    assert (f"keep the existing {path}, setting node = gpu-17, collector.address = coll.example:50051 in it"
            in out)
    config = load_config(path, AgentConfig, environ={})
    assert (config.node, config.collector.address) == ("gpu-17", "coll.example:50051")
    assert config.interval_s == 10.0
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    # once more with only --node: the collector address set before stays
    assert main(["install", "--root", str(root), "--node", "gpu-18",
                 "--exec", "/opt/gridwatt/bin/gridwatt-agent"]) == 0
    config = load_config(path, AgentConfig, environ={})
    assert (config.node, config.collector.address) == ("gpu-18", "coll.example:50051")


def test_check_warns_about_the_example_node_name() -> None:
    report = CheckReport()
    check_node_name(EXAMPLE_NODE, report, hostname="dgx-a07")
    assert report.lines == [
        f"{WARN} node 'gpu-node-01' is the example's name, not this host's ('dgx-a07'): set node in the "
        "config (or remove it to use the hostname), or every node reports as one"]
    assert not report.failed
    quiet = CheckReport()
    check_node_name("dgx-a07", quiet, hostname="dgx-a07")
    check_node_name("gpu-node-01", quiet, hostname="gpu-node-01")
    assert quiet.lines == []
