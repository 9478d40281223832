"""Builds the collector's parts from its config: intensity providers, feed-derived PUEs, topology.

The one place where config becomes objects (server.py calls it in order: the store first, then
the topology that reads from it); the parts themselves take what they need as arguments.
"""

from __future__ import annotations

from gridwatt.collector.config import CollectorConfig, RackConfig
from gridwatt.collector.intensity.base import IntensityProvider
from gridwatt.collector.intensity.factory import build_provider
from gridwatt.collector.pue import StaticPue, load_pue_csv, pue_from_steps
from gridwatt.collector.pue_feed import FacilityFeedPue, QueryStore, SiteRacks, load_facility_feed
from gridwatt.collector.stepseries import StepSeries
from gridwatt.collector.topology import Placement, Topology
from gridwatt.configfile import ConfigError


def build_providers(config: CollectorConfig) -> dict[str, IntensityProvider]:
    """Zone name → its intensity provider; ConfigError names the zone."""
    providers: dict[str, IntensityProvider] = {}
    for zone in config.zones:
        try:
            providers[zone.name] = build_provider(zone.intensity)
        except ConfigError as exc:
            raise ConfigError(f"zone {zone.name!r}: {exc}") from None
    return providers


def build_feed_pues(config: CollectorConfig, store: QueryStore | None) -> dict[str, FacilityFeedPue]:
    """Site name → its feed-derived PUE (sites with a facility_power_csv only), reading ``store``.

    ``store`` None (``check-config``): the feeds are loaded and checked, nothing is queried.
    """
    feed_pues: dict[str, FacilityFeedPue] = {}
    for site in config.sites:
        if site.facility_power_csv is None:
            continue
        racks = [r for r in config.racks if r.site == site.name]
        feed_pues[site.name] = FacilityFeedPue(
            SiteRacks(site.name, tuple(r.name for r in racks), tuple(n for r in racks for n in r.nodes)),
            load_facility_feed(site.facility_power_csv), store, config.accounting.rack_resolution_s,
            site.pue_min, site.pue_max, site.fallback_pue, site.max_lag_s,
        )
    return feed_pues


def build_topology(config: CollectorConfig, store: QueryStore | None = None) -> Topology:
    """The node → rack → zone placements with their PUE and intensity; loads every data file."""
    providers = build_providers(config)
    feed_pues = build_feed_pues(config, store)
    racks: list[tuple[Placement, list[str]]] = []
    for rack in config.racks:
        if rack.pue_from_feed:
            feed_pue = feed_pues[rack.site]
            placement = Placement(rack.name, rack.zone, StepSeries.constant(feed_pue.fallback_pue),
                                  providers[rack.zone], feed_pue)
        else:
            pue = _rack_pue(rack)
            placement = Placement(rack.name, rack.zone, pue, providers[rack.zone], StaticPue(pue))
        racks.append((placement, list(rack.nodes)))
    default_zone = config.accounting.default_zone or config.zones[0].name
    default = Placement(
        config.accounting.default_rack,
        default_zone,
        StepSeries.constant(config.accounting.default_pue),
        providers[default_zone],
    )
    return Topology(racks, default, config.server.auto_register, providers, feed_pues)


def _rack_pue(rack: RackConfig) -> StepSeries:
    """The configured constant, schedule or CSV PUE of a rack (not pue_from_feed)."""
    if rack.pue is not None:
        return StepSeries.constant(rack.pue)
    if rack.pue_schedule is not None:
        return pue_from_steps([(s.start, s.pue) for s in rack.pue_schedule])
    assert rack.pue_csv is not None
    return load_pue_csv(rack.pue_csv)
