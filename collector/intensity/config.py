"""Reading an intensity provider table: :func:`parse_provider_config`.

Each provider keeps its config model in its own module, registered with its factory
(``@PROVIDERS.register("csv", CsvConfig)``); a :data:`ProviderConfig` field validates a table by
the model its ``kind`` names in the registry (intensity/registry.py). The built-in providers'
models are re-exported here for existing imports; a new provider need not be added.

A provider is a table with a ``kind``; a ``chain`` holds a list of them::

    [intensity]
    kind = "chain"
    providers = [
      { kind = "electricitymaps", zone = "DE", api_key_file = "secrets/em.key" },
      { kind = "csv", path = "DE_2022_hourly.csv" },
      { kind = "constant", g_per_kwh = 380.0 },
    ]

Secrets are never inline: each comes from the environment variable named in
``*_env`` or, if that is unset, the file in ``*_file``. Paths are relative to the config file's
folder (:data:`gridwatt.configfile.ConfigPath`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import TypeAdapter

from gridwatt.collector.intensity.chain import ChainConfig
from gridwatt.collector.intensity.constant import ConstantConfig
from gridwatt.collector.intensity.csv_file import CsvConfig
from gridwatt.collector.intensity.electricitymaps import ElectricityMapsConfig
from gridwatt.collector.intensity.registry import ProviderConfig, ProviderTable
from gridwatt.collector.intensity.uk_carbon import UkCarbonIntensityConfig
from gridwatt.collector.intensity.watttime import WattTimeConfig

__all__ = [
    "ChainConfig",
    "ConstantConfig",
    "CsvConfig",
    "ElectricityMapsConfig",
    "ProviderConfig",
    "ProviderTable",
    "UkCarbonIntensityConfig",
    "WattTimeConfig",
    "parse_provider_config",
]


def parse_provider_config(data: object, config_dir: Path | None = None) -> ProviderConfig:
    """Validate one provider table (a dict from TOML) into its config model; relative paths are
    taken from ``config_dir`` (as for a table in a config file in that folder)."""
    adapter: TypeAdapter[ProviderConfig] = TypeAdapter(ProviderConfig)
    return adapter.validate_python(data, context={"config_dir": config_dir})
