"""WattTime provider against a real local HTTP server playing the documented v3 API."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gridwatt.collector.intensity.base import IntensityUnavailable
from gridwatt.collector.intensity.coverage import IntensityGap
from gridwatt.collector.intensity.watttime import (
    G_PER_LB,
    NotAnIntensity,
    WattTimeIntensity,
)
from gridwatt.timeutil import NS_PER_S, parse_time_ns
from tests.collector.grid_server import GridServer, Handler, fixture, status_handler

USER = "gridwatt-test"
PASSWORD = "wt-pass-Qx81!z"
T0 = parse_time_ns("2024-11-30T10:00:00Z")
MIN5 = 300 * NS_PER_S
HIST = "/v3/historical"
FORECAST = "/v3/forecast"


class FakeWattTime:
    """Issues tokens at /login (basic auth) and serves data only to a current bearer token."""

    def __init__(self, server: GridServer) -> None:
        self.server = server
        self.valid: set[str] = set()
        self.issued = 0
        server.route("/login", self.login)

    async def login(self, request: web.Request) -> web.StreamResponse:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401, text="bad credentials")
        self.issued += 1
        token = f"token-{self.issued}-abcdef"
        self.valid.add(token)
        return web.json_response({"token": token})

    def expire_tokens(self) -> None:
        self.valid.clear()

    def data(self, body: object) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[len("Bearer ") :] not in self.valid:
                return web.Response(status=401, text="token expired")
            return web.json_response(body)

        return handle


@pytest.fixture
async def server() -> AsyncIterator[GridServer]:
    s = GridServer()
    await s.start()
    yield s
    await s.stop()


def make(server: GridServer, now_ns: int = T0 + 3600 * NS_PER_S, **kw: object) -> WattTimeIntensity:
    return WattTimeIntensity(
        "CAISO_NORTH", USER, PASSWORD, base_url=server.base_url, clock_ns=lambda: now_ns, **kw  # type: ignore[arg-type]
    )


def test_conversion_factor_is_exact() -> None:
    assert G_PER_LB == 453.59237
    assert G_PER_LB / 1000.0 == 0.45359237


async def test_historical_parsed_and_converted(server: GridServer) -> None:
    wt = FakeWattTime(server)
    server.route(HIST, wt.data(fixture("watttime_historical_CAISO_NORTH.json")))
    async with make(server) as p:
        got = await p.series(T0, T0 + 12 * MIN5)
    s = got.series
    assert got.source == "watttime:CAISO_NORTH:co2_moer"
    assert got.emission_factor == "direct"
    assert len(s.times_ns) == 12
    assert s.times_ns[0] == T0 and s.times_ns[-1] == T0 + 11 * MIN5
    assert s.values[0] == pytest.approx(453.59237, abs=1e-9)  # 1000 lbs/MWh
    assert s.values[1] == pytest.approx(458.355089885, abs=1e-9)  # 1010.5 lbs/MWh
    assert s.values[5] == pytest.approx(500.0, abs=1e-5)  # 1102.31131 lbs/MWh
    assert s.values[-1] == pytest.approx(907.18474, abs=1e-9)  # 2000 lbs/MWh
    assert not any(s.estimated)
    req = server.requests(HIST)[0]
    assert req.query == {
        "region": "CAISO_NORTH",
        "start": "2024-11-30T10:00:00Z",
        "end": "2024-11-30T11:00:00Z",
        "signal_type": "co2_moer",
    }
    assert wt.issued == 1


async def test_token_is_reused_and_renewed_on_401(server: GridServer) -> None:
    wt = FakeWattTime(server)
    server.route(HIST, wt.data(fixture("watttime_historical_CAISO_NORTH.json")))
    async with make(server) as p:
        await p.series(T0, T0 + 12 * MIN5)
        await p.series(T0 + 20 * 60 * NS_PER_S, T0 + 40 * 60 * NS_PER_S)  # cached: no request at all
        assert server.count(HIST) == 1
        p._cache = type(p._cache)()  # forget the data, keep the token
        await p.series(T0, T0 + MIN5)
        assert wt.issued == 1  # token reused
        wt.expire_tokens()
        p._cache = type(p._cache)()
        got = await p.series(T0, T0 + MIN5)
    assert got.series.values[0] == pytest.approx(453.59237, abs=1e-9)
    assert wt.issued == 2  # logged in again after the 401
    assert server.count(HIST) == 4  # ok, ok, 401, ok


async def test_bad_password_is_unavailable_without_the_password(
    server: GridServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    FakeWattTime(server)
    wrong = "not-the-password-93jd"
    now = T0 + 3600 * NS_PER_S
    p = WattTimeIntensity("CAISO_NORTH", USER, wrong, base_url=server.base_url, clock_ns=lambda: now)
    async with p:
        with pytest.raises(IntensityUnavailable, match="login refused") as err:
            await p.series(T0, T0 + MIN5)
    assert "401" in str(err.value)
    assert wrong not in str(err.value)
    assert all(wrong not in r.getMessage() for r in caplog.records)
    assert wrong not in repr(p)


async def test_token_never_in_errors(server: GridServer) -> None:
    wt = FakeWattTime(server)

    async def echo_token(request: web.Request) -> web.StreamResponse:
        return web.Response(status=400, text=f"bad request for {request.headers.get('Authorization')}")

    server.route(HIST, echo_token)
    async with make(server) as p:
        with pytest.raises(IntensityUnavailable, match="HTTP 400") as err:
            await p.series(T0, T0 + MIN5)
    assert wt.issued == 1
    assert "token-1-abcdef" not in str(err.value)


def test_signal_index_is_refused() -> None:
    with pytest.raises(NotAnIntensity, match="percentile"):
        WattTimeIntensity("CAISO_NORTH", USER, PASSWORD, endpoint="signal-index")
    with pytest.raises(NotAnIntensity, match="percentile"):
        WattTimeIntensity("CAISO_NORTH", USER, PASSWORD, endpoint="/v3/signal-index")
    with pytest.raises(NotAnIntensity, match="health_damage"):
        WattTimeIntensity("CAISO_NORTH", USER, PASSWORD, signal_type="health_damage")


async def test_percentile_units_are_refused(server: GridServer) -> None:
    wt = FakeWattTime(server)
    body = fixture("watttime_historical_CAISO_NORTH.json")
    body["meta"]["units"] = "percentile"
    server.route(HIST, wt.data(body))
    async with make(server) as p:
        with pytest.raises(IntensityUnavailable, match="'percentile' are not an intensity"):
            await p.series(T0, T0 + MIN5)


async def test_forecast_fills_the_tail_marked_estimated(server: GridServer) -> None:
    wt = FakeWattTime(server)
    server.route(HIST, wt.data(fixture("watttime_historical_CAISO_NORTH.json")))  # up to 11:00
    server.route(FORECAST, wt.data(fixture("watttime_forecast_CAISO_NORTH.json")))  # 11:00 on
    now = T0 + 70 * 60 * NS_PER_S  # 11:10
    async with make(server, now_ns=now) as p:
        got = await p.series(T0 + 50 * 60 * NS_PER_S, now + 10 * 60 * NS_PER_S)
    s = got.series
    assert s.times_ns[:2] == (T0 + 50 * 60 * NS_PER_S, T0 + 55 * 60 * NS_PER_S)
    assert s.estimated[:2] == (False, False)
    t11 = T0 + 3600 * NS_PER_S
    assert s.times_ns[2] == t11
    assert s.values[2] == pytest.approx(880.0 * 0.45359237, abs=1e-9)
    assert all(s.estimated[2:])
    assert server.requests(FORECAST)[0].query == {"region": "CAISO_NORTH", "signal_type": "co2_moer"}


async def test_long_ranges_are_chunked(server: GridServer) -> None:
    wt = FakeWattTime(server)
    server.route(HIST, wt.data(fixture("watttime_historical_CAISO_NORTH.json")))
    day = 24 * 3600 * NS_PER_S
    start = T0 - 5 * day
    async with make(server, historical_max_s=2 * 24 * 3600) as p:
        with pytest.raises(IntensityGap) as err:  # the recording starts at T0: 5 days are not held back
            await p.series(start, T0 + 12 * MIN5)
    assert err.value.missing == [(start, T0 - 3600 * NS_PER_S)]
    spans = [(parse_time_ns(r.query["start"]), parse_time_ns(r.query["end"])) for r in server.requests(HIST)]
    assert spans[0][0] == start and spans[-1][1] == T0 + 12 * MIN5
    assert len(spans) == 3
    assert all(e - s <= 2 * day for s, e in spans)


async def test_login_rate_limited_then_ok(server: GridServer) -> None:
    wt = FakeWattTime(server)
    real_login = wt.login
    calls = {"n": 0}

    async def login(request: web.Request) -> web.StreamResponse:
        calls["n"] += 1
        if calls["n"] == 1:
            return await status_handler(429, headers={"Retry-After": "0"})(request)
        return await real_login(request)

    server.route("/login", login)
    server.route(HIST, wt.data(fixture("watttime_historical_CAISO_NORTH.json")))
    async with make(server) as p:
        got = await p.series(T0, T0 + MIN5)
    assert got.series.values[0] == pytest.approx(453.59237, abs=1e-9)
    assert calls["n"] == 2
