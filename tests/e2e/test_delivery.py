"""Delivery end to end: real agent and collector processes are killed, frozen and restarted, and every
sample is counted in a real InfluxDB. Nothing may be lost or counted twice, and the agent's ledger
(``sampled = acknowledged + rejected + evicted + lost + pending``) must balance and reach the collector.

Live agents play a synthetic profile of 2 GPUs at 100 W sampled every 0.2 s, so each sample is exactly
20 J; replays use fixed profiles with exactly known counts and joules.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gridwatt.agent.spool import Ledger, Spool, peek_ledger
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import AgentProcess, CollectorProcess, new_collector_ports, toml_str
from gridwatt.timeutil import NS_PER_S, parse_time_ns
from gridwatt.v1 import telemetry_pb2 as pb
from tests.conftest import collector_toml, first_row, influx_query
from tests.influx_front import InfluxFront, InfluxFrontThread, Reply

NODE = "n1"
LIVE_GPUS = 2
LIVE_POWER_W = 100.0
LIVE_INTERVAL_S = 0.2
LIVE_SAMPLE_J = 20.0  # 100 W x 0.2 s, exact (the simulated energy counter counts whole mJ)
DEADLINE_S = 60.0  # generous: waits poll, nothing asserts speed


def wait_until(what: str, cond: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def ledger_value(spool: Path, name: str) -> int:
    """One count of the spool's ledger; -1 while the agent is still creating the spool."""
    try:
        return int(getattr(peek_ledger(spool), name)) if spool.exists() else -1
    except sqlite3.OperationalError:
        return -1


class Rig:
    """One collector (not started), its InfluxDB database, and agents for node n1 in tmp_path."""

    def __init__(self, tmp_path: Path, influx_url: str, database: str, influx_write_url: str | None = None):
        self.tmp = tmp_path
        self.influx_url = influx_url
        self.database = database
        grpc_port, http_port = new_collector_ports()
        cfg = tmp_path / "collector.toml"
        cfg.write_text(collector_toml(influx_write_url or influx_url, database, grpc_port, http_port))
        self.collector = CollectorProcess(cfg, grpc_port, http_port)
        self.spool = tmp_path / "spool.db"
        self.agents: list[AgentProcess] = []

    def agent(self, replay: bool = False, sim: str = "", top: str = "", collector: str = "") -> AgentProcess:
        """An agent on this rig's spool; default: live, 2 GPUs x 100 W every 0.2 s."""
        sim = sim or (f"{{ gpus = {LIVE_GPUS}, power_w = {LIVE_POWER_W}, util_pct = 50.0, "
                      "duration_s = 36000 }")
        interval = "" if "interval_s" in top else f"interval_s = {LIVE_INTERVAL_S}\n"
        backoff = "" if "reconnect_max_s" in collector else "reconnect_max_s = 1.0\n"
        path = self.tmp / f"agent-{len(self.agents)}.toml"
        path.write_text(
            f'node = "{NODE}"\n{interval}{top}\nspool_path = {toml_str(self.spool)}\n'
            f'[source]\nkind = "sim"\nsim = {sim}\n'
            f'[collector]\naddress = "{self.collector.grpc_address}"\n{backoff}{collector}\n'
        )
        agent = AgentProcess(path, replay=replay, log_path=self.tmp / "agent.log")
        self.agents.append(agent)
        return agent

    def query(self, q: str) -> dict[str, Any]:
        return first_row(influx_query(self.influx_url, self.database, q)[0])

    def stored(self, where: str = "") -> tuple[int, float]:
        """(count, sum of energy_j) of this node's gpu points."""
        row = self.query(f"SELECT count(energy_j), sum(energy_j) FROM gpu WHERE node = '{NODE}' {where}")
        return int(row.get("count", 0)), float(row.get("sum", 0.0))

    def rack_energy_j(self) -> float:
        return float(self.query("SELECT sum(it_energy_kwh) FROM rack").get("sum", 0.0)) * 3.6e6

    def stored_ledger(self) -> dict[str, Any]:
        """The newest agent_ledger point of the node, as the collector stored it."""
        return self.query(f"SELECT * FROM agent_ledger WHERE node = '{NODE}' ORDER BY time DESC LIMIT 1")

    def wait_stored(self, at_least: int) -> int:
        wait_until(f"{at_least} gpu points in InfluxDB", lambda: self.stored()[0] >= at_least)
        return self.stored()[0]

    def wait_sampled(self, at_least: int) -> Ledger:
        def enough() -> bool:
            try:
                return self.spool.exists() and peek_ledger(self.spool).sampled >= at_least
            except sqlite3.OperationalError:  # the agent is still creating the spool's tables
                return False

        wait_until(f"{at_least} samples in the spool", enough)
        return peek_ledger(self.spool)

    def assert_all_delivered(self) -> Ledger:
        """The spool is empty, the ledger balances, InfluxDB holds every sample exactly once, and the
        collector has the agent's final ledger."""
        ledger = peek_ledger(self.spool)
        assert ledger.balanced, ledger
        assert ledger.pending == 0 and ledger.rejected == 0, ledger
        assert ledger.acknowledged == ledger.sampled - ledger.evicted - ledger.lost
        stored = self.stored_ledger()
        assert (stored["sampled"], stored["acknowledged"], stored["pending"], stored["evicted"]) == (
            ledger.sampled, ledger.acknowledged, 0, ledger.evicted)
        assert stored["balanced"] is True
        return ledger

    def close(self) -> None:
        for agent in self.agents:
            agent.cleanup()
        self.collector.stop(kill=True)


