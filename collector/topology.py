"""Where each node is: node → rack → grid zone, with the rack's PUE and the zone's intensity provider."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gridwatt.collector.intensity.base import IntensityProvider
from gridwatt.collector.pue import PueProvider
from gridwatt.collector.pue_feed import FacilityFeedPue
from gridwatt.collector.stepseries import StepSeries


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
    """Node → placement, built by collector/wiring.py; ``locate`` is a dict lookup on the hot path.

    ``providers`` (zone → intensity provider) and ``feed_pues`` (site → feed-derived PUE) are the
    parts the placements use, kept to be closed and inspected.
    """

    def __init__(
        self,
        racks: Iterable[tuple[Placement, Iterable[str]]],
        default: Placement,
        auto_register: bool,
        providers: Mapping[str, IntensityProvider],
        feed_pues: Mapping[str, FacilityFeedPue] | None = None,
    ) -> None:
        self.providers = dict(providers)
        self.feed_pues = dict(feed_pues or {})
        self.racks: dict[str, Placement] = {}
        self._nodes: dict[str, Placement] = {}
        for placement, nodes in racks:
            self.racks[placement.rack] = placement
            for node in nodes:
                self._nodes[node] = placement
        self.auto_register = auto_register
        self.default = default

    def rack_members(self) -> dict[str, frozenset[str]]:
        """Each rack's configured nodes, for racks no auto-registered node can join (their nodes are
        all known ahead; collector/rack_state.py)."""
        members: dict[str, set[str]] = {}
        for node, placement in self._nodes.items():
            members.setdefault(placement.rack, set()).add(node)
        if self.auto_register:
            members.pop(self.default.rack, None)
        return {rack: frozenset(nodes) for rack, nodes in members.items()}

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
