"""Grid intensity from the Electricity Maps API (v3).

Endpoints (header ``auth-token``; query ``zone`` and ``emissionFactorType``):

* ``/v3/carbon-intensity/history``: the last 24 hourly values, ``{"zone", "history": [...]}``;
* ``/v3/carbon-intensity/latest``: the newest value, one object;
* ``/v3/carbon-intensity/past-range`` (``start``, ``end``): older values, ``{"zone", "data": [...]}``,
  at most 10 days (240 h) per request at hourly granularity, so longer ranges are chunked.

Each value object has ``carbonIntensity`` (gCO2eq/kWh), ``datetime`` (start of its hour),
``isEstimated`` and ``emissionFactorType`` ("lifecycle" or "direct"). Ranges that end
within the last 24 h are read from ``history`` (free tier); older ones from ``past-range``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from pydantic import Field

from gridwatt.collector.intensity.api_base import (
    CachedApiProvider,
    ClockNs,
    HttpProviderConfig,
    chunks,
    floor_ns,
)
from gridwatt.collector.intensity.base import EmissionFactor, IntensityUnavailable
from gridwatt.collector.intensity.cache import Point
from gridwatt.collector.intensity.http import AuthRejected, HttpSettings, SleepFn
from gridwatt.collector.intensity.registry import PROVIDERS
from gridwatt.configfile import ConfigPath, secret_from
from gridwatt.timeutil import NS_PER_S, format_time_ns, parse_time_ns

DEFAULT_BASE_URL = "https://api.electricitymaps.com"
HOUR_NS = 3600 * NS_PER_S
#: the documented maximum range of one past-range request at hourly granularity
PAST_RANGE_MAX_S = 10 * 24 * 3600
#: how far back /history reaches (24 hourly values, the newest being the current hour)
HISTORY_SPAN_NS = 23 * HOUR_NS


class ElectricityMapsConfig(HttpProviderConfig):
    """Electricity Maps API v3, one zone."""

    kind: Literal["electricitymaps"]
    zone: str = Field(min_length=1)
    emission_factor: EmissionFactor = "lifecycle"
    base_url: str = "https://api.electricitymaps.com"
    api_key_env: str = "ELECTRICITYMAPS_API_KEY"
    api_key_file: ConfigPath | None = None
    past_range_max_s: int = Field(default=10 * 24 * 3600, gt=0)


class ElectricityMapsIntensity(CachedApiProvider):
    """Hourly intensity of one Electricity Maps zone. Units: gCO2eq/kWh."""

    max_hold_ns = 3 * HOUR_NS

    def __init__(
        self,
        zone: str,
        api_key: str,
        *,
        emission_factor: EmissionFactor = "lifecycle",
        base_url: str = DEFAULT_BASE_URL,
        http: HttpSettings | None = None,
        past_range_max_s: int = PAST_RANGE_MAX_S,
        sleep: SleepFn = asyncio.sleep,
        clock_ns: ClockNs = time.time_ns,
        min_refetch_s: float = 60.0,
        max_hold_s: float | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("electricitymaps: an API key is required")
        if past_range_max_s <= 0:
            raise ValueError("electricitymaps: past_range_max_s must be > 0")
        super().__init__(
            name=f"electricitymaps[{zone}]",
            source=f"electricitymaps:{zone}",
            emission_factor=emission_factor,
            http=http or HttpSettings(),
            secrets=(api_key,),
            sleep=sleep,
            clock_ns=clock_ns,
            min_refetch_s=min_refetch_s,
            max_hold_s=max_hold_s,
        )
        self.zone = zone
        self._api_key = api_key
        self._base_url = base_url.rstrip("/")
        self._past_range_max_ns = past_range_max_s * NS_PER_S

    async def _get(self, endpoint: str, extra: dict[str, str] | None = None) -> Any:
        params = {"zone": self.zone, "emissionFactorType": self.emission_factor, **(extra or {})}
        path = f"/v3/carbon-intensity/{endpoint}"
        return await self._http.get_json(
            self._base_url + path,
            path_for_errors=path,
            params=params,
            headers={"auth-token": self._api_key},
        )

    def _point(self, item: Any) -> Point | None:
        try:
            value = item["carbonIntensity"]
            t_ns = parse_time_ns(item["datetime"])
            factor = item.get("emissionFactorType")
            estimated = bool(item.get("isEstimated") or False)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise IntensityUnavailable(f"{self.name}: unexpected value object in the response") from None
        if factor is not None and factor != self.emission_factor:
            raise IntensityUnavailable(
                f"{self.name}: asked for {self.emission_factor} emission factors, got {factor!r}"
            )
        if value is None:
            return None  # no value for this hour: the previous one holds
        if not isinstance(value, int | float) or value < 0:
            raise IntensityUnavailable(f"{self.name}: bad carbonIntensity {value!r}")
        return Point(t_ns, float(value), estimated, t_ns + HOUR_NS)

    def _points(self, body: Any, key: str) -> list[Point]:
        items = body.get(key) if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise IntensityUnavailable(f"{self.name}: response has no {key!r} list")
        return [p for p in (self._point(i) for i in items) if p is not None]

    async def _past_range(self, start_ns: int, end_ns: int) -> list[Point]:
        points: list[Point] = []
        for cs, ce in chunks(start_ns, end_ns, self._past_range_max_ns):
            try:
                body = await self._get("past-range", {"start": format_time_ns(cs), "end": format_time_ns(ce)})
            except AuthRejected as exc:
                raise IntensityUnavailable(
                    f"{exc} (past-range, needed for values older than 24 h, may not be in this API plan)"
                ) from None
            points.extend(self._points(body, "data"))
        return points

    async def _fetch(self, start_ns: int, end_ns: int) -> tuple[list[Point], int]:
        now_ns = self._clock_ns()
        history_from_ns = floor_ns(now_ns, HOUR_NS) - HISTORY_SPAN_NS
        first_ns = floor_ns(start_ns, HOUR_NS)
        points: list[Point] = []
        covered_until = end_ns
        if first_ns < history_from_ns:
            points += await self._past_range(first_ns, min(end_ns, history_from_ns))
        if end_ns > history_from_ns:
            recent = self._points(await self._get("history"), "history")
            reach = max((p.end_ns or p.time_ns for p in recent), default=history_from_ns)
            if reach < end_ns:
                latest = self._point(await self._get("latest"))
                if latest is not None and latest.time_ns >= reach - HOUR_NS:
                    recent.append(latest)
                    reach = max(reach, latest.end_ns or reach)
            points += recent
            covered_until = min(end_ns, reach)
        return points, covered_until


@PROVIDERS.register("electricitymaps", ElectricityMapsConfig)
def electricitymaps_provider(cfg: ElectricityMapsConfig) -> ElectricityMapsIntensity:
    key = secret_from(cfg.api_key_env, cfg.api_key_file, "intensity electricitymaps api key")
    return ElectricityMapsIntensity(
        cfg.zone,
        key,
        emission_factor=cfg.emission_factor,
        base_url=cfg.base_url,
        http=cfg.http_settings(),
        past_range_max_s=cfg.past_range_max_s,
        min_refetch_s=cfg.min_refetch_s,
        max_hold_s=cfg.max_hold_s,
    )
