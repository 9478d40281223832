"""One demo replay shared by the views tests (metrics, dashboards, web page), and Prometheus on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from tests.views.servers import LocalPrometheus, Replay, have_prometheus


@pytest.fixture(scope="session")
def replay(influxdb: LocalInfluxDB, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replay]:
    r = Replay(influxdb, tmp_path_factory.mktemp("replay"), "views_replay")
    try:
        yield r.start()
    finally:
        r.stop()


@pytest.fixture(scope="session")
def prometheus(replay: Replay, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrometheus]:
    if not have_prometheus():
        pytest.fail("Debian's prometheus package is needed (scripts/setup.sh installs it)")
    assert replay.collector is not None
    prom = LocalPrometheus(tmp_path_factory.mktemp("prometheus"),
                           f"127.0.0.1:{replay.collector.http_port}").start()
    try:
        # a scrape after the replay: every GPU sample counted
        prom.wait_for("gridwatt_live_samples_counted_total", float(replay.samples))
        yield prom
    finally:
        prom.stop()
