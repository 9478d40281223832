"""PUE from a site's facility power feed: integration, ratio, clamping, fallback, config, end to end.

Every expected number is worked out by hand in the comments. IT energy lives in a real InfluxDB.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from gridwatt.collector.config import CollectorConfig, InfluxConfig
from gridwatt.collector.pue import PueFileError, StaticPue
from gridwatt.collector.pue_feed import (
    FacilityFeed,
    FacilityFeedPue,
    SiteRacks,
    clamp_pue,
    feed_energy_kwh,
    load_facility_feed,
    merge_steps,
    pue_ratio,
)
from gridwatt.collector.stepseries import StepSeries
from gridwatt.collector.store import InfluxStore
from gridwatt.collector.wiring import build_topology
from gridwatt.configfile import ConfigError, load_config
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.timeutil import format_time_ns
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.collector.helpers import batches, running_collector, sim_samples
from tests.conftest import collector_toml, influx_query

S = 10**9
T0 = 1_650_000_000 * S  # 2022-04-15T05:20:00Z, a multiple of 60 s
W = 60 * S  # window (rack_resolution_s = 60)


def _csv(path: Path, header: str, rows: list[tuple[int, float]]) -> Path:
    path.write_text(header + "\n" + "".join(f"{format_time_ns(t)},{v}\n" for t, v in rows))
    return path


# --- the feed (pure) ---------------------------------------------------------------------------


def test_feed_step_integration_over_windows(tmp_path: Path) -> None:
    # 12 kW for 30 s, then 18 kW for 30 s: 360 kJ + 540 kJ = 900 kJ = 0.25 kWh in the 60 s window.
    feed = load_facility_feed(_csv(tmp_path / "f.csv", "time,facility_power_kw",
                                   [(T0, 12.0), (T0 + 30 * S, 18.0)]))
    assert feed.power_w.values == (12000.0, 18000.0)
    assert feed.end_ns == T0 + 60 * S  # the last row holds one more feed step (30 s)
    assert feed_energy_kwh(feed, T0, T0 + W) == pytest.approx(0.25, rel=1e-12)
    # [15 s, 45 s): 12 kW x 15 s + 18 kW x 15 s = 450 kJ = 0.125 kWh
    assert feed_energy_kwh(feed, T0 + 15 * S, T0 + 45 * S) == pytest.approx(0.125, rel=1e-12)
    # not covered: before the first row, or past the end of the feed
    assert feed_energy_kwh(feed, T0 - S, T0 + 59 * S) is None
    assert feed_energy_kwh(feed, T0 + W, T0 + 2 * W) is None
    assert feed_energy_kwh(feed, T0 + S, T0 + W + S) is None


def test_feed_in_watts_and_one_row_holds_on(tmp_path: Path) -> None:
    feed = load_facility_feed(_csv(tmp_path / "f.csv", "time,facility_power_w", [(T0, 7200.0)]))
    assert feed.end_ns is None
    # 7.2 kW for one hour, a day later: 7.2 kWh
    assert feed_energy_kwh(feed, T0 + 86400 * S, T0 + 90000 * S) == pytest.approx(7.2, rel=1e-12)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("time,facility_power_kw\n2022-04-15T05:20:00Z,12\nsoon,13\n", "f.csv:3: bad row"),
        ("time,facility_power_w\n2022-04-15T05:20:00Z,12\n2022-04-15T05:21:00Z,-5\n",
         "f.csv:3: facility_power_w -5"),
        ("time,facility_power_w\n2022-04-15T05:20:00Z,nan\n", "f.csv:2: facility_power_w nan"),
        ("time,power\n2022-04-15T05:20:00Z,12\n", "f.csv: header must have columns time and one of"),
        ("time,facility_power_w,facility_power_kw\n", "f.csv: header must have columns time and one of"),
        ("time,facility_power_w\n", "f.csv: no rows"),
    ],
)
def test_feed_csv_errors_name_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "f.csv"
    path.write_text(text)
    with pytest.raises(PueFileError, match=expected.replace("(", r"\(")) as err:
        load_facility_feed(path)
    assert str(path) in str(err.value)


def test_ratio_clamp_and_merge_are_pure() -> None:
    assert pue_ratio(0.25, 0.2) == pytest.approx(1.25, rel=1e-12)
    assert pue_ratio(0.25, 0.0) is None
    assert pue_ratio(None, 0.2) is None
    assert pue_ratio(0.25, None) is None
    assert clamp_pue(4.2, 1.0, 3.0) == 3.0
    assert clamp_pue(0.7, 1.05, 3.0) == 1.05
    assert clamp_pue(1.3, 1.0, 3.0) == 1.3
    merged = merge_steps([0, 60, 120, 180], [1.5, 1.5, 1.25, 1.25])
    assert (tuple(merged.times_ns), tuple(merged.values)) == ((0, 120), (1.5, 1.25))


async def test_static_pue_returns_its_series() -> None:
    series = StepSeries.constant(1.2)
    assert await StaticPue(series).series(0, 10) is series


# --- FacilityFeedPue against a real InfluxDB -----------------------------------------------------


@pytest.fixture
async def store(influxdb: LocalInfluxDB, database: str) -> AsyncIterator[InfluxStore]:
    s = InfluxStore(InfluxConfig(url=influxdb.url, database=database))
    await s.start()
    try:
        yield s
    finally:
        await s.close()


async def _write_node_points(store: InfluxStore, points: list[tuple[str, str, int, float]]) -> None:
    """(node, rack, window start, it_energy_kwh) node points, as the rollup writes them."""
    lines = [f"node,node={n},rack={r},zone=Z it_energy_kwh={kwh!r} {t}" for n, r, t, kwh in points]
    result = await store.write_lines(lines)
    assert not result.rejected


SITE = SiteRacks("s1", ("ra", "rb"), ("a1", "b1"))
# 12 kW 30 s + 18 kW 30 s, then 15 kW: 0.25 kWh in each of windows 0, 1, 2, 3; the feed ends at 4.
FEED = FacilityFeed(StepSeries((T0, T0 + 30 * S, T0 + W), (12000.0, 18000.0, 15000.0)), T0 + 4 * W)


def _provider(store: InfluxStore | None, **kw: float) -> FacilityFeedPue:
    args: dict[str, float] = {"pue_min": 1.0, "pue_max": 3.0, "fallback_pue": 1.4, "max_lag_s": 3600} | kw
    return FacilityFeedPue(SITE, FEED, store, 60, args["pue_min"], args["pue_max"], args["fallback_pue"],
                           int(args["max_lag_s"]))


def _values(series: StepSeries, windows: range) -> list[float]:
    return [series.value_at(T0 + k * W) for k in windows]


async def test_pue_is_facility_over_measured_it_of_the_previous_complete_window(store: InfluxStore) -> None:
    # window 0: IT 0.12 + 0.08 = 0.2 kWh -> 0.25 / 0.2 = 1.25
    # window 1: IT 0.10 + 0.06 = 0.16 kWh -> 0.25 / 0.16 = 1.5625
    # window 2: only a1 so far: b1's latest window is 1, so only window 0 is complete
    await _write_node_points(store, [
        ("a1", "ra", T0, 0.12), ("b1", "rb", T0, 0.08),
        ("a1", "ra", T0 + W, 0.10), ("b1", "rb", T0 + W, 0.06),
        ("a1", "ra", T0 + 2 * W, 0.10),
        ("x9", "other", T0, 5.0),  # another site's rack: not counted
    ])
    pue = _provider(store)
    # window 0 has no complete window before it: fallback; windows 1..3 use window 0
    got = _values(await pue.series(T0, T0 + 4 * W), range(4))
    assert got == pytest.approx([1.4, 1.25, 1.25, 1.25], abs=1e-12)
    # b1 reports window 2: windows 0 and 1 are complete, so windows 2 and 3 use window 1's ratio
    await _write_node_points(store, [("b1", "rb", T0 + 2 * W, 0.05)])
    got = _values(await pue.series(T0 + 2 * W + 10 * S, T0 + 4 * W), range(2, 4))
    assert got == pytest.approx([1.5625, 1.5625], abs=1e-12)
    # ... and window 1 still uses window 0 (c < w): a one-window lag at least
    assert (await pue.series(T0 + W, T0 + 2 * W)).value_at(T0 + W) == pytest.approx(1.25, abs=1e-12)
    assert pue.queries == 3


async def test_fallback_without_it_data_or_feed_or_all_nodes(store: InfluxStore) -> None:
    pue = _provider(store)
    # nothing stored at all
    assert _values(await pue.series(T0, T0 + 3 * W), range(3)) == [1.4, 1.4, 1.4]
    # only a1 has ever reported: b1 holds every window open
    await _write_node_points(store, [("a1", "ra", T0, 0.1), ("a1", "ra", T0 + W, 0.1)])
    assert _values(await pue.series(T0 + W, T0 + 3 * W), range(1, 3)) == [1.4, 1.4]
    # windows 4.. are past the end of the feed: complete, with IT, but no facility energy
    both = (("a1", "ra"), ("b1", "rb"))
    await _write_node_points(store, [("b1", "rb", T0, 0.1), ("b1", "rb", T0 + W, 0.1)]
                             + [(n, r, T0 + k * W, 0.1) for k in range(4, 7) for n, r in both])
    late = _provider(store)
    # window 1: window 0 (0.25 / 0.2 = 1.25); window 6: windows 4, 5 lack the feed, window 1 is used
    assert (await late.series(T0 + W, T0 + 2 * W)).value_at(T0 + W) == pytest.approx(1.25, abs=1e-12)
    assert (await _provider(store).series(T0 + 6 * W, T0 + 7 * W)).value_at(T0 + 6 * W) == pytest.approx(1.25)
    # ... unless window 1 is older than max_lag_s (240 s: 4 windows before window 6 is window 2)
    assert (await _provider(store, max_lag_s=240).series(T0 + 6 * W, T0 + 7 * W)).values == (1.4,)


async def test_clamped_at_both_ends_with_one_warning_per_window(
    store: InfluxStore, caplog: pytest.LogCaptureFixture
) -> None:
    # window 0: IT 0.05 kWh -> 0.25 / 0.05 = 5.0 -> clamped to 3.0
    # window 2: IT 0.5 kWh -> 0.25 / 0.5 = 0.5 -> clamped to 1.05
    await _write_node_points(store, [
        ("a1", "ra", T0, 0.03), ("b1", "rb", T0, 0.02),
        ("a1", "ra", T0 + W, 0.1), ("b1", "rb", T0 + W, 0.1),
    ])
    pue = _provider(store, pue_min=1.05)
    caplog.set_level(logging.WARNING, logger="gridwatt.collector.pue_feed")
    for _ in range(3):  # several batches of the same windows: one warning
        assert (await pue.series(T0 + W, T0 + 2 * W)).values == (3.0,)
    clamps = [r.getMessage() for r in caplog.records if "clamped" in r.getMessage()]
    assert len(clamps) == 1, clamps
    assert "window 2022-04-15T05:20:00Z ratio 5 -> 3" in clamps[0]

    await _write_node_points(store, [
        ("a1", "ra", T0 + 2 * W, 0.3), ("b1", "rb", T0 + 2 * W, 0.2),
        ("a1", "ra", T0 + 3 * W, 0.1), ("b1", "rb", T0 + 3 * W, 0.1),
    ])
    for _ in range(2):
        assert (await pue.series(T0 + 3 * W, T0 + 4 * W)).values == (1.05,)
    clamps = [r.getMessage() for r in caplog.records if "clamped" in r.getMessage()]
    assert len(clamps) == 2, clamps
    assert "window 2022-04-15T05:22:00Z ratio 0.5 -> 1.05" in clamps[1]


async def test_no_store_attached_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no store attached"):
        await _provider(None).series(T0, T0 + W)


# --- config ----------------------------------------------------------------------------------------

ZONES = '[[zones]]\nname = "Z"\nintensity = { kind = "constant", g_per_kwh = 350.0 }\n'


def _load(tmp_path: Path, body: str) -> CollectorConfig:
    cfg = tmp_path / "collector.toml"
    cfg.write_text(ZONES + body)
    return load_config(cfg, CollectorConfig, environ={})


def test_config_sites_and_feed_racks(tmp_path: Path) -> None:
    (tmp_path / "feeds").mkdir()
    _csv(tmp_path / "feeds" / "hall1.csv", "time,facility_power_kw", [(T0, 20.0)])
    config = _load(tmp_path, (
        '[[sites]]\nname = "hall1"\nfacility_power_csv = "feeds/hall1.csv"\n'
        'pue_max = 2.5\nfallback_pue = 1.3\n'
        '[[racks]]\nname = "ra"\nzone = "Z"\nsite = "hall1"\npue_from_feed = true\nnodes = ["a1"]\n'
        '[[racks]]\nname = "rb"\nzone = "Z"\nsite = "hall1"\npue = 1.2\nnodes = ["b1"]\n'
        '[[racks]]\nname = "rc"\nzone = "Z"\npue = 1.1\nnodes = ["c1"]\n'
    ))
    assert config.sites[0].facility_power_csv == tmp_path / "feeds" / "hall1.csv"
    assert [r.site for r in config.racks] == ["hall1", "hall1", "rc"]  # default: the rack's name
    topology = build_topology(config)
    feed_pue = topology.feed_pues["hall1"]
    # the site's IT energy is that of all its racks, whatever their PUE option
    assert feed_pue.site == SiteRacks("hall1", ("ra", "rb"), ("a1", "b1"))
    assert (feed_pue.pue_max, feed_pue.fallback_pue, feed_pue.pue_min) == (2.5, 1.3, 1.0)
    a1 = topology.locate("a1")
    assert a1 is not None and a1.pue_provider is feed_pue and a1.pue.value_at(0) == 1.3
    b1 = topology.locate("b1")
    assert b1 is not None and isinstance(b1.pue_provider, StaticPue) and b1.pue.value_at(0) == 1.2


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (  # the site has no feed
            '[[sites]]\nname = "hall1"\n'
            '[[racks]]\nname = "ra"\nzone = "Z"\nsite = "hall1"\npue_from_feed = true\n',
            "rack 'ra': pue_from_feed needs site 'hall1' to have a facility power feed",
        ),
        (  # no such site: the rack's own name is its site
            '[[racks]]\nname = "ra"\nzone = "Z"\npue_from_feed = true\n',
            "rack 'ra': pue_from_feed needs site 'ra' to have a facility power feed",
        ),
        (
            '[[racks]]\nname = "ra"\nzone = "Z"\npue = 1.2\npue_from_feed = true\n',
            "give exactly one of pue, pue_schedule, pue_csv, pue_from_feed",
        ),
        (
            '[[racks]]\nname = "ra"\nzone = "Z"\npue = 1.2\npue_csv = "p.csv"\n',
            "give exactly one of pue, pue_schedule, pue_csv, pue_from_feed",
        ),
        ('[[racks]]\nname = "ra"\nzone = "Z"\n', "give exactly one of"),
        ('[[sites]]\nname = "s"\npue_min = 2.0\npue_max = 1.5\n', "pue_min 2.0 must be below pue_max 1.5"),
        ('[[sites]]\nname = "s"\nfallback_pue = 3.5\n', "fallback_pue 3.5 outside"),
        ('[[sites]]\nname = "s"\n[[sites]]\nname = "s"\n', "site names must be unique"),
        (
            '[accounting]\nrack_windows = false\n[[sites]]\nname = "s"\nfacility_power_csv = "f.csv"\n'
            '[[racks]]\nname = "ra"\nzone = "Z"\nsite = "s"\npue_from_feed = true\n',
            "pue_from_feed reads the node windows back, so it needs accounting.rack_windows = true",
        ),
    ],
)
def test_config_errors(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, body)
    assert expected in str(err.value)
    assert "collector.toml" in str(err.value)


def test_config_feed_csv_bad_row_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "hall1.csv").write_text(
        "time,facility_power_kw\n2022-04-15T05:20:00Z,20\n2022-04-15T05:21:00Z,x\n"
    )
    config = _load(tmp_path, (
        '[[sites]]\nname = "hall1"\nfacility_power_csv = "hall1.csv"\n'
        '[[racks]]\nname = "ra"\nzone = "Z"\nsite = "hall1"\npue_from_feed = true\n'
    ))
    with pytest.raises(PueFileError, match=r"hall1\.csv:3: bad row"):
        build_topology(config)


# --- end to end through the collector -------------------------------------------------------------


async def test_two_racks_of_a_site_get_pue_1_25_from_the_feed(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    # Two racks of site s1, one node each, 2 GPUs x 400 W: IT 1.6 kW. The feed alternates 1.8 and
    # 2.2 kW every 30 s: 2.0 kW over every 60 s window, so PUE = 2.0 / 1.6 = 1.25.
    _csv(tmp_path / "feed.csv", "time,facility_power_kw",
         [(T0 + k * 30 * S, 1.8 if k % 2 == 0 else 2.2) for k in range(24)])
    racks = (
        '[[sites]]\nname = "s1"\nfacility_power_csv = "feed.csv"\nfallback_pue = 1.5\n'
        '[[racks]]\nname = "ra"\nzone = "Z"\nsite = "s1"\npue_from_feed = true\nnodes = ["a1"]\n'
        '[[racks]]\nname = "rb"\nzone = "Z"\nsite = "s1"\npue_from_feed = true\nnodes = ["b1"]\n'
    )
    sent = {node: batches(node, sim_samples(node, 2, T0, 600, 400.0, 30.0), 8) for node in ("a1", "b1")}
    assert len(sent["a1"]) == 5  # 8 samples = 2 GPUs x 4 intervals of 30 s = 2 windows per batch
    async with running_collector(tmp_path, collector_toml(influxdb.url, database, racks=racks)) as c:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as ch:
            stub = pb_grpc.IngestStub(ch)
            for k in range(5):  # in time order, the racks taking turns
                for node in ("a1", "b1"):
                    ack = await stub.Write(sent[node][k])
                    assert ack.code == 0, ack.message
    (result,) = influx_query(
        influxdb.url, database, 'SELECT pue, it_energy_kwh, facility_energy_kwh FROM rack GROUP BY "rack"'
    )
    for series in result["series"]:
        rows = {(t - T0) // W: (pue, it, fac) for t, pue, it, fac in series["values"]}
        assert sorted(rows) == list(range(10))
        # windows 0 and 1 (the first batch of each node): no complete window yet -> fallback 1.5.
        # From window 2 on: window 0 is complete (both nodes reported window 1) -> 1.25.
        for w, (pue, it, fac) in rows.items():
            expected = 1.5 if w < 2 else 1.25
            assert pue == pytest.approx(expected, abs=1e-9), (series["tags"], w)
            assert it == pytest.approx(0.8 * 60 / 3600, rel=1e-12)  # 800 W x 60 s
            assert fac == pytest.approx(expected * 0.8 * 60 / 3600, rel=1e-9)
    # gpu points record the same PUE
    (gpu,) = influx_query(
        influxdb.url, database, f"SELECT min(pue), max(pue) FROM gpu WHERE time >= {T0 + 2 * W}"
    )
    assert gpu["series"][0]["values"][0][1:] == pytest.approx([1.25, 1.25], abs=1e-9)
