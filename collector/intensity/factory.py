"""Builds intensity providers from their config models (intensity/config.py).

Kept apart from the models so that reading and validating a config file imports no provider (and
no aiohttp); only the collector's wiring builds providers.
"""

from __future__ import annotations

import os
from pathlib import Path

from gridwatt.collector.intensity.base import IntensityProvider
from gridwatt.collector.intensity.chain import FallbackChain
from gridwatt.collector.intensity.config import (
    ChainConfig,
    ConstantConfig,
    CsvConfig,
    ElectricityMapsConfig,
    ProviderConfig,
    UkCarbonIntensityConfig,
    WattTimeConfig,
)
from gridwatt.collector.intensity.constant import ConstantIntensity
from gridwatt.collector.intensity.csv_file import CsvIntensity, IntensityFileError
from gridwatt.collector.intensity.electricitymaps import ElectricityMapsIntensity
from gridwatt.collector.intensity.uk_carbon import UkCarbonIntensity
from gridwatt.collector.intensity.watttime import WattTimeIntensity
from gridwatt.configfile import ConfigError, read_secret


def _secret(env_name: str, path: Path | None, what: str) -> str:
    value = read_secret(os.environ.get(env_name) or None, path, what)
    if not value:
        where = f"environment variable {env_name}" + (f" or file {path}" if path else "")
        raise ConfigError(f"{what}: no secret found (set {where})")
    return value


def build_provider(cfg: ProviderConfig) -> IntensityProvider:
    """The provider ``cfg`` describes (its paths were resolved when the config was read).

    Raises ConfigError (naming the provider and field, never a secret) when a
    file or secret cannot be read.
    """
    if isinstance(cfg, ConstantConfig):
        return ConstantIntensity(cfg.g_per_kwh, cfg.emission_factor)
    if isinstance(cfg, CsvConfig):
        try:
            return CsvIntensity(cfg.path, cfg.emission_factor, cfg.max_hold_s)
        except IntensityFileError as exc:
            raise ConfigError(f"intensity csv: {exc}") from None
    if isinstance(cfg, ElectricityMapsConfig):
        key = _secret(cfg.api_key_env, cfg.api_key_file, "intensity electricitymaps api key")
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
        password = _secret(cfg.password_env, cfg.password_file, "intensity watttime password")
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
            [build_provider(p) for p in cfg.providers],
            cooldown_s=cfg.cooldown_s,
            mark_fallback_estimated=cfg.mark_fallback_estimated,
        )
    raise ConfigError(f"unknown intensity provider kind {getattr(cfg, 'kind', None)!r}")
