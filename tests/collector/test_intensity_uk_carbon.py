"""UK Carbon Intensity provider against a real local HTTP server playing the documented API."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from gridwatt.collector.intensity.base import IntensityUnavailable
from gridwatt.collector.intensity.http import HttpSettings
from gridwatt.collector.intensity.uk_carbon import UkCarbonIntensity
from gridwatt.timeutil import NS_PER_S, parse_time_ns
from tests.collector.grid_server import GridServer, fixture, json_handler, sequence, status_handler

T10 = parse_time_ns("2024-11-30T10:00:00Z")
HALF = 1800 * NS_PER_S
NATIONAL = "/intensity/"
REGIONAL = "/regional/intensity/"


@pytest.fixture
async def server() -> AsyncIterator[GridServer]:
    s = GridServer()
    await s.start()
    yield s
    await s.stop()


def make(server: GridServer, now: str, region_id: int | None = None, **kw: object) -> UkCarbonIntensity:
    now_ns = parse_time_ns(now)
    return UkCarbonIntensity(
        region_id, base_url=server.base_url, clock_ns=lambda: now_ns, **kw  # type: ignore[arg-type]
    )


async def test_national_actual_then_forecast_fallback(server: GridServer) -> None:
    server.route(NATIONAL, json_handler(fixture("uk_intensity_national.json")))
    async with make(server, now="2024-11-30T12:45:00Z") as p:
        got = await p.series(T10, T10 + 6 * HALF)
    s = got.series
    assert got.source == "uk_carbon_intensity:national"
    assert got.emission_factor == "direct"
    assert s.times_ns == tuple(T10 + i * HALF for i in range(6))
    assert s.values == (175.0, 171.0, 166.0, 163.0, 160.0, 158.0)
    assert s.estimated == (False, False, False, False, True, True)
    assert [r.path for r in server.requests(NATIONAL)] == ["/intensity/2024-11-30T09:30Z/2024-11-30T13:00Z"]


async def test_settled_actuals_are_cached_forecasts_near_now_are_asked_again(server: GridServer) -> None:
    server.route(NATIONAL, json_handler(fixture("uk_intensity_national.json")))
    async with make(server, now="2024-11-30T12:45:00Z", min_refetch_s=0.0) as p:
        await p.series(T10, T10 + 6 * HALF)
        await p.series(T10 + HALF, T10 + 3 * HALF)  # all actuals: cached
        assert server.count(NATIONAL) == 1
        await p.series(T10 + 4 * HALF, T10 + 5 * HALF)  # forecast only: the actual may have come
        assert server.count(NATIONAL) == 2
    async with make(server, now="2024-11-30T12:45:00Z") as p:  # default min_refetch_s=60
        await p.series(T10, T10 + 6 * HALF)
        await p.series(T10 + 4 * HALF, T10 + 5 * HALF)
        assert server.count(NATIONAL) == 3  # not asked again within a minute


async def test_old_missing_actuals_are_final(server: GridServer) -> None:
    server.route(NATIONAL, json_handler(fixture("uk_intensity_national.json")))
    async with make(server, now="2024-12-05T00:00:00Z", min_refetch_s=0.0) as p:
        await p.series(T10, T10 + 6 * HALF)
        got = await p.series(T10 + 4 * HALF, T10 + 6 * HALF)
    assert server.count(NATIONAL) == 1
    assert got.series.values == (160.0, 158.0)
    assert got.series.estimated == (True, True)


async def test_regional_forecast_only_all_estimated(server: GridServer) -> None:
    server.route(REGIONAL, json_handler(fixture("uk_regional_intensity_region13.json")))
    async with make(server, now="2024-11-30T12:45:00Z", region_id=13) as p:
        got = await p.series(T10, T10 + 4 * HALF)
        await p.series(T10 + HALF, T10 + 2 * HALF)
    assert got.source == "uk_carbon_intensity:region13"
    assert got.emission_factor == "direct"
    assert got.series.values == (120.0, 118.0, 115.0, 117.0)
    assert all(got.series.estimated)
    assert [r.path for r in server.requests(REGIONAL)] == [
        "/regional/intensity/2024-11-30T09:30Z/2024-11-30T12:00Z/regionid/13"
    ]


async def test_long_range_is_chunked_by_14_days(server: GridServer) -> None:
    server.route(NATIONAL, json_handler({"data": []}))
    start = parse_time_ns("2024-11-01T00:00:00Z")
    async with make(server, now="2024-12-30T00:00:00Z") as p:
        with pytest.raises(IntensityUnavailable, match="no data"):
            await p.series(start, start + 20 * 24 * 3600 * NS_PER_S)
    assert [r.path for r in server.requests(NATIONAL)] == [
        "/intensity/2024-10-31T23:30Z/2024-11-14T23:30Z",
        "/intensity/2024-11-14T23:30Z/2024-11-21T00:00Z",
    ]


async def test_5xx_then_ok(server: GridServer) -> None:
    server.route(NATIONAL, sequence(status_handler(502), json_handler(fixture("uk_intensity_national.json"))))

    async def no_wait(_: float) -> None:
        return None

    async with make(server, now="2024-12-05T00:00:00Z", sleep=no_wait) as p:
        got = await p.series(T10, T10 + HALF)
    assert got.series.values == (175.0,)
    assert server.count(NATIONAL) == 2


async def test_timeout_is_unavailable(server: GridServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server.route(NATIONAL, server.slow_handler(5.0))
    async with make(server, now="2024-12-05T00:00:00Z", http=HttpSettings(timeout_s=0.2)) as p:
        with pytest.raises(IntensityUnavailable, match="no answer within"):
            await p.series(T10, T10 + HALF)


def test_region_id_checked() -> None:
    with pytest.raises(ValueError, match=r"1\.\.17"):
        UkCarbonIntensity(18)
