"""Alert sinks against local servers: an aiohttp webhook receiver and a real Alertmanager."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gridwatt.collector.alerts import AlertEngine, AlertEvent, AlertRule, AlertsConfig, ScopeWindow
from gridwatt.collector.alerts.sinks import (
    AlertDispatcher,
    AlertmanagerSink,
    LogSink,
    SinkStats,
    WebhookSink,
    build_sinks,
)
from gridwatt.collector.alerts.sinks.alertmanager import AlertmanagerSinkConfig, rfc3339
from gridwatt.collector.alerts.sinks.base import backoff_delay_s
from gridwatt.collector.alerts.sinks.webhook import WebhookSinkConfig

ALERTMANAGER_BIN = os.environ.get("GRIDWATT_ALERTMANAGER_BIN", "/usr/bin/prometheus-alertmanager")


RULE = AlertRule(name="rack-idle", scope="rack", util_below_pct=10, for_s=1800)
T10_NS = 1_709_287_200 * 10**9  # 2024-03-01T10:00:00Z
MIN_NS = 60 * 10**9


def scenario() -> list[ScopeWindow]:
    """rack-b: 8 GPUs idle at 1.9 % from 10:00 to 11:00, then busy at 80 % until 11:30."""
    windows = []
    for i in range(90):
        idle = i < 60
        kwh = 8 * (0.066 if idle else 0.34) / 60 * 1.3 + 1e-5 * (i % 4)
        windows.append(
            ScopeWindow(
                scope_kind="rack",
                scope_name="rack-b",
                start_ns=T10_NS + i * MIN_NS,
                end_ns=T10_NS + (i + 1) * MIN_NS,
                gpu_count=8,
                nodes=("rack-b-n1",),
                gpus=tuple(f"rack-b-n1/{g}" for g in range(8)),
                mean_util_pct=1.9 if idle else 80.0,
                it_energy_kwh=kwh / 1.3,
                facility_energy_kwh=kwh,
                co2e_kg=kwh * 0.38,
            )
        )
    return windows


def lifecycle() -> list[AlertEvent]:
    """pending, firing, resolved of rack-b from the engine scenario."""
    return AlertEngine([RULE]).observe_all(scenario())


def firing_snapshot() -> AlertEvent:
    engine = AlertEngine([RULE])
    engine.observe_all(scenario()[:45])
    (snap,) = engine.active_alerts()
    return snap


# -- webhook ------------------------------------------------------------------------------------


@dataclass
class Receiver:
    statuses: list[int]
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="nope" if status >= 400 else "ok")


async def start_receiver(statuses: list[int]) -> tuple[Receiver, web.AppRunner, str]:
    receiver = Receiver(list(statuses))
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return receiver, runner, f"http://127.0.0.1:{port}/hook"


@pytest.fixture
async def sleeps() -> list[float]:
    return []


def recorder(sleeps: list[float]) -> Callable[[float], Awaitable[None]]:
    async def sleep(delay_s: float) -> None:
        sleeps.append(delay_s)

    return sleep


async def test_webhook_retries_500_twice_then_delivers_once(sleeps: list[float]) -> None:
    receiver, runner, url = await start_receiver([500, 500, 200])
    cfg = WebhookSinkConfig(url=url, retries=3, backoff_initial_s=1.0, backoff_max_s=10.0)
    sink = WebhookSink(cfg, sleep=recorder(sleeps), rng=random.Random(7))
    try:
        firing = lifecycle()[1]
        assert await sink.send(firing) is True
    finally:
        await sink.close()
        await runner.cleanup()
    assert len(receiver.requests) == 3
    bodies = {body for _, body in receiver.requests}
    assert len(bodies) == 1  # the same payload each time
    payload = json.loads(bodies.pop())
    assert payload["version"] == 1 and payload["event"]["kind"] == "firing"
    assert payload["event"]["scope"] == "rack-b" and payload["event"]["fired_at"] == "2024-03-01T10:30:00Z"
    assert payload["event"]["wasted_energy_kwh"] == firing.wasted_energy_kwh
    assert {h["Idempotency-Key"] for h, _ in receiver.requests} == {firing.event_id}
    assert sink.stats == SinkStats(delivered=1, failed=0, retries=2, skipped=0)
    # exponential backoff with jitter: retry 1 in [0.5, 1], retry 2 in [1, 2]
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0


def test_backoff_is_capped_and_jittered() -> None:
    rng = random.Random(1)
    delays = [backoff_delay_s(n, 0.5, 4.0, rng) for n in range(1, 8)]
    caps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert len(set(delays)) == len(delays)


async def test_webhook_gives_up_after_bounded_attempts_and_logs(
    sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    receiver, runner, url = await start_receiver([503] * 10)
    sink = WebhookSink(WebhookSinkConfig(url=url, retries=2), sleep=recorder(sleeps))
    try:
        with caplog.at_level(logging.INFO, logger="gridwatt.alerts"):
            assert await sink.send(lifecycle()[2]) is False
    finally:
        await sink.close()
        await runner.cleanup()
    assert len(receiver.requests) == 3 and len(sleeps) == 2
    assert sink.stats == SinkStats(delivered=0, failed=1, retries=2, skipped=0)
    assert any("giving up" in r.message and "HTTP 503" in r.message for r in caplog.records)


async def test_webhook_does_not_retry_a_4xx(sleeps: list[float]) -> None:
    receiver, runner, url = await start_receiver([400])
    sink = WebhookSink(WebhookSinkConfig(url=url, retries=5), sleep=recorder(sleeps))
    try:
        assert await sink.send(lifecycle()[1]) is False
    finally:
        await sink.close()
        await runner.cleanup()
    assert len(receiver.requests) == 1 and sleeps == [] and sink.stats.failed == 1


async def test_webhook_connection_refused_is_retried_then_failed(sleeps: list[float]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = WebhookSink(
        WebhookSinkConfig(url=f"http://127.0.0.1:{port}/hook", retries=2), sleep=recorder(sleeps)
    )
    try:
        assert await sink.send(lifecycle()[1]) is False
    finally:
        await sink.close()
    assert sink.stats == SinkStats(delivered=0, failed=1, retries=2, skipped=0)


async def test_webhook_sends_only_configured_kinds() -> None:
    receiver, runner, url = await start_receiver([])
    sink = WebhookSink(WebhookSinkConfig(url=url))
    try:
        for ev in lifecycle():
            await sink.send(ev)
    finally:
        await sink.close()
        await runner.cleanup()
    kinds = [json.loads(body)["event"]["kind"] for _, body in receiver.requests]
    assert kinds == ["firing", "resolved"]
    assert sink.stats == SinkStats(delivered=2, failed=0, retries=0, skipped=1)


async def test_log_sink_one_json_line_per_event(caplog: pytest.LogCaptureFixture) -> None:
    sink = LogSink()
    with caplog.at_level(logging.INFO, logger="gridwatt.alerts"):
        for ev in lifecycle():
            await sink.send(ev)
    lines = [r for r in caplog.records if r.name == "gridwatt.alerts"]
    assert len(lines) == 3
    parsed = [json.loads(r.getMessage().removeprefix("alert ")) for r in lines]
    assert [p["kind"] for p in parsed] == ["pending", "firing", "resolved"]
    assert lines[1].levelno == logging.WARNING
    assert parsed[2]["resolved_at"] == "2024-03-01T11:05:00Z"


async def test_dispatcher_isolates_a_failing_sink(
    sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    good, runner_ok, url_ok = await start_receiver([])
    bad, runner_bad, url_bad = await start_receiver([500] * 10)
    cfg = AlertsConfig.model_validate(
        {"sinks": {"webhooks": [{"url": url_bad, "retries": 1, "backoff_initial_s": 0}, {"url": url_ok}]}}
    )
    sinks = build_sinks(cfg.sinks)
    assert [s.name for s in sinks] == ["log", f"webhook:{url_bad}", f"webhook:{url_ok}"]
    dispatcher = AlertDispatcher(sinks)
    try:
        with caplog.at_level(logging.INFO, logger="gridwatt.alerts"):
            await dispatcher.dispatch(lifecycle())
    finally:
        await dispatcher.close()
        await runner_ok.cleanup()
        await runner_bad.cleanup()
    assert len(good.requests) == 2 and len(bad.requests) == 4
    assert sinks[1].stats.failed == 2 and sinks[2].stats.delivered == 2 and sinks[0].stats.delivered == 3


# -- Alertmanager -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on a free 127.0.0.1 port, storage and config in tmp_path."""
    binary = shutil.which(ALERTMANAGER_BIN) or (
        ALERTMANAGER_BIN if os.access(ALERTMANAGER_BIN, os.X_OK) else None
    )
    if binary is None:
        pytest.skip(
            f"Alertmanager binary {ALERTMANAGER_BIN} is missing (apt-get install prometheus-alertmanager)"
        )
    config = tmp_path / "alertmanager.yml"
    config.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    storage = tmp_path / "am-data"
    storage.mkdir()
    port = free_port()
    log_path = tmp_path / "alertmanager.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={storage}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Alertmanager exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Alertmanager not ready in 30 s: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def am_alerts(http: aiohttp.ClientSession, url: str) -> list[dict[str, object]]:
    async with http.get(f"{url}/api/v2/alerts") as resp:
        assert resp.status == 200
        data = await resp.json()
        assert isinstance(data, list)
        return data


