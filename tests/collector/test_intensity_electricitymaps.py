"""Electricity Maps provider against a real local HTTP server playing the documented API."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from aiohttp import web

from gridwatt.collector.intensity.base import IntensityUnavailable
from gridwatt.collector.intensity.electricitymaps import ElectricityMapsIntensity
from gridwatt.collector.intensity.http import HttpSettings
from gridwatt.timeutil import NS_PER_S, parse_time_ns
from tests.collector.grid_server import (
    GridServer,
    Handler,
    fixture,
    json_handler,
    sequence,
    status_handler,
)

KEY = "em-secret-key-7f3a9c"
HOUR_NS = 3600 * NS_PER_S
MISO_FIRST = parse_time_ns("2024-11-30T06:00:00Z")
MISO_LAST = parse_time_ns("2024-12-01T05:00:00Z")
HISTORY = "/v3/carbon-intensity/history"
LATEST = "/v3/carbon-intensity/latest"
PAST_RANGE = "/v3/carbon-intensity/past-range"


@pytest.fixture
async def server() -> AsyncIterator[GridServer]:
    s = GridServer()
    await s.start()
    yield s
    await s.stop()


class FakeSleep:
    """Records the waits asked for, without waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def make(server: GridServer, now: str = "2024-12-01T05:30:00Z", **kw: object) -> ElectricityMapsIntensity:
    now_ns = parse_time_ns(now)
    return ElectricityMapsIntensity(
        "US-MIDW-MISO", KEY, base_url=server.base_url, clock_ns=lambda: now_ns, **kw  # type: ignore[arg-type]
    )


def past_range_generator(zone: str = "DE") -> Handler:
    """Answers past-range with hourly points start <= t < end; value = 100 + hour of day."""

    async def handle(request: web.Request) -> web.StreamResponse:
        start = parse_time_ns(request.query["start"])
        end = parse_time_ns(request.query["end"])
        data = []
        t = start
        while t < end:
            dt = datetime.fromtimestamp(t / NS_PER_S, tz=UTC)
            data.append(
                {
                    "zone": zone,
                    "carbonIntensity": 100 + dt.hour,
                    "datetime": dt.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                    "updatedAt": "2024-12-01T00:00:00.000Z",
                    "createdAt": "2024-12-01T00:00:00.000Z",
                    "emissionFactorType": request.query.get("emissionFactorType", "lifecycle"),
                    "isEstimated": False,
                    "estimationMethod": None,
                }
            )
            t += HOUR_NS
        return web.json_response({"zone": zone, "data": data})

    return handle


async def test_history_fixture_parsed_exactly(server: GridServer) -> None:
    server.route(HISTORY, json_handler(fixture("electricitymaps_history_US-MIDW-MISO.json")))
    async with make(server) as p:
        got = await p.series(MISO_FIRST, MISO_LAST + HOUR_NS)
    s = got.series
    assert got.source == "electricitymaps:US-MIDW-MISO"
    assert got.emission_factor == "lifecycle"
    assert len(s.times_ns) == 24
    assert (s.times_ns[0], s.values[0], s.estimated[0]) == (MISO_FIRST, 501.0, True)
    assert (s.times_ns[1], s.values[1], s.estimated[1]) == (MISO_FIRST + HOUR_NS, 419.0, False)
    assert (s.times_ns[-1], s.values[-1], s.estimated[-1]) == (MISO_LAST, 494.0, True)
    assert sum(s.estimated) == 8  # 06:00 and 23:00 .. 05:00
    assert s.value_at(parse_time_ns("2024-11-30T12:59:59Z")) == 447.0
    req = server.requests(HISTORY)[0]
    assert req.query == {"zone": "US-MIDW-MISO", "emissionFactorType": "lifecycle"}
    assert req.headers["auth-token"] == KEY


async def test_cache_hit_makes_no_second_request(server: GridServer) -> None:
    server.route(HISTORY, json_handler(fixture("electricitymaps_history_US-MIDW-MISO.json")))
    async with make(server) as p:
        await p.series(MISO_FIRST, MISO_LAST + HOUR_NS)
        again = await p.series(MISO_FIRST + 3 * HOUR_NS, MISO_FIRST + 5 * HOUR_NS)
    assert server.count(HISTORY) == 1
    assert again.series.values == (419.0, 431.0)


async def test_latest_when_history_lags(server: GridServer) -> None:
    server.route(HISTORY, json_handler(fixture("electricitymaps_history_US-MIDW-MISO.json")))
    server.route(LATEST, json_handler(fixture("electricitymaps_latest_US-MIDW-MISO.json")))
    async with make(server, now="2024-12-01T06:30:00Z") as p:
        got = await p.series(parse_time_ns("2024-12-01T05:30:00Z"), parse_time_ns("2024-12-01T06:30:00Z"))
    assert server.count(LATEST) == 1
    assert got.series.values == (494.0, 488.0)
    assert got.series.times_ns[1] == parse_time_ns("2024-12-01T06:00:00Z")
    assert got.series.estimated == (True, True)


