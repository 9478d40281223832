"""The tree's shape: no symlinks, no import circles, and import names mapped onto the real folders."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import get_args

import pytest

import gridwatt.agent
import gridwatt.collector
import gridwatt.deploy

REPO = Path(__file__).resolve().parent.parent


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_symlink_is_tracked() -> None:
    out = subprocess.run(["git", "ls-files", "-s"], cwd=REPO, capture_output=True, text=True, check=True)
    links = [line.split("\t", 1)[1] for line in out.stdout.splitlines() if line.startswith("120000 ")]
    assert links == []


def test_import_names_come_from_the_real_folders() -> None:
    assert Path(gridwatt.agent.__file__).resolve() == REPO / "agent" / "__init__.py"
    assert Path(gridwatt.collector.__file__).resolve() == REPO / "collector" / "__init__.py"
    assert Path(gridwatt.deploy.__file__).resolve() == REPO / "deploy" / "__init__.py"


def test_no_import_circle_in_gridwatt_agent_or_collector() -> None:
    cycles = _script("import_cycles")
    files = cycles.module_files(REPO)
    graph = cycles.import_graph(files)
    assert "gridwatt.agent.runner" in files and "gridwatt.collector.ingest" in files
    # the graph sees imports inside agent/ and collector/ (a lazy and a TYPE_CHECKING one count too)
    assert "gridwatt.collector.ingest_stats" in graph["gridwatt.collector.metrics"]
    assert "gridwatt.agent.spool" in graph["gridwatt.agent.runner"]
    assert cycles.cycles(graph) == []


def test_import_cycles_finds_a_circle() -> None:
    cycles = _script("import_cycles")
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles.cycles(graph) == [["a", "b", "c"]]


def test_typecheck_tree_maps_import_names_onto_the_folders(tmp_path: Path) -> None:
    tree = _script("typecheck_tree").build(REPO, tmp_path / "typecheck")
    assert (tree / "gridwatt" / "agent").resolve() == REPO / "agent"
    assert (tree / "gridwatt" / "collector").resolve() == REPO / "collector"
    assert (tree / "gridwatt" / "cli.py").resolve() == REPO / "gridwatt" / "cli.py"
    assert (tree / "gridwatt" / "agent" / "runner.py").is_file()


def test_the_script_exits_zero_on_this_tree() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "import_cycles.py")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_every_configurable_kind_has_a_registered_factory() -> None:
    """One registration pattern (gridwatt/registry.py): the kinds a config can name are exactly the
    registered ones, for GPU sources, intensity providers and alert sinks."""
    from gridwatt.agent.sources.plugins import SOURCES
    from gridwatt.collector.alerts.sinks.plugins import SINKS
    from gridwatt.collector.intensity.plugins import PROVIDERS

    assert SOURCES.names() == ("nvml", "sim")
    assert SOURCES.configured_names() == ("sim",)  # [source.sim]; NVML has no settings of its own
    # every provider registers its config model with its factory, under the kind the model names
    for name in PROVIDERS.names():
        model = PROVIDERS.config_model(name)
        assert model is not None and get_args(model.model_fields["kind"].annotation) == (name,)
    assert PROVIDERS.names() == ("chain", "constant", "csv", "electricitymaps", "uk_carbon_intensity",
                                 "watttime")
    # every sink has a table of [alerts.sinks] named as registered, validated by its own model
    assert SINKS.names() == SINKS.configured_names() == ("alertmanager", "log", "webhooks")


def test_an_unknown_kind_names_the_key_and_the_known_ones() -> None:
    from gridwatt.agent.sources.plugins import SOURCES
    from gridwatt.configfile import ConfigError

    with pytest.raises(ConfigError, match=r"^source.kind: unknown GPU source 'rocm' \(known: nvml, sim\)$"):
        SOURCES.get("rocm")


@pytest.mark.e2e
def test_the_wheel_ships_every_package_and_the_deploy_files(tmp_path: Path) -> None:
    """setup.py finds the packages below each mapped folder; deploy/ ships as gridwatt.deploy."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("gridwatt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name, folder in (("gridwatt/agent", "agent"), ("gridwatt/collector", "collector")):
        for init in (REPO / folder).rglob("__init__.py"):
            assert f"{name}/{init.relative_to(REPO / folder).as_posix()}" in names
    assert {"gridwatt/deploy/agent.example.toml", "gridwatt/deploy/systemd/gridwatt-agent.service",
            "gridwatt/deploy/data/grid/DE_2022_hourly.csv", "gridwatt/deploy/data/grid/README.md",
            "gridwatt/demo_harness/influxdb.py", "gridwatt/py.typed"} <= names
    assert not any(n.startswith(("gridwatt/agent/data/", "gridwatt/data/")) for n in names)
