"""The interface of a grid carbon intensity provider."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from gridwatt.collector.stepseries import StepSeries

EmissionFactor = Literal["lifecycle", "direct"]

#: Above any real grid (coal and lignite plants emit about 800-1,200 gCO2e/kWh): a larger value
#: is a unit mistake (e.g. g/MWh, or kg given as g) and refused.
MAX_INTENSITY_G_PER_KWH = 3000.0


class IntensityUnavailable(Exception):
    """The provider could not give intensity for the asked range (API down, no data)."""


@dataclass(frozen=True)
class IntensitySeries:
    """Carbon intensity over time. Units: gCO2e/kWh.

    ``source`` names the provider (e.g. "csv:DE_2022_hourly.csv", "constant"),
    ``emission_factor`` whether the values are lifecycle or direct emissions.
    """

    series: StepSeries
    source: str
    emission_factor: EmissionFactor
    #: per step (parallel to ``series.times_ns``) when the steps come from several providers;
    #: empty when every step has ``source`` and ``emission_factor``
    step_sources: tuple[str, ...] = ()
    step_factors: tuple[EmissionFactor, ...] = ()

    def source_at(self, t_ns: int) -> str:
        """The source of the step holding at ``t_ns``."""
        return self.step_sources[self.series.index_at(t_ns)] if self.step_sources else self.source

    def factor_at(self, t_ns: int) -> EmissionFactor:
        """The emission factor type of the step holding at ``t_ns``."""
        return self.step_factors[self.series.index_at(t_ns)] if self.step_factors else self.emission_factor


class IntensityProvider(Protocol):
    """Gives the grid intensity of one zone over a time range."""

    async def series(self, start_ns: int, end_ns: int) -> IntensitySeries:
        """Intensity covering [start_ns, end_ns); raise IntensityUnavailable if it cannot."""
        ...
