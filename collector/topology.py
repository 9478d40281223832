"""Where each node is: node → rack → grid zone, with the rack's PUE and the zone's intensity provider."""

from __future__ import annotations

from dataclasses import dataclass

from gridwatt.collector.config import CollectorConfig, RackConfig
from gridwatt.collector.intensity.base import IntensityProvider
from gridwatt.collector.intensity.config import build_provider
from gridwatt.collector.pue import PueProvider, StaticPue, load_pue_csv, pue_from_steps
from gridwatt.collector.pue_feed import FacilityFeedPue, QueryStore, SiteRacks, load_facility_feed
from gridwatt.collector.stepseries import StepSeries
from gridwatt.configfile import ConfigError


@dataclass(frozen=True)
class Placement:
    """A node's rack, zone, the rack's PUE over time and the zone's intensity provider.

    ``pue`` is the configured PUE (for a feed-derived PUE: its fallback); ``pue_provider``, when
    set, gives the PUE actually used (:meth:`pue_series`).
    """

    rack: str
    zone: str
    pue: StepSeries
    intensity: IntensityProvider
    pue_provider: PueProvider | None = None

    async def pue_series(self, start_ns: int, end_ns: int) -> StepSeries:
        """The rack's PUE over [start_ns, end_ns)."""
        if self.pue_provider is None:
            return self.pue
        return await self.pue_provider.series(start_ns, end_ns)


class Topology:
    """Built once from the config; ``locate`` is a dict lookup on the hot path."""

    def __init__(self, config: CollectorConfig) -> None:
        self.providers: dict[str, IntensityProvider] = {}
        for zone in config.zones:
            try:
                self.providers[zone.name] = build_provider(zone.intensity, config.config_dir)
            except ConfigError as exc:
                raise ConfigError(f"zone {zone.name!r}: {exc}") from None
        #: site name → its feed-derived PUE (sites with a facility_power_csv only)
        self.feed_pues: dict[str, FacilityFeedPue] = {}
        for site in config.sites:
            if site.facility_power_csv is None:
                continue
            racks = [r for r in config.racks if r.site == site.name]
            self.feed_pues[site.name] = FacilityFeedPue(
                SiteRacks(site.name, tuple(r.name for r in racks), tuple(n for r in racks for n in r.nodes)),
                load_facility_feed(site.facility_power_csv), None, config.accounting.rack_resolution_s,
                site.pue_min, site.pue_max, site.fallback_pue, site.max_lag_s,
            )
        self.racks: dict[str, Placement] = {}
        self._nodes: dict[str, Placement] = {}
        for rack in config.racks:
            if rack.pue_from_feed:
                feed_pue = self.feed_pues[rack.site]
                placement = Placement(rack.name, rack.zone, StepSeries.constant(feed_pue.fallback_pue),
                                      self.providers[rack.zone], feed_pue)
            else:
                pue = _rack_pue(rack)
                placement = Placement(rack.name, rack.zone, pue, self.providers[rack.zone], StaticPue(pue))
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

    def attach_store(self, store: QueryStore) -> None:
        """Give the feed-derived PUEs the store they read measured IT energy from."""
        for feed_pue in self.feed_pues.values():
            feed_pue.store = store

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
    """The configured constant, schedule or CSV PUE of a rack (not pue_from_feed)."""
    if rack.pue is not None:
        return StepSeries.constant(rack.pue)
    if rack.pue_schedule is not None:
        return pue_from_steps([(s.start, s.pue) for s in rack.pue_schedule])
    assert rack.pue_csv is not None
    return load_pue_csv(rack.pue_csv)
