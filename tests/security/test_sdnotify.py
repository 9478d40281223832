"""sd_notify over a real AF_UNIX datagram socket: READY once the source is up, WATCHDOG, STOPPING."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridwatt.agent.runner import run_agent
from gridwatt.agent.sdnotify import Notifier, notify, watchdog_interval_s
from gridwatt.agent.sources.sim.source import SimConfig
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import AgentProcess, toml_str
from tests.collector.helpers import running_collector
from tests.conftest import collector_toml
from tests.security.helpers import EXPECTED_SAMPLES, agent_config, replay


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket with a short path (sun_path holds 108 bytes)."""
    folder = tempfile.mkdtemp(prefix="gw-", dir="/tmp")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(folder)


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_notify_sends_one_datagram_to_a_path_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": path}) is True
    assert received(sock) == ["READY=1\nSTATUS=up"]


def test_notify_never_blocks_on_a_full_queue(notify_socket: tuple[socket.socket, str]) -> None:
    """Nobody reads: once the receiver's queue is full, notify drops the datagram and says so."""
    sock, path = notify_socket
    qlen = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    sent = [notify(f"STATUS={i}", {"NOTIFY_SOCKET": path}) for i in range(qlen + 5)]
    got = received(sock)
    assert False in sent and sent.count(True) == len(got)
    assert got == [f"STATUS={i}" for i in range(len(got))]


def test_notify_to_an_abstract_socket() -> None:
    name = f"gridwatt-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(100) == b"WATCHDOG=1"


def test_without_systemd_nothing_is_sent(tmp_path: Path) -> None:
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "relative/path"}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent")}) is False
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready()
    notifier.watchdog()


def test_watchdog_interval_from_the_environment() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "x"}) is None
    assert watchdog_interval_s({}) is None
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000"}).min_interval_s == 7.5


def test_watchdog_is_rate_limited(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000000"})  # 100 s apart
    notifier.ready("sampling")
    for _ in range(50):
        notifier.watchdog()
    assert received(sock) == ["READY=1\nSTATUS=sampling", "WATCHDOG=1"]


async def test_agent_sends_ready_then_watchdog_from_its_loop(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, notify_socket: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    # WATCHDOG=1 at most every 100 ms: the live run's datagrams (READY, about 7 WATCHDOG, STOPPING)
    # fit the receiver's queue (net.unix.max_dgram_qlen, 10 on some hosts) until it is read
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    async with running_collector(tmp_path, collector_toml(influxdb.url, database)) as c:
        # replay: READY, then the loop's first WATCHDOG
        assert (await replay(agent_config(tmp_path, c.grpc_port))).ledger.acknowledged == EXPECTED_SAMPLES
        replayed = received(sock)
        # live, 20 ms ticks for 0.6 s: WATCHDOG=1 keeps coming, about every 100 ms
        live = agent_config(tmp_path, c.grpc_port, node="n1")
        live.interval_s = 0.02
        live.spool_path = tmp_path / "live.db"
        live.source.sim = SimConfig(gpus=1, duration_s=3600)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.6, stop.set)
        await run_agent(live, progress=None, stop=stop)
        periodic = received(sock)
    assert replayed[0].startswith("READY=1\nSTATUS=sampling sim, shipping to 127.0.0.1:")
    assert replayed[1:] and set(replayed[1:]) == {"WATCHDOG=1"}
    assert periodic[0].startswith("READY=1")
    assert periodic[-1] == "STOPPING=1"  # the stop was asked: systemd hears that the agent is stopping
    assert set(periodic[1:-1]) == {"WATCHDOG=1"}
    assert 2 <= len(periodic[1:-1]) <= 7  # 0.6 s / 100 ms = 6, +1 at start; fewer on a slow machine


@pytest.mark.e2e
async def test_sigterm_sends_stopping_before_the_agent_exits(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, notify_socket: tuple[socket.socket, str],
) -> None:
    """A real agent process: READY=1 when it samples, STOPPING=1 once SIGTERM arrives, then exit 0."""
    sock, path = notify_socket
    async with running_collector(tmp_path, collector_toml(influxdb.url, database)) as c:
        config = tmp_path / "agent.toml"
        config.write_text(
            f'node = "n1"\ninterval_s = 0.2\nspool_path = {toml_str(tmp_path / "spool.db")}\n'
            f'[source]\nkind = "sim"\nsim = {{ gpus = 1, duration_s = 3600 }}\n'
            f'[collector]\naddress = "127.0.0.1:{c.grpc_port}"\n'
        )
        agent = AgentProcess(config, env={"NOTIFY_SOCKET": path}).start()
        try:
            got: list[str] = []
            for _ in range(600):  # up to 30 s for the interpreter to start and the source to open
                got += received(sock)
                if got:
                    break
                await asyncio.sleep(0.05)
            assert got and got[0].startswith("READY=1"), got
            agent.signal(signal.SIGTERM)
            rc = await asyncio.to_thread(agent.wait, 30.0)
        finally:
            agent.cleanup()
        got += received(sock)
    assert rc == 0
    assert got[-1] == "STOPPING=1" and got.count("STOPPING=1") == 1