@pytest.fixture
def rig(tmp_path: Path, influxdb: LocalInfluxDB, database: str) -> Iterator[Rig]:
    r = Rig(tmp_path, influxdb.url, database)
    yield r
    r.close()


def final_stats(agent: AgentProcess) -> dict[str, int]:
    """The counters of the agent's last 'shipper:' log line."""
    line = agent.wait_for_log(r"; shipper: (.*)", timeout_s=5).group(1)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def test_collector_down_at_start_then_up_and_sigterm_drains(rig: Rig) -> None:
    """The agent starts first and spools; the collector comes up later and gets every sample once.
    SIGTERM then flushes, reports the final ledger and exits 0 within 10 s."""
    agent = rig.agent(top="ledger_report_s = 0.5").start()
    agent.wait_for_log(r"reconnecting in", count=2)
    # the ledger is logged now and then, not only on exit
    agent.wait_for_log(r"gridwatt.agent: ledger: sampled=\d+ acknowledged=0 .* balanced=True", count=2)
    before = rig.wait_sampled(20)
    assert before.acknowledged == 0 and before.pending == before.sampled
    rig.collector.start()
    rig.wait_stored(before.sampled + 2 * LIVE_GPUS)
    rc, seconds = agent.terminate()
    assert rc == 0 and seconds < 10.0, (rc, seconds)
    ledger = rig.assert_all_delivered()
    assert ledger.evicted == ledger.lost == 0
    assert rig.stored() == (ledger.sampled, LIVE_SAMPLE_J * ledger.sampled)
    assert rig.rack_energy_j() == pytest.approx(LIVE_SAMPLE_J * ledger.sampled, rel=1e-9)
    stats = final_stats(agent)
    assert stats["reconnects"] >= 2 and stats["batches_rejected"] == 0