async def test_alertmanager_firing_readback_then_resolved(
    alertmanager: str, http: aiohttp.ClientSession
) -> None:
    cfg = AlertmanagerSinkConfig(
        url=alertmanager,
        generator_url="http://collector.local:8080/v1/alerts",
        extra_labels={"cluster": "test"},
        retries=0,
    )
    sink = AlertmanagerSink(cfg, session=http)
    pending, firing, resolved = lifecycle()
    assert await sink.send(pending) is True and sink.stats.skipped == 1  # not an Alertmanager alert
    assert await sink.send(firing) is True

    alerts = await am_alerts(http, alertmanager)
    assert len(alerts) == 1
    got = alerts[0]
    assert got["labels"] == {
        "alertname": "rack-idle",
        "scope_kind": "rack",
        "scope": "rack-b",
        "rack": "rack-b",
        "severity": "warning",
        "cluster": "test",
    }
    annotations = got["annotations"]
    assert isinstance(annotations, dict)
    assert annotations["summary"] == "8 GPU(s) of rack rack-b idle (mean 1.9% < 10%) for 30 min"
    assert f"{firing.wasted_energy_kwh:.3f} kWh" in annotations["description"]
    assert f"{firing.wasted_co2e_kg:.3f} kg CO2e" in annotations["description"]
    assert annotations["wasted_energy_kwh"] == f"{firing.wasted_energy_kwh:.6f}"
    assert annotations["waste_rate_kg_per_h"] == f"{firing.waste_rate_kg_per_h:.6f}"
    assert got["startsAt"] == "2024-03-01T10:00:00.000Z"
    assert got["generatorURL"] == (
        "http://collector.local:8080/v1/alerts?rule=rack-idle&scope_kind=rack&scope=rack-b"
    )
    status = got["status"]
    assert isinstance(status, dict) and status["state"] == "active"

    # a periodic re-send keeps it active with fresher numbers
    snap = firing_snapshot()
    assert await sink.resend([snap]) is True
    (again,) = await am_alerts(http, alertmanager)
    assert isinstance(again["annotations"], dict)
    assert again["annotations"]["wasted_energy_kwh"] == f"{snap.wasted_energy_kwh:.6f}"

    assert await sink.send(resolved) is True
    assert await am_alerts(http, alertmanager) == []
    assert sink.stats == SinkStats(delivered=3, failed=0, retries=0, skipped=1)


