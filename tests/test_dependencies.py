"""Dependency floors match the generated code, and requirements.lock pins what setup.sh installs."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
#: aiohttp releases before this have published security advisories (the collector serves HTTP with it).
AIOHTTP_SAFE = Version("3.14.1")


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    return {r.name.lower(): r for r in reqs}


def _floor(req: Requirement) -> Version:
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    assert floors, f"{req} has no floor"
    return max(floors)


def _lock() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = Version(version)
    return pins


def test_floors_admit_only_releases_the_generated_code_runs_on() -> None:
    grpc_py = (REPO / "gridwatt/v1/telemetry_pb2_grpc.py").read_text()
    pb_py = (REPO / "gridwatt/v1/telemetry_pb2.py").read_text()
    grpc_needed = Version(re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", grpc_py).group(1))  # type: ignore[union-attr]
    pb_needed = Version(re.search(r"Protobuf Python Version: (\S+)", pb_py).group(1))  # type: ignore[union-attr]
    reqs = _requirements()
    assert _floor(reqs["grpcio"]) >= grpc_needed
    assert _floor(reqs["grpcio-health-checking"]) >= grpc_needed
    assert _floor(reqs["protobuf"]) >= pb_needed
    assert _floor(reqs["aiohttp"]) >= AIOHTTP_SAFE


def test_lock_pins_every_dependency_within_its_specifier() -> None:
    pins = _lock()
    for name, req in _requirements().items():
        key = re.sub(r"[-_.]+", "-", name)
        assert key in pins, f"{name} is not pinned in requirements.lock"
        assert req.specifier.contains(pins[key], prereleases=True), f"{name}=={pins[key]} is not {req}"


def test_installed_versions_are_the_locked_ones() -> None:
    """What scripts/setup.sh installed into this venv is what the lock says."""
    for name, version in _lock().items():
        assert Version(metadata.version(name)) == version, name


def test_generated_code_imports_in_a_fresh_interpreter() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import gridwatt.v1.telemetry_pb2_grpc as g; print(g.GRPC_GENERATED_VERSION)"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "1.85.1"
