"""Config files: validation errors name file, field and reason; environment overrides; CLIs exit 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import pytest
from pydantic import BaseModel

from gridwatt import configfile
from gridwatt.agent.config import AgentConfig
from gridwatt.collector.config import CollectorConfig
from gridwatt.collector.intensity.config import ChainConfig, CsvConfig
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


@pytest.mark.e2e
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
    from gridwatt.collector.wiring import build_topology

    topology = build_topology(collector)  # loads the CSV intensity shipped in the package (package:...)
    placed = topology.locate("gpu-node-03")
    assert placed is not None and placed.pue.value_at(0) == 1.35


def _bare_path_fields(model: type[BaseModel], where: str = "") -> list[str]:
    """Dotted names of path fields of ``model`` (and the models inside it) that are not ConfigPath."""
    found: list[str] = []

    def walk(annotation: Any, metadata: list[Any], name: str) -> None:
        if annotation is Path:
            if not any(getattr(m, "func", None) is configfile._from_config_dir for m in metadata):
                found.append(name)
        elif get_origin(annotation) is Annotated:
            base, *extra = get_args(annotation)
            walk(base, [*metadata, *extra], name)
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in seen:
                seen.add(annotation)
                for field_name, info in annotation.model_fields.items():
                    walk(info.annotation, list(info.metadata), f"{name}.{field_name}".lstrip("."))
        else:
            for arg in get_args(annotation):
                walk(arg, [], name)

    seen: set[type[BaseModel]] = set()
    walk(model, [], where)
    return found


def test_every_path_field_is_relative_to_the_config_folder() -> None:
    """One path type for every path field: a new field typed plain Path fails here."""
    assert _bare_path_fields(AgentConfig) == []
    assert _bare_path_fields(CollectorConfig) == []
    # the check itself sees a bare Path
    class Probe(configfile.StrictModel):
        ok: configfile.ConfigPath | None = None
        bad: Path | None = None

    assert _bare_path_fields(Probe) == ["bad"]


def test_every_registered_part_model_types_its_paths_as_config_paths() -> None:
    """A part's own table (a source's, a provider's, a sink's) is found through its registry, not the
    config's fields: each registered model is checked here."""
    from gridwatt.agent.sources.plugins import SOURCES
    from gridwatt.collector.alerts.sinks.plugins import SINKS
    from gridwatt.collector.intensity.plugins import PROVIDERS

    models = {name: r.config_model(name) for r in (SOURCES, PROVIDERS, SINKS)
              for name in r.configured_names()}
    assert len(models) == 1 + 6 + 3
    assert {name: _bare_path_fields(m) for name, m in models.items() if m and _bare_path_fields(m)} == {}


def test_relative_paths_anywhere_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "grid.csv").write_text("time,intensity_g_per_kwh\n2024-01-01T00:00:00Z,300\n")
    agent = folder / "agent.toml"
    agent.write_text('spool_path = "spool.db"\n[attribution]\nproc_root = "proc"\n'
                     '[collector]\ntoken_file = "secrets/token"\n')
    a = load_config(agent, AgentConfig, environ={})
    assert (a.spool_path, a.attribution.proc_root, a.collector.token_file) == (
        folder / "spool.db", folder / "proc", folder / "secrets" / "token")
    collector = folder / "collector.toml"
    collector.write_text(
        '[[zones]]\nname = "Z"\n'
        'intensity = { kind = "chain", providers = [{ kind = "csv", path = "grid.csv" }] }\n'
        '[alerts]\nstate_file = "state/alerts.json"\n'
    )
    c = load_config(collector, CollectorConfig, environ={})
    chain = c.zones[0].intensity
    assert isinstance(chain, ChainConfig) and isinstance(chain.providers[0], CsvConfig)
    assert chain.providers[0].path == folder / "grid.csv"
    assert c.alerts.state_file == folder / "state" / "alerts.json"


def test_an_empty_path_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('spool_path = ""\n')
    with pytest.raises(ConfigError, match=r"field spool_path: Value error, must not be empty"):
        load_config(cfg, AgentConfig, environ={})


def test_unknown_gpu_source_exits_2_naming_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gridwatt.agent.cli import main

    cfg = tmp_path / "agent.toml"
    cfg.write_text('spool_path = "spool.db"\n[source]\nkind = "rocm"\n')
    assert main(["run", "--config", str(cfg)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "gridwatt-agent: source.kind: unknown GPU source 'rocm' (known: nvml, sim)")
    assert not (tmp_path / "spool.db").exists()  # nothing started
