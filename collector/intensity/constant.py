"""A constant grid intensity, for zones without data or as the end of a fallback chain."""

from __future__ import annotations

from gridwatt.collector.intensity.base import EmissionFactor, IntensitySeries
from gridwatt.collector.intensity.config import ConstantConfig
from gridwatt.collector.intensity.registry import PROVIDERS
from gridwatt.collector.stepseries import StepSeries


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
