"""Intensity provider config models and build_provider."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from gridwatt.collector.intensity.chain import FallbackChain
from gridwatt.collector.intensity.config import (
    ChainConfig,
    ElectricityMapsConfig,
    WattTimeConfig,
    parse_provider_config,
)
from gridwatt.collector.intensity.constant import ConstantIntensity
from gridwatt.collector.intensity.csv_file import CsvIntensity
from gridwatt.collector.intensity.electricitymaps import ElectricityMapsIntensity
from gridwatt.collector.intensity.factory import build_provider
from gridwatt.collector.intensity.uk_carbon import UkCarbonIntensity
from gridwatt.collector.intensity.watttime import WattTimeIntensity
from gridwatt.configfile import ConfigError

CHAIN_TOML = """
kind = "chain"
cooldown_s = 30

[[providers]]
kind = "electricitymaps"
zone = "DE"
emission_factor = "direct"
timeout_s = 5
api_key_env = "TEST_EM_KEY"

[[providers]]
kind = "watttime"
region = "CAISO_NORTH"
username = "me"
password_file = "secrets/wt.pass"

[[providers]]
kind = "uk_carbon_intensity"
region_id = 13

[[providers]]
kind = "csv"
path = "grid.csv"
max_hold_s = 3600

[[providers]]
kind = "constant"
g_per_kwh = 380.0
"""


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "wt.pass").write_text("wt-file-password\n")
    (tmp_path / "grid.csv").write_text("time,intensity_g_per_kwh\n2024-01-01T00:00:00Z,300\n")
    return tmp_path


def test_chain_config_builds_every_provider(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_EM_KEY", "em-env-key")
    cfg = parse_provider_config(tomllib.loads(CHAIN_TOML), config_dir)
    assert isinstance(cfg, ChainConfig)
    assert isinstance(cfg.providers[0], ElectricityMapsConfig)
    assert cfg.providers[0].timeout_s == 5.0
    assert cfg.providers[0].base_url == "https://api.electricitymaps.com"
    provider = build_provider(cfg)
    assert isinstance(provider, FallbackChain)
    kinds = [type(p) for p in provider.providers]
    assert kinds == [
        ElectricityMapsIntensity,
        WattTimeIntensity,
        UkCarbonIntensity,
        CsvIntensity,
        ConstantIntensity,
    ]
    em = provider.providers[0]
    assert isinstance(em, ElectricityMapsIntensity)
    assert em.emission_factor == "direct"
    assert em._http.settings.timeout_s == 5.0
    assert provider.source.startswith("chain(electricitymaps:DE, watttime:CAISO_NORTH:co2_moer, ")


def test_missing_secret_names_where_to_put_it(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ELECTRICITYMAPS_API_KEY", raising=False)
    cfg = parse_provider_config({"kind": "electricitymaps", "zone": "DE"})
    with pytest.raises(ConfigError, match="ELECTRICITYMAPS_API_KEY"):
        build_provider(cfg)


def test_secret_file_relative_to_config_dir(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ELECTRICITYMAPS_API_KEY", raising=False)
    (config_dir / "em.key").write_text("em-file-key\n")
    table = {"kind": "electricitymaps", "zone": "FR", "api_key_file": "em.key"}
    cfg = parse_provider_config(table, config_dir)
    p = build_provider(cfg)
    assert isinstance(p, ElectricityMapsIntensity)
    assert p._api_key == "em-file-key"
    assert "em-file-key" not in repr(p)


def test_watttime_signal_index_rejected_in_config() -> None:
    with pytest.raises(ValidationError, match="percentile"):
        WattTimeConfig.model_validate({"kind": "watttime", "region": "X", "endpoint": "signal-index"})
    with pytest.raises(ValidationError, match="co2_moer"):
        WattTimeConfig.model_validate({"kind": "watttime", "region": "X", "signal_type": "health_damage"})


def test_watttime_needs_a_username(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATTTIME_USERNAME", raising=False)
    monkeypatch.setenv("WATTTIME_PASSWORD", "pw")
    with pytest.raises(ConfigError, match="WATTTIME_USERNAME"):
        build_provider(parse_provider_config({"kind": "watttime", "region": "X"}))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kind": "nope"}, "kind"),
        ({"kind": "constant", "g_per_kwh": -1}, "g_per_kwh"),
        ({"kind": "constant", "g_per_kwh": 1, "unit": "lbs"}, "unit"),
        ({"kind": "electricitymaps", "zone": "DE", "timeout_s": 0}, "timeout_s"),
        ({"kind": "uk_carbon_intensity", "region_id": 18}, "region_id"),
        ({"kind": "chain", "providers": []}, "providers"),
        ({"kind": "electricitymaps", "zone": "DE", "api_key": "inline"}, "api_key"),
    ],
)
def test_bad_config_names_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        parse_provider_config(data)


def test_missing_csv_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothere\.csv"):
        build_provider(parse_provider_config({"kind": "csv", "path": "nothere.csv"}, tmp_path))
