"""Agent-side batching (linger), collector failover and haproxy, with real processes end to end.

Live agents play 2 simulated GPUs at 100 W; at 1 Hz every sample is exactly 100 J, so every GPU,
job and rack total is known by hand from the spool's ledger.
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridwatt.agent.spool import peek_ledger
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import AgentProcess, CollectorProcess, new_collector_ports, toml_str
from tests.conftest import collector_toml, first_row, influx_query
from tests.e2e.test_delivery import LIVE_GPUS, Rig, final_stats, wait_until

TICK_S = 1.0
SAMPLE_J = 100.0  # 100 W x 1 s, exact (the simulated energy counter counts whole mJ)


@pytest.fixture
def rig(tmp_path: Path, influxdb: LocalInfluxDB, database: str) -> Iterator[Rig]:
    r = Rig(tmp_path, influxdb.url, database)
    yield r
    r.close()


def test_batch_max_samples_makes_exact_batches_at_1hz(rig: Rig) -> None:
    """With a long linger, a batch leaves when batch_max_samples are spooled: 4 ticks of 2 GPUs per
    request instead of one request a tick; the stopping agent flushes the rest. Every sample stored."""
    rig.collector.start()
    agent = rig.agent(top=f"interval_s = {TICK_S}\n",
                      collector="linger_s = 60.0\nbatch_max_samples = 8\n").start()
    rig.wait_stored(3 * 8)
    rc, _ = agent.terminate()
    assert rc == 0
    ledger = rig.assert_all_delivered()
    stats = final_stats(agent)
    assert stats["batches_acked"] == -(-ledger.sampled // 8), (stats, ledger)
    assert rig.stored() == (ledger.sampled, SAMPLE_J * ledger.sampled)
    assert rig.rack_energy_j() == pytest.approx(SAMPLE_J * ledger.sampled, rel=1e-9)


def test_default_linger_sends_fewer_larger_batches_at_1hz(rig: Rig) -> None:
    """The default linger (5 s) at 1 Hz: fewer requests than ticks, and every sample stored once."""
    rig.collector.start()
    agent = rig.agent(top=f"interval_s = {TICK_S}\n").start()
    rig.wait_stored(8 * LIVE_GPUS)
    rc, _ = agent.terminate()
    assert rc == 0
    ledger = rig.assert_all_delivered()
    ticks = ledger.sampled // LIVE_GPUS
    stats = final_stats(agent)
    assert 0 < stats["batches_acked"] < ticks, (stats, ticks)
    assert rig.stored() == (ledger.sampled, SAMPLE_J * ledger.sampled)
    assert rig.rack_energy_j() == pytest.approx(SAMPLE_J * ledger.sampled, rel=1e-9)


# --- several collectors: the agent's own failover list, and haproxy in front ------------------------

REPLAY_GPUS = 2
REPLAY_S = 1200  # each agent replays 20 min of 2 GPUs at 1 Hz: 2,400 samples of exactly 100 J
REPLAY_START = "2022-06-01T00:00:00Z"


class Cluster:
    """Agents n1..nN (replaying jobs j1..jN) and two collector replicas on one InfluxDB database."""

    def __init__(self, tmp: Path, influx_url: str, database: str, nodes: int) -> None:
        self.tmp = tmp
        self.influx_url = influx_url
        self.database = database
        self.nodes = [f"n{i + 1}" for i in range(nodes)]
        racks = ('[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.2\nnodes = [{}]\n\n'
                 '[[racks]]\nname = "r2"\nzone = "Z"\npue = 1.2\nnodes = [{}]\n').format(
            ", ".join(f'"{n}"' for n in self.nodes[::2]), ", ".join(f'"{n}"' for n in self.nodes[1::2]))
        self.collectors: list[CollectorProcess] = []
        for i in range(2):
            grpc_port, http_port = new_collector_ports()
            cfg = tmp / f"collector-{i}.toml"
            cfg.write_text(collector_toml(influx_url, database, grpc_port, http_port, racks=racks))
            log = tmp / f"collector-{i}.log"
            self.collectors.append(CollectorProcess(cfg, grpc_port, http_port, log_path=log))
        self.agents: list[AgentProcess] = []

    def start_agents(self, collector_keys: str) -> None:
        for i, node in enumerate(self.nodes):
            path = self.tmp / f"agent-{node}.toml"
            spool = toml_str(self.tmp / f"spool-{node}.db")
            path.write_text(
                f'node = "{node}"\ninterval_s = 1.0\nspool_path = {spool}\n'
                f'[source]\nkind = "sim"\nsim = {{ gpus = {REPLAY_GPUS}, power_w = 100.0, util_pct = 50.0, '
                f'duration_s = {REPLAY_S}, start = "{REPLAY_START}", job_id = "j{i + 1}" }}\n'
                "[collector]\nreconnect_max_s = 1.0\nbatch_max_samples = 200\n"
                f"{collector_keys}\n"
            )
            log = self.tmp / f"agent-{node}.log"
            self.agents.append(AgentProcess(path, replay=True, log_path=log).start())

    def stored(self) -> int:
        row = first_row(influx_query(self.influx_url, self.database, "SELECT count(energy_j) FROM gpu")[0])
        return int(row.get("count", 0))

    def rack_energy_j(self, rack: str) -> float:
        q = f"SELECT sum(it_energy_kwh) FROM rack WHERE rack = '{rack}'"
        return float(first_row(influx_query(self.influx_url, self.database, q)[0]).get("sum", 0.0)) * 3.6e6

    def close(self) -> None:
        for agent in self.agents:
            agent.cleanup()
        for collector in self.collectors:
            collector.stop(kill=True)

    def kill_one_mid_run_and_check_totals(self, victim: CollectorProcess, survivor: CollectorProcess) -> None:
        """SIGKILL ``victim`` once a third is stored; then every agent finishes and every total is exact."""
        per_node = REPLAY_GPUS * REPLAY_S
        total = per_node * len(self.nodes)
        wait_until("a third of the samples stored", lambda: self.stored() >= total // 3, timeout_s=300)
        victim.stop(kill=True)
        for agent in self.agents:
            assert agent.wait(timeout_s=600) == 0, agent.log_text()[-2000:]
        for node in self.nodes:  # every spool delivered, and every sample stored exactly once
            ledger = peek_ledger(self.tmp / f"spool-{node}.db")
            assert (ledger.sampled, ledger.acknowledged, ledger.pending) == (per_node, per_node, 0), ledger
        assert self.stored() == total
        per_gpu = influx_query(self.influx_url, self.database,
                               "SELECT count(energy_j), sum(energy_j) FROM gpu GROUP BY node, gpu")[0]
        assert len(per_gpu["series"]) == len(self.nodes) * REPLAY_GPUS
        for s in per_gpu["series"]:
            _, count, energy_j = s["values"][0]
            assert count == REPLAY_S and energy_j == pytest.approx(REPLAY_S * SAMPLE_J, rel=1e-12), s
        for rack, nodes in (("r1", self.nodes[::2]), ("r2", self.nodes[1::2])):
            want_j = len(nodes) * per_node * SAMPLE_J
            wait_until(f"rack {rack} settled",
                       lambda r=rack, w=want_j: abs(self.rack_energy_j(r) - w) < 1e-6 * w, timeout_s=120)
            assert self.rack_energy_j(rack) == pytest.approx(want_j, rel=1e-9)
        for i in range(len(self.nodes)):
            report = job_json(survivor.http_url, f"j{i + 1}")
            assert report["gpus"] == [f"{self.nodes[i]}/{g}" for g in range(REPLAY_GPUS)]
            assert report["gpu_hours"] == pytest.approx(REPLAY_GPUS * REPLAY_S / 3600, rel=1e-9)
            assert report["it_energy_kwh"] == pytest.approx(per_node * SAMPLE_J / 3.6e6, rel=1e-9)


def job_json(http_url: str, job_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{http_url}/v1/jobs/{job_id}", timeout=30) as resp:
        report: dict[str, Any] = json.loads(resp.read())
    return report


@pytest.fixture
def cluster2(tmp_path: Path, influxdb: LocalInfluxDB, database: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, influxdb.url, database, nodes=2)
    yield c
    c.close()


def test_agent_failover_list_survives_a_sigkilled_collector(cluster2: Cluster) -> None:
    """Two collectors in each agent's ``addresses``; the one serving node n1 is SIGKILLed mid-replay.
    The agents move to the other, resend what was not acknowledged, and every total is exact."""
    for c in cluster2.collectors:
        c.start()
    addresses = ", ".join(f'"{c.grpc_address}"' for c in cluster2.collectors)
    cluster2.start_agents(f"addresses = [{addresses}]\n")
    serving = cluster2.agents[0].wait_for_log(r"collector (\S+): storing this node's samples").group(1)
    victim, survivor = cluster2.collectors if cluster2.collectors[0].grpc_address == serving else \
        cluster2.collectors[::-1]
    cluster2.kill_one_mid_run_and_check_totals(victim, survivor)
    log = cluster2.agents[0].log_text()
    assert f"collector {survivor.grpc_address}: storing this node's samples" in log


class HAProxy:
    """Debian's haproxy in the foreground, TCP mode, round robin over the collectors' gRPC ports.

    gRPC is HTTP/2 over one long-lived TCP connection per agent, so TCP mode balances agents (not
    requests); health checks take a dead collector out and ``option redispatch`` moves a connect that
    failed to the other one.
    """

    def __init__(self, tmp: Path, backends: list[str]) -> None:
        self.port = new_collector_ports()[0]
        servers = "".join(f"  server c{i} {addr} check inter 500ms fall 2 rise 2\n"
                          for i, addr in enumerate(backends))
        self.config = tmp / "haproxy.cfg"
        self.config.write_text(
            "global\n  maxconn 4096\n"
            "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n"
            "  retries 3\n  option redispatch\n"
            f"frontend grpc\n  bind 127.0.0.1:{self.port}\n  default_backend collectors\n"
            f"backend collectors\n  balance roundrobin\n{servers}"
        )
        self.log_path = tmp / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> HAProxy:
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_until("haproxy listening", self._listening, timeout_s=30)
        return self

    def _listening(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


HAPROXY = "/usr/sbin/haproxy"


@pytest.fixture
def cluster8(tmp_path: Path, influxdb: LocalInfluxDB, database: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, influxdb.url, database, nodes=8)
    yield c
    c.close()


def test_haproxy_in_front_of_two_collectors_takes_8_agents_and_one_sigkill(
    cluster8: Cluster, tmp_path: Path
) -> None:
    """8 replaying agents ship to haproxy; haproxy spreads them over 2 collectors; one collector is
    SIGKILLed mid-run. Its agents reconnect through haproxy to the other, and every GPU, job and
    rack total is exact."""
    for c in cluster8.collectors:
        c.start()
    proxy = HAProxy(tmp_path, [c.grpc_address for c in cluster8.collectors]).start()
    try:
        cluster8.start_agents(f'address = "{proxy.address}"\n')
        cluster8.kill_one_mid_run_and_check_totals(*cluster8.collectors)
        moved = [a for a in cluster8.agents if "reconnecting in" in a.log_text()]
        assert moved, "no agent was connected to the killed collector"
    finally:
        proxy.stop()