async def test_value_held_past_the_data_is_marked_estimated(server: GridServer) -> None:
    history = fixture("electricitymaps_history_US-MIDW-MISO.json")
    history["history"][-1]["isEstimated"] = False
    server.route(HISTORY, json_handler(history))
    server.route(LATEST, json_handler({**history["history"][-1]}))  # nothing newer yet
    async with make(server, now="2024-12-01T06:10:00Z") as p:
        got = await p.series(parse_time_ns("2024-12-01T05:50:00Z"), parse_time_ns("2024-12-01T06:10:00Z"))
    assert got.series.times_ns == (parse_time_ns("2024-12-01T05:50:00Z"), MISO_LAST + HOUR_NS)
    assert got.series.values == (494.0, 494.0)
    assert got.series.estimated == (False, True)


async def test_past_range_fixture_parsed(server: GridServer) -> None:
    server.route(PAST_RANGE, json_handler(fixture("electricitymaps_past_range_DE.json")))
    t0 = parse_time_ns("2024-11-20T00:00:00Z")
    async with make(server) as p:
        got = await p.series(t0, t0 + 3 * HOUR_NS)
    assert got.series.values == (412.0, 398.0, 405.0)
    assert got.series.estimated == (False, False, True)
    req = server.requests(PAST_RANGE)[0]
    assert req.query["start"] == "2024-11-20T00:00:00Z"
    assert req.query["end"] == "2024-11-20T03:00:00Z"


async def test_late_samples_fetch_history_once_and_chunk_past_range(server: GridServer) -> None:
    server.route(PAST_RANGE, past_range_generator())
    start = parse_time_ns("2024-10-01T00:00:00Z")
    end = start + 25 * 24 * HOUR_NS  # 25 days: 10 + 10 + 5
    async with make(server) as p:
        got = await p.series(start, end)
        # a node flushing its spool in many small batches: no further requests
        for i in range(50):
            b = start + i * 11 * HOUR_NS + 17 * 60 * NS_PER_S
            batch = await p.series(b, b + 600 * NS_PER_S)
            hour = datetime.fromtimestamp(b / NS_PER_S, tz=UTC).hour
            assert batch.series.value_at(b) == 100 + hour
    reqs = server.requests(PAST_RANGE)
    assert len(reqs) == 3
    spans = [(parse_time_ns(r.query["start"]), parse_time_ns(r.query["end"])) for r in reqs]
    assert spans[0][0] == start and spans[-1][1] == end
    assert all(e - s <= 240 * HOUR_NS for s, e in spans)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert len(got.series.times_ns) == 25 * 24


async def test_direct_emission_factor_is_asked_and_checked(server: GridServer) -> None:
    server.route(PAST_RANGE, past_range_generator())
    server.route(HISTORY, json_handler(fixture("electricitymaps_history_US-MIDW-MISO.json")))
    t0 = parse_time_ns("2024-10-01T00:00:00Z")
    async with make(server, emission_factor="direct") as p:
        got = await p.series(t0, t0 + HOUR_NS)
        assert got.emission_factor == "direct"
        assert server.requests(PAST_RANGE)[0].query["emissionFactorType"] == "direct"
        # the MISO capture says "lifecycle": a mismatch is refused, not silently used
        with pytest.raises(IntensityUnavailable, match="lifecycle"):
            await p.series(MISO_FIRST, MISO_FIRST + HOUR_NS)