async def test_alertmanager_payload_times() -> None:
    now_ns = 1_800_000_000 * 10**9
    cfg = AlertmanagerSinkConfig(url="http://127.0.0.1:9", ends_at_after_s=300, resend_interval_s=60)
    sink = AlertmanagerSink(cfg, now_ns=lambda: now_ns)
    _, firing, resolved = lifecycle()
    try:
        fire = sink.to_alert(firing)
        assert fire["startsAt"] == "2024-03-01T10:00:00.000Z"
        assert fire["endsAt"] == rfc3339(now_ns + 300 * 10**9)
        assert "generatorURL" not in fire
        assert sink.to_alert(resolved)["endsAt"] == "2024-03-01T11:05:00.000Z"
    finally:
        await sink.close()


async def test_resend_loop_posts_until_stopped(alertmanager: str, http: aiohttp.ClientSession) -> None:
    cfg = AlertmanagerSinkConfig(url=alertmanager, resend_interval_s=0.05, ends_at_after_s=60)
    sink = AlertmanagerSink(cfg, session=http)
    stop = asyncio.Event()
    calls = 0

    def snapshot() -> list[AlertEvent]:
        nonlocal calls
        calls += 1
        if calls >= 3:
            stop.set()
        return [firing_snapshot()]

    await asyncio.wait_for(sink.run_resend_loop(snapshot, stop), timeout=10)
    assert calls == 3 and sink.stats.delivered == 3
    assert len(await am_alerts(http, alertmanager)) == 1
