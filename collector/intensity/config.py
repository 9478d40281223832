"""Configuration of intensity providers (pydantic), and building providers from it.

A provider is a table with a ``kind``; a ``chain`` holds a list of them::

    [intensity]
    kind = "chain"
    providers = [
      { kind = "electricitymaps", zone = "DE", api_key_file = "secrets/em.key" },
      { kind = "csv", path = "DE_2022_hourly.csv" },
      { kind = "constant", g_per_kwh = 380.0 },
    ]

Secrets are never inline: each comes from the environment variable named in
``*_env`` or, if that is unset, the file in ``*_file`` (relative to the config file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gridwatt.collector.intensity.base import MAX_INTENSITY_G_PER_KWH, EmissionFactor, IntensityProvider
from gridwatt.collector.intensity.http import HttpSettings
from gridwatt.configfile import ConfigError, read_secret, resolve_path


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConstantConfig(_Model):
    """The same intensity at every time."""

    kind: Literal["constant"]
    g_per_kwh: float = Field(ge=0, le=MAX_INTENSITY_G_PER_KWH, allow_inf_nan=False)
    emission_factor: EmissionFactor = "lifecycle"


class CsvConfig(_Model):
    """A CSV time series (Electricity Maps export or ``time,intensity_g_per_kwh``)."""

    kind: Literal["csv"]
    path: str
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
    api_key_file: str | None = None
    past_range_max_s: int = Field(default=10 * 24 * 3600, gt=0)


class WattTimeConfig(_HttpConfig):
    """WattTime API v3 MOER, one region."""

    kind: Literal["watttime"]
    region: str = Field(min_length=1)
    username: str | None = None
    username_env: str = "WATTTIME_USERNAME"
    password_env: str = "WATTTIME_PASSWORD"
    password_file: str | None = None
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


ProviderConfig = Annotated[
    ConstantConfig
    | CsvConfig
    | ElectricityMapsConfig
    | WattTimeConfig
    | UkCarbonIntensityConfig
    | ChainConfig,
    Field(discriminator="kind"),
]

ChainConfig.model_rebuild()


def _secret(env_name: str, file: str | None, config_dir: Path | None, what: str) -> str:
    path = resolve_path(file, config_dir) if file else None
    value = read_secret(os.environ.get(env_name) or None, path, what)
    if not value:
        where = f"environment variable {env_name}" + (f" or file {path}" if path else "")
        raise ConfigError(f"{what}: no secret found (set {where})")
    return value


def build_provider(cfg: ProviderConfig, config_dir: Path | None = None) -> IntensityProvider:
    """The provider ``cfg`` describes; relative paths are taken from ``config_dir``.

    Raises ConfigError (naming the provider and field, never a secret) when a
    file or secret cannot be read.
    """
    # imported here so that reading a config does not import aiohttp
    from gridwatt.collector.intensity.chain import FallbackChain
    from gridwatt.collector.intensity.constant import ConstantIntensity
    from gridwatt.collector.intensity.csv_file import CsvIntensity, IntensityFileError
    from gridwatt.collector.intensity.electricitymaps import ElectricityMapsIntensity
    from gridwatt.collector.intensity.uk_carbon import UkCarbonIntensity
    from gridwatt.collector.intensity.watttime import WattTimeIntensity

    if isinstance(cfg, ConstantConfig):
        return ConstantIntensity(cfg.g_per_kwh, cfg.emission_factor)
    if isinstance(cfg, CsvConfig):
        try:
            return CsvIntensity(resolve_path(cfg.path, config_dir), cfg.emission_factor, cfg.max_hold_s)
        except IntensityFileError as exc:
            raise ConfigError(f"intensity csv: {exc}") from None
    if isinstance(cfg, ElectricityMapsConfig):
        key = _secret(cfg.api_key_env, cfg.api_key_file, config_dir, "intensity electricitymaps api key")
        return ElectricityMapsIntensity(
            cfg.zone,
            key,
            emission_factor=cfg.emission_factor,
            base_url=cfg.base_url,
            http=cfg.http_settings(),
            past_range_max_s=cfg.past_range_max_s,
            min_refetch_s=cfg.min_refetch_s,
            max_hold_s=cfg.max_hold_s,
        )
    if isinstance(cfg, WattTimeConfig):
        username = cfg.username or os.environ.get(cfg.username_env)
        if not username:
            raise ConfigError(f"intensity watttime: no username (set 'username' or {cfg.username_env})")
        password = _secret(cfg.password_env, cfg.password_file, config_dir, "intensity watttime password")
        return WattTimeIntensity(
            cfg.region,
            username,
            password,
            signal_type=cfg.signal_type,
            endpoint=cfg.endpoint,
            base_url=cfg.base_url,
            http=cfg.http_settings(),
            historical_max_s=cfg.historical_max_s,
            use_forecast=cfg.use_forecast,
            min_refetch_s=cfg.min_refetch_s,
            max_hold_s=cfg.max_hold_s,
        )
    if isinstance(cfg, UkCarbonIntensityConfig):
        return UkCarbonIntensity(
            cfg.region_id, base_url=cfg.base_url, http=cfg.http_settings(), min_refetch_s=cfg.min_refetch_s,
            max_hold_s=cfg.max_hold_s,
        )
    if isinstance(cfg, ChainConfig):
        return FallbackChain(
            [build_provider(p, config_dir) for p in cfg.providers],
            cooldown_s=cfg.cooldown_s,
            mark_fallback_estimated=cfg.mark_fallback_estimated,
        )
    raise ConfigError(f"unknown intensity provider kind {getattr(cfg, 'kind', None)!r}")


def parse_provider_config(data: object) -> ProviderConfig:
    """Validate one provider table (a dict from TOML) into its config model."""
    from pydantic import TypeAdapter

    adapter: TypeAdapter[ProviderConfig] = TypeAdapter(ProviderConfig)
    return adapter.validate_python(data)