async def test_401_is_unavailable_and_never_shows_the_key(
    server: GridServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.route(HISTORY, status_handler(401, text=f"invalid token {KEY}"))
    async with make(server) as p:
        with pytest.raises(IntensityUnavailable) as err:
            await p.series(MISO_FIRST, MISO_FIRST + HOUR_NS)
    assert "401" in str(err.value)
    assert KEY not in str(err.value) and KEY not in repr(err.value)
    assert all(KEY not in r.getMessage() for r in caplog.records)
    assert KEY not in repr(p)
    assert server.count(HISTORY) == 1  # no retry on auth failure


async def test_403_on_past_range_says_why(server: GridServer) -> None:
    server.route(PAST_RANGE, status_handler(403, text="forbidden"))
    t0 = parse_time_ns("2024-10-01T00:00:00Z")
    async with make(server) as p:
        with pytest.raises(IntensityUnavailable, match=r"past-range.*plan"):
            await p.series(t0, t0 + HOUR_NS)


async def test_429_retry_after_seconds_is_waited_then_succeeds(server: GridServer) -> None:
    server.route(
        HISTORY,
        sequence(
            status_handler(429, headers={"Retry-After": "1"}),
            json_handler(fixture("electricitymaps_history_US-MIDW-MISO.json")),
        ),
    )
    async with make(server) as p:
        t = time.monotonic()
        got = await p.series(MISO_FIRST, MISO_FIRST + HOUR_NS)
        waited = time.monotonic() - t
    assert got.series.values == (501.0,)
    assert server.count(HISTORY) == 2
    assert 1.0 <= waited < 5.0


async def test_429_retry_after_http_date(server: GridServer) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    server.route(
        HISTORY,
        sequence(
            status_handler(429, headers={"Retry-After": format_datetime(when, usegmt=True)}),
            json_handler(fixture("electricitymaps_history_US-MIDW-MISO.json")),
        ),
    )
    sleep = FakeSleep()
    async with make(server, sleep=sleep) as p:
        await p.series(MISO_FIRST, MISO_FIRST + HOUR_NS)
    assert len(sleep.waits) == 1
    assert 27.0 <= sleep.waits[0] <= 30.0


async def test_429_forever_gives_up_after_bounded_attempts(server: GridServer) -> None:
    server.route(HISTORY, status_handler(429, headers={"Retry-After": "2"}))
    sleep = FakeSleep()
    async with make(server, sleep=sleep, http=HttpSettings(max_attempts=3)) as p:
        with pytest.raises(IntensityUnavailable, match=r"gave up after 3 attempts.*429"):
            await p.series(MISO_FIRST, MISO_FIRST + HOUR_NS)
    assert server.count(HISTORY) == 3
    assert sleep.waits == [2.0, 2.0]


async def test_429_retry_after_too_long_is_not_waited(server: GridServer) -> None:
    server.route(HISTORY, status_handler(429, headers={"Retry-After": "3600"}))
    sleep = FakeSleep()
    async with make(server, sleep=sleep) as p:
        with pytest.raises(IntensityUnavailable, match="Retry-After 3600 s"):
            await p.series(MISO_FIRST, MISO_FIRST + HOUR_NS)
    assert sleep.waits == []


async def test_5xx_retried_with_bounded_jittered_backoff(server: GridServer) -> None:
    server.route(
        HISTORY,
        sequence(
            status_handler(503),
            status_handler(502),
            status_handler(500),
            json_handler(fixture("electricitymaps_history_US-MIDW-MISO.json")),
        ),
    )
    sleep = FakeSleep()
    http = HttpSettings(max_attempts=4, backoff_base_s=1.0, backoff_max_s=3.0)
    async with make(server, sleep=sleep, http=http) as p:
        got = await p.series(MISO_FIRST, MISO_FIRST + HOUR_NS)
    assert got.series.values == (501.0,)
    assert server.count(HISTORY) == 4
    assert len(sleep.waits) == 3
    for wait, cap in zip(sleep.waits, (1.0, 2.0, 3.0), strict=True):
        assert 0.0 <= wait <= cap


async def test_5xx_forever_is_unavailable(server: GridServer) -> None:
    server.route(HISTORY, status_handler(503))
    sleep = FakeSleep()
    async with make(server, sleep=sleep, http=HttpSettings(max_attempts=2)) as p:
        with pytest.raises(IntensityUnavailable, match="HTTP 503"):
            await p.series(MISO_FIRST, MISO_FIRST + HOUR_NS)
    assert server.count(HISTORY) == 2


async def test_timeout_is_unavailable_within_bounded_time(server: GridServer) -> None:
    server.route(HISTORY, server.slow_handler(5.0))
    async with make(server, http=HttpSettings(timeout_s=0.3)) as p:
        t = time.monotonic()
        with pytest.raises(IntensityUnavailable, match=r"no answer within 0\.3 s"):
            await p.series(MISO_FIRST, MISO_FIRST + HOUR_NS)
        assert time.monotonic() - t < 2.0


async def test_malformed_body_is_unavailable(server: GridServer) -> None:
    server.route(HISTORY, json_handler({"zone": "US-MIDW-MISO", "history": [{"nope": 1}]}))
    async with make(server) as p:
        with pytest.raises(IntensityUnavailable, match="unexpected value object"):
            await p.series(MISO_FIRST, MISO_FIRST + HOUR_NS)


async def test_concurrent_batches_share_one_fetch(server: GridServer) -> None:
    import asyncio

    server.route(PAST_RANGE, past_range_generator())
    start = parse_time_ns("2024-10-01T00:00:00Z")
    async with make(server) as p:
        got = await asyncio.gather(*(p.series(start + i * 600 * NS_PER_S, start + HOUR_NS) for i in range(6)))
    assert server.count(PAST_RANGE) == 1
    assert {g.series.value_at(start) for g in got} == {100.0}