def spooled_starts(spool: Path) -> list[int]:
    db = sqlite3.connect(spool.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return [int(r[0]) for r in db.execute("SELECT start_ns FROM samples ORDER BY seq")]
    finally:
        db.close()


def test_node_reboot_resumes_from_the_spool(rig: Rig) -> None:
    """SIGKILL the agent (a node losing power) twice, once with the collector down and once while
    streaming to it; each restart on the same spool delivers what the killed agent had spooled."""
    first = rig.agent().start()
    at_kill_1 = rig.wait_sampled(30)
    first.kill()
    at_kill_1 = peek_ledger(rig.spool)  # SIGKILL: what is committed in the spool (WAL) is what counts
    assert at_kill_1.balanced and at_kill_1.pending == at_kill_1.sampled >= 30
    run1 = spooled_starts(rig.spool)

    rig.collector.start()
    second = rig.agent().start()
    rig.wait_stored(at_kill_1.sampled + 10 * LIVE_GPUS)
    second.kill()  # mid-stream: batches in flight, some stored but not acknowledged
    at_kill_2 = peek_ledger(rig.spool)
    assert at_kill_2.balanced and at_kill_2.sampled > at_kill_1.sampled

    third = rig.agent().start()
    rig.wait_stored(at_kill_2.sampled + 5 * LIVE_GPUS)
    rc, seconds = third.terminate()
    assert rc == 0 and seconds < 10.0
    ledger = rig.assert_all_delivered()
    assert rig.stored() == (ledger.sampled, LIVE_SAMPLE_J * ledger.sampled)
    # every sample the first run spooled is stored, once
    assert rig.stored(f"AND time >= {min(run1)} AND time <= {max(run1)}") == (
        at_kill_1.sampled, LIVE_SAMPLE_J * at_kill_1.sampled)
    assert rig.rack_energy_j() == pytest.approx(LIVE_SAMPLE_J * ledger.sampled, rel=1e-9)


REPLAY_START = "2024-03-01T00:00:00Z"


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_collector_restarted_mid_replay(rig: Rig, how: str) -> None:
    """4 GPUs x 250 W x 12000 s at 1 s: exactly 48000 samples and 12 MJ, whatever happens to the
    collector mid-stream (stopped gracefully, or killed with acks lost), once it is back."""
    gpus, power_w, duration_s = 4, 250.0, 12000
    rig.collector.start()
    agent = rig.agent(
        replay=True, top="interval_s = 1",
        sim=f'{{ gpus = {gpus}, power_w = {power_w}, duration_s = {duration_s}, start = "{REPLAY_START}" }}',
        collector="batch_max_samples = 500",
    ).start()
    rig.wait_stored(1)
    if how == "sigterm":
        # the agent is frozen so the stream stays open: the collector's graceful stop must end it
        agent.signal(signal.SIGSTOP)
        rig.collector.stop()
        agent.signal(signal.SIGCONT)
    else:
        rig.collector.stop(kill=True)
    at_stop = rig.stored()[0]
    assert 0 < at_stop < gpus * duration_s and agent.running
    agent.wait_for_log(r"reconnecting in")
    rig.collector.start()
    assert agent.wait(120) == 0
    total = gpus * duration_s
    assert rig.stored() == (total, gpus * power_w * duration_s)
    assert rig.rack_energy_j() == pytest.approx(gpus * power_w * duration_s, rel=1e-9)
    ledger = rig.assert_all_delivered()
    assert (ledger.sampled, ledger.acknowledged) == (total, total)
    assert final_stats(agent)["reconnects"] >= 1


def test_full_spool_evicts_oldest_and_reports_it(rig: Rig) -> None:
    """A 100-sample spool and the collector down for a 1200-sample replay (2 GPUs x 150 W x 600 s):
    the 1100 oldest are evicted (165 kJ), the newest 100 are delivered, and the collector is told."""
    agent = rig.agent(
        replay=True, top="interval_s = 1\nspool_max_samples = 100",
        sim=f'{{ gpus = 2, power_w = 150.0, duration_s = 600, start = "{REPLAY_START}" }}',
    ).start()
    agent.wait_for_log(r"spool full \(100 samples\): evicted the \d+ oldest")
    rig.wait_sampled(1200)
    rig.collector.start()
    assert agent.wait(60) == 0
    ledger = rig.assert_all_delivered()
    assert (ledger.sampled, ledger.evicted, ledger.evicted_energy_j, ledger.acknowledged) == (
        1200, 1100, 1100 * 150.0, 100)
    assert rig.stored() == (100, 100 * 150.0)
    # the newest were kept: the last 50 seconds of both GPUs
    first_kept = parse_time_ns(REPLAY_START) + 550 * NS_PER_S
    assert rig.stored(f"AND time >= {first_kept}") == (100, 15000.0)
    stored = rig.stored_ledger()
    assert (stored["evicted"], stored["evicted_energy_j"]) == (1100, 165000.0)
    assert stored["evicted_energy_j"] + rig.stored()[1] == 2 * 150.0 * 600  # all energy accounted
    assert "its spool was full and evicted 1100 samples (165000.0 J)" in rig.collector.log_text()


def test_unavailable_for_a_long_stretch_never_drops(tmp_path: Path, influxdb: LocalInfluxDB,
                                                    database: str) -> None:
    """InfluxDB fails every write, so the collector answers UNAVAILABLE, dozens of times over; the
    agent keeps resending the same samples (no time-based give-up) and all arrive once it recovers."""
    failing = threading.Event()  # while set, every write is answered 503 (else forwarded)
    unavailable = Reply(503, {"Retry-After": "0", "Content-Type": "application/json"},
                        '{"error":"test proxy: InfluxDB is unavailable"}')
    front = InfluxFront(influxdb.url, responder=lambda _body: unavailable if failing.is_set() else None)
    with InfluxFrontThread(front) as proxy:
        rig = Rig(tmp_path, influxdb.url, database, influx_write_url=proxy.url)
        try:
            failing.set()
            rig.collector.start()
            agent = rig.agent(
                replay=True, top="interval_s = 1",
                sim=f'{{ gpus = 2, power_w = 200.0, duration_s = 300, start = "{REPLAY_START}" }}',
                collector="reconnect_max_s = 0.2",
            ).start()
            agent.wait_for_log(r"batch not stored \(14\).*; reconnecting in", count=25)
            held = peek_ledger(rig.spool)
            assert (held.sampled, held.pending, held.acknowledged, held.evicted, held.rejected) == (
                600, 600, 0, 0, 0)
            # while InfluxDB is marked down the collector answers UNAVAILABLE without writing (its
            # health probe decides when to try again), so the proxy sees fewer writes than the agent
            # sees refusals
            assert sum(w.status == 503 for w in front.writes) >= 1 and rig.stored() == (0, 0.0)
            failing.clear()
            assert agent.wait(60) == 0
            assert rig.stored() == (600, 600 * 200.0)
            rig.assert_all_delivered()
            assert final_stats(agent)["reconnects"] >= 25
        finally:
            rig.close()


def test_idle_stream_keepalive_gets_no_goaway(rig: Rig) -> None:
    """Pings every 1 s on an idle stream for 6 s (the collector's own minimum is 10 s): the collector
    tolerates them (no too_many_pings GOAWAY), so the stream is never torn down."""
    rig.collector.start()
    agent = rig.agent(top="interval_s = 3600\nledger_report_s = 3600",
                      collector="keepalive_s = 1.0\nkeepalive_timeout_s = 1.0").start()
    wait_until("the agent's first ledger report", lambda: bool(rig.stored_ledger()))
    time.sleep(6.0)
    assert agent.running
    rc, seconds = agent.terminate()
    assert rc == 0 and seconds < 10.0
    log = agent.log_text()
    assert "reconnecting" not in log and "too_many_pings" not in log and "GOAWAY" not in log, log
    stats = final_stats(agent)
    assert stats["reconnects"] == 0 and stats["ledger_reports"] == 2  # on connect, on stop


def test_frozen_collector_is_detected_by_keepalive(rig: Rig) -> None:
    """SIGSTOP the collector (process hung, socket open): keepalive notices; the agent reconnects when
    it is SIGCONTed, or to a replacement. SIGTERM with a hung collector still exits 0 within 10 s."""
    rig.collector.start()
    keepalive = "keepalive_s = 1.0\nkeepalive_timeout_s = 1.0"
    agent = rig.agent(collector=keepalive).start()
    rig.wait_stored(10)

    detected_s = []
    for round_ in (1, 2):
        rig.collector.freeze()
        t0 = time.monotonic()
        agent.wait_for_log(r"reconnecting in", count=round_, timeout_s=30.0)
        detected_s.append(time.monotonic() - t0)
        if round_ == 1:
            rig.collector.thaw()
        else:  # replaced: the hung collector is killed, a new one starts on the same port
            rig.collector.stop(kill=True)
            rig.collector.start()
        rig.wait_stored(peek_ledger(rig.spool).sampled)
    print(f"frozen collector detected after {detected_s[0]:.1f} s and {detected_s[1]:.1f} s "
          "(keepalive 1 s + timeout 1 s)")

    rig.collector.freeze()
    wait_until("samples spooled while the collector hangs", lambda: ledger_value(rig.spool, "pending") >= 10)
    rc, seconds = agent.terminate()
    assert rc == 0 and seconds < 10.0, (rc, seconds)
    print(f"SIGTERM with a hung collector: exit 0 after {seconds:.1f} s")
    hung = peek_ledger(rig.spool)
    assert hung.balanced and hung.pending > 0
    rig.collector.thaw()
    last = rig.agent(collector=keepalive).start()  # delivers what the hung collector did not store
    # (the thawed collector may store what was buffered in its socket: wait for the agent's acks)
    wait_until("the restarted agent's acks",
               lambda: ledger_value(rig.spool, "acknowledged") >= hung.sampled + 2 * LIVE_GPUS)
    rc, seconds = last.terminate()
    assert rc == 0 and seconds < 10.0
    ledger = rig.assert_all_delivered()
    assert rig.stored() == (ledger.sampled, LIVE_SAMPLE_J * ledger.sampled)


def _old_rows(n: int, t0_ns: int) -> list[tuple[int, float, bytes]]:
    out = []
    for i in range(n):
        gpu, k = i % 2, i // 2
        s = pb.GpuSample(gpu_index=gpu, gpu_uuid=f"GPU-old-{gpu}", gpu_name="NVIDIA A100 (simulated)",
                         start_ns=t0_ns + k * NS_PER_S, end_ns=t0_ns + (k + 1) * NS_PER_S, energy_j=250.0,
                         mean_power_w=250.0, util_pct=90.0, energy_method=pb.ENERGY_METHOD_COUNTER)
        out.append((s.start_ns, s.energy_j, s.SerializeToString()))
    return out


def test_corrupt_and_torn_spool_is_quarantined_and_the_rest_delivered(rig: Rig) -> None:
    """A spool left by a crash with a torn WAL and damaged pages: the agent starts anyway, moves the
    file aside, salvages what it can verify, counts the rest as lost, and delivers the salvage."""
    t0_ns = time.time_ns() - 4 * 3600 * NS_PER_S
    rows = _old_rows(2200, t0_ns)
    build = rig.tmp / "build" / "spool.db"
    spool = Spool(build)
    for i in range(0, 2000, 100):
        spool.append(rows[i : i + 100])
    spool.close()  # checkpointed into the main file
    spool = Spool(build)
    spool.append(rows[2000:2100])
    spool.append(rows[2100:2200])  # these two transactions are only in the WAL
    wal = Path(str(build) + "-wal").read_bytes()
    rig.spool.write_bytes(build.read_bytes())
    Path(str(rig.spool) + "-wal").write_bytes(wal[: len(wal) - 3000])  # torn mid-frame
    spool.close()
    size = rig.spool.stat().st_size
    with rig.spool.open("r+b") as fh:  # and 3 damaged pages in the middle
        fh.seek(size // 2 // 4096 * 4096)
        fh.write(b"\xde\xad\xbe\xef" * 3072)

    rig.collector.start()
    agent = rig.agent().start()
    m = agent.wait_for_log(r"salvaged (\d+) pending samples from .*; (\d+) could not be read")
    salvaged, lost = int(m.group(1)), int(m.group(2))
    assert salvaged > 1500 and lost > 0 and salvaged + lost in (2000, 2100)  # the torn tx is gone
    old_range = f"AND time >= {t0_ns} AND time < {t0_ns + 1100 * NS_PER_S}"
    wait_until("the salvage delivered", lambda: rig.stored(old_range)[0] >= salvaged)
    rc, _ = agent.terminate()
    assert rc == 0
    ledger = rig.assert_all_delivered()
    assert (ledger.lost, ledger.quarantines) == (lost, 1)
    assert rig.stored(old_range) == (salvaged, 250.0 * salvaged)
    live = ledger.sampled - salvaged - lost
    assert rig.stored(f"AND time >= {t0_ns + 1100 * NS_PER_S}") == (live, LIVE_SAMPLE_J * live)
    stored = rig.stored_ledger()
    assert (stored["lost"], stored["quarantines"]) == (lost, 1)
    assert len(list(rig.tmp.glob("spool.db.corrupt-*"))) >= 1
