"""Grid intensity from the WattTime API (v3): the marginal operating emissions rate (MOER).

* ``GET /login`` with HTTP basic auth returns ``{"token": ...}``, a bearer token that
  lives about 30 minutes; we renew it before that and once more on a 401.
* ``GET /v3/historical?region=&start=&end=&signal_type=co2_moer`` and
  ``GET /v3/forecast?region=&signal_type=co2_moer`` return
  ``{"data": [{"point_time", "value"}, ...], "meta": {"units": "lbs_co2_per_mwh", ...}}``
  at 5-minute resolution.

Values in lbs/MWh are converted exactly: 1 lb = 453.59237 g, so
lbs/MWh × 0.45359237 = g/kWh. ``/v3/signal-index`` is a 0–100 percentile, not an
intensity, and is refused. MOER counts direct (combustion) CO2 of the marginal
generator, so its emission factor type is "direct" (and it is a marginal rate, not an
average one: see the README).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Literal

from pydantic import Field, field_validator

from gridwatt.collector.intensity.api_base import (
    CachedApiProvider,
    ClockNs,
    HttpProviderConfig,
    chunks,
    floor_ns,
)
from gridwatt.collector.intensity.base import IntensityUnavailable
from gridwatt.collector.intensity.cache import Point
from gridwatt.collector.intensity.http import AuthRejected, HttpSettings, SleepFn, basic_auth_header
from gridwatt.collector.intensity.registry import PROVIDERS
from gridwatt.configfile import ConfigError, ConfigPath, secret_from
from gridwatt.timeutil import NS_PER_S, format_time_ns, parse_time_ns

DEFAULT_BASE_URL = "https://api.watttime.org"
#: grams per pound, exactly (international avoirdupois pound)
G_PER_LB = 453.59237
#: g/kWh per unit of each accepted ``meta.units``
UNIT_TO_G_PER_KWH = {
    "lbs_co2_per_mwh": G_PER_LB / 1000.0,  # lb/MWh = 453.59237 g / 1000 kWh
    "kg_co2_per_mwh": 1.0,
    "g_co2_per_kwh": 1.0,
}
SUPPORTED_SIGNALS = ("co2_moer",)
FIVE_MIN_NS = 300 * NS_PER_S
#: default maximum range of one /v3/historical request (the API allows about a month)
HISTORICAL_MAX_S = 30 * 24 * 3600
TOKEN_LIFE_S = 25 * 60  # tokens last about 30 min; renew a little early


class WattTimeConfig(HttpProviderConfig):
    """WattTime API v3 MOER, one region."""

    kind: Literal["watttime"]
    region: str = Field(min_length=1)
    username: str | None = None
    username_env: str = "WATTTIME_USERNAME"
    password_env: str = "WATTTIME_PASSWORD"
    password_file: ConfigPath | None = None
    signal_type: str = "co2_moer"
    endpoint: str = "historical"
    base_url: str = "https://api.watttime.org"
    historical_max_s: int = Field(default=30 * 24 * 3600, gt=0)
    use_forecast: bool = True

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_intensity(cls, v: str) -> str:
        if "signal-index" in v:
            raise ValueError(
                "WattTime's signal-index is a 0-100 percentile, not an intensity in g/kWh; "
                "gridwatt cannot use it (use endpoint 'historical' with signal_type 'co2_moer')"
            )
        if v != "historical":
            raise ValueError("only 'historical' is supported")
        return v

    @field_validator("signal_type")
    @classmethod
    def _signal_is_intensity(cls, v: str) -> str:
        if v != "co2_moer":
            raise ValueError(
                f"signal_type {v!r} is not a CO2 intensity gridwatt can use; use 'co2_moer'"
            )
        return v


class NotAnIntensity(ValueError):
    """The configured WattTime signal or endpoint is not an intensity in mass per energy."""


def check_signal(signal_type: str, endpoint: str = "historical") -> None:
    """Refuse WattTime signals and endpoints that are not an emissions intensity."""
    if "signal-index" in endpoint or "index" in signal_type:
        raise NotAnIntensity(
            "WattTime's signal-index is a 0-100 percentile of the MOER, not an intensity in "
            "g/kWh; gridwatt cannot account emissions with it. Use signal_type 'co2_moer' "
            "with the historical endpoint."
        )
    if endpoint != "historical":
        raise NotAnIntensity(f"WattTime endpoint {endpoint!r} is not supported; use 'historical'")
    if signal_type not in SUPPORTED_SIGNALS:
        raise NotAnIntensity(
            f"WattTime signal_type {signal_type!r} is not a CO2 intensity gridwatt can use; "
            f"supported: {', '.join(SUPPORTED_SIGNALS)}"
        )


class WattTimeIntensity(CachedApiProvider):
    """5-minute marginal CO2 intensity (MOER) of one WattTime region. Units: gCO2/kWh."""

    max_hold_ns = 3600 * NS_PER_S

    def __init__(
        self,
        region: str,
        username: str,
        password: str,
        *,
        signal_type: str = "co2_moer",
        endpoint: str = "historical",
        base_url: str = DEFAULT_BASE_URL,
        http: HttpSettings | None = None,
        historical_max_s: int = HISTORICAL_MAX_S,
        use_forecast: bool = True,
        sleep: SleepFn = asyncio.sleep,
        clock_ns: ClockNs = time.time_ns,
        min_refetch_s: float = 60.0,
        max_hold_s: float | None = None,
    ) -> None:
        check_signal(signal_type, endpoint)
        if not username or not password:
            raise ValueError("watttime: a username and a password are required")
        super().__init__(
            name=f"watttime[{region}]",
            source=f"watttime:{region}:{signal_type}",
            emission_factor="direct",
            http=http or HttpSettings(),
            secrets=(password,),
            sleep=sleep,
            clock_ns=clock_ns,
            min_refetch_s=min_refetch_s,
            max_hold_s=max_hold_s,
        )
        self.region = region
        self.signal_type = signal_type
        self._basic_auth = basic_auth_header(username, password)
        self._base_url = base_url.rstrip("/")
        self._historical_max_ns = historical_max_s * NS_PER_S
        self._use_forecast = use_forecast
        self._token: str | None = None
        self._token_expiry_mono = 0.0

    async def _login(self) -> str:
        try:
            body = await self._http.get_json(
                self._base_url + "/login",
                path_for_errors="/login",
                headers={"Authorization": self._basic_auth},
            )
        except AuthRejected as exc:
            raise IntensityUnavailable(f"{exc} (login refused: check username and password)") from None
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise IntensityUnavailable(f"{self.name}: /login answered without a token")
        self._http.add_secret(token)
        self._token = token
        self._token_expiry_mono = time.monotonic() + TOKEN_LIFE_S
        return token

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        for attempt in range(2):
            token = self._token
            if token is None or time.monotonic() >= self._token_expiry_mono:
                token = await self._login()
            try:
                return await self._http.get_json(
                    self._base_url + path,
                    path_for_errors=path,
                    params=params,
                    headers={"Authorization": f"Bearer {token}"},
                )
            except AuthRejected as exc:
                self._token = None
                if exc.status != 401 or attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def _points(self, body: Any, estimated: bool) -> list[Point]:
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise IntensityUnavailable(f"{self.name}: response has no 'data' list")
        meta_raw = body.get("meta")
        meta: dict[str, Any] = meta_raw if isinstance(meta_raw, dict) else {}
        units = meta.get("units")
        if units not in UNIT_TO_G_PER_KWH:
            raise IntensityUnavailable(
                f"{self.name}: values in units {units!r} are not an intensity gridwatt can convert "
                f"(expected one of {', '.join(UNIT_TO_G_PER_KWH)})"
            )
        factor = UNIT_TO_G_PER_KWH[units]
        period_s = meta.get("data_point_period_seconds", 300)
        period_ns = int(period_s) * NS_PER_S if isinstance(period_s, int) and period_s > 0 else FIVE_MIN_NS
        out: list[Point] = []
        for item in body["data"]:
            try:
                t_ns = parse_time_ns(item["point_time"])
                value = item["value"]
            except (KeyError, TypeError, ValueError, AttributeError):
                raise IntensityUnavailable(f"{self.name}: unexpected data point in the response") from None
            if value is None:
                continue
            if not isinstance(value, int | float) or value < 0:
                raise IntensityUnavailable(f"{self.name}: bad value {value!r}")
            out.append(Point(t_ns, float(value) * factor, estimated, t_ns + period_ns))
        return out

    async def _fetch(self, start_ns: int, end_ns: int) -> tuple[list[Point], int]:
        now_ns = self._clock_ns()
        first_ns = floor_ns(start_ns, FIVE_MIN_NS)
        hist_end_ns = min(end_ns, now_ns)
        points: list[Point] = []
        for cs, ce in chunks(first_ns, hist_end_ns, self._historical_max_ns):
            params = {
                "region": self.region,
                "start": format_time_ns(cs),
                "end": format_time_ns(ce),
                "signal_type": self.signal_type,
            }
            points += self._points(await self._get("/v3/historical", params), estimated=False)
        reach = max((p.end_ns or p.time_ns for p in points), default=first_ns)
        covered_until = min(reach, end_ns)
        if covered_until < end_ns and self._use_forecast and end_ns > now_ns - 3600 * NS_PER_S:
            forecast = self._points(
                await self._get("/v3/forecast", {"region": self.region, "signal_type": self.signal_type}),
                estimated=True,
            )
            points += [p for p in forecast if p.time_ns >= reach]
        return points, covered_until


@PROVIDERS.register("watttime", WattTimeConfig)
def watttime_provider(cfg: WattTimeConfig) -> WattTimeIntensity:
    username = cfg.username or os.environ.get(cfg.username_env)
    if not username:
        raise ConfigError(f"intensity watttime: no username (set 'username' or {cfg.username_env})")
    password = secret_from(cfg.password_env, cfg.password_file, "intensity watttime password")
    return WattTimeIntensity(
        cfg.region,
        username,
        password,
        signal_type=cfg.signal_type,
        endpoint=cfg.endpoint,
        base_url=cfg.base_url,
        http=cfg.http_settings(),
        historical_max_s=cfg.historical_max_s,
        use_forecast=cfg.use_forecast,
        min_refetch_s=cfg.min_refetch_s,
        max_hold_s=cfg.max_hold_s,
    )
