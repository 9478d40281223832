"""The intensity provider registry: ``kind`` of a provider table → a factory of the provider.

A provider registers itself and its config model in its own module
(``@PROVIDERS.register("kind", ItsConfig)``; the model is a :class:`ProviderTable`);
intensity/plugins.py imports every provider module; a :data:`ProviderConfig` field validates a
table by the model its ``kind`` names here; factory.py builds through it. See gridwatt/registry.py
and intensity/README.md "Adding a provider".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import ConfigDict, WrapValidator

from gridwatt.collector.intensity.base import IntensityProvider
from gridwatt.configfile import StrictModel
from gridwatt.registry import Registry

#: a provider's config model (in its own module) → the provider (ConfigError on a missing file/secret)
ProviderFactory = Callable[[Any], IntensityProvider]

PROVIDERS: Registry[ProviderFactory] = Registry(
    "intensity provider", "intensity.kind", plugins="gridwatt.collector.intensity.plugins")


class ProviderTable(StrictModel):
    """The common base of every provider's config model: strict (extra keys refused), frozen,
    and with a ``kind`` (each model narrows it to its own ``Literal``)."""

    model_config = ConfigDict(frozen=True)
    kind: str


#: a provider table, validated by the config model its ``kind`` names in :data:`PROVIDERS`
ProviderConfig = Annotated[ProviderTable, WrapValidator(PROVIDERS.validate_table)]


def build(cfg: Any) -> IntensityProvider:
    """The provider a config model describes (through its kind's factory)."""
    return PROVIDERS.get(cfg.kind)(cfg)
