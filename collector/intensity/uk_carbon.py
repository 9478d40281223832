"""Grid intensity of Great Britain from the Carbon Intensity API (api.carbonintensity.org.uk).

* national: ``GET /intensity/{from}/{to}`` returns
  ``{"data": [{"from", "to", "intensity": {"forecast", "actual", "index"}}, ...]}``;
* regional: ``GET /regional/intensity/{from}/{to}/regionid/{id}`` returns
  ``{"data": {"regionid", "dnoregion", "shortname", "data": [{"from", "to",
  "intensity": {"forecast", "index"}, "generationmix"}, ...]}}`` (forecast only).

Half-hourly, in gCO2/kWh, at most 14 days per request (longer ranges are chunked).
We use ``actual`` and fall back to ``forecast`` (marked estimated) when ``actual`` is
null; regional values are all forecasts, so all estimated. The API counts CO2 from
generation only (no lifecycle emissions), so the emission factor type is "direct".
``index`` ("low", "high", ...) is a band, never used as a value. No key is needed.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field

from gridwatt.collector.intensity.api_base import (
    CachedApiProvider,
    ClockNs,
    HttpProviderConfig,
    chunks,
    floor_ns,
)
from gridwatt.collector.intensity.base import IntensityUnavailable
from gridwatt.collector.intensity.cache import Point
from gridwatt.collector.intensity.http import HttpSettings, SleepFn
from gridwatt.collector.intensity.registry import PROVIDERS
from gridwatt.timeutil import NS_PER_S, parse_time_ns

DEFAULT_BASE_URL = "https://api.carbonintensity.org.uk"
HALF_HOUR_NS = 1800 * NS_PER_S
#: the documented maximum range of one /intensity/{from}/{to} request
MAX_RANGE_S = 14 * 24 * 3600
#: a missing ``actual`` older than this is taken as final (no point asking again)
ACTUAL_SETTLES_NS = 24 * 3600 * NS_PER_S


class UkCarbonIntensityConfig(HttpProviderConfig):
    """The GB Carbon Intensity API: national, or one DNO region (1..17)."""

    kind: Literal["uk_carbon_intensity"]
    region_id: int | None = Field(default=None, ge=1, le=17)
    base_url: str = "https://api.carbonintensity.org.uk"


def _fmt(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns // NS_PER_S, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")


class UkCarbonIntensity(CachedApiProvider):
    """Half-hourly intensity of GB (national) or of one DNO region. Units: gCO2/kWh."""

    max_hold_ns = 2 * 3600 * NS_PER_S

    def __init__(
        self,
        region_id: int | None = None,
        *,
        base_url: str = DEFAULT_BASE_URL,
        http: HttpSettings | None = None,
        max_range_s: int = MAX_RANGE_S,
        sleep: SleepFn = asyncio.sleep,
        clock_ns: ClockNs = time.time_ns,
        min_refetch_s: float = 60.0,
        max_hold_s: float | None = None,
    ) -> None:
        if region_id is not None and not 1 <= region_id <= 17:
            raise ValueError("uk_carbon_intensity: region_id must be 1..17 (or None for national)")
        where = "national" if region_id is None else f"region{region_id}"
        super().__init__(
            name=f"uk_carbon_intensity[{where}]",
            source=f"uk_carbon_intensity:{where}",
            emission_factor="direct",
            http=http or HttpSettings(),
            sleep=sleep,
            clock_ns=clock_ns,
            min_refetch_s=min_refetch_s,
            max_hold_s=max_hold_s,
        )
        self.region_id = region_id
        self._base_url = base_url.rstrip("/")
        self._max_range_ns = max_range_s * NS_PER_S

    def _entries(self, body: Any) -> list[Any]:
        data = body.get("data") if isinstance(body, dict) else None
        if self.region_id is not None:
            # documented as an object; some answers wrap it in a one-element list
            if isinstance(data, list) and len(data) == 1:
                data = data[0]
            data = data.get("data") if isinstance(data, dict) else None
        if not isinstance(data, list):
            raise IntensityUnavailable(f"{self.name}: response has no 'data' list")
        return data

    def _point(self, item: Any) -> tuple[Point, bool] | None:
        """The point and whether its value is an actual (not a forecast)."""
        try:
            t_ns = parse_time_ns(item["from"])
            end_ns = parse_time_ns(item["to"])
            intensity = item["intensity"]
            actual = intensity.get("actual")
            forecast = intensity.get("forecast")
        except (KeyError, TypeError, ValueError, AttributeError):
            raise IntensityUnavailable(f"{self.name}: unexpected entry in the response") from None
        value = actual if actual is not None else forecast
        if value is None:
            return None
        if not isinstance(value, int | float) or value < 0:
            raise IntensityUnavailable(f"{self.name}: bad intensity {value!r}")
        return Point(t_ns, float(value), actual is None, end_ns), actual is not None

    async def _fetch(self, start_ns: int, end_ns: int) -> tuple[list[Point], int]:
        now_ns = self._clock_ns()
        # ask from one half-hour earlier: the API's {from} is matched against period ends
        first_ns = floor_ns(start_ns, HALF_HOUR_NS) - HALF_HOUR_NS
        got: list[tuple[Point, bool]] = []
        for cs, ce in chunks(first_ns, end_ns, self._max_range_ns):
            if self.region_id is None:
                path = f"/intensity/{_fmt(cs)}/{_fmt(ce)}"
            else:
                path = f"/regional/intensity/{_fmt(cs)}/{_fmt(ce)}/regionid/{self.region_id}"
            body = await self._http.get_json(self._base_url + path, path_for_errors=path)
            got += [g for g in (self._point(item) for item in self._entries(body)) if g is not None]
        got.sort(key=lambda g: g[0].time_ns)
        # Known for good: the unbroken run of final values from the start. A forecast
        # standing in for a missing actual near now may still be replaced, so it is not final.
        settled_until = floor_ns(start_ns, HALF_HOUR_NS)
        for point, is_actual in got:
            end = point.end_ns or point.time_ns
            if end <= settled_until:
                continue
            final = is_actual or self.region_id is not None or end < now_ns - ACTUAL_SETTLES_NS
            if not final or point.time_ns > settled_until:
                break
            settled_until = max(settled_until, end)
        return [g[0] for g in got], min(settled_until, end_ns)


@PROVIDERS.register("uk_carbon_intensity", UkCarbonIntensityConfig)
def uk_carbon_provider(cfg: UkCarbonIntensityConfig) -> UkCarbonIntensity:
    return UkCarbonIntensity(
        cfg.region_id, base_url=cfg.base_url, http=cfg.http_settings(), min_refetch_s=cfg.min_refetch_s,
        max_hold_s=cfg.max_hold_s,
    )
