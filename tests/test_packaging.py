"""Issue 16, defect 8 (packaging): the license is an SPDX string; setup finds Python quietly under pyenv;
the wheel ships the collector's example config and unit and the grid data."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_license_is_an_spdx_string() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # a TOML table is deprecated by setuptools
    assert "setuptools>=77" in project["build-system"]["requires"]


def test_find_python_is_quiet_about_pyenv_shims_of_other_versions(tmp_path: Path) -> None:
    shims = tmp_path / "shims"
    shims.mkdir()
    for version in ("3.13", "3.12"):  # what pyenv's shim does for a version that is not selected
        shim = shims / f"python{version}"
        shim.write_text(f'#!/bin/sh\necho "pyenv: python{version}: command not found" >&2\nexit 127\n')
        shim.chmod(0o755)
    (shims / "python3.11").symlink_to(sys.executable)
    proc = subprocess.run(["bash", str(REPO / "scripts/find_python.sh")], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{shims}:/usr/bin:/bin"}, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"{shims}/python3.11\n", "")


@pytest.mark.skipif(os.environ.get("GRIDWATT_SKIP_WHEEL") == "1", reason="GRIDWATT_SKIP_WHEEL=1")
def test_the_wheel_ships_what_install_and_the_example_config_need(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("gridwatt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("gridwatt/deploy/collector.example.toml",
                 "gridwatt/deploy/systemd/gridwatt-collector.service",
                 "gridwatt/deploy/agent.example.toml", "gridwatt/deploy/systemd/gridwatt-agent.service",
                 "gridwatt/deploy/data/grid/DE_2022_hourly.csv"):
        assert name in names, name
    assert "license" not in proc.stderr.lower()
