"""A new part is added in one module: its factory and its config model, registered together.

The throwaway provider below lives only in this test module; a collector config that names its
kind validates (strictly, with paths from the config file's folder) and builds through the registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from gridwatt.collector.config import CollectorConfig
from gridwatt.collector.intensity.base import IntensitySeries
from gridwatt.collector.intensity.chain import FallbackChain
from gridwatt.collector.intensity.factory import build_provider
from gridwatt.collector.intensity.plugins import PROVIDERS
from gridwatt.collector.intensity.registry import ProviderTable
from gridwatt.collector.stepseries import StepSeries
from gridwatt.configfile import ConfigError, ConfigPath, load_config


class TideConfig(ProviderTable):
    kind: Literal["tide"]
    g_per_kwh: float = Field(ge=0)
    table: ConfigPath | None = None


class TideIntensity:
    def __init__(self, cfg: TideConfig) -> None:
        self.cfg = cfg
        self.source = "tide"

    async def series(self, start_ns: int, end_ns: int) -> IntensitySeries:
        return IntensitySeries(StepSeries.constant(self.cfg.g_per_kwh), "tide", "lifecycle")


@pytest.fixture
def tide() -> Iterator[None]:
    PROVIDERS.register("tide", TideConfig)(TideIntensity)
    try:
        yield
    finally:  # the registry is process-wide: leave it as the plugins made it
        PROVIDERS._factories.pop("tide")
        PROVIDERS._configs.pop("tide")


def _config(tmp_path: Path, intensity: str) -> Path:
    cfg = tmp_path / "collector.toml"
    cfg.write_text(f'[[zones]]\nname = "Z"\nintensity = {intensity}\n')
    return cfg


def test_a_provider_registered_in_its_own_module_is_configurable(tmp_path: Path, tide: None) -> None:
    cfg = _config(tmp_path, '{ kind = "chain", providers = ['
                            '{ kind = "tide", g_per_kwh = 7, table = "t.csv" },'
                            ' { kind = "constant", g_per_kwh = 300 }] }')
    c = load_config(cfg, CollectorConfig, environ={})
    chain = c.zones[0].intensity
    tide_cfg = chain.providers[0]  # type: ignore[attr-defined]
    assert isinstance(tide_cfg, TideConfig) and tide_cfg.table == tmp_path / "t.csv"
    built = build_provider(chain)
    assert isinstance(built, FallbackChain) and isinstance(built.providers[0], TideIntensity)
    assert "tide" in PROVIDERS.names()


def test_a_registered_provider_is_strict_and_errors_name_the_path(tmp_path: Path, tide: None) -> None:
    extra = r"field zones\.0\.intensity\.tide\.colour: Extra inputs are not permitted"
    with pytest.raises(ConfigError, match=extra):
        load_config(_config(tmp_path, '{ kind = "tide", g_per_kwh = 7, colour = "blue" }'), CollectorConfig,
                    environ={})
    low = r"field zones\.0\.intensity\.tide\.g_per_kwh: Input should be greater"
    with pytest.raises(ConfigError, match=low):
        load_config(_config(tmp_path, '{ kind = "tide", g_per_kwh = -1 }'), CollectorConfig, environ={})


def test_an_unknown_provider_kind_names_the_field_and_the_known_kinds(tmp_path: Path) -> None:
    unknown = (r"field zones\.0\.intensity: Input tag 'tide' found using 'kind' does not match any of "
               r"the expected tags: 'chain', 'constant', 'csv', 'electricitymaps', 'uk_carbon_intensity', "
               r"'watttime'")
    with pytest.raises(ConfigError, match=unknown):
        load_config(_config(tmp_path, '{ kind = "tide", g_per_kwh = 7 }'), CollectorConfig, environ={})
