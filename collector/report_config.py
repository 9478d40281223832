"""``[reports]``: what sustainability reports need beyond the stored record (see collector/report.py).

Market-based Scope 2 factors per zone (contractual instruments by period, else a residual mix), the
embodied emissions factor of SCI, its functional unit, and the time zone of the report's days.
"""

from __future__ import annotations

import itertools
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from gridwatt.configfile import StrictModel
from gridwatt.timeutil import parse_time_ns


class ContractFactor(StrictModel):
    """A contractual instrument (supplier-specific factor, PPA, certificates) over [start, end)."""

    start: str
    end: str
    g_per_kwh: float = Field(ge=0, le=5000)
    #: Where the factor comes from, printed on the report (e.g. "PPA Windpark Nord 2022").
    source: str = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _period(self) -> ContractFactor:
        if parse_time_ns(self.end) <= parse_time_ns(self.start):
            raise ValueError(f"contract {self.source!r}: end {self.end} is not after start {self.start}")
        return self


class MarketZone(StrictModel):
    """Market-based factors of one zone: contracts by period, else the residual mix."""

    zone: str = Field(min_length=1)
    contracts: list[ContractFactor] = Field(default_factory=list)
    residual_mix_g_per_kwh: float | None = Field(None, ge=0, le=5000)
    residual_mix_source: str = Field("", max_length=200)

    @model_validator(mode="after")
    def _no_overlap(self) -> MarketZone:
        spans = sorted((parse_time_ns(c.start), parse_time_ns(c.end), c.source) for c in self.contracts)
        for (_s0, e0, src0), (s1, _e1, src1) in itertools.pairwise(spans):
            if s1 < e0:
                raise ValueError(f"zone {self.zone!r}: contracts {src0!r} and {src1!r} overlap")
        if self.residual_mix_g_per_kwh is not None and not self.residual_mix_source:
            raise ValueError(f"zone {self.zone!r}: residual_mix_source must name where the factor comes from")
        return self


class ReportsConfig(StrictModel):
    #: IANA time zone of the report's days (daily chart) and stated on it.
    time_zone: str = "UTC"
    #: SCI's M: embodied emissions per GPU-hour (gCO2e), e.g. a GPU server's manufacturing
    #: emissions spread over its service life; 0 when not known (then reported as 0).
    embodied_g_per_gpu_hour: float = Field(0.0, ge=0, le=100_000)
    embodied_source: str = Field("", max_length=200)
    #: SCI's R, the functional unit: per GPU-hour (default) or per job.
    sci_functional_unit: Literal["gpu_hour", "job"] = "gpu_hour"
    market: list[MarketZone] = Field(default_factory=list)

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
        return v

    @model_validator(mode="after")
    def _unique(self) -> ReportsConfig:
        zones = [m.zone for m in self.market]
        if len(set(zones)) != len(zones):
            raise ValueError(f"reports.market: a zone is listed twice: {zones}")
        if self.embodied_g_per_gpu_hour > 0 and not self.embodied_source:
            raise ValueError("embodied_source must name where embodied_g_per_gpu_hour comes from")
        return self
