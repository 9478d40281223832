"""FallbackChain: API -> CSV -> constant, against a real local HTTP server."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gridwatt.collector.intensity.base import IntensitySeries, IntensityUnavailable
from gridwatt.collector.intensity.chain import FallbackChain
from gridwatt.collector.intensity.constant import ConstantIntensity
from gridwatt.collector.intensity.csv_file import CsvIntensity
from gridwatt.collector.intensity.electricitymaps import ElectricityMapsIntensity
from gridwatt.collector.intensity.http import HttpSettings
from gridwatt.collector.stepseries import StepSeries
from gridwatt.timeutil import NS_PER_S, parse_time_ns
from tests.collector.grid_server import GridServer, fixture, json_handler, status_handler

KEY = "chain-test-key-55c0de"
HOUR_NS = 3600 * NS_PER_S
T6 = parse_time_ns("2024-11-30T06:00:00Z")
HISTORY = "/v3/carbon-intensity/history"
CHAIN_LOG = "gridwatt.collector.intensity.chain"


@pytest.fixture
async def server() -> AsyncIterator[GridServer]:
    s = GridServer()
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def csv_path(tmp_path: Path) -> Path:
    p = tmp_path / "backup.csv"
    p.write_text(
        "time,intensity_g_per_kwh\n"
        "2024-11-30T06:00:00Z,300\n"
        "2024-11-30T07:00:00Z,310\n"
        "2024-11-30T08:00:00Z,320\n"
    )
    return p


def em(server: GridServer, **http: float) -> ElectricityMapsIntensity:
    now = parse_time_ns("2024-12-01T05:30:00Z")
    settings = HttpSettings(max_attempts=1, **http)  # type: ignore[arg-type]
    return ElectricityMapsIntensity(
        "US-MIDW-MISO", KEY, base_url=server.base_url, http=settings, clock_ns=lambda: now, min_refetch_s=0
    )


def chain(server: GridServer, csv_path: Path, cooldown_s: float = 0.0, **http: float) -> FallbackChain:
    return FallbackChain(
        [em(server, **http), CsvIntensity(csv_path, max_hold_s=3600), ConstantIntensity(450.0)],
        cooldown_s=cooldown_s,
    )


def warnings_from_chain(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == CHAIN_LOG and r.levelno == logging.WARNING]


async def test_primary_answer_passes_through(server: GridServer, csv_path: Path) -> None:
    server.route(HISTORY, json_handler(fixture("electricitymaps_history_US-MIDW-MISO.json")))
    c = chain(server, csv_path)
    got = await c.series(T6, T6 + 2 * HOUR_NS)
    await c.close()
    assert got.source == "electricitymaps:US-MIDW-MISO"
    assert got.series.values == (501.0, 419.0)
    assert got.series.estimated == (True, False)  # the API's own flags, untouched


async def test_falls_back_api_to_csv_to_constant(server: GridServer, csv_path: Path) -> None:
    server.route(HISTORY, status_handler(503))
    c = chain(server, csv_path)
    got = await c.series(T6 + HOUR_NS, T6 + 2 * HOUR_NS)  # the CSV covers this
    assert got.source == "csv:backup.csv"
    assert got.series.value_at(T6 + HOUR_NS) == 310.0
    assert all(got.series.estimated)  # a stand-in for the zone's real values
    late = parse_time_ns("2024-11-30T20:00:00Z")  # past the CSV's last row + 1 h
    got = await c.series(late, late + HOUR_NS)
    await c.close()
    assert got.source == "constant"
    assert got.series.value_at(late) == 450.0
    assert got.series.estimated == (True,)
    assert server.count(HISTORY) == 2


async def test_failure_logged_once_per_outage(
    server: GridServer, csv_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    c = chain(server, csv_path)
    server.route(HISTORY, status_handler(503))
    for _ in range(3):
        assert (await c.series(T6, T6 + HOUR_NS)).source == "csv:backup.csv"
    assert len(warnings_from_chain(caplog)) == 1
    assert server.count(HISTORY) == 3  # asked every time (cooldown 0), logged once
    server.route(HISTORY, json_handler(fixture("electricitymaps_history_US-MIDW-MISO.json")))
    assert (await c.series(T6, T6 + HOUR_NS)).source == "electricitymaps:US-MIDW-MISO"
    assert [r.levelno for r in caplog.records if r.name == CHAIN_LOG] == [logging.WARNING, logging.INFO]
    server.route(HISTORY, status_handler(503))
    # (hours fetched before are answered from the cache even while the API fails)
    await c.series(T6 + 30 * HOUR_NS, T6 + 31 * HOUR_NS)  # beyond the data and its hold: fails again
    await c.series(T6 + 32 * HOUR_NS, T6 + 33 * HOUR_NS)
    await c.close()
    em_warnings = [r for r in warnings_from_chain(caplog) if "electricitymaps" in r.getMessage()]
    assert len(em_warnings) == 2  # a new outage, logged once


async def test_key_never_logged_by_chain(
    server: GridServer, csv_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.route(HISTORY, status_handler(401, text=f"token {KEY} is not valid"))
    c = chain(server, csv_path)
    got = await c.series(T6, T6 + HOUR_NS)
    await c.close()
    assert got.source == "csv:backup.csv"
    (warning,) = warnings_from_chain(caplog)
    assert "401" in warning.getMessage()
    assert all(KEY not in r.getMessage() for r in caplog.records)


async def test_cooldown_skips_a_failed_provider(server: GridServer, csv_path: Path) -> None:
    server.route(HISTORY, status_handler(503))
    c = chain(server, csv_path, cooldown_s=60.0)
    await c.series(T6, T6 + HOUR_NS)
    got = await c.series(T6 + HOUR_NS, T6 + 2 * HOUR_NS)
    await c.close()
    assert got.source == "csv:backup.csv"
    assert server.count(HISTORY) == 1


async def test_timeout_falls_back_within_bounded_time(server: GridServer, csv_path: Path) -> None:
    server.route(HISTORY, server.slow_handler(5.0))
    c = chain(server, csv_path, timeout_s=0.2)
    t = time.monotonic()
    got = await c.series(T6, T6 + HOUR_NS)
    await c.close()
    assert time.monotonic() - t < 2.0
    assert got.source == "csv:backup.csv"


async def test_all_failing_is_unavailable_with_every_reason(server: GridServer) -> None:
    server.route(HISTORY, status_handler(503))

    class Broken:
        source = "broken"

        async def series(self, start_ns: int, end_ns: int) -> IntensitySeries:
            raise aiohttp.ClientConnectionError("connection refused")

    c = FallbackChain([em(server), Broken()], cooldown_s=0)
    with pytest.raises(IntensityUnavailable) as err:
        await c.series(T6, T6 + HOUR_NS)
    await c.close()
    assert "HTTP 503" in str(err.value)
    assert "connection refused" in str(err.value)


async def test_timeout_error_from_a_provider_moves_on() -> None:
    class Slow:
        async def series(self, start_ns: int, end_ns: int) -> IntensitySeries:
            raise TimeoutError

    backup = IntensitySeries(StepSeries((0,), (123.0,), (False,)), "backup", "direct")

    class Backup:
        async def series(self, start_ns: int, end_ns: int) -> IntensitySeries:
            return backup

    got = await FallbackChain([Slow(), Backup()], mark_fallback_estimated=False).series(0, 10)
    assert got is backup


def test_empty_chain_refused() -> None:
    with pytest.raises(ValueError):
        FallbackChain([])
