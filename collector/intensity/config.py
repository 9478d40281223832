"""Configuration of the built-in intensity providers (pydantic models); factory.py builds providers
from them. Each model is registered with its provider's factory in the provider's module; a
:data:`ProviderConfig` field dispatches on ``kind`` through the registry (intensity/registry.py), so
a new provider may keep its model in its own module.

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
from typing import Literal

from pydantic import Field, TypeAdapter, field_validator

from gridwatt.collector.intensity.base import MAX_INTENSITY_G_PER_KWH, EmissionFactor
from gridwatt.collector.intensity.http import HttpSettings
from gridwatt.collector.intensity.registry import ProviderConfig, ProviderTable
from gridwatt.configfile import ConfigPath

__all__ = ["ProviderConfig", "ProviderTable", "parse_provider_config"]

_Model = ProviderTable  # frozen, and from StrictModel, extra="forbid"


class ConstantConfig(_Model):
    """The same intensity at every time."""

    kind: Literal["constant"]
    g_per_kwh: float = Field(ge=0, le=MAX_INTENSITY_G_PER_KWH, allow_inf_nan=False)
    emission_factor: EmissionFactor = "lifecycle"


class CsvConfig(_Model):
    """A CSV time series (Electricity Maps export or ``time,intensity_g_per_kwh``)."""

    kind: Literal["csv"]
    path: ConfigPath
    emission_factor: EmissionFactor = "lifecycle"
    #: unset: the file's values hold at all times; set: ranges outside the file are unavailable
    max_hold_s: float | None = Field(default=None, ge=0)


class _HttpConfig(_Model):
    """HTTP behaviour common to the API providers."""

    timeout_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=4, ge=1, le=10)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    retry_after_max_s: float = Field(default=120.0, ge=0)
    min_refetch_s: float = Field(default=60.0, ge=0)
    #: longest a value is held past its own period, marked estimated (unset: the provider's
    #: default: 3 h Electricity Maps, 1 h WattTime, 2 h UK); beyond it the chain moves on
    max_hold_s: float | None = Field(default=None, ge=0, le=7 * 24 * 3600)

    def http_settings(self) -> HttpSettings:
        return HttpSettings(
            timeout_s=self.timeout_s,
            max_attempts=self.max_attempts,
            backoff_base_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
            retry_after_max_s=self.retry_after_max_s,
        )


class ElectricityMapsConfig(_HttpConfig):
    """Electricity Maps API v3, one zone."""

    kind: Literal["electricitymaps"]
    zone: str = Field(min_length=1)
    emission_factor: EmissionFactor = "lifecycle"
    base_url: str = "https://api.electricitymaps.com"
    api_key_env: str = "ELECTRICITYMAPS_API_KEY"
    api_key_file: ConfigPath | None = None
    past_range_max_s: int = Field(default=10 * 24 * 3600, gt=0)


class WattTimeConfig(_HttpConfig):
    """WattTime API v3 MOER, one region."""

    kind: Literal["watttime"]
    region: str = Field(min_length=1)
    username: str | None = None
    username_env: str = "WATTTIME_USERNAME"
    password_env: str = "WATTTIME_PASSWORD"
    password_file: ConfigPath | None = None
    signal_type: str = "co2_moer"
    endpoint: str = "historical"
    base_url: str = "https://api.watttime.org"
    historical_max_s: int = Field(default=30 * 24 * 3600, gt=0)
    use_forecast: bool = True

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_intensity(cls, v: str) -> str:
        if "signal-index" in v:
            raise ValueError(
                "WattTime's signal-index is a 0-100 percentile, not an intensity in g/kWh; "
                "gridwatt cannot use it (use endpoint 'historical' with signal_type 'co2_moer')"
            )
        if v != "historical":
            raise ValueError("only 'historical' is supported")
        return v

    @field_validator("signal_type")
    @classmethod
    def _signal_is_intensity(cls, v: str) -> str:
        if v != "co2_moer":
            raise ValueError(
                f"signal_type {v!r} is not a CO2 intensity gridwatt can use; use 'co2_moer'"
            )
        return v


class UkCarbonIntensityConfig(_HttpConfig):
    """The GB Carbon Intensity API: national, or one DNO region (1..17)."""

    kind: Literal["uk_carbon_intensity"]
    region_id: int | None = Field(default=None, ge=1, le=17)
    base_url: str = "https://api.carbonintensity.org.uk"


class ChainConfig(_Model):
    """Providers tried in order; the first that answers wins."""

    kind: Literal["chain"]
    providers: list[ProviderConfig] = Field(min_length=1)
    cooldown_s: float = Field(default=60.0, ge=0)
    mark_fallback_estimated: bool = True


def parse_provider_config(data: object, config_dir: Path | None = None) -> ProviderConfig:
    """Validate one provider table (a dict from TOML) into its config model; relative paths are
    taken from ``config_dir`` (as for a table in a config file in that folder)."""
    adapter: TypeAdapter[ProviderConfig] = TypeAdapter(ProviderConfig)
    return adapter.validate_python(data, context={"config_dir": config_dir})
