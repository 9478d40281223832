"""Shared fixtures: one real InfluxDB 1.x server per test session, a fresh database per test.

Every test gets one kind marker (README, "Tests"), set here unless the test sets one itself:

* ``e2e``: gridwatt's own programs run as real processes (everything under tests/e2e/);
* ``integration``: a real server (InfluxDB through the ``influxdb`` fixture, Alertmanager,
  VictoriaMetrics, a collector on real sockets) but no gridwatt child process;
* ``unit``: neither; ``pytest -m unit`` is the fast inner loop.
"""

from __future__ import annotations

import itertools
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import toml_str

REPO = Path(__file__).resolve().parent.parent
DE_CSV = REPO / "deploy" / "data" / "grid" / "DE_2022_hourly.csv"
_db_counter = itertools.count(1)
KINDS = ("unit", "integration", "e2e")
#: Fixtures that start a real server: a test using one is (at least) an integration test.
SERVER_FIXTURES = {"influxdb", "alertmanager", "victoriametrics"}
#: Fixtures that run gridwatt's programs as processes (tests/views: the replayed demo cluster).
PROCESS_FIXTURES = {"replay"}
#: Kinds by place, most specific first: tests/e2e; the Debian packages (built, installed into a root
#: and run); the Kubernetes manifests (rendered and validated by the real tools).
KIND_BY_PATH = (("tests/e2e", "e2e"), ("tests/deploy/test_deb.py", "e2e"), ("tests/deploy", "integration"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its kind (see the module docstring)."""
    for item in items:
        if any(item.get_closest_marker(kind) for kind in KINDS):
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        path = Path(str(item.fspath))
        by_path = next((kind for place, kind in KIND_BY_PATH if path.is_relative_to(REPO / place)), None)
        if by_path is not None:
            item.add_marker(getattr(pytest.mark, by_path))
        elif PROCESS_FIXTURES & fixtures:
            item.add_marker(pytest.mark.e2e)
        elif SERVER_FIXTURES & fixtures:
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def influxdb() -> Iterator[LocalInfluxDB]:
    with LocalInfluxDB() as db:
        yield db


@pytest.fixture
def database(influxdb: LocalInfluxDB, request: pytest.FixtureRequest) -> str:
    """A database name unique to this test."""
    safe = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40]
    return f"t{next(_db_counter)}_{safe}"


def influx_query(url: str, database: str, q: str) -> list[dict[str, Any]]:
    """Run InfluxQL synchronously; returns the results list."""
    params = urllib.parse.urlencode({"db": database, "q": q, "epoch": "ns"})
    with urllib.request.urlopen(f"{url}/query?{params}", timeout=30) as resp:
        body = json.load(resp)
    for r in body["results"]:
        assert "error" not in r, r["error"]
    results: list[dict[str, Any]] = body["results"]
    return results


def first_row(result: dict[str, Any]) -> dict[str, Any]:
    series = result.get("series") or []
    if not series:
        return {}
    return dict(zip(series[0]["columns"], series[0]["values"][0], strict=False))


def collector_toml(
    influx_url: str,
    database: str,
    grpc_port: int = 0,
    http_port: int = 0,
    zones: str = '[[zones]]\nname = "Z"\nintensity = { kind = "constant", g_per_kwh = 350.0 }\n',
    racks: str = '[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.2\nnodes = ["n1"]\n',
    extra_server: str = "",
    extra_influxdb: str = "",
) -> str:
    return (
        f'[server]\ngrpc_listen = "127.0.0.1:{grpc_port}"\nhttp_listen = "127.0.0.1:{http_port}"\n'
        f"{extra_server}\n"
        f"[influxdb]\nurl = {toml_str(influx_url)}\ndatabase = {toml_str(database)}\n{extra_influxdb}\n"
        f"{zones}\n{racks}\n"
    )
