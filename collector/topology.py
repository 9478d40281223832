"""Where each node is: node → rack → grid zone, with the rack's PUE and the zone's intensity provider."""

from __future__ import annotations

from dataclasses import dataclass

from gridwatt.collector.config import CollectorConfig, RackConfig
from gridwatt.collector.intensity.base import IntensityProvider
from gridwatt.collector.intensity.config import build_provider
from gridwatt.collector.pue import load_pue_csv, pue_from_steps
from gridwatt.collector.stepseries import StepSeries
from gridwatt.configfile import ConfigError


@dataclass(frozen=True)
class Placement:
    """A node's rack, zone, the rack's PUE over time and the zone's intensity provider."""

    rack: str
    zone: str
    pue: StepSeries
    intensity: IntensityProvider


class Topology:
    """Built once from the config; ``locate`` is a dict lookup on the hot path."""

    def __init__(self, config: CollectorConfig) -> None:
        self.providers: dict[str, IntensityProvider] = {}
        for zone in config.zones:
            try:
                self.providers[zone.name] = build_provider(zone.intensity, config.config_dir)
            except ConfigError as exc:
                raise ConfigError(f"zone {zone.name!r}: {exc}") from None
        self.racks: dict[str, Placement] = {}
        self._nodes: dict[str, Placement] = {}
        for rack in config.racks:
            placement = Placement(rack.name, rack.zone, _rack_pue(rack), self.providers[rack.zone])
            self.racks[rack.name] = placement
            for node in rack.nodes:
                self._nodes[node] = placement
        self.auto_register = config.server.auto_register
        default_zone = config.accounting.default_zone or config.zones[0].name
        self.default = Placement(
            config.accounting.default_rack,
            default_zone,
            StepSeries.constant(config.accounting.default_pue),
            self.providers[default_zone],
        )

    async def close(self) -> None:
        """Close the providers' HTTP sessions."""
        for provider in self.providers.values():
            close = getattr(provider, "close", None)
            if close is not None:
                await close()

    def locate(self, node: str) -> Placement | None:
        """The node's placement; None for an unknown node when auto-registration is off."""
        found = self._nodes.get(node)
        if found is not None:
            return found
        if self.auto_register:
            self._nodes[node] = self.default
            self.racks.setdefault(self.default.rack, self.default)
            return self.default
        return None


def _rack_pue(rack: RackConfig) -> StepSeries:
    if rack.pue is not None:
        return StepSeries.constant(rack.pue)
    if rack.pue_schedule is not None:
        return pue_from_steps([(s.start, s.pue) for s in rack.pue_schedule])
    assert rack.pue_csv is not None
    return load_pue_csv(rack.pue_csv)
