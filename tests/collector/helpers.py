"""Helpers for collector tests: an in-process collector on real sockets, and real sample batches."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gridwatt.agent.attribution import Attributor
from gridwatt.agent.sampler import Sampler
from gridwatt.agent.sources.sim.source import SimSource
from gridwatt.agent.sources.sim.trace import synthetic_trace
from gridwatt.collector.config import CollectorConfig, InfluxConfig
from gridwatt.collector.server import RunningCollector, start_collector
from gridwatt.collector.store import InfluxStore
from gridwatt.configfile import load_config
from gridwatt.v1 import telemetry_pb2 as pb


@asynccontextmanager
async def running_collector(tmp_path: Path, toml: str) -> AsyncIterator[RunningCollector]:
    cfg = tmp_path / "collector.toml"
    cfg.write_text(toml)
    running = await start_collector(load_config(cfg, CollectorConfig))
    try:
        yield running
    finally:
        await running.stop(grace_s=1)


def sim_samples(
    node: str,
    gpus: int,
    start_ns: int,
    duration_s: float,
    power_w: float,
    interval_s: float,
    job_id: str = "job-1",
    util_pct: float = 90.0,
) -> list[pb.GpuSample]:
    """Samples made by the agent's own code path (SimSource → Sampler)."""
    src = SimSource(synthetic_trace(gpus, start_ns, duration_s, power_w, util_pct), node, interval_s)
    sampler = Sampler(Attributor(job_id), idle_below_pct=5)
    out: list[pb.GpuSample] = []
    while not src.finished:
        out += sampler.take(src.read())
    return out


def batches(node: str, samples: list[pb.GpuSample], size: int, first_id: int = 1) -> list[pb.Batch]:
    return [
        pb.Batch(batch_id=first_id + k, node=node, gpu_samples=samples[i : i + size])
        for k, i in enumerate(range(0, len(samples), size))
    ]


def with_influx_settings(toml: str, **settings: object) -> str:
    """Add keys to the [influxdb] section of a collector TOML made by tests.conftest.collector_toml."""
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    return toml.replace("[influxdb]\n", "[influxdb]\n" + extra, 1)


def with_server_settings(toml: str, **settings: object) -> str:
    """Add keys to the [server] section of a collector TOML made by tests.conftest.collector_toml."""
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    return toml.replace("[server]\n", "[server]\n" + extra, 1)


def influx_post(url: str, q: str, database: str = "", auth: tuple[str, str] | None = None) -> None:
    """Run an InfluxQL statement that changes something (POST /query), as ``auth`` = (user, password).

    A user just created may not be known yet to InfluxDB's authorizer (meta data catch up
    asynchronously): 401/403 are tried again for up to 30 s.
    """
    params = {"q": q, **({"db": database} if database else {})}
    creds = "?" + urllib.parse.urlencode({"u": auth[0], "p": auth[1]}) if auth else ""
    deadline = time.monotonic() + 30
    while True:
        req = urllib.request.Request(f"{url}/query{creds}", data=urllib.parse.urlencode(params).encode(),
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                body = resp.read()
                assert resp.status == 200 and b'"error"' not in body, body
                return
        except urllib.error.HTTPError as exc:
            if exc.code not in (401, 403) or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def http_get(url: str) -> tuple[int, str]:
    """Status and body of a GET (errors included)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@asynccontextmanager
async def store_for(url: str, database: str, **config: Any) -> AsyncIterator[InfluxStore]:
    """A started InfluxStore on ``database`` (config keys as keyword arguments), closed after."""
    store = InfluxStore(InfluxConfig(url=url, database=database, **config))
    await store.start()
    try:
        yield store
    finally:
        await store.close()


def metric(store: InfluxStore, name: str, **labels: str) -> float:
    """A collector metric of the store (0 when not yet set)."""
    value = store.metrics.registry.get_sample_value("gridwatt_collector_" + name, labels)
    return 0.0 if value is None else value
