"""README "Adding a part", run as written: the example sink module and its TOML table.

The python block is executed as a module of its own (as if it were collector/alerts/sinks/jsonl.py
imported by plugins.py); a collector config with the TOML block then builds the sink, and a real alert
event from the engine lands in the file as one JSON line.
"""

from __future__ import annotations

import json
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridwatt.collector.alerts.engine import AlertEngine
from gridwatt.collector.alerts.model import ScopeWindow
from gridwatt.collector.alerts.sinks import AlertDispatcher, build_sinks
from gridwatt.collector.alerts.sinks.plugins import SINKS
from gridwatt.collector.config import CollectorConfig
from gridwatt.configfile import ConfigError, load_config
from tests.conftest import REPO, collector_toml

MODULE = "gridwatt_readme_jsonl_sink"


def readme_block(name: str, language: str) -> str:
    """The fenced block right after ``<!-- readme-test: NAME -->`` in README.md."""
    text = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- readme-test: {re.escape(name)} -->\n```{language}\n(.*?)\n```\n", text, re.S)
    assert found, f"README.md has no {language} block {name!r}"
    return found.group(1) + "\n"


@pytest.fixture
def jsonl_module() -> Iterator[types.ModuleType]:
    """The README's sink module, imported (its registration line runs); unregistered afterwards."""
    module = types.ModuleType(MODULE)
    sys.modules[MODULE] = module
    try:
        exec(compile(readme_block("jsonl-sink", "python"), "README.md (jsonl-sink)", "exec"), module.__dict__)
        yield module
    finally:
        sys.modules.pop(MODULE, None)
        SINKS._factories.pop("jsonl", None)
        SINKS._configs.pop("jsonl", None)


def _config(tmp_path: Path, sinks: str) -> Path:
    cfg = tmp_path / "collector.toml"
    cfg.write_text(collector_toml("http://127.0.0.1:9", "d") + '[[alerts.rules]]\nname = "rack-idle"\n'
                   'scope = "rack"\nutil_below_pct = 10\nfor_s = 1800\n' + sinks)
    return cfg


async def test_the_readme_sink_is_configured_built_and_writes_each_event(
        tmp_path: Path, jsonl_module: types.ModuleType) -> None:
    config = load_config(_config(tmp_path, readme_block("jsonl-config", "toml")), CollectorConfig, environ={})
    (table,) = config.alerts.sinks.tables("jsonl")
    assert isinstance(table, jsonl_module.JsonlSinkConfig) and table.path == tmp_path / "alerts.jsonl"
    sinks = build_sinks(config.alerts.sinks)
    assert [s.name for s in sinks] == [f"jsonl:{tmp_path / 'alerts.jsonl'}", "log"]  # by registered name
    # the configured rule over 31 idle minutes of rack r1: pending at once, firing at 30 min
    minute_ns, start_ns = 60 * 10**9, 1_709_251_200 * 10**9  # 2024-03-01T00:00:00Z
    windows = [ScopeWindow("rack", "r1", start_ns + m * minute_ns, start_ns + (m + 1) * minute_ns, 1, ("n1",),
                           ("n1/0",), 3.0, 0.1 / 60, 0.12 / 60, 0.042 / 60) for m in range(31)]
    dispatcher = AlertDispatcher(sinks)
    await dispatcher.dispatch(AlertEngine(config.alerts.rules).observe_all(windows))
    await dispatcher.close()
    lines = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(e["kind"], e["rule"], e["scope"]) for e in lines] == [("pending", "rack-idle", "r1"),
                                                                 ("firing", "rack-idle", "r1")]
    assert lines[1]["fired_at_ns"] == start_ns + 30 * minute_ns


def test_the_readme_sink_table_errors_name_the_key_path(
        tmp_path: Path, jsonl_module: types.ModuleType) -> None:
    cfg = _config(tmp_path, "[alerts.sinks.jsonl]\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, CollectorConfig, environ={})
    assert str(err.value) == f"{cfg}: field alerts.sinks.jsonl.path: Field required"
