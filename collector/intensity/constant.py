"""A constant grid intensity, for zones without data or as the end of a fallback chain."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gridwatt.collector.intensity.base import MAX_INTENSITY_G_PER_KWH, EmissionFactor, IntensitySeries
from gridwatt.collector.intensity.registry import PROVIDERS, ProviderTable
from gridwatt.collector.stepseries import StepSeries


class ConstantConfig(ProviderTable):
    """The same intensity at every time."""

    kind: Literal["constant"]
    g_per_kwh: float = Field(ge=0, le=MAX_INTENSITY_G_PER_KWH, allow_inf_nan=False)
    emission_factor: EmissionFactor = "lifecycle"


class ConstantIntensity:
    """The same intensity (gCO2e/kWh) at every time."""

    def __init__(self, g_per_kwh: float, emission_factor: EmissionFactor = "lifecycle") -> None:
        self._series = IntensitySeries(StepSeries.constant(g_per_kwh), "constant", emission_factor)
        self.source = "constant"

    async def series(self, start_ns: int, end_ns: int) -> IntensitySeries:
        return self._series


@PROVIDERS.register("constant", ConstantConfig)
def constant_provider(cfg: ConstantConfig) -> ConstantIntensity:
    return ConstantIntensity(cfg.g_per_kwh, cfg.emission_factor)
