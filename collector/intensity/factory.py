"""Builds intensity providers from their config models (each in its provider's module), through the registry.

Only the collector's wiring builds providers. Each provider's factory and config model live in
its own module's registration, imported by intensity/plugins.py (which the registry imports the
first time a config names a provider).
"""

from __future__ import annotations

from gridwatt.collector.intensity import plugins, registry
from gridwatt.collector.intensity.base import IntensityProvider
from gridwatt.collector.intensity.registry import ProviderConfig

PROVIDERS = plugins.PROVIDERS  # every provider, registered


def build_provider(cfg: ProviderConfig) -> IntensityProvider:
    """The provider ``cfg`` describes (its paths were resolved when the config was read).

    Raises ConfigError (naming the provider and field, never a secret) when a
    file or secret cannot be read.
    """
    return registry.build(cfg)
