"""The intensity provider registry: ``kind`` of a provider table → a factory of the provider.

A provider registers itself in its own module (``@PROVIDERS.register("kind")``, taking its config
model from intensity/config.py); intensity/plugins.py imports every provider module; factory.py
builds through it. See gridwatt/registry.py and intensity/README.md "Adding a provider".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gridwatt.collector.intensity.base import IntensityProvider
from gridwatt.registry import Registry

#: a provider's config model (intensity/config.py) → the provider (ConfigError on a missing file/secret)
ProviderFactory = Callable[[Any], IntensityProvider]

PROVIDERS: Registry[ProviderFactory] = Registry("intensity provider", "intensity.kind")


def build(cfg: Any) -> IntensityProvider:
    """The provider a config model describes (through its kind's factory)."""
    return PROVIDERS.get(cfg.kind)(cfg)
